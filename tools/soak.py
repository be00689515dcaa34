"""``python -m tools.soak --minutes 10``: a long live stream through real processes, checked for creep.

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
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from models.config import check, load
from stream.stats import LatencyWindow
from tools.cli import parser as make_parser, run

ROOT = Path(__file__).resolve().parent.parent
_SAMPLE_S = 1.0


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    """How long, how fast and how strict (a ``[soak]`` TOML table).

    ``warmup_s``/``window_s`` None scale with the run: a tenth (1..30 s)
    and a sixth (2..60 s) of it.
    """

    minutes: float = 10.0
    fps: float = 30.0
    model: str | None = None
    max_growth: float = 20.0
    max_drift_ms: float = 50.0
    warmup_s: float | None = None
    window_s: float | None = None

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


def rss_of(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


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
    from stream.run import ProcessSpec, Supervisor, WorkerReady
    from stream.watch import Subscription

    frames, scores = net.free_tcp_address(), net.free_tcp_address()
    with tempfile.TemporaryDirectory(prefix="fetalhead-soak-") as tmp:
        folder = Path(tmp)
        model = config.model or str(_tiny_bundle(folder))
        log = folder / "children.log"
        command = (sys.executable, "-m", "tools.cli")
        ready = WorkerReady(scores)
        specs = [
            ProcessSpec("worker", (*command, "worker", "--model", model, "--sub", frames, "--pub", scores,
                                   "--mode", "live"), log=log),
            ProcessSpec("capture", (*command, "capture", "synthetic", "--pub", frames, "--mode", "live",
                                    "--fps", f"{config.fps:g}", "--stream", "soak"), log=log, start_when=ready),
        ]
        samples: list[tuple[float, str, int]] = []
        latencies: list[tuple[float, float]] = []
        problems: list[str] = []
        try:
            with Supervisor(specs, max_restarts=0, cwd=ROOT) as supervisor, Subscription(scores, "soak") as sub:
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
                            value = rss_of(pid)
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


def report(result: SoakResult, console: Console) -> None:
    """The two windows side by side, then the verdict."""
    table = Table(title="soak: start and end of the run")
    for column in ("window", "seconds", "scores/s", "latency p50 ms", "latency p99 ms", "worker RSS MiB",
                   "capture RSS MiB"):
        table.add_column(column, justify="right")
    for w in (result.first, result.last):
        table.add_row(w.name, f"{w.seconds:.0f}", f"{w.scores / w.seconds:.1f}",
                      "-" if w.latency_p50_ms is None else f"{w.latency_p50_ms:.1f}",
                      "-" if w.latency_p99_ms is None else f"{w.latency_p99_ms:.1f}",
                      *(f"{w.rss[r] / 2**20:.1f}" if r in w.rss else "-" for r in ("worker", "capture")))
    console.print(table)
    if result.problems:
        for line in result.problems:
            console.print(f"[bold red]FAIL[/] {line}", highlight=False)
        tail = result.log.strip().splitlines()[-15:]
        if tail:
            console.print("last lines of the children's log:\n" + "\n".join(tail), highlight=False, markup=False)
    else:
        console.print(f"[bold green]OK[/] {result.scores} scores; memory and latency held steady", highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("soak", "Stream synthetic frames through real capture and worker processes; check for creep.")
    p.add_argument("--minutes", type=float, help="length of the run from the first score (default 10)")
    p.add_argument("--fps", type=float, help="frame rate of the synthetic source (default 30)")
    p.add_argument("--model", help="model bundle (default: a tiny random-weight model made for the run)")
    p.add_argument("--max-growth", type=float, help="percent of memory growth that fails the run (default 20)")
    p.add_argument("--max-drift-ms", type=float, help="p99 latency increase that fails the run (default 50)")
    p.add_argument("--warmup", type=float, dest="warmup_s", help="seconds left out at the start (default: a tenth)")
    p.add_argument("--window", type=float, dest="window_s", help="seconds per measured window (default: a sixth)")
    p.add_argument("--config", help="TOML file with a [soak] table")
    args = p.parse_args(argv)
    overrides = {name: getattr(args, name) for name in
                 ("minutes", "fps", "model", "max_growth", "max_drift_ms", "warmup_s", "window_s")}

    def work() -> int:
        config = load(SoakConfig, "soak", args.config, overrides)
        result = soak(config)
        report(result, Console())
        return 1 if result.problems else 0

    return run(work, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
