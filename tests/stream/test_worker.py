import dataclasses
import logging
import time

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from models.bundle import Bundle
from models.runtime import Runtime
from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.sources import VideoFileSource
from stream.worker import Scorer, WorkerConfig, rejection_class, serve
from tests.stream.conftest import make_frames, read_video, recv_until
from tools.command import add_settings, given, parser
from tools.commands.worker import main

TOL = 1e-5


def frames_of(stream, images, seqs=None, t_capture=None):
    seqs = range(len(images)) if seqs is None else seqs
    return [protocol.frame_message(stream, seq, image, t_capture=t_capture) for seq, image in zip(seqs, images)]


def offline_scores(runtime, images):
    return runtime.scan_scores(runtime.frame_features(images))


@pytest.fixture
def scorer(tiny_runtime, tiny_bundle):
    return Scorer(tiny_runtime, tiny_bundle.threshold, tiny_bundle.model_id)


# --- Scorer, without sockets ------------------------------------------------------------


@pytest.mark.parametrize("batches", [[1] * 20, [3, 7, 1, 9], [20]])
def test_scores_equal_offline_scan_scores_however_frames_are_batched(scorer, tiny_runtime, batches):
    images = make_frames(20, seed=3)
    expected = offline_scores(tiny_runtime, images)
    frames = frames_of("probe", images)
    scores, start = [], 0
    for size in batches:
        scores += scorer.score(frames[start:start + size], time.time())
        start += size
    assert [s.seq for s in scores] == list(range(20))
    np.testing.assert_allclose([s.score for s in scores], expected, atol=TOL)
    window = tiny_runtime.config.window
    assert [s.window for s in scores] == [min(i + 1, window) for i in range(20)]
    assert all(("warmup" in s.flags) == (s.seq < window - 1) for s in scores)
    assert not any("gap" in s.flags for s in scores)
    assert all(s.decision == (s.score >= scorer.threshold) for s in scores)
    assert all(s.model == scorer.model_id and s.dropped == 0 for s in scores)
    assert scorer.frames_in == scorer.frames_out == 20


def test_interleaved_streams_keep_separate_windows(scorer, tiny_runtime):
    a, b = make_frames(12, seed=1), make_frames(12, seed=2)
    fa, fb = frames_of("a", a), frames_of("b", b)
    interleaved = [f for pair in zip(fa, fb) for f in pair]
    scores = scorer.score(interleaved[:5], time.time()) + scorer.score(interleaved[5:], time.time())
    for name, images in (("a", a), ("b", b)):
        mine = [s for s in scores if s.stream == name]
        assert [s.seq for s in mine] == list(range(12))
        np.testing.assert_allclose([s.score for s in mine], offline_scores(tiny_runtime, images), atol=TOL)
    assert set(scorer.streams) == {"a", "b"}


def test_gap_flag_marks_windows_with_missing_seqs(scorer, tiny_runtime):
    window = tiny_runtime.config.window
    seqs = [0, 1, 2, 4, 5] + list(range(6, 6 + window))
    scores = scorer.score(frames_of("g", make_frames(len(seqs)), seqs), time.time())
    gap = {s.seq: "gap" in s.flags for s in scores}
    assert not gap[0] and not gap[2]
    assert gap[4] and gap[5]
    # Once the hole has left the window the flag goes away.
    assert not gap[seqs[-1]]


def test_seq_going_backwards_restarts_the_window(scorer, tiny_runtime):
    images = make_frames(12, seed=5)
    first = scorer.score(frames_of("r", images), time.time())
    again = scorer.score(frames_of("r", images[:4]), time.time())
    assert [s.seq for s in again] == [0, 1, 2, 3]
    assert all("warmup" in s.flags for s in again)
    np.testing.assert_allclose([s.score for s in again], [s.score for s in first[:4]], atol=TOL)


def test_bad_frames_are_counted_and_the_rest_scored(scorer):
    good = frames_of("x", make_frames(2))
    bad_jpeg = protocol.Frame("x", 5, time.time(), None, (64, 80), "uint8", "jpeg", None, b"not a jpeg")
    bgra = protocol.frame_message("x", 6, np.zeros((64, 80, 4), np.uint8))
    scores = scorer.score([good[0], bad_jpeg, bgra, good[1]], time.time())
    assert [s.seq for s in scores] == [0, 1]
    assert scorer.rejected == {"bad_pixels": 1, "bad_image": 1}
    stats = scorer.stats()
    assert stats["rejected.bad_pixels"] == 1 and stats["rejected.bad_image"] == 1
    assert stats["frames_in"] == 4 and stats["frames_out"] == 2
    assert 0 <= stats["latency_p50"] <= stats["latency_p99"]


def test_dropped_frames_are_reported_per_stream(scorer):
    scorer.drop("d", 3)
    (score,) = scorer.score(frames_of("d", make_frames(1), seqs=[4]), time.time())
    assert score.dropped == 3
    assert scorer.stats()["dropped.d"] == 3 and scorer.stats()["dropped"] == 3
    scorer.end("d")
    assert "d" not in scorer.streams


def test_dropped_counts_the_seqs_that_never_arrived_and_a_late_start_is_a_gap(scorer, tiny_runtime):
    images = make_frames(6)
    # The stream began before this scorer: its first score is flagged, what came before is unknown.
    first = scorer.score(frames_of("late", images[:1], seqs=[40]), time.time())
    assert first[0].flags == ("warmup", "gap") and first[0].dropped == 0
    # 41 and 42 never arrived; 44 was skipped for 45 (live mode): all three are never scored.
    scorer.score(frames_of("late", images[1:2], seqs=[43]), time.time())
    (skipped,) = frames_of("late", images[3:4], seqs=[44])
    assert scorer.admit(skipped)
    scorer.drop("late")
    (last,) = scorer.score(frames_of("late", images[2:3], seqs=[45]), time.time())
    assert last.dropped == 3 and "gap" in last.flags
    stats = scorer.stats()
    assert stats["lost"] == 2 and stats["dropped"] == 1 and stats["dropped.late"] == 3
    # A capture that starts again from 0 is no gap.
    again = scorer.score(frames_of("late", images[3:5]), time.time())
    assert [s.flags for s in again] == [("warmup",), ("warmup",)] and again[-1].dropped == 3


def test_a_new_stream_over_max_streams_is_rejected_until_one_ends(tiny_runtime, tiny_bundle):
    scorer = Scorer(tiny_runtime, tiny_bundle.threshold, tiny_bundle.model_id, max_streams=2)
    (image,) = make_frames(1)
    first = scorer.score(frames_of("a", [image]) + frames_of("b", [image]), time.time())
    assert [s.stream for s in first] == ["a", "b"]
    assert scorer.score(frames_of("c", [image]), time.time()) == []
    # Known streams go on.
    assert [s.seq for s in scorer.score(frames_of("a", [image], seqs=[1]), time.time())] == [1]
    assert scorer.rejected == {"too_many_streams": 1} and set(scorer.streams) == {"a", "b"}
    scorer.end("a")
    assert [s.stream for s in scorer.score(frames_of("c", [image]), time.time())] == ["c"]


def test_idle_streams_are_forgotten_with_a_status(tiny_runtime, tiny_bundle):
    now = [100.0]
    scorer = Scorer(tiny_runtime, tiny_bundle.threshold, tiny_bundle.model_id, idle_s=10.0, clock=lambda: now[0])
    images = make_frames(3)
    scorer.score(frames_of("a", images[:1]) + frames_of("b", images[:1]), time.time())
    now[0] = 108.0
    scorer.score(frames_of("a", images[1:2], seqs=[1]), time.time())
    now[0] = 112.0
    assert scorer.expire() == ["b"]
    assert list(scorer.streams) == ["a"] and scorer.stats()["streams_expired"] == 1
    (status,) = scorer.events
    assert (status.stream, status.level) == ("b", "info")
    assert status.message == ("stream b: no frame for 10 s, forgotten (its window and counters); "
                              "a new frame starts it afresh")
    now[0] = 118.0
    assert scorer.expire() == ["a"] and not scorer.streams
    # A forgotten stream that comes back starts afresh, flagged: its earlier frames are unknown now.
    (score,) = scorer.score(frames_of("b", images[2:], seqs=[7]), time.time())
    assert score.flags == ("warmup", "gap") and score.window == 1


def test_heartbeat_stats_stay_within_what_a_decoder_takes_however_many_streams(tiny_runtime, tiny_bundle):
    scorer = Scorer(tiny_runtime, tiny_bundle.threshold, tiny_bundle.model_id, max_streams=2000)
    (image,) = make_frames(1)
    for start in range(0, 1200, 400):
        scorer.score([f for i in range(start, start + 400) for f in frames_of(f"s{i}", [image])], time.time())
    stats = scorer.stats()
    assert stats["streams"] == 1200 and stats["frames_out"] == 1200
    per_stream = sorted(k.removeprefix("frames_out.") for k in stats if k.startswith("frames_out."))
    # The most recently seen streams are the ones detailed.
    assert per_stream == sorted(f"s{i}" for i in range(1168, 1200))
    beat = protocol.Heartbeat("_worker", "worker", 1, time.time(), stats)
    assert protocol.decode(protocol.encode(beat)).stats == stats


class FlakyRuntime(Runtime):
    """The tiny model, whose backbone fails on any batch that holds an all-black frame."""

    def features(self, images):
        # Black is -1 after the tiny backbone's normalisation (warm-up's zeros stay 0).
        if any(np.all(image == -1.0) for image in images):
            raise RuntimeError("backbone failed\nsecond line of the trace")
        return super().features(images)


def test_a_frame_that_breaks_the_model_costs_only_itself(tiny_bundle, tiny_runtime, caplog):
    runtime = FlakyRuntime(tiny_bundle.config, tiny_bundle.extractor, tiny_bundle.head)
    scorer = Scorer(runtime, tiny_bundle.threshold, tiny_bundle.model_id)
    images = make_frames(4)
    images[2] = np.zeros_like(images[2])
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        scores = scorer.score(frames_of("f", images), time.time())
    assert [s.seq for s in scores] == [0, 1, 3]
    assert scorer.rejected == {"internal": 1}
    assert scores[-1].dropped == 1 and "gap" in scores[-1].flags
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line == "rejected frame f#2 (internal): RuntimeError: backbone failed"


def test_a_scores_dropped_counts_only_the_frames_before_it_in_its_batch(tiny_bundle):
    """One batch of 0..11 with 3 and 9 broken and 6 never sent: each score counts the misses before its seq."""
    runtime = FlakyRuntime(tiny_bundle.config, tiny_bundle.extractor, tiny_bundle.head)
    scorer = Scorer(runtime, tiny_bundle.threshold, tiny_bundle.model_id)
    seqs = [s for s in range(12) if s != 6]
    images = make_frames(len(seqs))
    for broken in (3, 9):
        images[seqs.index(broken)] = np.zeros_like(images[0])
    scores = scorer.score(frames_of("f", images, seqs=seqs), time.time())
    assert {s.seq: s.dropped for s in scores} == {0: 0, 1: 0, 2: 0, 4: 1, 5: 1, 7: 2, 8: 2, 10: 3, 11: 3}


@pytest.mark.parametrize("data, key", [
    (b"no separator at all", "no_topic"),
    (b"cam\x00\xc1\xc1", "not_msgpack"),
    (b"cam\x00" + msgpack.packb({"v": 99, "type": "frame", "stream": "cam"}), "version"),
    (b"cam\x00" + msgpack.packb({"v": 1, "type": "frame", "stream": "cam"}), "bad_field"),
    (b"cam\x00" + msgpack.packb([1, "frame"]), "not_a_map"),
    (b"cam\x00" + msgpack.packb({"v": 1, "type": "picture", "stream": "cam"}), "unknown_type"),
    (b"cam\x00" + b"\x00" * 5000, "oversized"),
])
def test_rejection_classes(data, key):
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.decode(data, max_size=1000)
    assert rejection_class(info.value) == key


# --- the worker over real sockets ----------------------------------------------------------


def raw_frame_with_wrong_length(stream, seq):
    body = {"v": 1, "type": "frame", "stream": stream, "seq": seq, "t_capture": time.time(), "t_source": None,
            "shape": [64, 80, 3], "dtype": "uint8", "encoding": "raw", "spacing": None, "pixels": b"\x00" * 100}
    return protocol.topic(stream) + msgpack.packb(body, use_bin_type=True)


def start_worker(background, bundle, config, **kwargs):
    return background(lambda stop: serve(bundle, config, stop, **kwargs))


def wait_for_heartbeat(sub, **kwargs):
    """The worker's first heartbeat once it is ready (not ``loading``)."""
    return recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.stream == "_worker"
                      and not m.loading, **kwargs)[-1]


def send(sock, data, timeout_s=10.0):
    assert sock.poll(int(timeout_s * 1000), zmq.POLLOUT), "worker never took the message"
    sock.send(data)


def test_heartbeats_say_loading_while_the_model_loads_then_ready(background, sockets, address, tiny_bundle_path):
    frames_addr, scores_addr = address(), address()
    push = sockets(zmq.PUSH, bind=frames_addr)
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.02, exit_after_eos=1)
    # From the bundle's file: loading and warming up take about a second, 50 loading heartbeats.
    worker = start_worker(background, tiny_bundle_path, config)
    sub = sockets(zmq.SUB, connect=scores_addr)
    beats = [m for m in recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and not m.loading)
             if isinstance(m, protocol.Heartbeat)]
    loading, ready = beats[:-1], beats[-1]
    assert loading, "no loading heartbeat before the ready one"
    assert all(b.loading and b.stream == "_worker" and b.role == "worker" for b in loading)
    assert loading[-1].stats["uptime_s"] > loading[0].stats["uptime_s"] >= 0
    assert "frames_in" in ready.stats and "loading" not in ready.stats

    # Ready means ready: the first frame sent now is scored.
    (frame,) = frames_of("cam", make_frames(1))
    send(push, protocol.encode(frame))
    send(push, protocol.encode(protocol.EndOfStream("cam", 0, "eof", time.time())))
    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
    assert [m.seq for m in messages if isinstance(m, protocol.Score)] == [0]
    assert not any(isinstance(m, protocol.Heartbeat) and m.loading for m in messages)
    assert worker.join().frames_out == 1


def test_bad_messages_are_rejected_and_good_frames_still_scored(background, sockets, address, tiny_bundle):
    frames_addr, scores_addr = address(), address()
    push = sockets(zmq.PUSH, bind=frames_addr)
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.1, exit_after_eos=1)
    worker = start_worker(background, tiny_bundle, config)
    sub = sockets(zmq.SUB, connect=scores_addr)
    wait_for_heartbeat(sub)

    send(push, b"definitely not a protocol message")
    send(push, b"cam\x00\xc1 not msgpack")
    send(push, raw_frame_with_wrong_length("cam", 0))
    for frame in frames_of("cam", make_frames(5)):
        send(push, protocol.encode(frame))
    send(push, protocol.encode(protocol.EndOfStream("cam", 4, "eof", time.time())))

    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
    assert [m.seq for m in messages if isinstance(m, protocol.Score)] == [0, 1, 2, 3, 4]
    beat = wait_for_heartbeat(sub)
    assert beat.stats["rejected.no_topic"] == 1
    assert beat.stats["rejected.not_msgpack"] == 1
    assert beat.stats["rejected.bad_pixels"] == 1
    stats = worker.join()
    assert stats.frames_out == 5 and stats.ends == 1
    assert stats.rejected == {"no_topic": 1, "not_msgpack": 1, "bad_pixels": 1}


def next_event(monitor, event, timeout_s=10.0):
    """Wait for ``event`` on a socket monitor, skipping others; fails the test if it does not come."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if monitor.poll(50) and recv_monitor_message(monitor)["event"] == event:
            return
    pytest.fail(f"no socket event {event} within {timeout_s} s")


def test_worker_reconnects_after_zeromq_refuses_an_oversized_message(background, sockets, address, tiny_bundle):
    frames_addr, scores_addr = address(), address()
    push = sockets(zmq.PUSH, bind=frames_addr)
    connections = push.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    # A long silence_s: only the refusal may reconnect the worker here (a reconnect drops what is in flight).
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.1,
                          max_message_size=64 * 1024, silence_s=60.0, exit_after_eos=1)
    try:
        start_worker(background, tiny_bundle, config)
        sub = sockets(zmq.SUB, connect=scores_addr)
        wait_for_heartbeat(sub)
        next_event(connections, zmq.EVENT_HANDSHAKE_SUCCEEDED)
        send(push, protocol.encode(protocol.frame_message("big", 0, np.zeros((300, 300, 3), np.uint8))))
        # ZeroMQ closes the worker's connection on the oversized message; what is
        # sent after that goes out once the worker has connected again.
        next_event(connections, zmq.EVENT_DISCONNECTED)
        next_event(connections, zmq.EVENT_HANDSHAKE_SUCCEEDED)
        for frame in frames_of("cam", make_frames(3)):
            send(push, protocol.encode(frame))
        send(push, protocol.encode(protocol.EndOfStream("cam", 2, "eof", time.time())))
        messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
        assert [m.seq for m in messages if isinstance(m, protocol.Score)] == [0, 1, 2]
    finally:
        push.disable_monitor()
        connections.close(linger=0)


def with_runtime(bundle, runtime_class):
    """``bundle`` whose ``runtime()`` builds a ``runtime_class`` (a Runtime subclass)."""

    class Wrapped(Bundle):
        def runtime(self):
            return runtime_class(self.config, self.extractor, self.head)

    return Wrapped(**{f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)})


def test_lossless_replay_scores_every_frame_once_in_order(background, sockets, address, video, tiny_bundle,
                                                          tiny_runtime):
    batch_sizes = []

    class CountingRuntime(Runtime):
        def features(self, images):
            batch_sizes.append(len(images))
            return super().features(images)

        def warm_up(self):
            super().warm_up()
            batch_sizes.clear()

    path = video(200, fps=25.0, height=64, width=80)
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.2,
                          forward_frames=True, exit_after_eos=1)
    worker = start_worker(background, with_runtime(tiny_bundle, CountingRuntime), config)
    sub = sockets(zmq.SUB, connect=scores_addr)
    wait_for_heartbeat(sub)
    source = background(lambda stop: capture(VideoFileSource(path), CaptureConfig(
        pub=frames_addr, mode="lossless", fast=True, stream="replay"), stop))

    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream), timeout_s=60)
    data = [m for m in messages if isinstance(m, (protocol.Frame, protocol.Score))]
    scores = [m for m in data if isinstance(m, protocol.Score)]
    assert [s.seq for s in scores] == list(range(200))
    # Each forwarded frame comes just before its score.
    assert [(type(m).__name__, m.seq) for m in data] == [(kind, i) for i in range(200) for kind in ("Frame", "Score")]
    expected = offline_scores(tiny_runtime, read_video(path))
    np.testing.assert_allclose([s.score for s in scores], expected, atol=TOL)
    assert messages[-1].last_seq == 199 and messages[-1].reason == "eof"
    assert source.join().frames_out == 200
    stats = worker.join()
    assert stats.frames_out == 200 and stats.dropped == 0
    # The backlog of a fast source is scored in batches: one backbone call per batch.
    assert sum(batch_sizes) == 200 and max(batch_sizes) > 1


class SlowRuntime(Runtime):
    """The tiny model, plus a fixed cost per backbone call, as a big backbone would have."""

    def features(self, images):
        time.sleep(0.04)
        return super().features(images)


def test_live_worker_drops_the_frames_it_cannot_keep_up_with(background, sockets, address, video, tiny_bundle):
    path = video(150, fps=150.0)
    slow = with_runtime(tiny_bundle, SlowRuntime)
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="live", heartbeat_s=0.2)
    worker = start_worker(background, slow, config)
    sub = sockets(zmq.SUB, connect=scores_addr)
    wait_for_heartbeat(sub)
    source = background(lambda stop: capture(VideoFileSource(path), CaptureConfig(pub=frames_addr, stream="fast"),
                                             stop))
    assert source.join().frames_out == 150

    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
    scores = [m for m in messages if isinstance(m, protocol.Score)]
    beat = wait_for_heartbeat(sub)
    worker.stop.set()
    stats = worker.join()
    # 150 frames at 40 ms each would leave the last one 5 s behind; newest-frame
    # scoring drops what it cannot keep up with instead (how far behind the
    # scores stay is fetalhead bench's to measure).
    assert stats.dropped > 0 and scores[-1].dropped > 0
    assert len(scores) < 100
    assert beat.stats["dropped"] == stats.dropped
    seqs = [s.seq for s in scores]
    assert seqs == sorted(set(seqs))


def test_two_streams_at_once_get_their_own_scores(background, sockets, address, video, tiny_bundle):
    paths = {"left": video(40, fps=100.0, name="left", seed=1), "right": video(40, fps=100.0, name="right", seed=2)}
    addrs = {name: address() for name in paths}
    scores_addr = address()
    config = WorkerConfig(sub=tuple(addrs.values()), pub=scores_addr, mode="live", heartbeat_s=0.2,
                          exit_after_eos=2)
    worker = start_worker(background, tiny_bundle, config)
    sub = sockets(zmq.SUB, connect=scores_addr)
    wait_for_heartbeat(sub)
    for name, path in paths.items():
        cfg = CaptureConfig(pub=addrs[name], stream=name, loop=True, max_frames=120)
        background(lambda stop, path=path, cfg=cfg: capture(VideoFileSource(path, loop=True), cfg, stop))

    ended: set[str] = set()

    def both_ended(m):
        if isinstance(m, protocol.EndOfStream):
            ended.add(m.stream)
        return ended == set(paths)

    messages = recv_until(sub, both_ended)
    for name in paths:
        # Live mode: how many frames are scored depends on the machine's load.
        seqs = [m.seq for m in messages if isinstance(m, protocol.Score) and m.stream == name]
        assert len(seqs) >= 5 and seqs == sorted(set(seqs))
        (end,) = [m for m in messages if isinstance(m, protocol.EndOfStream) and m.stream == name]
        assert end.last_seq == 119 and end.reason == "max_frames"
    assert worker.join().ends == 2


def test_main_rejects_a_missing_bundle_in_one_line(capsys, tmp_path, address):
    assert main(["--model", str(tmp_path / "none.fhb"), "--pub", address()]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fetalhead: error: model bundle") and "not found" in err and "\n" not in err


def test_sub_may_be_repeated_or_comma_separated():
    p = parser("worker", "")
    add_settings(p, WorkerConfig)
    args = p.parse_args(["--sub", "tcp://127.0.0.1:1, tcp://127.0.0.1:2", "--sub", "tcp://127.0.0.1:3"])
    assert given(args, WorkerConfig)["sub"] == ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]
    assert given(p.parse_args([]), WorkerConfig)["sub"] is None


def test_a_bad_worker_table_is_a_one_line_error(capsys, tmp_path):
    config_file = tmp_path / "fh.toml"
    config_file.write_text('[worker]\nmax_batch = 0\n')
    assert main(["--model", "m.fhb", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert "max_batch: must be >= 1" in err and "\n" not in err
