"""``fetalhead run``: the Supervisor with tiny Python children, the command lines, one end-to-end run."""

from __future__ import annotations

import csv
import dataclasses
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import zmq

from stream import net, protocol
from stream.run import ProcessSpec, RunConfig, Supervisor, WorkerReady, build_specs, default_stream_id, run_pipeline

PY = sys.executable
WAIT_S = 20.0
SLEEP = (PY, "-c", "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass")
STUBBORN = (PY, "-c", "import signal, time\n"
                      "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_IGN)\n"
                      "print('ready', flush=True)\n"
                      "time.sleep(60)")


def alive(pid: int) -> bool:
    """True while ``pid`` is a running process (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_for(condition, timeout_s: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout_s} s")
        time.sleep(0.02)


def poll_until_done(sup: Supervisor, timeout_s: float = WAIT_S) -> int:
    deadline = time.monotonic() + timeout_s
    while (code := sup.poll()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"supervised run not over within {timeout_s} s")
        time.sleep(0.02)
    return code


@pytest.fixture
def supervisors():
    """``supervisors(specs, **kwargs)``; every one is stopped at teardown, so no test leaves children."""
    made: list[Supervisor] = []

    def make(specs, **kwargs) -> Supervisor:
        kwargs.setdefault("backoff_s", 0.05)
        kwargs.setdefault("stop_timeout_s", 2.0)
        made.append(Supervisor(specs, **kwargs))
        return made[-1]

    yield make
    for sup in made:
        sup.stop()


# --- Supervisor -----------------------------------------------------------------------


def test_crashing_child_is_restarted_up_to_the_limit_and_reported(supervisors, caplog):
    sup = supervisors([ProcessSpec("crashy", (PY, "-c", "import sys; sys.exit(3)")), ProcessSpec("sleeper", SLEEP)],
                      max_restarts=2)
    with caplog.at_level(logging.WARNING, logger="stream.run"):
        sup.start()
        assert poll_until_done(sup) == 3
    assert sup.restarts() == {"crashy": 2, "sleeper": 0}
    lines = [r.getMessage() for r in caplog.records]
    assert sum("crashy" in line and "; restart " in line for line in lines) == 2
    assert "no restarts left" in lines[-1]
    sup.stop()
    assert len(sup.pids) == 4 and not any(alive(pid) for pid in sup.pids)


def test_restarted_child_uses_its_restart_command(supervisors, tmp_path):
    marker = tmp_path / "restarted"
    crash_once = (PY, "-c", "import sys; sys.exit(len(sys.argv) == 1)")
    sup = supervisors([ProcessSpec("once", crash_once, final=True,
                                   restart_argv=(*crash_once, str(marker)))], max_restarts=1)
    sup.start()
    assert poll_until_done(sup) == 0
    assert sup.restarts() == {"once": 1}


def test_a_child_waits_for_its_start_condition(supervisors):
    go = threading.Event()
    sup = supervisors([ProcessSpec("first", SLEEP), ProcessSpec("later", (PY, "-c", "pass"), final=True,
                                                                start_when=go.is_set)])
    sup.start()
    for _ in range(3):
        assert sup.poll() is None
    assert list(sup.running()) == ["first"] and len(sup.pids) == 1
    go.set()
    assert poll_until_done(sup) == 0 and len(sup.pids) == 2


def test_run_ends_when_final_children_exit_and_others_are_stopped(supervisors):
    sup = supervisors([ProcessSpec("done", (PY, "-c", "pass"), final=True),
                       ProcessSpec("early", (PY, "-c", "pass")), ProcessSpec("server", SLEEP)])
    sup.start()
    assert poll_until_done(sup) == 0
    assert sup.restarts() == {"done": 0, "early": 0, "server": 0}
    server = sup.running()["server"]
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 1.5, "a plain child must stop on SIGINT, without escalation"
    assert not alive(server) and sup.running() == {}


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_signals(supervisors, tmp_path, caplog):
    # The child starts a grandchild in its own process group: stop() must reach both.
    pidfile = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        child = subprocess.Popen({list(STUBBORN)!r}, stdout=subprocess.DEVNULL)
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    sup = supervisors([ProcessSpec("stubborn", (PY, "-c", script))], stop_timeout_s=1.0)
    sup.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="grandchild started")
    grandchild = int(pidfile.read_text())
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stream.run"):
        sup.stop()
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 5.0
    assert any("killing stubborn" in r.getMessage() for r in caplog.records)
    assert not alive(sup.pids[0])
    wait_for(lambda: not alive(grandchild), 5.0, "grandchild killed")
    sup.stop()  # twice is harmless


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_children_die_with_a_supervisor_killed_by_sigkill(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from stream.run import ProcessSpec, Supervisor
        sup = Supervisor([ProcessSpec("sleeper", {list(SLEEP)!r})])
        sup.start()
        print(sup.pids[0], flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(WAIT_S)
        wait_for(lambda: not alive(child), 5.0, "orphaned child gone")
    finally:
        parent.kill()
        parent.wait(WAIT_S)
        parent.stdout.close()


def test_supervisor_checks_its_arguments():
    with pytest.raises(ValueError, match="unique"):
        Supervisor([ProcessSpec("a", SLEEP), ProcessSpec("a", SLEEP)])
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor([], max_restarts=-1)
    with pytest.raises(ValueError, match="argv is empty"):
        ProcessSpec("a", ())


# --- command lines --------------------------------------------------------------------


def _args(spec: ProcessSpec) -> list[str]:
    assert spec.argv[:4] == (PY, "-m", "tools.cli", spec.name)
    return list(spec.argv[4:])


def test_build_specs_wires_addresses_and_flags():
    config = RunConfig(source="scans/clip 1.avi", model="m.fhb", mode="lossless", csv=Path("s.csv"),
                       video=Path("v.mp4"), fast=True)
    specs = build_specs(config, "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002")
    assert [s.name for s in specs] == ["record", "watch", "worker", "capture"]
    record, watch, worker, capture = specs
    assert _args(record) == ["--sub", "tcp://127.0.0.1:7002", "--stream", "clip-1", "--until-eos",
                             "--csv", "s.csv", "--video", "v.mp4"]
    assert record.restart_argv[-1] == "--append" and record.final and watch.final
    assert "--until-eos" in _args(watch)
    assert _args(worker) == ["--model", "m.fhb", "--sub", "tcp://127.0.0.1:7001", "--pub", "tcp://127.0.0.1:7002",
                             "--mode", "lossless", "--forward-frames"]
    assert not worker.final and not capture.final
    assert _args(capture) == ["scans/clip 1.avi", "--pub", "tcp://127.0.0.1:7001", "--mode", "lossless",
                              "--stream", "clip-1", "--fast"]


def test_without_consumers_the_worker_ends_the_run():
    specs = build_specs(RunConfig(source="0", model="m.fhb", watch=False), "tcp://a:1", "tcp://a:2")
    assert [s.name for s in specs] == ["worker", "capture"]
    assert specs[0].final and _args(specs[0])[-2:] == ["--exit-after-eos", "1"]
    assert "device0" in _args(specs[1])


def test_worker_ready_waits_for_a_heartbeat_that_is_not_loading(address, sockets):
    addr = address()
    pub = sockets(zmq.XPUB, bind=addr)
    ready = WorkerReady(addr)
    try:
        assert net.recv(pub, WAIT_S) is not None, "WorkerReady never subscribed"
        beat = protocol.Heartbeat("_worker", "worker", 4321, time.time(), {"loading": 1, "uptime_s": 0.5})
        for _ in range(5):
            pub.send(protocol.encode(beat))
        time.sleep(0.2)
        assert not ready()
        pub.send(protocol.encode(dataclasses.replace(beat, stats={"frames_in": 0})))
        deadline = time.monotonic() + WAIT_S
        while not ready():
            assert time.monotonic() < deadline, "the ready heartbeat was not seen"
            time.sleep(0.01)
    finally:
        ready.close()


def test_default_stream_ids():
    assert default_stream_id("0") == "device0"
    assert default_stream_id("synthetic") == "synthetic"
    assert default_stream_id("/data/scans/patient_07/") == "patient_07"
    assert default_stream_id("_hidden.mp4") == "hidden"


# --- end to end -----------------------------------------------------------------------


def test_run_lossless_file_to_csv_over_curve(tmp_path, video, tiny_bundle_path):
    """Capture, worker and recorder as real processes, every link CURVE-encrypted with the keys
    of ``fetalhead keys``; 40 frames in, 40 scores in the CSV, nothing left."""
    from stream.keys import DEFAULT_NAMES, make_keys

    make_keys(tmp_path / "keys", DEFAULT_NAMES)
    clip = video(40, name="clip")
    out = tmp_path / "scores.csv"
    config = RunConfig(source=str(clip), model=str(tiny_bundle_path), mode="lossless", csv=out, watch=False,
                       fast=True, restarts=0, keys=tmp_path / "keys")
    stop = threading.Event()
    # The run's own timeout: a hung pipeline fails the test instead of hanging it.
    timer = threading.Timer(90.0, stop.set)
    timer.start()
    try:
        result = run_pipeline(config, stop)
    finally:
        timer.cancel()
    assert result.exit_code == 0, "the run did not end by itself"
    assert len(result.pids) == 3 and result.restarts == {"record": 0, "worker": 0, "capture": 0}
    assert not [pid for pid in result.pids if alive(pid)]
    rows = list(csv.DictReader(out.open()))
    assert [int(r["seq"]) for r in rows] == list(range(40))
    assert {r["stream"] for r in rows} == {"clip"}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def test_run_main_reports_a_bad_setting(capsys, tmp_path):
    from stream.run import main

    assert main(["clip.avi"]) == 1
    assert "model: give --model BUNDLE" in capsys.readouterr().err
    # Missing keys are found before any process starts.
    assert main(["clip.avi", "--model", "m.fhb", "--keys", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"fetalhead: error: keys: {tmp_path}/capture.key_secret not found (make key pairs with: "
                   f"fetalhead keys {tmp_path} --name capture)")


def test_keys_reach_every_child():
    config = RunConfig(source="0", model="m.fhb", csv=Path("s.csv"), keys=Path("site keys"))
    for spec in build_specs(config, "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"):
        args = _args(spec)
        assert args[args.index("--keys") + 1] == "site keys", spec.name
