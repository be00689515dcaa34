"""``fetalhead soak --minutes 10``: a long live stream through real processes, checked for creep.

Starts ``fetalhead worker`` and ``fetalhead capture synthetic --mode live``
(30 fps by default) as supervised child processes, subscribes to the scores
and, once a second, reads each child's resident memory (VmRSS from
``/proc``). It compares a window after the warm-up with the last window of
the run: worker and capture memory (median RSS) and score latency (p50,
p99, capture to score) at the start and at the end are printed, and the exit
code is 1 when memory grew by more than ``--max-growth`` percent, the p99
latency drifted up by more than ``--max-drift-ms``, scores stopped coming,
or a child died; else 0.

Without ``--model`` a tiny random-weight model is made for the run: the
point is the plumbing (queues, buffers, sockets, counters) over time, not
the backbone's cost. Linux only (``/proc``).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from models.settings import check, setting
from stream.stats import LatencyWindow
from stream.supervise import rss_bytes

_SAMPLE_S = 1.0


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    """How long, how fast and how strict (a ``[soak]`` TOML table).

    ``warmup_s``/``window_s`` None scale with the run: a tenth (1..30 s)
    and a sixth (2..60 s) of it.
    """

    minutes: float = setting(10.0, "length of the run from the first score")
    fps: float = setting(30.0, "frame rate of the synthetic source")
    model: str | None = setting(None, "model bundle", shown="a tiny random-weight model made for the run")
    max_growth: float = setting(20.0, "percent of memory growth that fails the run")
    max_drift_ms: float = setting(50.0, "p99 latency increase in ms that fails the run")
    warmup_s: float | None = setting(None, "seconds left out at the start", flag="warmup",
                                     shown="a tenth of the run, 1..30 s")
    window_s: float | None = setting(None, "seconds per measured window", flag="window",
                                     shown="a sixth of the run, 2..60 s")

    def __post_init__(self) -> None:
        check(self.minutes > 0, f"minutes: must be > 0, got {self.minutes}")
        check(self.fps > 0, f"fps: must be > 0, got {self.fps}")
        check(self.max_growth >= 0, f"max_growth: must be >= 0 (percent), got {self.max_growth}")
        check(self.max_drift_ms >= 0, f"max_drift_ms: must be >= 0, got {self.max_drift_ms}")
        check(self.warmup_s is None or self.warmup_s >= 0, f"warmup_s: must be >= 0, got {self.warmup_s}")
        check(self.window_s is None or self.window_s > 0, f"window_s: must be > 0, got {self.window_s}")
        check(self.warmup + 2 * self.window <= self.seconds,
              f"minutes: {self.minutes} leaves no room for a warm-up of {self.warmup:g} s and two windows of "
              f"{self.window:g} s")

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(30.0, max(1.0, self.seconds / 10))

    @property
    def window(self) -> float:
        return self.window_s if self.window_s is not None else min(60.0, max(2.0, self.seconds / 6))


@dataclasses.dataclass(frozen=True)
class Window:
    """What one stretch of the run looked like: median RSS per process (bytes), latency (ms), scores."""

    name: str
    rss: dict[str, float]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    scores: int
    seconds: float


def summarise(name: str, samples: list[tuple[float, str, int]], latencies: list[tuple[float, float]],
              start: float, end: float) -> Window:
    """The Window of ``[start, end]`` seconds from the first score: (t, role, rss) samples, (t, latency s) scores."""
    rss: dict[str, list[int]] = {}
    for t, role, value in samples:
        if start <= t <= end:
            rss.setdefault(role, []).append(value)
    ms = LatencyWindow(max(1, len(latencies)))
    for t, latency in latencies:
        if start <= t <= end:
            ms.add(latency * 1000.0)
    return Window(name, {role: statistics.median(values) for role, values in rss.items()},
                  ms.percentile(50), ms.percentile(99), len(ms), end - start)


def judge(first: Window, last: Window, config: SoakConfig) -> list[str]:
    """What went wrong between the two windows, one line each; empty when nothing did."""
    problems = []
    if last.scores == 0:
        problems.append(f"no scores in the last {last.seconds:.0f} s")
    for role, before in sorted(first.rss.items()):
        after = last.rss.get(role)
        if after is None:
            problems.append(f"{role}: no memory sample in the last window")
            continue
        growth = 100.0 * (after - before) / before
        if growth > config.max_growth:
            problems.append(f"{role} memory grew {growth:.1f} % ({before / 2**20:.0f} -> {after / 2**20:.0f} MiB), "
                            f"more than {config.max_growth:g} %")
    if first.latency_p99_ms is not None and last.latency_p99_ms is not None:
        drift = last.latency_p99_ms - first.latency_p99_ms
        if drift > config.max_drift_ms:
            problems.append(f"p99 latency drifted up {drift:.0f} ms ({first.latency_p99_ms:.0f} -> "
                            f"{last.latency_p99_ms:.0f} ms), more than {config.max_drift_ms:g} ms")
    return problems


def _tiny_bundle(folder: Path) -> Path:
    from models.bundle import save
    from models.cnn_lstm import build_feature_extractor, build_temporal_head
    from models.config import ModelConfig

    config = ModelConfig(backbone="tiny", weights="none", image_size=64, lstm_units=(16, 8), dense_units=8)
    extractor = build_feature_extractor(config)
    return save(folder / "tiny.fhb", config, extractor, build_temporal_head(config, extractor.output_shape[-1]))


@dataclasses.dataclass(frozen=True)
class SoakResult:
    first: Window
    last: Window
    problems: list[str]
    scores: int
    log: str


def soak(config: SoakConfig) -> SoakResult:
    """Run capture and worker for ``config.minutes`` (from the first score) and judge the two windows."""
    from stream import net, protocol
    from stream.supervise import ProcessSpec, Supervisor, WorkerReady, child_env, subcommand

    frames, scores = net.free_tcp_address(), net.free_tcp_address()
    with tempfile.TemporaryDirectory(prefix="fetalhead-soak-") as tmp:
        folder = Path(tmp)
        model = config.model or str(_tiny_bundle(folder))
        log = folder / "children.log"
        ready = WorkerReady(scores)
        specs = [
            ProcessSpec("worker", subcommand("worker", "--model", model, "--sub", frames, "--pub", scores,
                                             "--mode", "live"), log=log),
            ProcessSpec("capture", subcommand("capture", "synthetic", "--pub", frames, "--mode", "live",
                                              "--fps", f"{config.fps:g}", "--stream", "soak"),
                        log=log, start_when=ready),
        ]
        samples: list[tuple[float, str, int]] = []
        latencies: list[tuple[float, float]] = []
        problems: list[str] = []
        try:
            with Supervisor(specs, max_restarts=0, env=child_env()) as supervisor, \
                    net.Subscriber(scores, "soak") as sub:
                supervisor.start()
                first_score: float | None = None
                next_sample = time.monotonic()
                # Startup (TensorFlow import, model build) is not part of the run.
                deadline = time.monotonic() + 120.0
                while first_score is None or time.monotonic() - first_score < config.seconds:
                    now = time.monotonic()
                    if first_score is None and now > deadline:
                        problems.append("no score within 120 s of starting")
                        break
                    for msg in sub.receive(0.1):
                        if isinstance(msg, protocol.Score):
                            first_score = time.monotonic() if first_score is None else first_score
                            latencies.append((time.monotonic() - first_score, msg.latency))
                    code = supervisor.poll()
                    if code is not None:
                        problems.append(f"a child process exited with {code} (see its log below)")
                        break
                    if first_score is not None and now >= next_sample:
                        next_sample += _SAMPLE_S
                        for role, pid in supervisor.running().items():
                            value = rss_bytes(pid)
                            if value is not None:
                                samples.append((now - first_score, role, value))
        finally:
            ready.close()
        text = log.read_text(errors="replace") if log.exists() else ""
    first = summarise("start", samples, latencies, config.warmup, config.warmup + config.window)
    last = summarise("end", samples, latencies, config.seconds - config.window, config.seconds)
    if not problems:
        problems = judge(first, last, config)
    return SoakResult(first, last, problems, len(latencies), text)
