"""Supervision: the Supervisor with tiny Python children, Backoff, the worker-ready checks, memory of a child."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import zmq

from models.errors import FetalheadError
from stream import net, protocol
from stream.supervise import (CONFIG_EXIT_CODES, ERROR_PREFIX, Backoff, ProcessSpec, Supervisor, WorkerReady,
                              child_env, error_line, rss_bytes, subcommand, wait_ready)
from tools import command
from tests.stream.conftest import WAIT_S, alive

PY = sys.executable
SLEEP = (PY, "-c", "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass")
STUBBORN = (PY, "-c", "import signal, time\n"
                      "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_IGN)\n"
                      "print('ready', flush=True)\n"
                      "time.sleep(60)")


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
    with caplog.at_level(logging.WARNING, logger="stream.supervise"):
        sup.start()
        assert poll_until_done(sup) == 3
    assert sup.restarts() == {"crashy": 2, "sleeper": 0}
    lines = [r.getMessage() for r in caplog.records]
    assert sum("crashy" in line and "; restart " in line for line in lines) == 2
    assert "no restarts left" in lines[-1]
    sup.stop()
    assert len(sup.pids) == 4 and not any(alive(pid) for pid in sup.pids)


@pytest.mark.parametrize("code", sorted(CONFIG_EXIT_CODES))
def test_a_child_that_fails_on_its_configuration_is_not_restarted(supervisors, tmp_path, caplog, code):
    log = tmp_path / "run.log"
    log.write_text("an earlier run's lines\nfetalhead: error: not this one\n")
    bad = (PY, "-c", f"import sys; print('loading'); print('fetalhead: error: model m.fhb: not found', "
                     f"file=sys.stderr); sys.exit({code})")
    sup = supervisors([ProcessSpec("worker", bad, log=log), ProcessSpec("sleeper", SLEEP)], max_restarts=3,
                      config_exit_codes=CONFIG_EXIT_CODES)
    with caplog.at_level(logging.ERROR, logger="stream.supervise"):
        sup.start()
        assert poll_until_done(sup) == code
    assert sup.restarts() == {"worker": 0, "sleeper": 0} and len(sup.pids) == 2
    assert sup.failed == "worker"
    assert sup.last_error("worker") == "model m.fhb: not found"
    assert sup.last_error("sleeper") is None, "a child without a log file has no error line to read"
    assert [r.getMessage() for r in caplog.records] == [
        f"worker (pid {sup.pids[0]}) exited with {code}, an error in what it was given: not restarted, stopping"]
    # Only what the child wrote since its own start counts: the error above is an earlier child's now.
    quiet = supervisors([ProcessSpec("worker", (PY, "-c", f"print('still loading'); exit({code})"), log=log)],
                        config_exit_codes=CONFIG_EXIT_CODES)
    quiet.start()
    assert poll_until_done(quiet) == code and quiet.last_error("worker") == "still loading"


def test_a_crash_is_still_restarted_where_configuration_errors_are_not(supervisors):
    sup = supervisors([ProcessSpec("crashy", (PY, "-c", "import sys; sys.exit(70)"))], max_restarts=1,
                      config_exit_codes=CONFIG_EXIT_CODES)
    sup.start()
    assert poll_until_done(sup) == 70
    assert sup.restarts() == {"crashy": 1} and sup.failed == "crashy"


def test_error_line_is_the_last_one_line_error_or_else_the_end_of_a_traceback():
    assert error_line("INFO loading\nfetalhead: error: source x: not found\nINFO stopping\n\n") == \
        "source x: not found"
    traceback = 'Traceback (most recent call last):\n  File "w.py", line 1, in <module>\nRuntimeError: boom\n'
    assert error_line(traceback) == "RuntimeError: boom"
    assert error_line(" \n\n") is None


def test_fetalhead_commands_end_with_the_statuses_the_supervisor_reads(capsys):
    """tools.command.run is where a child's errors become its exit status; the supervisor must read them alike."""
    def wrong_input():
        raise FetalheadError("source x: not found")

    def fault():
        raise RuntimeError("boom")

    assert command.run(wrong_input) == command.EXIT_ERROR in CONFIG_EXIT_CODES
    assert capsys.readouterr().err == f"{ERROR_PREFIX}source x: not found\n"
    assert command.run(fault) == command.EXIT_CRASH not in CONFIG_EXIT_CODES
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and error_line(err) == "RuntimeError: boom"
    with pytest.raises(SystemExit) as usage:
        command.parser("probe", "a probe").parse_args(["--no-such-flag"])
    assert usage.value.code == command.EXIT_USAGE in CONFIG_EXIT_CODES


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
    with caplog.at_level(logging.WARNING, logger="stream.supervise"):
        sup.stop()
    assert any("killing stubborn" in r.getMessage() for r in caplog.records)
    assert not alive(sup.pids[0])
    wait_for(lambda: not alive(grandchild), 5.0, "grandchild killed")
    sup.stop()  # twice is harmless


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_children_die_with_a_supervisor_killed_by_sigkill(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from stream.supervise import ProcessSpec, Supervisor
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


def test_supervisor_restarts_back_off_by_doubling(supervisors, caplog):
    sup = supervisors([ProcessSpec("crashy", (PY, "-c", "import sys; sys.exit(3)"))], max_restarts=3,
                      backoff_s=0.1, max_backoff_s=0.2)
    sup.start()
    with caplog.at_level(logging.WARNING, logger="stream.supervise"):
        assert poll_until_done(sup) == 3
    assert sup.restarts() == {"crashy": 3}
    waits = [r.getMessage().rpartition(" in ")[2] for r in caplog.records if "; restart " in r.getMessage()]
    assert waits == ["0.1 s", "0.2 s", "0.2 s"]
    with pytest.raises(ValueError, match="initial <= maximum"):
        Supervisor([], backoff_s=2.0, max_backoff_s=1.0)


# --- Backoff --------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_maximum_and_resets():
    backoff = Backoff(0.5, 8.0)
    assert [backoff.delay(i) for i in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 0.5
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(2.0, 1.0)


# --- subcommands and their environment --------------------------------------------------


def test_subcommand_runs_fetalhead_in_this_python():
    assert subcommand("watch", "--sub", "tcp://a:1") == (PY, "-m", "tools.cli", "watch", "--sub", "tcp://a:1")
    assert subcommand("worker", "--model", "m", verbose=True) == (PY, "-m", "tools.cli", "worker", "-v",
                                                                   "--model", "m")


def test_a_child_finds_the_project_from_any_folder(tmp_path):
    result = subprocess.run([PY, "-c", "import stream.supervise"], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rss_bytes_of_a_live_and_a_gone_process():
    assert rss_bytes(os.getpid()) > 10 * 2**20
    child = subprocess.Popen([PY, "-c", "pass"])
    child.wait()
    assert rss_bytes(child.pid) is None


# --- a ready worker ---------------------------------------------------------------------


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


@pytest.mark.parametrize("worker_id", ["_worker", "_worker.0of2"])
def test_wait_ready_returns_once_a_worker_is_ready(address, sockets, background, worker_id):
    addr = address()
    pub = sockets(zmq.XPUB, bind=addr)
    waiting = background(lambda stop: wait_ready(addr, timeout_s=WAIT_S, poll_s=0.05))
    assert net.recv(pub, WAIT_S) is not None, "wait_ready never subscribed"
    beat = protocol.Heartbeat(worker_id, "worker", 4321, time.time(), {"frames_in": 0})
    while waiting.thread.is_alive():
        pub.send(protocol.encode(beat))
        time.sleep(0.02)
    assert 0 < waiting.join() < WAIT_S


def test_wait_ready_says_in_one_line_when_the_worker_dies_or_never_comes(address):
    addr = address()
    with pytest.raises(FetalheadError, match=f"^the worker on {addr} exited before it was ready$"):
        wait_ready(addr, timeout_s=WAIT_S, alive=lambda: False, poll_s=0.01)
    with pytest.raises(FetalheadError, match=f"^no ready worker on {addr} within 0.1 s$"):
        wait_ready(addr, timeout_s=0.1, poll_s=0.02)
