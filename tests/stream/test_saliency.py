"""The worker's heat maps: the wire type, which frames are chosen, the thread, and a worker over real sockets."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from models.episodes import EpisodeTracker
from models.errors import ConfigError
from stream import protocol
from stream.saliency import QUEUE_SIZE, Chooser, Explainer, Job, SaliencyThread, parse_mode
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import T0, read_video, recv_until


def _saliency(**changes):
    values = dict(stream="probe1", seq=7, score=0.9, model="m", t_capture=T0, layer="tiny_conv2",
                  frame_shape=(60, 80), square=(0, -10, 80), shape=(2, 3), heat=bytes([0, 10, 20, 30, 40, 255]))
    values.update(changes)
    return protocol.Saliency(**values)


def test_saliency_round_trips_and_says_what_is_wrong():
    msg = _saliency()
    back = protocol.decode(protocol.encode(msg))
    assert back == msg and back.grid().tolist() == [[0, 10, 20], [30, 40, 255]]
    made = protocol.saliency_message("probe1", 3, 0.5, "m", T0, "l", (60, 80), (0, -10, 80),
                                     np.array([[0.0, 0.5], [1.0, 2.0]]))
    assert made.grid().tolist() == [[0, 128], [255, 255]]
    with pytest.raises(protocol.ProtocolError, match=r"saliency.heat must be 6 bytes for shape \(2, 3\), got 5$"):
        _saliency(heat=b"\x00" * 5)
    with pytest.raises(protocol.ProtocolError, match="saliency.shape must be two integers"):
        _saliency(shape=(6,), heat=b"\x00" * 6)
    with pytest.raises(protocol.ProtocolError, match=r"saliency.square side must be an integer in \[1, "):
        _saliency(square=(0, 0, 0))
    with pytest.raises(protocol.ProtocolError, match="saliency.shape must be at most 256"):
        _saliency(shape=(1, 300), heat=b"\x00" * 300)
    body = msgpack.unpackb(protocol.encode(msg)[len(b"probe1\x00"):])
    body["heat"] = "text"
    with pytest.raises(protocol.ProtocolError, match="saliency.heat must be binary"):
        protocol.decode(b"probe1\x00" + msgpack.packb(body, use_bin_type=True))


def test_parse_mode():
    assert parse_mode("off") == ("off", 0) and parse_mode(" Best ") == ("best", 0)
    assert parse_mode("every 5") == parse_mode("every-5") == parse_mode("every5") == ("every", 5)
    for bad in ("every 0", "every", "sometimes", "5"):
        with pytest.raises(ValueError, match="is not off, best or 'every N'"):
            parse_mode(bad)
    with pytest.raises(ConfigError, match="saliency: 'often'"):
        WorkerConfig(saliency="often")


def _jobs(values, stream="probe1"):
    frame = protocol.frame_message(stream, 0, np.zeros((4, 4), np.uint8), t_capture=T0)
    return [Job(frame, np.zeros((1, 2), np.float32), protocol.Score(
        stream=stream, seq=seq, score=value, decision=value >= 0.5, threshold=0.5, model="m", t_capture=T0,
        t_received=T0, t_scored=T0, latency=0.0, flags=(), window=1, dropped=0)) for seq, value in enumerate(values)]


def _choose(chooser, values, stream="probe1"):
    """Feed scores as the worker does (offer, then the episode events of that score); the seqs chosen."""
    tracker = EpisodeTracker(stream, 0.5)
    chosen, ends = [], []
    for job in _jobs(values, stream):
        chosen += chooser.scored(job)
        events = tracker.feed(job.score.seq, job.score.score, T0)
        ends += [e.best_seq for e in events if e.kind == "end"]
        chosen += chooser.episodes(events)
    events = tracker.close()
    ends += [e.best_seq for e in events if e.kind == "end"]
    chosen += chooser.episodes(events)
    return [job.score.seq for job in chosen], ends


def test_every_n_chooses_by_seq():
    assert _choose(Chooser("every", 4), [0.1] * 10)[0] == [0, 4, 8]
    assert _choose(Chooser("off"), [0.9] * 10)[0] == []


@pytest.mark.parametrize("values", [
    # A blip over the threshold before the episode that beats its peak, then the episode.
    [0.1, 0.99, 0.1, 0.6, 0.7, 0.95, 0.8, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2],
    # The peak among the back-dated first frames; a tie later keeps the first.
    [0.1, 0.9, 0.7, 0.6, 0.9, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1],
    # Two episodes, the second still open at the stream's end, and a dip inside the first.
    [0.8, 0.9, 0.7, 0.3, 0.8, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.7, 0.75, 0.9, 0.95],
])
def test_best_chooses_each_episodes_best_frame(values):
    """``best`` picks exactly the frames ``models.episodes`` names best, though it must hold them before it knows."""
    chosen, ends = _choose(Chooser("best", threshold=0.5), values)
    assert ends and chosen == ends


def test_thread_skips_when_busy_and_explains_what_it_took(tiny_runtime):
    """Jobs beyond the queue are skipped, not waited for; the ones taken give the offline LayerCAM."""
    from models.saliency import LayerCam

    frames = [np.random.default_rng(i).integers(0, 255, (64, 80), dtype=np.uint8) for i in range(6)]
    images = np.stack([tiny_runtime.preprocess(f) for f in frames])
    features = tiny_runtime.features(images)
    scores = tiny_runtime.scan_scores(features)
    thread = SaliencyThread(tiny_runtime, "every", 1)
    # Not started: nothing is taken off the queue, so the offers beyond it are skipped at once.
    for seq, frame in enumerate(frames):
        message = protocol.frame_message("probe1", seq, frame, t_capture=T0)
        score = protocol.Score(stream="probe1", seq=seq, score=float(scores[seq]), decision=False, threshold=0.5,
                               model="m", t_capture=T0, t_received=T0, t_scored=T0, latency=0.0, flags=(),
                               window=min(seq + 1, 8), dropped=0)
        thread.offer(message, features[max(0, seq - 7):seq + 1], score)
    assert thread.stats() == {"saliency.chosen": 6, "saliency.skipped": 6 - QUEUE_SIZE,
                              "saliency.published": 0, "saliency.failed": 0}
    with thread:
        pass
    results = thread.results()
    assert [m.seq for m in results] == list(range(QUEUE_SIZE)) and thread.published == QUEUE_SIZE
    expected = LayerCam(tiny_runtime).scan(images, list(range(QUEUE_SIZE)))
    for message, heat in zip(results, expected.heat):
        assert message.layer == expected.layer and message.shape == heat.shape
        # A 64x80 frame of speckle is all scan area: an 80-pixel square from 8 rows above it.
        assert message.frame_shape == (64, 80) and message.square == (0, -8, 80)
        np.testing.assert_allclose(message.grid() / 255.0, heat, atol=1 / 255 + 1e-6)


def test_explainer_runs_at_the_lowest_priority_and_outlives_bad_requests_and_its_death(tiny_runtime):
    """The child, every thread of it at SCHED_IDLE and nice 19, gives the offline heat map;
    a bad request fails alone; a killed child is started again."""
    import os
    import signal

    from models.saliency import LayerCam

    frames = [np.random.default_rng(20 + i).integers(0, 255, (64, 80), dtype=np.uint8) for i in range(8)]
    images = np.stack([tiny_runtime.preprocess(f) for f in frames])
    features = tiny_runtime.features(images)
    expected = LayerCam(tiny_runtime).scan(images, [7])
    explainer = Explainer(tiny_runtime)
    try:
        first = explainer.pid
        threads = [int(tid) for tid in os.listdir(f"/proc/{first}/task")]
        assert len(threads) > 1 and explainer.layer == expected.layer
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in threads} == {19}
        assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_IDLE}
        heat, score = explainer.explain(frames[7], features, 7)
        np.testing.assert_allclose(heat, expected.heat[0], atol=1e-5)
        assert score == pytest.approx(float(expected.scores[0]), abs=1e-5)
        with pytest.raises(RuntimeError, match="Error"):
            explainer.explain(frames[7], features[:, :3], 7)
        np.testing.assert_allclose(explainer.explain(frames[7], features, 7)[0], expected.heat[0], atol=1e-5)
        os.kill(first, signal.SIGKILL)
        # The kill may land while a request is in flight (that request fails) or before the next is sent.
        answers = []
        for _ in range(2):
            try:
                answers.append(explainer.explain(frames[7], features, 7))
                break
            except RuntimeError as exc:
                assert "explaining process ended" in str(exc)
        assert answers and explainer.pid not in (None, first)
        np.testing.assert_allclose(answers[0][0], expected.heat[0], atol=1e-5)
    finally:
        explainer.close()
    assert explainer.pid is None


@pytest.mark.slow
def test_worker_publishes_heat_maps_off_the_scoring_path(background, sockets, address, video, tiny_bundle,
                                                         tiny_runtime):
    """Lossless replay with ``every 5``: every frame is scored; each chosen frame is published or counted skipped."""
    from models.saliency import LayerCam
    from stream.capture import CaptureConfig, capture
    from stream.sources import VideoFileSource

    path = video(20, fps=25.0, height=64, width=80)
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.2,
                          exit_after_eos=1, saliency="every 5")
    worker = background(lambda stop: serve(tiny_bundle, config, stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.stream == "_worker" and not m.loading)
    background(lambda stop: capture(VideoFileSource(path), CaptureConfig(
        pub=frames_addr, mode="lossless", fast=True, stream="replay"), stop))
    # The heartbeat after the end of stream counts every chosen frame.
    messages = recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.stream == "_worker"
                          and m.stats.get("saliency.chosen") == 4
                          and m.stats["saliency.published"] + m.stats["saliency.skipped"] == 4, timeout_s=60)
    assert worker.join().frames_out == 20
    assert [m.seq for m in messages if isinstance(m, protocol.Score)] == list(range(20))
    heats = [m for m in messages if isinstance(m, protocol.Saliency)]
    assert len(heats) == messages[-1].stats["saliency.published"] >= 1
    assert {m.seq for m in heats} <= {0, 5, 10, 15}
    images = np.stack([tiny_runtime.preprocess(f) for f in read_video(path)])
    expected = LayerCam(tiny_runtime).scan(images, [m.seq for m in heats])
    for message, heat in zip(heats, expected.heat):
        np.testing.assert_allclose(message.grid() / 255.0, heat, atol=1 / 255 + 1e-6)


def test_the_view_carries_each_streams_newest_heat_map():
    import json

    from stream.view import ViewConfig, ViewState
    from tests.stream.conftest import score

    state = ViewState(ViewConfig(), clock=lambda: T0 + 1)
    state.update(score(7, 0.9), now=T0)
    assert state.snapshot()["streams"][0]["saliency"] is None
    state.update(_saliency(seq=5), now=T0)
    state.update(_saliency(seq=7, heat=bytes(6)), now=T0)
    row = json.loads(json.dumps(state.snapshot()))["streams"][0]
    assert row["saliency"] == {"seq": 7, "score": 0.9, "layer": "tiny_conv2", "frame_shape": [60, 80],
                               "square": [0, -10, 80], "shape": [2, 3], "heat": [0] * 6}
