"""``fetalhead bench``: every speed figure as a ratio against a baseline measured in the same run.

Absolute times differ between machines; ratios measured side by side hold.
Sections (``--sections``):

- ``backbones``: one frame through the compiled path (``predict_on_batch``)
  against ``model.predict``, per backbone.
- ``stream``: the worker's per-frame cost (frame sent -> score received, over
  real ZeroMQ sockets, one frame at a time) against one bare compiled
  backbone forward; the rolling feature buffer against re-running the
  8-frame window through the end-to-end model; lossless replay throughput
  against offline batched scoring of the same frames; live-mode p50/p99
  latency with a 30 fps source, against one frame's compute, and memory.
- ``training``: one epoch of the head on cached features against the same
  epoch with the backbone inside (the seed's way; a few steps measured and
  scaled to the epoch); feature extraction frames per second; and the full
  k-fold run estimated from those figures against one backbone pass.

Random weights everywhere: the compute is that of the real weights.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from models.config import check, load
from tools.cli import parser as make_parser, run

SECTIONS = ("backbones", "stream", "training")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    backbones: tuple[str, ...] = ("vgg19", "mobilenetv2")
    sections: tuple[str, ...] = SECTIONS
    image_size: int = 224
    frames: int = 24
    live_seconds: float = 8.0
    live_fps: float = 30.0
    frame_height: int = 480
    frame_width: int = 640
    dataset_frames: int = 24036
    json: str = ""

    def __post_init__(self) -> None:
        from models.config import BACKBONES

        for name in self.backbones:
            check(name in BACKBONES, f"backbones: {name!r} is not one of {', '.join(BACKBONES)}")
        for name in self.sections:
            check(name in SECTIONS, f"sections: {name!r} is not one of {', '.join(SECTIONS)}")
        check(self.frames >= 9, f"frames: must be >= 9, got {self.frames}")
        check(self.live_fps > 0, f"live_fps: must be > 0, got {self.live_fps}")


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

    @property
    def ratio(self) -> float | None:
        return None if self.baseline in (None, 0) else self.value / self.baseline


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


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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


def _stream_rows(backbone: str, bundle, config: BenchConfig, frames: list[np.ndarray]) -> list[Row]:
    import zmq

    from models.cnn_lstm import build_cnn_lstm
    from stream import net, protocol
    from stream.worker import WorkerConfig, serve

    runtime = bundle.runtime()
    runtime.warm_up()
    rows = []
    one = runtime.preprocess(frames[0])[None]
    bare = timed(lambda: runtime.extractor.predict_on_batch(one), 3 if backbone == "vgg19" else 10)

    # Rolling buffer: one backbone pass and the head per frame, against the
    # whole 8-frame window through the end-to-end model per frame.
    window = runtime.config.window
    features = runtime.features(np.repeat(one, window, axis=0))
    end_to_end = build_cnn_lstm(runtime.config, runtime.extractor, runtime.head)
    clip = np.repeat(one[None], window, axis=1)
    rolling = timed(lambda: (runtime.extractor.predict_on_batch(one), runtime.score_windows(features[None])), 3)
    full = timed(lambda: end_to_end.predict_on_batch(clip), 2)
    rows.append(Row("stream", backbone, "per frame, rolling feature buffer", rolling * 1e3, "ms", full * 1e3,
                    "8-frame window through the whole model", "<= 1/7"))

    def worker(mode: str, max_frames: int | None = None):
        frames_addr, scores_addr = net.free_tcp_address(), net.free_tcp_address()
        stop = threading.Event()
        worker_config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode=mode, heartbeat_s=0.5)
        thread = threading.Thread(target=serve, args=(bundle, worker_config, stop), daemon=True)
        return frames_addr, scores_addr, stop, thread

    def wait_ready(sub) -> None:
        """Until the worker's first heartbeat: scores sent before it would reach no one."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            data = net.recv(sub, 1.0)
            if data is not None and isinstance(protocol.decode(data), protocol.Heartbeat):
                return
        raise RuntimeError("the worker did not start")

    def scores_of(sub, n: int, timeout: float) -> list[protocol.Score]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            data = net.recv(sub, 1.0)
            if data is None:
                continue
            message = protocol.decode(data)
            if isinstance(message, protocol.Score):
                out.append(message)
        return out

    encoded = [protocol.encode(protocol.frame_message("replay", i, f, t_capture=time.time()))
               for i, f in enumerate(frames)]

    # Per-frame cost through the real worker: one frame in flight at a time.
    frames_addr, scores_addr, stop, thread = worker("lossless")
    with net.socket(zmq.PUSH, bind=frames_addr, hwm=64) as push, \
            net.socket(zmq.SUB, connect=scores_addr, subscribe=[b""]) as sub:
        thread.start()
        wait_ready(sub)
        # Warm the worker's paths (and wait for it to have loaded) before timing.
        for i in range(window + 1):
            push.send(protocol.encode(protocol.frame_message("warm", i, frames[i], t_capture=time.time())))
            if not scores_of(sub, 1, 600):
                raise RuntimeError("worker gave no score")
        times = []
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            push.send(protocol.encode(protocol.frame_message("bench", i, frame, t_capture=time.time())))
            if not scores_of(sub, 1, 60):
                raise RuntimeError("worker gave no score")
            times.append(time.perf_counter() - start)
        per_frame = statistics.median(times[window:])
        rows.append(Row("stream", backbone, "worker per frame (received -> published)", per_frame * 1e3, "ms",
                        bare * 1e3, "bare compiled backbone forward", "<= 1.10"))

        # Lossless replay: every frame pushed as fast as backpressure allows.
        start = time.perf_counter()
        sender = threading.Thread(target=lambda: [push.send(m) for m in encoded], daemon=True)
        sender.start()
        got = scores_of(sub, len(encoded), 600)
        replay = len(got) / (time.perf_counter() - start)
        sender.join(5)
        stop.set()
        thread.join(30)
    offline_start = time.perf_counter()
    offline_features = runtime.frame_features(frames)
    runtime.scan_scores(offline_features)
    offline = len(frames) / (time.perf_counter() - offline_start)
    rows.append(Row("stream", backbone, "lossless replay throughput", replay, "frames/s", offline,
                    "offline batched scoring, one process", ">= 0.9"))

    # Live mode: a 30 fps source, the worker keeping only the newest frame.
    frames_addr, scores_addr, stop, thread = worker("live")
    latencies = []
    with net.socket(zmq.PUB, bind=frames_addr) as pub, \
            net.socket(zmq.SUB, connect=scores_addr, subscribe=[b""]) as sub:
        thread.start()
        wait_ready(sub)
        done = threading.Event()

        def source() -> None:
            seq = 0
            next_at = time.monotonic()
            while not done.is_set():
                pub.send(protocol.encode(protocol.frame_message("live", seq, frames[seq % len(frames)],
                                                                t_capture=time.time())))
                seq += 1
                next_at += 1.0 / config.live_fps
                time.sleep(max(0.0, next_at - time.monotonic()))

        feeder = threading.Thread(target=source, daemon=True)
        feeder.start()
        warm_until = time.monotonic() + max(2.0, 3 * bare)
        memory_start = None
        end = warm_until + config.live_seconds
        while time.monotonic() < end:
            for score in scores_of(sub, 1, 1.0):
                if time.monotonic() > warm_until:
                    memory_start = memory_start or rss_mib()
                    latencies.append(score.latency)
        memory_end = rss_mib()
        done.set()
        feeder.join(5)
        stop.set()
        thread.join(30)
    compute = bare + (rolling - bare if rolling > bare else 0.0)
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        rows.append(Row("stream", backbone, f"live p50 latency at {config.live_fps:g} fps", p50 * 1e3, "ms",
                        compute * 1e3, "one frame's compute", ""))
        rows.append(Row("stream", backbone, f"live p99 latency at {config.live_fps:g} fps", p99 * 1e3, "ms",
                        compute * 1e3, "one frame's compute", "<= 2"))
        rows.append(Row("stream", backbone, "live memory at end", memory_end, "MiB", memory_start,
                        "memory at start", "~1"))
    return rows


def bench_training(backbone: str, bundle, config: BenchConfig) -> list[Row]:
    import keras

    from models.cnn_lstm import build_cnn_lstm, build_feature_extractor, build_temporal_head
    from train.config import TrainConfig
    from train.trainer import focal_loss

    model_config = bundle.config
    train_config = TrainConfig()
    window, batch = model_config.window, train_config.batch_size
    rng = np.random.default_rng(0)
    runtime = bundle.runtime()
    steps = 64
    features = rng.normal(size=(steps * batch, window, runtime.feature_dim)).astype(np.float32)
    labels = rng.integers(0, 2, (steps * batch, window)).astype(np.float32)
    head = build_temporal_head(model_config, runtime.feature_dim)
    head.compile(optimizer=keras.optimizers.Adam(train_config.learning_rate), loss=focal_loss(train_config))
    head.fit(features, labels, batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    head.fit(features, labels, batch_size=batch, epochs=1, verbose=0)
    cached_step = (time.perf_counter() - start) / steps

    extractor = build_feature_extractor(model_config, weights="none")
    model = build_cnn_lstm(model_config, extractor, build_temporal_head(model_config, runtime.feature_dim))
    model.compile(optimizer=keras.optimizers.Adam(train_config.learning_rate), loss=focal_loss(train_config))
    size = model_config.image_size
    images = rng.normal(size=(batch, window, size, size, 3)).astype(np.float32)
    in_loop_step = timed(lambda: model.train_on_batch(images, labels[:batch]), 2 if backbone == "vgg19" else 3)

    frames = rng.normal(size=(32, size, size, 3)).astype(np.float32)
    extract = timed(lambda: runtime.features(frames), 1 if backbone == "vgg19" else 3)
    fps = len(frames) / extract
    rows = [
        Row("training", backbone, "head epoch step on cached features", cached_step * 1e3, "ms/step",
            in_loop_step * 1e3, "same step with the backbone inside (seed's way)", "<= 1/100"),
        Row("training", backbone, "feature extraction", fps, "frames/s"),
    ]
    # The full run for a dataset of N frames, windows at stride 1 (about N per
    # epoch), 5 folds training on 4/5 of them, 50 epochs, plus the final model
    # on all: one backbone pass plus head steps, against that one pass.
    n = config.dataset_frames
    one_pass = n / fps
    head_steps = (5 * 50 * 0.8 * n + 50 * n) / batch
    total = one_pass + head_steps * cached_step
    seed_way = head_steps * in_loop_step
    rows.append(Row("training", backbone, f"k-fold run, {n} frames (estimated)", total / 3600, "h",
                    one_pass / 3600, "one backbone pass over the frames", "<= 2"))
    rows.append(Row("training", backbone, f"k-fold run, {n} frames (estimated)", total / 3600, "h",
                    seed_way / 3600, "backbone inside every epoch (seed's way)", "<= 1/100"))
    return rows


def bench(config: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> list[Row]:
    import tempfile

    rows: list[Row] = []
    frames = synthetic_frames(config, config.frames)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in config.backbones:
            progress(f"{backbone}: building")
            bundle = make_bundle(backbone, config, Path(tmp))
            if "backbones" in config.sections:
                progress(f"{backbone}: compiled path against model.predict")
                rows += bench_backbone(backbone, bundle, config)
            if "stream" in config.sections:
                progress(f"{backbone}: streaming")
                rows += _stream_rows(backbone, bundle, config, frames)
            if "training" in config.sections:
                progress(f"{backbone}: training")
                rows += bench_training(backbone, bundle, config)
    return rows


def print_table(rows: Sequence[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fetalhead bench (ratios are value / baseline, measured in the same run)")
    for column in ("section", "backbone", "figure", "value", "baseline", "ratio", "target"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for row in rows:
        baseline = "" if row.baseline is None else f"{row.baseline:.4g} {row.unit} ({row.baseline_name})"
        ratio = "" if row.ratio is None else f"{row.ratio:.3g}"
        table.add_row(row.section, row.backbone, row.figure, f"{row.value:.4g} {row.unit}", baseline, ratio,
                      row.target)
    # Wide enough for the table when piped to a file or a CI log.
    Console(width=200).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("bench", "Speed figures as ratios against baselines measured in the same run.")
    p.add_argument("--backbones", help="comma-separated (default vgg19,mobilenetv2)")
    p.add_argument("--sections", help=f"comma-separated of {', '.join(SECTIONS)} (default all)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--frames", type=int, help="frames per streaming measurement (default 24)")
    p.add_argument("--live-seconds", type=float)
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--config", help="TOML file with a [bench] table")
    args = p.parse_args(argv)
    overrides = {"backbones": args.backbones, "sections": args.sections, "image_size": args.image_size,
                 "frames": args.frames, "live_seconds": args.live_seconds, "json": args.json}

    def work() -> int:
        from rich.console import Console

        config = load(BenchConfig, "bench", args.config, overrides)
        console = Console(stderr=True)
        rows = bench(config, progress=lambda s: console.log(s))
        print_table(rows)
        if config.json:
            Path(config.json).write_text(json.dumps(
                [{**dataclasses.asdict(r), "ratio": r.ratio} for r in rows], indent=2))
        return 0

    return run(work, verbose=args.verbose)
