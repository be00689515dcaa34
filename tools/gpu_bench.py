"""Lossless replay throughput and live per-frame latency of the real model on one accelerator.

Measures, for each precision asked for (float32, mixed_float16, mixed_bfloat16):

- lossless replay: a backlog of ``--frames`` frames through the extractor in
  batches of each ``--batches`` size, then the streaming-equivalent per-frame
  scores (``models.scoring.streaming_scores``) with the head; end to end from
  host memory to scores in host memory, after a warm-up call per batch shape
  (its time, mostly compilation, is reported apart); ``--repeats`` passes per
  batch size, their median and range reported. Target: >= 1,000 frames/s.
- live: one frame at a time, the extractor at batch 1 then the head over the
  last 8 feature vectors (``models.windows.RollingWindow``, padded to 8 as the
  worker does: ``models.scoring.newest_scores``); p50 and p99 over
  ``--live-frames`` frames after a warm-up. Target: p99 <= 10 ms.
- how far each mixed-precision model's scores are from float32's on the same
  frames and weights, and how far the live scores are from the replay scores.

Inputs are random already-preprocessed float32 (N, S, S, 3) frames in host
memory: preprocessing runs on the CPU in the worker and is not measured here.
Weights are random: the compute is that of the real weights.

Only numpy, Keras and ``models.config``, ``models.cnn_lstm``,
``models.scoring`` and ``models.windows`` are imported, so a GPU machine with JAX (or PyTorch) and no
TensorFlow, and no internet, runs it with a few wheels carried along. The
backend is ``KERAS_BACKEND``, JAX when that is unset. Python >= 3.11
(``models.settings`` reads TOML with ``tomllib``).

On a machine with internet, fetch the wheels into the ignored folder ``.wheels/``
(about 6.5 MB). Keras imports absl-py, rich and packaging; under JAX it needs
optree (compiled, with typing_extensions); under PyTorch, ml_dtypes (compiled;
JAX brings its own)::

    pip download keras==3.15.1 absl-py rich packaging typing_extensions --no-deps -d .wheels
    for v in 3.11 3.12 3.13 3.14; do for p in optree==0.20.0 ml_dtypes==0.6.0; do
        pip download $p --no-deps --only-binary=:all: --python-version $v \\
            --platform manylinux_2_28_x86_64 -d .wheels; done; done

(``manylinux_2_28_aarch64`` for an ARM host.) On the GPU machine, from the
repository root with ``.wheels`` carried along, into a folder of its own so that
nothing installed there changes::

    python3 -m pip install -q --no-deps --no-index --find-links .wheels --target /tmp/k \\
        keras absl-py rich packaging typing_extensions optree
    python3 -c 'import ml_dtypes' 2>/dev/null || python3 -m pip install -q --no-deps --no-index \\
        --find-links .wheels --target /tmp/k ml_dtypes
    PYTHONPATH=/tmp/k KERAS_BACKEND=jax python3 tools/gpu_bench.py --json $OUT/gpu.json

Without pip, ``python3 -m zipfile -e WHEEL /tmp/k`` unpacks each wheel (for the
compiled ones, the ``cpXY`` of that Python).

Small CPU check (any backend)::

    python tools/gpu_bench.py --backbone tiny --image-size 64 --frames 64 --batches 1,8,32 --live-frames 30
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

if __name__ == "__main__":
    # Run as a script, Python puts tools/ on the path, not the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    # A GPU machine often has JAX and no TensorFlow (Keras's own default);
    # a backend the user chose is kept.
    os.environ.setdefault("KERAS_BACKEND", "jax")

# Keras reads KERAS_BACKEND once, at import: these come after it is settled.
try:
    import keras
except ImportError as exc:
    if __name__ != "__main__":
        raise
    sys.exit(f"gpu_bench.py: error: Keras with backend {os.environ['KERAS_BACKEND']!r} cannot be imported "
             f"({exc}); install it or set KERAS_BACKEND to jax, torch or tensorflow")
import numpy as np  # noqa: E402

from models.cnn_lstm import build_feature_extractor, build_temporal_head  # noqa: E402
from models.config import BACKBONES, ModelConfig  # noqa: E402
from models.scoring import newest_scores, streaming_scores  # noqa: E402
from models.windows import RollingWindow  # noqa: E402

log = logging.getLogger("gpu_bench")

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
TARGET_REPLAY_FPS = 1000.0
TARGET_LIVE_P99_MS = 10.0
# Head windows per call in replay; every call is padded to it so the head
# compiles once, whatever the backlog's length.
HEAD_BATCH = 256
WINDOW = ModelConfig().window
INPUTS_NOTE = ("inputs: random preprocessed float32 frames in host memory; "
               "preprocessing (CPU side, in the worker) is not measured")


@dataclasses.dataclass(frozen=True)
class GpuBenchConfig:
    backbone: str = "vgg19"
    image_size: int = 224
    frames: int = 2048
    batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    live_frames: int = 500
    repeats: int = 3
    precisions: tuple[str, ...] = ("float32", "mixed_bfloat16")
    seconds_budget: float | None = None
    json: str = ""


@dataclasses.dataclass(frozen=True)
class ReplayRun:
    batch: int
    first_call_s: float
    repeats: int
    seconds: float  # the median pass
    frames_per_s: float  # of the median pass
    frames_per_s_min: float
    frames_per_s_max: float
    frames_scored: int


@dataclasses.dataclass(frozen=True)
class LiveRun:
    frames: int
    warmup_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclasses.dataclass(frozen=True)
class PrecisionResult:
    precision: str
    head_first_call_s: float
    replay: tuple[ReplayRun, ...]
    skipped_batches: tuple[int, ...]
    best_batch: int
    best_frames_per_s: float
    replay_meets_target: bool
    live: LiveRun
    live_meets_target: bool
    live_vs_replay_max_abs_diff: float
    max_abs_diff_vs_float32: float


@dataclasses.dataclass(frozen=True)
class Report:
    backend: str
    keras_version: str
    device: str
    host: str
    backbone: str
    image_size: int
    window: int
    frames: int
    live_frames: int
    repeats: int
    head_batch: int
    inputs: str
    target_replay_fps: float
    target_live_p99_ms: float
    results: tuple[PrecisionResult, ...]


@dataclasses.dataclass(frozen=True)
class Models:
    extractor: keras.Model
    head: keras.Model


def describe_device(backend: str) -> str:
    """The accelerator the backend computes on, in words; never raises."""
    try:
        if backend == "jax":
            import jax

            devices = jax.devices()
            return f"{len(devices)} x {devices[0].platform}: {devices[0].device_kind}"
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"{torch.cuda.device_count()} x cuda: {torch.cuda.get_device_name(0)}"
            return "cpu (torch sees no CUDA device)"
        if backend == "tensorflow":
            # Only under the TensorFlow backend, where TensorFlow is there by definition.
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"{len(gpus)} x gpu: {details.get('device_name', gpus[0].name)}"
            return "cpu (TensorFlow sees no GPU)"
    except Exception as exc:  # a broken driver must not stop the figures
        return f"unknown ({type(exc).__name__}: {exc})"
    return f"unknown (backend {backend})"


def describe_host() -> str:
    """CPU model and core count: the context of any CPU figure."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``name`` for the block, float32 after it."""
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def build_models(config: ModelConfig, weights_from: Models | None = None) -> Models:
    """Extractor and inference head under the current dtype policy, weights copied when given.

    A policy applies to layers as they are built, so each precision needs its
    own models; copying float32's weights makes their scores comparable.
    """
    extractor = build_feature_extractor(config)
    head = build_temporal_head(config, extractor.output_shape[-1], inference=True)
    if weights_from is not None:
        extractor.set_weights(weights_from.extractor.get_weights())
        head.set_weights(weights_from.head.get_weights())
    return Models(extractor, head)


def random_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """float32 (n, size, size, 3), standard normal like preprocessed frames."""
    return np.random.default_rng(seed).standard_normal((n, size, size, 3), dtype=np.float32)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with zero rows appended up to ``rows``, so a short last batch reuses the compiled shape."""
    if len(x) >= rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def predict(model: keras.Model, x: np.ndarray, rows: int) -> np.ndarray:
    """float32 outputs for ``x`` through the compiled path, padded to ``rows``, pulled to host."""
    return np.asarray(model.predict_on_batch(pad_rows(x, rows)), np.float32)[:len(x)]


def extract_features(extractor: keras.Model, frames: np.ndarray, batch: int) -> np.ndarray:
    """frames float32 (N, S, S, 3) -> features float32 (N, F), ``batch`` frames a call."""
    return np.concatenate([predict(extractor, frames[start:start + batch], batch)
                           for start in range(0, len(frames), batch)])


def replay_scores(models: Models, frames: np.ndarray, batch: int) -> np.ndarray:
    """Lossless-mode per-frame scores float32 (N,) of the backlog ``frames``."""
    features = extract_features(models.extractor, frames, batch)
    return streaming_scores(features, lambda windows: predict(models.head, windows, HEAD_BATCH), WINDOW,
                            batch_size=HEAD_BATCH)


def first_call_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def live_run(models: Models, frames: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per frame float64 (count,) and scores float32 (count,), one frame at a time.

    Frame i is ``frames[i % len(frames)]``; each is timed from the frame in
    host memory to its score in host memory, as a live worker serves it.
    """
    rolling = RollingWindow(WINDOW, models.extractor.output_shape[-1])
    seconds = np.empty(count)
    scores = np.empty(count, np.float32)
    for i in range(count):
        frame = frames[i % len(frames)][None]
        start = time.perf_counter()
        rolling.push(np.asarray(models.extractor.predict_on_batch(frame), np.float32)[0], i)
        scores[i] = newest_scores([rolling.view()], models.head.predict_on_batch, WINDOW)[0]
        seconds[i] = time.perf_counter() - start
    return seconds, scores


def measure_replay(models: Models, frames: np.ndarray, batches: Sequence[int], repeats: int,
                   seconds_budget: float | None) -> tuple[list[ReplayRun], list[int], dict[int, np.ndarray]]:
    """``repeats`` timed replays per batch size (after its warm-up) and its scores, by batch size.

    Once replay has taken ``seconds_budget``, the remaining (larger) batch sizes
    are skipped and returned as such.
    """
    started = time.perf_counter()
    runs: list[ReplayRun] = []
    scores: dict[int, np.ndarray] = {}
    for index, batch in enumerate(batches):
        # The first batch size always runs: a precision needs one replay figure.
        if index and seconds_budget is not None and time.perf_counter() - started > seconds_budget:
            return runs, list(batches[index:]), scores
        log.info("replay, batch %d", batch)
        warm = first_call_seconds(lambda: predict(models.extractor, frames[:batch], batch))
        passes = []
        for _ in range(repeats):
            start = time.perf_counter()
            scores[batch] = replay_scores(models, frames, batch)
            passes.append(time.perf_counter() - start)
        # Of two middle passes the slower: a pass that ran, and no flattering average.
        seconds = sorted(passes)[repeats // 2]
        runs.append(ReplayRun(batch, warm, repeats, seconds, len(frames) / seconds, len(frames) / max(passes),
                              len(frames) / min(passes), len(scores[batch])))
    return runs, [], scores


def measure_precision(precision: str, models: Models, frames: np.ndarray, config: GpuBenchConfig,
                      reference: np.ndarray | None) -> tuple[PrecisionResult, np.ndarray]:
    """Every figure of one precision; ``reference`` is float32's replay scores (None: these are)."""
    feature_dim = models.extractor.output_shape[-1]
    head_warm = first_call_seconds(
        lambda: predict(models.head, np.zeros((HEAD_BATCH, WINDOW, feature_dim), np.float32), HEAD_BATCH))
    runs, skipped, scores = measure_replay(models, frames, config.batches, config.repeats, config.seconds_budget)
    best = max(runs, key=lambda run: run.frames_per_s)
    replay = scores[best.batch]

    log.info("live, %d frames", config.live_frames)
    # The head's one live shape (a window padded to 8) compiles here, not in the timed run.
    live_warm = first_call_seconds(lambda: live_run(models, frames, WINDOW + 2))
    seconds, live_scores = live_run(models, frames, config.live_frames)
    p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
    live = LiveRun(config.live_frames, live_warm, float(p50), float(p99), float(seconds.max() * 1e3))
    shared = min(len(frames), config.live_frames)
    result = PrecisionResult(
        precision=precision,
        head_first_call_s=head_warm,
        replay=tuple(runs),
        skipped_batches=tuple(skipped),
        best_batch=best.batch,
        best_frames_per_s=best.frames_per_s,
        replay_meets_target=best.frames_per_s >= TARGET_REPLAY_FPS,
        live=live,
        live_meets_target=live.p99_ms <= TARGET_LIVE_P99_MS,
        live_vs_replay_max_abs_diff=float(np.max(np.abs(live_scores[:shared] - replay[:shared]))),
        max_abs_diff_vs_float32=0.0 if reference is None else float(np.max(np.abs(replay - reference))),
    )
    return result, replay


def run_bench(config: GpuBenchConfig) -> Report:
    """Build the model, measure every precision in ``config``, float32 first."""
    backend = keras.backend.backend()
    # The same random weights every run, so score differences repeat between runs and machines.
    keras.utils.set_random_seed(0)
    model_config = ModelConfig(backbone=config.backbone, weights="none", image_size=config.image_size)
    frames = random_frames(config.frames, config.image_size)
    with precision_policy("float32"):
        float32_models = build_models(model_config)
    reference: np.ndarray | None = None
    results = []
    for precision in sorted(config.precisions, key=lambda p: p != "float32"):
        log.info("%s: building and measuring", precision)
        if precision == "float32":
            result, reference = measure_precision(precision, float32_models, frames, config, None)
        else:
            if reference is None:
                reference = replay_scores(float32_models, frames, max(config.batches))
            # Layers take the policy when built; the built models keep it after the block.
            with precision_policy(precision):
                models = build_models(model_config, weights_from=float32_models)
            result, _ = measure_precision(precision, models, frames, config, reference)
        results.append(result)
    return Report(backend=backend, keras_version=keras.__version__, device=describe_device(backend),
                  host=describe_host(), backbone=config.backbone, image_size=config.image_size, window=WINDOW,
                  frames=config.frames, live_frames=config.live_frames, repeats=config.repeats, head_batch=HEAD_BATCH,
                  inputs=INPUTS_NOTE, target_replay_fps=TARGET_REPLAY_FPS, target_live_p99_ms=TARGET_LIVE_P99_MS,
                  results=tuple(results))


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def format_report(report: Report) -> str:
    """The report as a plain-text table (no rich: the GPU machine may lack it)."""
    lines = [
        f"fetalhead GPU bench: {report.backbone} at {report.image_size}x{report.image_size}, "
        f"backend {report.backend}, keras {report.keras_version}",
        f"device: {report.device}",
        f"host: {report.host}",
        report.inputs,
        "",
        f"lossless replay, {report.frames} frames: extractor in batches, head over {report.window}-frame "
        f"windows {report.head_batch} at a time; host memory to scores in host memory; "
        f"the median of {report.repeats} passes, and their range",
        f"{'precision':<16}{'batch':>6}{'warm-up s':>11}{'seconds':>10}{'frames/s':>11}{'range':>18}{'scored':>8}",
    ]
    for result in report.results:
        for run in result.replay:
            spread = f"{run.frames_per_s_min:.1f}-{run.frames_per_s_max:.1f}"
            lines.append(f"{result.precision:<16}{run.batch:>6}{run.first_call_s:>11.2f}{run.seconds:>10.3f}"
                         f"{run.frames_per_s:>11.1f}{spread:>18}{run.frames_scored:>8}")
        if result.skipped_batches:
            lines.append(f"{result.precision:<16}skipped (over --seconds-budget): "
                         f"{', '.join(map(str, result.skipped_batches))}")
    lines.append("head warm-up s (first call at its one replay shape): " + ", ".join(
        f"{result.precision} {result.head_first_call_s:.2f}" for result in report.results))
    lines += [
        "",
        f"live, one frame at a time: extractor at batch 1, head over the last {report.window} features",
        f"{'precision':<16}{'frames':>7}{'warm-up s':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'live vs replay |diff|':>23}",
    ]
    for result in report.results:
        live = result.live
        lines.append(f"{result.precision:<16}{live.frames:>7}{live.warmup_s:>11.2f}{live.p50_ms:>9.2f}"
                     f"{live.p99_ms:>9.2f}{live.max_ms:>9.2f}{result.live_vs_replay_max_abs_diff:>23.2e}")
    lines += ["", "scores against float32 (same weights, same frames), max |diff|:"]
    lines += [f"  {result.precision:<16}{result.max_abs_diff_vs_float32:.2e}"
              for result in report.results if result.precision != "float32"] or ["  (no mixed precision asked for)"]
    lines += ["", f"targets (set for vgg19 at 224x224 on one H100): replay >= {report.target_replay_fps:g} "
                  f"frames/s, live p99 <= {report.target_live_p99_ms:g} ms"]
    for result in report.results:
        lines.append(f"  {result.precision:<16}replay {result.best_frames_per_s:.1f} frames/s at batch "
                     f"{result.best_batch} ({_verdict(result.replay_meets_target)}), live p99 "
                     f"{result.live.p99_ms:.2f} ms ({_verdict(result.live_meets_target)})")
    return "\n".join(lines)


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _batches(text: str) -> tuple[int, ...]:
    parse = _count(1)
    values = tuple(parse(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated batch sizes, got none")
    return tuple(sorted(set(values)))


def _precisions(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    for value in values:
        if value not in PRECISIONS:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(PRECISIONS)}")
    if not values:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(PRECISIONS)}, got none")
    return values


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def make_parser() -> argparse.ArgumentParser:
    defaults = GpuBenchConfig()
    p = argparse.ArgumentParser(prog="gpu_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", choices=BACKBONES, default=defaults.backbone,
                   help=f"per-frame feature extractor (default {defaults.backbone})")
    p.add_argument("--image-size", type=_count(32), default=defaults.image_size,
                   help=f"backbone input size in pixels (default {defaults.image_size})")
    p.add_argument("--frames", type=_count(WINDOW), default=defaults.frames,
                   help=f"backlog replayed losslessly (default {defaults.frames})")
    p.add_argument("--batches", type=_batches, default=defaults.batches,
                   help="comma-separated extractor batch sizes (default 1,8,32,64,128,256)")
    p.add_argument("--live-frames", type=_count(2), default=defaults.live_frames,
                   help=f"frames timed one at a time (default {defaults.live_frames})")
    p.add_argument("--repeats", type=_count(1), default=defaults.repeats,
                   help=f"timed replay passes per batch size, median reported (default {defaults.repeats})")
    p.add_argument("--precision", dest="precisions", type=_precisions, default=defaults.precisions,
                   help=f"comma-separated of {', '.join(PRECISIONS)} (default float32,mixed_bfloat16)")
    p.add_argument("--seconds-budget", type=_seconds, default=None,
                   help="per precision: skip the larger batch sizes once replay has taken this long "
                        "(default: no budget)")
    p.add_argument("--json", default="", help="also write the report to this JSON file (default: none)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    config = GpuBenchConfig(**vars(args))
    try:
        ModelConfig(backbone=config.backbone, weights="none", image_size=config.image_size)
    except ValueError as exc:
        parser.error(str(exc))
    # Progress of this tool only: the backends' own INFO chatter buries it.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    report = run_bench(config)
    print(format_report(report))
    if config.json:
        path = Path(config.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
