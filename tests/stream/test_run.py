"""``fetalhead run``: the command lines of its processes, its settings, and one end-to-end run."""

from __future__ import annotations

import csv
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from models.errors import BundleError, ConfigError
from stream import protocol
from stream.run import FirstScore, RunConfig, build_specs, check_inputs, default_mode, default_stream_id, run_pipeline
from stream.sources import SourceError
from stream.supervise import ProcessSpec
from tests.stream.conftest import WAIT_S, alive, score
from tools.commands.run import main
from tools.sources import open_source

PY = sys.executable


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
    assert _args(record) == ["--sub", "tcp://127.0.0.1:7002", "--stream", "clip-1", "--until-eos", "--hold", "2",
                             "--csv", "s.csv", "--video", "v.mp4"]
    assert record.restart_argv[-1] == "--append" and record.final and watch.final
    assert _args(watch) == ["--sub", "tcp://127.0.0.1:7002", "--stream", "clip-1", "--until-eos", "--hold", "2"]
    assert _args(worker) == ["--model", "m.fhb", "--sub", "tcp://127.0.0.1:7001", "--pub", "tcp://127.0.0.1:7002",
                             "--mode", "lossless", "--hold", "2", "--forward-frames"]
    assert not worker.final and not capture.final
    assert _args(capture) == ["scans/clip 1.avi", "--pub", "tcp://127.0.0.1:7001", "--mode", "lossless",
                              "--stream", "clip-1", "--on-bad-frame", "skip", "--fast"]


def test_view_serves_the_page_with_the_same_hold_and_has_the_worker_forward_frames():
    config = RunConfig(source="0", model="m.fhb", watch=False, view=True, view_addr="127.0.0.1:8123", hold=4)
    specs = {s.name: s for s in build_specs(config, "tcp://a:1", "tcp://a:2")}
    assert list(specs) == ["view", "worker", "capture"]
    assert _args(specs["view"]) == ["--sub", "tcp://a:2", "--stream", "device0", "--until-eos", "--addr",
                                    "127.0.0.1:8123", "--hold", "4"]
    assert specs["view"].final and not specs["worker"].final
    assert "--forward-frames" in _args(specs["worker"]) and "--exit-after-eos" not in _args(specs["worker"])
    assert _args(specs["worker"])[_args(specs["worker"]).index("--hold") + 1] == "4", "episodes by the same hold"


def test_the_run_serves_its_page_on_loopback_only_and_checks_the_port_first(tmp_path, video, tiny_bundle_path):
    with pytest.raises(ConfigError, match="view_addr: 0.0.0.0 is not a loopback address.*fetalhead view --allow"):
        RunConfig(source="0", model="m.fhb", view=True, view_addr="0.0.0.0:8000")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"addr: cannot serve on {addr}"):
            check_inputs(RunConfig(source=str(video(3)), model=str(tiny_bundle_path), view=True, view_addr=addr),
                         open_source)


def test_without_consumers_the_worker_ends_the_run():
    specs = build_specs(RunConfig(source="0", model="m.fhb", watch=False), "tcp://a:1", "tcp://a:2")
    assert [s.name for s in specs] == ["worker", "capture"]
    assert specs[0].final and _args(specs[0])[-2:] == ["--exit-after-eos", "1"]
    assert "device0" in _args(specs[1])


def test_default_stream_ids():
    assert default_stream_id("0") == "device0"
    assert default_stream_id("synthetic") == "synthetic"
    assert default_stream_id("/data/scans/patient_07/") == "patient_07"
    assert default_stream_id("_hidden.mp4") == "hidden"
    # _capture.<stream> is the capture's own id, which must fit 64 characters too.
    assert default_stream_id("x" * 80 + ".mp4") == "x" * 55


def test_a_stream_id_too_long_for_the_captures_own_id_is_one_line():
    RunConfig(source="0", model="m.fhb", stream="s" * 55)
    with pytest.raises(ConfigError, match=r"^stream: 's{56}' is 56 characters, at most 55 fit: the capture's "
                                          r"heartbeats go out as _capture.<stream>, an id of at most 64$"):
        RunConfig(source="0", model="m.fhb", stream="s" * 56)


def test_files_and_folders_replay_lossless_devices_and_synthetic_live_unless_told():
    assert [default_mode(s) for s in ("clip.mp4", "/data/scan_01/", "0", " 2 ", "synthetic")] == [
        "lossless", "lossless", "live", "live", "live"]
    for source, mode in (("scans/clip.avi", "lossless"), ("0", "live")):
        specs = {s.name: _args(s) for s in build_specs(RunConfig(source=source, model="m.fhb"), "tcp://a:1",
                                                       "tcp://a:2")}
        assert specs["worker"][specs["worker"].index("--mode") + 1] == mode
        assert specs["capture"][specs["capture"].index("--mode") + 1] == mode
    told = RunConfig(source="scans/clip.avi", model="m.fhb", mode="live")
    assert told.stream_mode == "live" and "live" in _args(build_specs(told, "tcp://a:1", "tcp://a:2")[-1])


def test_help_says_which_mode_a_source_gets(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: lossless for a video file or scan folder, live for a device or synthetic" in text
    assert "replayed in lossless mode unless --mode live is given" in text


# --- checks before anything starts ------------------------------------------------------


def test_the_source_and_the_bundle_are_checked_before_any_process_starts(tmp_path, video, tiny_bundle_path):
    clip = video(3)
    check_inputs(RunConfig(source=str(clip), model=str(tiny_bundle_path)), open_source)
    with pytest.raises(SourceError, match="^source /nope.mp4: not found"):
        check_inputs(RunConfig(source="/nope.mp4", model=str(tiny_bundle_path)), open_source)
    not_a_bundle = tmp_path / "scores.csv"
    not_a_bundle.write_text("seq,score\n")
    for model, message in (("/nope.fhb", "model bundle /nope.fhb: not found"),
                           (str(not_a_bundle), f"model bundle {not_a_bundle}: not a fetalhead bundle")):
        with pytest.raises(BundleError, match=f"^{message}"):
            check_inputs(RunConfig(source=str(clip), model=model), open_source)


def test_run_main_says_what_is_wrong_in_one_line_and_starts_nothing(capsys, video, tiny_bundle_path):
    """Had a child been started, its failure would read "worker exited with 1: ..." instead."""
    assert main(["/nope.mp4", "--model", str(tiny_bundle_path)]) == 1
    assert capsys.readouterr().err == ("fetalhead: error: source /nope.mp4: not found (expected a device index, a "
                                       "video file, a scan folder or 'synthetic')\n")
    assert main([str(video(3)), "--model", "/nope.fhb"]) == 1
    assert capsys.readouterr().err == "fetalhead: error: model bundle /nope.fhb: not found\n"


def test_first_score_is_the_first_score_of_its_stream_and_nothing_else(address, sockets):
    addr = address()
    pub = sockets(zmq.XPUB, bind=addr)
    first = FirstScore(addr, "probe1")
    try:
        assert pub.recv() == b"\x01" + protocol.topic("probe1"), "FirstScore never subscribed"
        assert first() is None
        for msg in (protocol.EndOfStream("probe1", None, "stopped", 0.0), score(7, stream="probe1", dropped=2),
                    score(8, stream="probe1")):
            pub.send(protocol.encode(msg))
        deadline = time.monotonic() + WAIT_S
        while first() is None:
            assert time.monotonic() < deadline, "the first score never came"
            time.sleep(0.01)
        assert (first().seq, first().dropped) == (7, 2)
    finally:
        first.close()


# --- end to end -----------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_child_that_fails_on_what_it_was_given_ends_the_run_with_its_error_line(tmp_path, video, tiny_bundle_path,
                                                                               capsys, monkeypatch):
    """A taken scores address: the worker exits with its one-line error, which is not restarted,
    and the line reaches the screen from the run log (used while the table has the terminal)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    addr = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    try:
        code = main([str(video(5)), "--model", str(tiny_bundle_path), "--scores", addr, "--restarts", "3"])
    finally:
        taken.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    log = Path(err[0].rpartition(" ")[2])
    assert err[0] == f"fetalhead run: the processes log to {log}"
    assert err[-1] == (f"fetalhead: error: worker exited with 1: address '{addr}': cannot bind (Address already in "
                       f"use (addr='{addr}')) (log: {log})")
    text = log.read_text()
    log.unlink()
    assert text.count("fetalhead: error: address") == 1, "the worker was restarted"
    assert "not restarted, stopping" in text, "the supervisor's own lines belong in the log while the table is up"


def test_run_main_reports_a_bad_setting(capsys, tmp_path):
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
