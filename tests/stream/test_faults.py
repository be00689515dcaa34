"""Faults survived with real processes and sockets: a worker killed mid-stream, a consumer that stops reading."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from stream import net, protocol
from stream.capture import CaptureConfig, capture
from stream.sources import Source
from stream.supervise import rss_bytes
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import alive, recv_until, until_end_of_stream

ROOT = Path(__file__).resolve().parents[2]


def children(parent: int) -> dict[str, int]:
    """role (``worker``, ``capture`` ...) -> pid of the live ``fetalhead`` children of ``parent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == parent and fields[0] not in ("Z", "X") and b"tools.cli" in argv:
            found[argv[argv.index(b"tools.cli") + 1].decode()] = int(entry.name)
    return found


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)
    return result


def csv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as fh:
        # The recorder may be in the middle of a row; only whole rows count.
        return [row for row in csv.DictReader(fh) if row.get("model")]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_run_survives_its_worker_killed_mid_stream_and_stops_cleanly_on_ctrl_c(tmp_path, tiny_bundle_path):
    """A real ``fetalhead run`` (live capture, worker, recorder): SIGKILL its worker mid-stream.

    The supervisor reports and restarts it; the capture goes on (same
    process, seq keeps counting); scores resume, the first ones from the new
    worker flagged ``warmup``; the CSV shows the gap by seq. Ctrl-C then
    stops everything.
    """
    out = tmp_path / "scores.csv"
    log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "tools.cli", "run", "synthetic", "--model", str(tiny_bundle_path),
            "--stream", "synth", "--fps", "30", "--no-watch", "--csv", str(out), "--restarts", "2"]
    with log.open("wb") as fh:
        run = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    pids: set[int] = set()
    try:
        first = wait_for(lambda: len(csv_rows(out)) >= 10 and children(run.pid), 60, "first scores")
        pids.update(first.values())
        worker, capture_pid = first["worker"], first["capture"]
        os.kill(worker, signal.SIGKILL)
        killed_at = len(csv_rows(out))
        restarted = wait_for(lambda: (c := children(run.pid)).get("worker") not in (None, worker) and c, 30,
                             "worker restarted")
        pids.update(restarted.values())
        wait_for(lambda: any("warmup" in r["flags"] for r in csv_rows(out)[killed_at:]) and
                 len(csv_rows(out)) > killed_at + 10, 60, "scores from the new worker")
        assert restarted["capture"] == capture_pid and alive(capture_pid), "the capture was restarted"
        run.send_signal(signal.SIGINT)
        assert run.wait(30) == 130
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert not [pid for pid in pids if alive(pid)], "children left running"
    text = log.read_text()
    assert f"worker (pid {worker}) exited with 137; restart 1 of 2" in text

    rows = csv_rows(out)
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == sorted(set(seqs)), "scores out of order or duplicated"
    warm = [i for i, r in enumerate(rows) if "warmup" in r["flags"]]
    # Warm-up at the start, then again only where the new worker began: after a hole in the seqs.
    resumed = next(i for i in warm if i > 0 and "warmup" not in rows[i - 1]["flags"])
    assert seqs[resumed] > seqs[resumed - 1] + 1
    assert all(int(r["seq"]) > seqs[resumed - 1] for r in rows[resumed:])


class Frames(Source):
    """``count`` colour frames of 120x160, about 57 KB each raw."""

    name = "big"

    def __init__(self, count: int) -> None:
        self.count = count
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (120, 160, 3), np.uint8) for _ in range(8)]

    def __iter__(self):
        for i in range(self.count):
            yield self.images[i % len(self.images)], None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_consumer_that_stops_reading_costs_bounded_memory_and_no_other_consumer_anything(
        background, sockets, address, tiny_bundle):
    """1,500 frames of 57 KB, forwarded with their scores: 86 MB if the worker queued them all
    for a consumer that reads nothing. Its queue is capped by the HWM instead; the
    consumer that reads gets every frame and score."""
    count = 1500
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", forward_frames=True,
                          heartbeat_s=0.5, exit_after_eos=1)
    worker = background(lambda stop: serve(tiny_bundle, config, stop))
    reader = sockets(zmq.SUB, connect=scores_addr, hwm=0)
    stalled = sockets(zmq.SUB, connect=scores_addr, hwm=4)
    recv_until(reader, lambda m: isinstance(m, protocol.Heartbeat) and not m.loading)
    recv_until(stalled, lambda m: isinstance(m, protocol.Heartbeat) and not m.loading)

    background(lambda stop: capture(Frames(count), CaptureConfig(pub=frames_addr, mode="lossless", fast=True), stop))
    scores, frames, baseline = [], 0, None
    for msg in until_end_of_stream(reader, 30.0):
        if isinstance(msg, protocol.Score):
            scores.append(msg.seq)
            if len(scores) == 200:
                baseline = rss_bytes(os.getpid())
        elif isinstance(msg, protocol.Frame):
            frames += 1
    growth = rss_bytes(os.getpid()) - baseline
    assert scores == list(range(count)) and frames == count
    assert worker.join().frames_out == count
    assert growth < 40 * 2**20, f"memory grew by {growth / 2**20:.0f} MiB"
    kept = 0
    while net.recv(stalled, 0.2) is not None:
        kept += 1
    assert kept < count, "the stalled consumer was sent everything: nothing bounds its queue"
