"""``fetalhead run``: the command lines of its processes, its settings, and one end-to-end run."""

from __future__ import annotations

import csv
import sys
import threading
from pathlib import Path

import pytest

from stream.run import RunConfig, build_specs, default_stream_id, run_pipeline
from stream.supervise import ProcessSpec
from tests.stream.conftest import alive
from tools.commands.run import main

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


def test_default_stream_ids():
    assert default_stream_id("0") == "device0"
    assert default_stream_id("synthetic") == "synthetic"
    assert default_stream_id("/data/scans/patient_07/") == "patient_07"
    assert default_stream_id("_hidden.mp4") == "hidden"


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
