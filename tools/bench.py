"""``fetalhead bench``: every speed figure as a ratio against a baseline measured in the same run.

Absolute times differ between machines; ratios measured side by side hold.
Sections (``--sections``):

- ``backbones``: one frame through the compiled path (``predict_on_batch``)
  against ``model.predict``, per backbone.
- ``stream``, against a real ``fetalhead worker`` process fed over ZeroMQ:
  start-up (launch to first score) and what it is made of; the worker's
  per-frame cost (received -> score ready, as the worker stamps it, one
  frame at a time) against one bare compiled backbone forward; the rolling
  feature buffer against re-running the 8-frame window through the
  end-to-end model; lossless replay throughput against offline batched
  scoring of the same frames; live-mode p50/p99 latency with a 30 fps
  source against one frame's compute, and the worker's memory.
- ``view``: the live worker's per-frame cost and p99 latency with a
  ``fetalhead view`` and a WebSocket client reading all it pushes (a
  browser), against the same worker without them.
- ``training``: the real k-fold run (5 folds in one pack, the bundle their
  heads) on a small synthetic dataset for 3 epochs, scaled to 50 by its
  measured epoch time, against one backbone pass over the same frames and
  against the seed's way of running the backbone inside every training step.
- ``export``: one frame's cost under onnxruntime on the CPU, the two
  exported streaming pieces (``fetalhead model export --pieces``: extractor
  on the frame, head on its 8-frame window), against the Keras compiled
  path (``models.runtime``) on the same frames, and each piece alone.
- ``scaleout``: 8 live probes at ``live_fps`` (frames of ``image_size``
  pixels) over 2 ``fetalhead worker`` processes (``--shard 0/2``, ``1/2``)
  behind a ``fetalhead hub``: each stream's p99 latency against one frame
  period, each stream's drops, each worker's memory at the end against its
  start.
- ``saliency``: the worker's per-frame cost (received -> published, one
  frame in flight at a time) with ``--saliency best`` and with
  ``--saliency "every 10"`` against the same worker with ``--saliency off``;
  the heat maps are computed in a process of their own at SCHED_IDLE while
  the next frames are scored. The three workers take turns in blocks (see
  ``bench_saliency``), and the table says how many heat maps each made.

``--repeats N`` measures each section N times over and reports, per figure,
the run whose ratio is the median, with the range of the N ratios (``--json``
holds every run's): timings on a shared machine drift by tens of percent
between minutes, and the range says how far to trust a ratio.

Random weights everywhere: the compute is that of the real weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from models.errors import FetalheadError
from models.settings import check, setting
from stream.supervise import rss_bytes, subcommand, wait_ready

SECTIONS = ("backbones", "stream", "view", "training", "export", "scaleout", "saliency", "heads")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What ``fetalhead bench`` measures, and how much (a ``[bench]`` TOML table)."""

    backbones: tuple[str, ...] = setting(("vgg19", "mobilenetv2"), "backbones to measure")
    sections: tuple[str, ...] = setting(SECTIONS, f"sections to run, of {', '.join(SECTIONS)}")
    image_size: int = setting(224, "backbone input size in pixels")
    frames: int = setting(24, "frames per streaming measurement")
    replay_frames: int = setting(160, "frames pushed through the lossless replay")
    live_seconds: float = setting(8.0, "seconds of live-mode latency measured")
    live_fps: float = setting(30.0, "frame rate of the live-mode source")
    frame_height: int = setting(480, "raw frame height in pixels")
    frame_width: int = setting(640, "raw frame width in pixels")
    dataset_frames: int = setting(24036, "frames of the dataset the training figures are scaled to (the seed's)")
    train_scans: int = setting(10, "synthetic scans of the measured k-fold run")
    train_frames: int = setting(32, "frames per scan of the measured k-fold run")
    train_xla: Literal["auto", "on", "off"] = setting("auto", "XLA for the measured k-fold run (auto: as "
                                                       "--xla auto would choose for dataset_frames)")
    repeats: int = setting(1, "measure each section this many times; report the median run and the ratios' range")
    json: str = setting("", "also write the rows to this JSON file")

    def __post_init__(self) -> None:
        from models.config import BACKBONES

        for name in self.backbones:
            check(name in BACKBONES, f"backbones: {name!r} is not one of {', '.join(BACKBONES)}")
        for name in self.sections:
            check(name in SECTIONS, f"sections: {name!r} is not one of {', '.join(SECTIONS)}")
        check(self.frames >= 9, f"frames: must be >= 9, got {self.frames}")
        check(self.replay_frames >= 1, f"replay_frames: must be >= 1, got {self.replay_frames}")
        check(self.live_fps > 0, f"live_fps: must be > 0, got {self.live_fps}")
        check(self.train_scans >= 5, f"train_scans: must be >= 5 (one per fold), got {self.train_scans}")
        check(self.train_frames >= 16, f"train_frames: must be >= 16, got {self.train_frames}")
        check(self.repeats >= 1, f"repeats: must be >= 1, got {self.repeats}")


@dataclasses.dataclass
class Row:
    section: str
    backbone: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    runs: int = 1
    # Every run's ratio, in run order.
    ratios: tuple[float, ...] = ()

    @property
    def ratio(self) -> float | None:
        return None if self.baseline in (None, 0) else self.value / self.baseline

    @property
    def ratio_min(self) -> float | None:
        return min(self.ratios) if self.ratios else None

    @property
    def ratio_max(self) -> float | None:
        return max(self.ratios) if self.ratios else None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.section, self.backbone, self.figure, self.baseline_name


def combine(runs: Sequence[Sequence[Row]]) -> list[Row]:
    """One row per figure from repeated runs of a section: the median run, with the ratios' range.

    The median run is the one whose ratio (or, without a baseline, value) is
    the median, the upper middle one of an even count, so value, baseline and
    ratio stay one consistent measurement. Figures keep their first run's order;
    a figure missing from some runs is combined over the others.
    """
    by_key: dict[tuple[str, str, str, str], list[Row]] = {}
    for rows in runs:
        for row in rows:
            by_key.setdefault(row.key, []).append(row)
    combined = []
    for rows in by_key.values():
        ratios = [row.ratio for row in rows if row.ratio is not None]
        ordered = sorted(rows, key=lambda row: row.value if row.ratio is None else row.ratio)
        middle = ordered[len(ordered) // 2]
        combined.append(dataclasses.replace(middle, runs=len(rows), ratios=tuple(ratios)))
    return combined


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_frames(config: BenchConfig, n: int) -> list[np.ndarray]:
    from train.synth import Sweep

    sweep = Sweep(0, n, config.frame_height, config.frame_width)
    return [sweep.frame(i) for i in range(n)]


def make_bundle(backbone: str, config: BenchConfig, folder: Path):
    from models.bundle import load as load_bundle, save
    from models.cnn_lstm import build_feature_extractor, build_temporal_head
    from models.config import ModelConfig

    model_config = ModelConfig(backbone=backbone, weights="none", image_size=config.image_size)
    extractor = build_feature_extractor(model_config)
    head = build_temporal_head(model_config, extractor.output_shape[-1])
    return load_bundle(save(folder / f"{backbone}.fhb", model_config, extractor, head))


def bench_backbone(backbone: str, bundle, config: BenchConfig) -> list[Row]:
    extractor = bundle.extractor
    image = np.random.default_rng(0).normal(size=(1, config.image_size, config.image_size, 3)).astype(np.float32)
    repeats = 3 if backbone == "vgg19" else 10
    compiled = timed(lambda: extractor.predict_on_batch(image), repeats)
    predicted = timed(lambda: extractor.predict(image, verbose=0), repeats)
    return [Row("backbones", backbone, "one frame, compiled path", compiled * 1e3, "ms", predicted * 1e3,
                "model.predict", "< 1")]


# A bundle of a 5-fold run holds its 5 fold heads (docs/calibration.md).
ENSEMBLE_HEADS = 5


def bench_heads(backbone: str, bundle, config: BenchConfig) -> list[Row]:
    """A frame's cost on the worker's path (features of one frame, then its window's newest score) with a
    bundle of ENSEMBLE_HEADS fold heads averaged, against one head."""
    from models.cnn_lstm import build_temporal_head, ensemble_head
    from models.runtime import Runtime

    feature_dim = int(bundle.extractor.output_shape[-1])
    heads = [build_temporal_head(bundle.config, feature_dim, name=f"fold_{i}") for i in range(ENSEMBLE_HEADS)]
    image = np.random.default_rng(0).normal(size=(1, config.image_size, config.image_size, 3)).astype(np.float32)
    window = np.random.default_rng(1).normal(size=(bundle.config.window, feature_dim)).astype(np.float32)
    repeats = 5 if backbone == "vgg19" else 30
    measured = {}
    for name, head in (("one", bundle.head), ("ensemble", ensemble_head(bundle.config, heads))):
        runtime = Runtime(bundle.config, bundle.extractor, head)
        measured[name] = timed(lambda: (runtime.features(image), runtime.score_newest([window])), repeats, warmup=3)
    return [Row("heads", backbone, f"one frame scored by {ENSEMBLE_HEADS} fold heads averaged",
                measured["ensemble"] * 1e3, "ms", measured["one"] * 1e3, "one head")]


def _end(process: subprocess.Popen) -> None:
    """Ask a benchmarked child to stop; kill it if it has not in 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class WorkerProcess:
    """A real ``fetalhead worker`` process, its frames fed from here and its scores read here."""

    def __init__(self, model: Path, mode: str, *extra: str) -> None:
        import zmq

        from stream import net

        self.frames_addr, self.scores_addr = net.free_tcp_address(), net.free_tcp_address()
        kind = zmq.PUSH if mode == "lossless" else zmq.PUB
        self.frames = net.socket(kind, bind=self.frames_addr, hwm=64 if mode == "lossless" else 4)
        self.scores = net.Subscriber(self.scores_addr)
        # Saliency messages seen while reading scores.
        self.heat_maps = 0
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            subcommand("worker", "--model", str(model), "--sub", self.frames_addr, "--pub", self.scores_addr,
                       "--mode", mode, "--heartbeat", "0.5", *extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Launch to the first heartbeat not marked ``loading``: the model is loaded and warm.
        try:
            wait_ready(self.scores_addr, timeout_s=600, alive=lambda: self.process.poll() is None)
        except FetalheadError as exc:
            why = self.process.stderr.read() if self.process.poll() is not None else ""
            raise FetalheadError(f"{exc}{': ' + why.strip().splitlines()[-1] if why.strip() else ''}") from None

    def scores_of(self, n: int, timeout: float) -> list:
        """The scores that arrive until there are ``n`` (all of a batch that arrives at once) or ``timeout``."""
        from stream import protocol

        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for message in self.scores.receive(1.0):
                if isinstance(message, protocol.Score):
                    out.append(message)
                self.heat_maps += isinstance(message, protocol.Saliency)
        return out

    def close(self) -> None:
        _end(self.process)
        self.frames.close(linger=0)
        self.scores.close()


def _stream_rows(backbone: str, config: BenchConfig, frames: list[np.ndarray], model: Path) -> list[Row]:
    from models.bundle import load as load_bundle
    from models.cnn_lstm import build_cnn_lstm
    from stream import protocol

    rows = []
    start = time.perf_counter()
    bundle = load_bundle(model)
    runtime = bundle.runtime()
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    runtime.warm_up()
    warm = time.perf_counter() - start
    one = runtime.preprocess(frames[0])[None]
    # The worker's own single-frame path: the fastest compiled forward of one frame.
    bare = timed(lambda: runtime.frame_extractor.predict_on_batch(one), 3 if backbone == "vgg19" else 10)

    # Rolling buffer: one frame through the backbone and the head per frame,
    # against the whole 8-frame window through the end-to-end model per frame
    # (its 8 frames as one batch, which this CPU runs cheaper per frame).
    window = runtime.config.window
    eight = np.repeat(one, window, axis=0)
    features = runtime.features(eight)
    end_to_end = build_cnn_lstm(runtime.config, runtime.extractor, runtime.head)
    rolling = timed(lambda: (runtime.frame_extractor.predict_on_batch(one), runtime.score_newest([features])), 3)
    full = timed(lambda: end_to_end.predict_on_batch(eight[None]), 2)
    rows.append(Row("stream", backbone, "per frame, rolling feature buffer", rolling * 1e3, "ms", full * 1e3,
                    "8-frame window through the whole model", "<= 1/7"))

    def message(stream: str, seq: int, frame: np.ndarray) -> bytes:
        return protocol.encode(protocol.frame_message(stream, seq, frame, t_capture=time.time()))

    worker = WorkerProcess(model, "lossless")
    try:
        # Start-up: launch to the first score of the first frame sent once it is ready.
        worker.frames.send(message("first", 0, frames[0]))
        if not worker.scores_of(1, 600):
            raise FetalheadError("bench: the worker gave no score")
        startup = time.perf_counter() - worker.started
        rows.append(Row("stream", backbone, "start-up: `fetalhead worker` launched -> first score", startup, "s"))
        rows.append(Row("stream", backbone, "start-up, of which model load (in-process)", loaded, "s", startup,
                        "whole start-up"))
        rows.append(Row("stream", backbone, "start-up, of which warm-up: tracing and XLA (in-process)", warm, "s",
                        startup, "whole start-up"))
        rows.append(Row("stream", backbone, "start-up, of which Python, TensorFlow and Keras imports",
                        import_seconds(), "s", startup, "whole start-up"))

        # Per-frame cost inside the worker, one frame in flight at a time: the
        # worker stamps when it received the frame and when its score was ready.
        costs = []
        for i, frame in enumerate(frames):
            worker.frames.send(message("bench", i, frame))
            got = worker.scores_of(1, 60)
            if not got:
                raise FetalheadError("bench: the worker gave no score")
            costs.append(got[0].t_scored - got[0].t_received)
        per_frame = statistics.median(costs[window:])
        rows.append(Row("stream", backbone, "worker per frame (received -> published)", per_frame * 1e3, "ms",
                        bare * 1e3, "bare compiled backbone forward", "<= 1.10"))

        # Lossless replay: every frame pushed as fast as backpressure allows,
        # enough of them that the first and last batches do not decide it.
        replayed = [frames[i % len(frames)] for i in range(config.replay_frames)]
        encoded = [message("replay", i, f) for i, f in enumerate(replayed)]
        start = time.perf_counter()
        sender = threading.Thread(target=lambda: [worker.frames.send(m) for m in encoded], daemon=True)
        sender.start()
        got = worker.scores_of(len(encoded), 600)
        replay = len(got) / (time.perf_counter() - start)
        sender.join(5)
    finally:
        worker.close()
    runtime.scan_scores(runtime.frame_features(frames[:window + 2]))
    offline_start = time.perf_counter()
    runtime.scan_scores(runtime.frame_features(replayed))
    offline = len(replayed) / (time.perf_counter() - offline_start)
    rows.append(Row("stream", backbone, "lossless replay throughput", replay, "frames/s", offline,
                    "offline batched scoring, one process", ">= 0.9"))

    # Live mode: a 30 fps source, the worker keeping only the newest frame.
    worker = WorkerProcess(model, "live")
    try:
        latencies, _, memory = live_run(worker, frames, config, warm_s=max(2.0, 3 * bare))
    finally:
        worker.close()
    compute = max(bare, rolling)
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        rows.append(Row("stream", backbone, f"live p50 latency at {config.live_fps:g} fps", p50 * 1e3, "ms",
                        compute * 1e3, "one frame's compute", ""))
        rows.append(Row("stream", backbone, f"live p99 latency at {config.live_fps:g} fps", p99 * 1e3, "ms",
                        compute * 1e3, "one frame's compute", "<= 2"))
        rows.append(Row("stream", backbone, "live worker memory at end", memory[-1], "MiB", memory[0],
                        "memory at start", "~1"))
    return rows


def live_run(worker: WorkerProcess, frames: list[np.ndarray], config: BenchConfig,
             warm_s: float) -> tuple[list[float], list[float], list[float]]:
    """Feed ``worker`` at ``config.live_fps`` for ``warm_s`` + ``config.live_seconds``; after the warm-up,
    every score's latency (s) and per-frame cost in the worker (received -> published, s), and the worker's
    memory (MiB) at each."""
    from stream import protocol

    latencies, costs, memory = [], [], []
    done = threading.Event()

    def source() -> None:
        seq = 0
        next_at = time.monotonic()
        while not done.is_set():
            image = frames[seq % len(frames)]
            worker.frames.send(protocol.encode(protocol.frame_message("live", seq, image, t_capture=time.time())))
            seq += 1
            next_at += 1.0 / config.live_fps
            time.sleep(max(0.0, next_at - time.monotonic()))

    feeder = threading.Thread(target=source, daemon=True)
    try:
        feeder.start()
        warm_until = time.monotonic() + warm_s
        end = warm_until + config.live_seconds
        while time.monotonic() < end:
            for score in worker.scores_of(1, 1.0):
                if time.monotonic() > warm_until:
                    latencies.append(score.latency)
                    costs.append(score.t_scored - score.t_received)
                    memory.append((rss_bytes(worker.process.pid) or math.nan) / 2**20)
    finally:
        done.set()
        feeder.join(5)
    return latencies, costs, memory


class ViewProcess:
    """A real ``fetalhead view`` on a worker's scores, and a WebSocket client that reads all it pushes.

    The client stands for a browser on another screen: it takes every state
    and image as fast as they come, which is the most a browser can ask of
    the viewer.
    """

    def __init__(self, scores_addr: str) -> None:
        import queue

        from stream import net

        port = int(net.free_tcp_address().rpartition(":")[2])
        self.process = subprocess.Popen(subcommand("view", "--sub", scores_addr, "--addr", f"127.0.0.1:{port}"),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            self.process.kill()
            raise FetalheadError("bench: fetalhead view did not start in 120 s") from None
        self.url = line.split("open ", 1)[1].split()[0]
        self.states = self.images = 0
        self._done = threading.Event()
        self._client = threading.Thread(target=self._read, daemon=True)
        self._client.start()

    def _read(self) -> None:
        import asyncio

        import aiohttp

        async def client() -> None:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.url.rstrip("/") + "/ws") as ws:
                    while not self._done.is_set():
                        try:
                            msg = await ws.receive(timeout=0.5)
                        except asyncio.TimeoutError:
                            continue
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.states += 1
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            self.images += 1
                        else:
                            return

        asyncio.run(client())

    def close(self) -> None:
        self._done.set()
        self._client.join(5)
        _end(self.process)


def bench_view(backbone: str, config: BenchConfig, frames: list[np.ndarray], model: Path) -> list[Row]:
    """The live worker's per-frame cost and latency with a ``fetalhead view`` and a connected browser, against
    the same worker without them, side by side in this run (the viewer's frames come with --forward-frames)."""
    measured = {}
    for name, extra in (("without", ()), ("with", ("--forward-frames",))):
        worker = WorkerProcess(model, "live", *extra)
        viewer = ViewProcess(worker.scores_addr) if name == "with" else None
        try:
            latencies, costs, _ = live_run(worker, frames, config, warm_s=3.0)
            seconds = config.live_seconds
        finally:
            if viewer is not None:
                viewer.close()
            worker.close()
        if not costs:
            raise FetalheadError(f"bench: the live worker {name} a viewer gave no score")
        measured[name] = statistics.median(costs), float(np.percentile(latencies, 99))
        if viewer is not None:
            images = viewer.images / (seconds + 3.0)
    (cost, p99), (base_cost, base_p99) = measured["with"], measured["without"]
    baseline = "the same worker without a viewer"
    return [
        Row("view", backbone, f"worker per frame, live {config.live_fps:g} fps, with `fetalhead view` + a browser",
            cost * 1e3, "ms", base_cost * 1e3, baseline, "<= 1.05"),
        Row("view", backbone, "live p99 latency with `fetalhead view` + a browser", p99 * 1e3, "ms",
            base_p99 * 1e3, baseline, ""),
        Row("view", backbone, "images the browser got", images, "images/s"),
    ]


SALIENCY_EVERY = 10
# Frames left out at the start of each block of the saliency bench.
SALIENCY_SETTLE = 2


def bench_saliency(backbone: str, config: BenchConfig, frames: list[np.ndarray], model: Path) -> list[Row]:
    """The lossless worker's per-frame cost with ``--saliency best`` and ``every 10`` against ``off``.

    The three workers run side by side and take turns in blocks of
    ``config.frames`` frames, in the order off, best, every, every, best, off,
    so that a machine that slows or speeds up over the run weighs on
    all three alike. Each block is the highest-scoring frame, then the
    lowest, for half a block each, and the bundle's threshold lies halfway
    between their scores, so that ``best`` finds a head episode in each
    block and explains its best frame. The first frames of each block are
    left out: the heat map of a block's last frame may still be computing.
    """
    from models.bundle import load as load_bundle, save
    from stream import protocol

    loaded = load_bundle(model)
    runtime = loaded.runtime()
    window = loaded.config.window
    # A frame's score once the window is full of it: random weights score every frame alike, only nearly.
    steady = [float(runtime.scan_scores(runtime.frame_features([frame] * window))[-1]) for frame in frames]
    high, low = frames[int(np.argmax(steady))], frames[int(np.argmin(steady))]
    model = save(model.with_name(f"{model.stem}-saliency.fhb"), loaded.config, runtime.extractor, runtime.head,
                 threshold=(max(steady) + min(steady)) / 2)
    modes = ("off", "best", f"every {SALIENCY_EVERY}")
    workers = {}
    costs: dict[str, list[float]] = {mode: [] for mode in modes}
    seqs = dict.fromkeys(modes, 0)
    try:
        for mode in modes:
            workers[mode] = WorkerProcess(model, "lossless", "--saliency", mode)
        for block in range(6):
            mode = (modes + modes[::-1])[block]
            worker = workers[mode]
            for i in range(config.frames):
                seq = seqs[mode]
                image = high if i < config.frames // 2 else low
                frame = protocol.frame_message("bench", seq, image, t_capture=time.time())
                seqs[mode] += 1
                worker.frames.send(protocol.encode(frame))
                got = worker.scores_of(1, 60)
                if not got:
                    raise FetalheadError(f"bench: the worker with --saliency {mode} gave no score")
                if i >= SALIENCY_SETTLE:
                    costs[mode].append(got[0].t_scored - got[0].t_received)
        # The heat maps of the last frames, to count them.
        for mode in modes[1:]:
            workers[mode].scores_of(1, 2)
    finally:
        for worker in workers.values():
            worker.close()
    base = statistics.median(costs["off"]) * 1e3
    baseline = "the same worker with --saliency off, in turns with it"
    rows = []
    for mode in modes[1:]:
        rows += [Row("saliency", backbone, f"worker per frame with --saliency {mode}",
                     statistics.median(costs[mode]) * 1e3, "ms", base, baseline, "<= 1.05"),
                 Row("saliency", backbone, f"heat maps published with --saliency {mode}",
                     workers[mode].heat_maps, f"of {seqs[mode]} frames")]
    return rows


SCALEOUT_PROBES = 8
SCALEOUT_WORKERS = 2


def bench_scaleout(backbone: str, config: BenchConfig, frames: list[np.ndarray], model: Path) -> list[Row]:
    """8 live probes at ``live_fps`` over 2 ``fetalhead worker`` processes (``--shard 0/2``, ``1/2``) behind a
    ``fetalhead hub``: each stream's p99 latency against one frame period (under it, a stream is kept up
    with), its drops, and each worker's memory at the end against its start."""
    import cv2
    import zmq

    from stream import net, protocol

    size = config.image_size
    # Frames of the model's input size: the hub sends every stream to both workers, so raw
    # camera frames would measure this machine's memory bandwidth, not the workers.
    images = [cv2.resize(frame, (size, size)) for frame in frames]
    streams = [f"probe{i}" for i in range(SCALEOUT_PROBES)]
    captures = [net.free_tcp_address() for _ in streams]
    hub_frames, hub_scores = net.free_tcp_address(), net.free_tcp_address()
    worker_scores = [net.free_tcp_address() for _ in range(SCALEOUT_WORKERS)]
    pubs = [net.socket(zmq.PUB, bind=addr, hwm=4) for addr in captures]
    children: list[subprocess.Popen] = []
    sent = {stream: [] for stream in streams}  # t_capture of each frame sent while measuring
    scores: dict[str, list] = {stream: [] for stream in streams}
    done = threading.Event()

    def probe(stream: str, pub: Any, measure_from: float) -> None:
        seq, next_at = 0, time.monotonic()
        while not done.is_set():
            t = time.time()
            pub.send(protocol.encode(protocol.frame_message(stream, seq, images[seq % len(images)], t_capture=t)))
            if t >= measure_from:
                sent[stream].append(t)
            seq += 1
            next_at += 1.0 / config.live_fps
            time.sleep(max(0.0, next_at - time.monotonic()))

    try:
        children.append(subprocess.Popen(
            subcommand("hub", "--captures", ",".join(captures), "--frames", hub_frames,
                       "--workers", ",".join(worker_scores), "--scores", hub_scores),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for i, addr in enumerate(worker_scores):
            children.append(subprocess.Popen(
                subcommand("worker", "--model", str(model), "--sub", hub_frames, "--pub", addr,
                           "--shard", f"{i}/{SCALEOUT_WORKERS}", "--heartbeat", "0.5"),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        with net.Subscriber(hub_scores) as sub:
            # Both workers ready, heard through the hub: the model is warm and the subscriptions are up end to end.
            ready: set[str] = set()
            deadline = time.monotonic() + 600
            while len(ready) < SCALEOUT_WORKERS and time.monotonic() < deadline:
                ready |= {m.stream for m in sub.receive(1.0)
                          if isinstance(m, protocol.Heartbeat) and m.role == "worker" and not m.loading}
                ended = [child for child in children if child.poll() is not None]
                if ended:
                    why = ended[0].stderr.read().strip().splitlines()
                    raise FetalheadError(f"bench: fetalhead {ended[0].args[3]} ended{': ' + why[-1] if why else ''}")
            if len(ready) < SCALEOUT_WORKERS:
                raise FetalheadError(f"bench: {len(ready)} of {SCALEOUT_WORKERS} workers ready through the hub")
            warm_s = 3.0
            measure_from = time.time() + warm_s
            feeders = [threading.Thread(target=probe, args=(s, p, measure_from), daemon=True)
                       for s, p in zip(streams, pubs)]
            for feeder in feeders:
                feeder.start()
            time.sleep(warm_s)
            rss_start = [(rss_bytes(child.pid) or math.nan) / 2**20 for child in children[1:]]
            measure_to = measure_from + config.live_seconds
            # A second's grace after the last frame for the scores still on their way.
            while time.time() < measure_to + 1.0:
                if time.time() >= measure_to:
                    done.set()
                for m in sub.receive(0.2):
                    measured = measure_from <= getattr(m, "t_capture", 0.0) < measure_to
                    if isinstance(m, protocol.Score) and m.stream in scores and measured:
                        scores[m.stream].append(m)
            rss_end = [(rss_bytes(child.pid) or math.nan) / 2**20 for child in children[1:]]
            for feeder in feeders:
                feeder.join(5)
    finally:
        done.set()
        for child in reversed(children):
            _end(child)
        for pub in pubs:
            pub.close(linger=0)

    period_ms = 1e3 / config.live_fps
    what = f"{SCALEOUT_PROBES} probes x {config.live_fps:g} fps over {SCALEOUT_WORKERS} workers + hub"
    rows = []
    for stream in streams:
        if not scores[stream]:
            raise FetalheadError(f"bench: stream {stream} got no score through the hub")
        p99 = float(np.percentile([s.latency for s in scores[stream]], 99)) * 1e3
        rows.append(Row("scaleout", backbone, f"{stream} live p99 latency, {what}", p99, "ms", period_ms,
                        "one frame period", "<= 1"))
    for stream in streams:
        offered = sum(1 for t in sent[stream] if t < measure_to)
        rows.append(Row("scaleout", backbone, f"{stream} frames dropped, {what}",
                        100.0 * (offered - len(scores[stream])) / max(offered, 1), "%"))
    for i, (start, end) in enumerate(zip(rss_start, rss_end)):
        rows.append(Row("scaleout", backbone, f"worker {i}/{SCALEOUT_WORKERS} memory at end, {what}", end, "MiB",
                        start, "memory at start", "~1"))
    return rows


def import_seconds() -> float:
    """What a fresh Python process spends importing TensorFlow and Keras here."""
    code = "import time; t = time.perf_counter(); import keras, tensorflow; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_training(backbone: str, bundle, config: BenchConfig, folder: Path) -> list[Row]:
    """The real k-fold run on a small synthetic dataset, against one backbone pass and against the seed's way.

    Method: ``train.kfold.train`` runs 5 folds, the defaults' bundle of their heads (early
    stopping off, so all of them train every epoch) for 3 epochs on
    features already in the cache; the run's time plus 47 more epochs at
    its measured epoch time (the median of epochs 2 and 3, from the
    history's ``seconds``; the first holds the compile) is the 50-epoch run. The one
    backbone pass is the cache being filled from the same frames. The seed's
    way (the backbone inside every training step) is the end-to-end model's
    training step, measured, times the steps of the same run. XLA is set as
    ``--xla auto`` would set it for the seed's dataset (``dataset_frames``)
    unless ``train_xla`` says otherwise.
    """
    import keras

    from models.cnn_lstm import build_cnn_lstm, build_temporal_head
    from models.config import ModelConfig
    from train.cache import FeatureCache
    from train.config import TrainConfig
    from train.data import load_dataset
    from train.kfold import train
    from train.synth import SynthConfig, synth_dataset
    from train.trainer import compile_with_xla, focal_loss, read_history

    weights = folder / f"{backbone}.weights.h5"
    bundle.extractor.save_weights(weights)
    model_config = ModelConfig(backbone=backbone, weights=str(weights), image_size=config.image_size)
    data = folder / f"{backbone}-scans"
    synth_dataset(data, SynthConfig(scans=config.train_scans, frames=config.train_frames,
                                    height=config.frame_height, width=config.frame_width))
    scans = load_dataset(data, window=model_config.window)
    frames = sum(len(s) for s in scans)
    cache = folder / f"{backbone}-cache"
    runtime = bundle.runtime()
    start = time.perf_counter()
    FeatureCache(runtime, cache).extract(scans)
    one_pass = time.perf_counter() - start

    xla = config.train_xla
    if xla == "auto":
        # A fold's windows (about 4/5 of one a frame at stride 1) set a pack's epoch.
        full_size = math.ceil(0.8 * config.dataset_frames / TrainConfig().batch_size) * TrainConfig().epochs
        xla = "on" if compile_with_xla(TrainConfig(), 5, full_size) else "off"
    epochs = 3
    train_config = TrainConfig(epochs=epochs, early_stopping=False, cache_dir=str(cache), xla=xla)
    start = time.perf_counter()
    run = train(data, folder / f"{backbone}-run", model_config, train_config)
    elapsed = time.perf_counter() - start
    # The folds train as one pack: every fold's history logs the pack's epoch time.
    seconds = read_history(Path(run["run"]) / "folds" / "fold_0" / "history.csv")["seconds"]
    per_epoch = float(seconds.iloc[1:].median())
    kfold = one_pass + elapsed + (50 - epochs) * per_epoch

    # The seed's way: every step runs the backbone over the batch's 8 x 8 frames.
    train_config = TrainConfig()
    window, batch = model_config.window, train_config.batch_size
    model = build_cnn_lstm(model_config, runtime.extractor, build_temporal_head(model_config, runtime.feature_dim))
    model.compile(optimizer=keras.optimizers.Adam(train_config.learning_rate), loss=focal_loss(train_config))
    rng = np.random.default_rng(0)
    size = model_config.image_size
    images = rng.normal(size=(batch, window, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, (batch, window)).astype(np.float32)
    in_loop_step = timed(lambda: model.train_on_batch(images, labels), 2 if backbone == "vgg19" else 3)
    # 5 folds on 4/5 of the windows each; the bundle is their heads (docs/calibration.md), no final model.
    windows = sum(max(len(s) - window + 1, 0) for s in scans)
    seed_way = 50 * 5 * 0.8 * windows / batch * in_loop_step

    scale = config.dataset_frames / frames
    # What grows with the frames grows by ``scale``; the compile and set-up do not.
    fixed = elapsed - epochs * per_epoch
    kfold_full = (one_pass + 50 * per_epoch) * scale + fixed
    method = f"{frames} frames, 3 epochs measured, scaled to 50"
    return [
        Row("training", backbone, "feature extraction (one backbone pass)", frames / one_pass, "frames/s"),
        Row("training", backbone, f"k-fold + final, per epoch, {frames} frames (XLA {xla})", per_epoch, "s"),
        Row("training", backbone, f"k-fold run, 5 folds x 50 epochs + final ({method})", kfold, "s",
            one_pass, "one backbone pass over the same frames", "<= 2"),
        Row("training", backbone, f"k-fold run, 5 folds x 50 epochs + final ({method})", kfold, "s",
            seed_way, "backbone inside every step (seed's way)", "<= 1/100"),
        Row("training", backbone, f"k-fold run scaled to {config.dataset_frames} frames", kfold_full / 3600, "h",
            one_pass * scale / 3600, "one backbone pass over them", "<= 2"),
    ]


def bench_export(backbone: str, bundle, frames: list[np.ndarray], folder: Path) -> list[Row]:
    import onnxruntime

    from models.export import export
    from models.preprocess import preprocess_batch

    extractor_path, head_path = export(bundle, folder / f"{backbone}.onnx", pieces=True)
    # onnxruntime's CPU provider, as a device without an accelerator runs it; TensorFlow has the same cores.
    extractor = onnxruntime.InferenceSession(str(extractor_path), providers=["CPUExecutionProvider"])
    head = onnxruntime.InferenceSession(str(head_path), providers=["CPUExecutionProvider"])
    runtime = bundle.runtime()
    runtime.warm_up()
    images = preprocess_batch(frames, bundle.config)
    window = bundle.config.window
    features = runtime.features(images)
    repeats = 3 if backbone == "vgg19" else 10

    def measure(extract: Callable[[int], Any], score: Callable[[int], Any]) -> tuple[float, float, float]:
        """Seconds of (one frame, the extractor alone, the head alone); frame i's window ends at i."""
        # Each timed frame takes the run's next full window: both paths see the same frames.
        positions = iter(range(window - 1, len(images)))

        def frame() -> None:
            i = next(positions)
            extract(i)
            score(i)

        return (timed(frame, min(repeats, len(images) - window)), timed(lambda: extract(0), repeats),
                timed(lambda: score(window - 1), repeats))

    keras_s = measure(lambda i: runtime.features(images[i:i + 1]),
                      lambda i: runtime.score_newest([features[i + 1 - window:i + 1]]))
    onnx_s = measure(lambda i: extractor.run(["features"], {"frames": images[i:i + 1]}),
                     lambda i: head.run(["scores"], {"features": features[None, i + 1 - window:i + 1]}))
    baseline = "Keras compiled path (models.runtime)"
    return [
        Row("export", backbone, "one frame, onnxruntime CPU (extractor + head)", onnx_s[0] * 1e3, "ms",
            keras_s[0] * 1e3, baseline),
        Row("export", backbone, "extractor, one frame, onnxruntime CPU", onnx_s[1] * 1e3, "ms",
            keras_s[1] * 1e3, baseline),
        Row("export", backbone, f"head, one {window}-frame window, onnxruntime CPU", onnx_s[2] * 1e3, "ms",
            keras_s[2] * 1e3, baseline),
    ]


def bench(config: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> list[Row]:
    import tempfile

    rows: list[Row] = []
    frames = synthetic_frames(config, config.frames)

    def repeated(what: str, measure: Callable[[], list[Row]]) -> list[Row]:
        runs = []
        for i in range(config.repeats):
            progress(what if config.repeats == 1 else f"{what} (run {i + 1} of {config.repeats})")
            runs.append(measure())
        return combine(runs)

    with tempfile.TemporaryDirectory() as tmp:
        for backbone in config.backbones:
            progress(f"{backbone}: building")
            bundle = make_bundle(backbone, config, Path(tmp))
            if "backbones" in config.sections:
                rows += repeated(f"{backbone}: compiled path against model.predict",
                                 lambda: bench_backbone(backbone, bundle, config))
            if "stream" in config.sections:
                rows += repeated(f"{backbone}: streaming",
                                 lambda: _stream_rows(backbone, config, frames, Path(tmp) / f"{backbone}.fhb"))
            if "view" in config.sections:
                rows += repeated(f"{backbone}: live worker with and without the web view",
                                 lambda: bench_view(backbone, config, frames, Path(tmp) / f"{backbone}.fhb"))
            if "training" in config.sections:
                # A folder per run: a second run in the first's would find its features cached and folds done.
                rows += repeated(f"{backbone}: training",
                                 lambda: bench_training(backbone, bundle, config, Path(tempfile.mkdtemp(dir=tmp))))
            if "export" in config.sections:
                rows += repeated(f"{backbone}: onnxruntime against the Keras compiled path",
                                 lambda: bench_export(backbone, bundle, frames, Path(tempfile.mkdtemp(dir=tmp))))
            if "saliency" in config.sections:
                rows += repeated(f"{backbone}: worker with and without saliency",
                                 lambda: bench_saliency(backbone, config, frames, Path(tmp) / f"{backbone}.fhb"))
            if "heads" in config.sections:
                rows += repeated(f"{backbone}: {ENSEMBLE_HEADS} fold heads against one",
                                 lambda: bench_heads(backbone, bundle, config))
            if "scaleout" in config.sections:
                rows += repeated(f"{backbone}: {SCALEOUT_PROBES} live probes over {SCALEOUT_WORKERS} workers and a hub",
                                 lambda: bench_scaleout(backbone, config, frames, Path(tmp) / f"{backbone}.fhb"))
    return rows


def write_json(rows: Sequence[Row], path: str | Path) -> None:
    """The rows as JSON, each with its ratio and the range of its runs' ratios."""
    Path(path).write_text(json.dumps(
        [{**dataclasses.asdict(r), "ratio": r.ratio, "ratio_min": r.ratio_min, "ratio_max": r.ratio_max}
         for r in rows], indent=2))
