"""The worker's heat maps: chosen frames explained off the scoring path, published as ``saliency`` messages.

``parse_mode`` reads ``--saliency``: ``off``, ``best`` (the best frame of
each head episode, ``models.episodes``) or ``every N`` (every N-th seq).
``Chooser`` is the pure part: scores and episode events in, the frames to
explain out. ``best`` cannot know the best frame until its episode ends, so
it keeps candidates as the scores come: outside an episode, the frames of
the current run of scores at or over the threshold (an episode is
back-dated to the first of them) as a list of falling scores, so the best
from any start is at hand; inside one, the highest score since its start.
A frame is held as its ``protocol.Frame`` (the bytes as received) and
window of features; nothing is decoded before it is chosen.

``SaliencyThread`` hands the work, behind a queue of ``QUEUE_SIZE``, to an
``Explainer``: a process of its own at the lowest CPU priority (Linux's
SCHED_IDLE, and nice 19), which computes the heat maps
(``models.saliency.LayerCam``). A thread in the worker would share
TensorFlow's thread pool, and so the cores, with the scoring as an equal; a
process the kernel runs only on a core that would otherwise idle, and
preempts as soon as a scoring thread wakes, takes only what scoring leaves.
When it is busy, a chosen frame is skipped and counted, never waited for.
ZeroMQ sockets belong to one thread, so finished messages wait in
``results()`` for the worker's loop to send them. At the end, ``finish``
explains what is still queued, so a stream's last chosen frames are not
lost to a stop.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from models.episodes import END, START, EpisodeEvent
from models.errors import ConfigError
from stream import net, protocol

if TYPE_CHECKING:
    from models.runtime import Runtime

logger = logging.getLogger(__name__)

MODES = ("off", "best", "every")
QUEUE_SIZE = 2
# Candidates kept per stream outside an episode: a run of Head scores longer than
# this turns the verdict long before (the hold is a few frames).
_MAX_CANDIDATES = 64
_MAX_STREAMS = 256


def parse_mode(text: str) -> tuple[str, int]:
    """``off``, ``best`` or ``every N`` (also ``every-N``, ``everyN``) -> (mode, N); N is 0 but for ``every``."""
    value = str(text).strip().lower()
    if value in ("off", "best"):
        return value, 0
    if value.startswith("every"):
        rest = value[len("every"):].strip(" -=:")
        if rest.isdigit() and int(rest) >= 1:
            return "every", int(rest)
    raise ValueError(f"saliency: {text!r} is not off, best or 'every N' with N >= 1")


@dataclasses.dataclass
class Job:
    """A frame to explain: its Frame message, its window of features float32 (k, F) ending at it, its Score."""

    frame: protocol.Frame
    window: np.ndarray
    score: protocol.Score


class _Stream:
    def __init__(self) -> None:
        self.in_episode = False
        self.candidates: collections.deque[Job] = collections.deque()  # falling scores, oldest first
        self.best: Job | None = None


class Chooser:
    """Which scored frames to explain, for ``mode`` and ``every`` of ``parse_mode``. Pure, no threads."""

    def __init__(self, mode: str, every: int = 0, *, threshold: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "every" and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.mode, self.every, self.threshold = mode, every, threshold
        self._streams: collections.OrderedDict[str, _Stream] = collections.OrderedDict()

    def _stream(self, stream: str) -> _Stream:
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _Stream()
            if len(self._streams) > _MAX_STREAMS:
                self._streams.popitem(last=False)
        self._streams.move_to_end(stream)
        return state

    def scored(self, job: Job) -> list[Job]:
        """The frames to explain now that ``job``'s frame is scored (``every``: it or nothing)."""
        if self.mode == "every":
            return [job] if job.score.seq % self.every == 0 else []
        if self.mode == "off":
            return []
        state = self._stream(job.score.stream)
        value = job.score.score
        if state.in_episode:
            if state.best is None or value > state.best.score.score:
                state.best = job
        elif value >= self.threshold:
            # Ties keep the earlier frame: the episode's best is its first peak.
            while state.candidates and state.candidates[-1].score.score < value:
                state.candidates.pop()
            state.candidates.append(job)
            if len(state.candidates) > _MAX_CANDIDATES:
                state.candidates.popleft()
        else:
            state.candidates.clear()
        return []

    def episodes(self, events: Sequence[EpisodeEvent]) -> list[Job]:
        """The best frames of the episodes that ``events`` end (``best`` only)."""
        if self.mode != "best":
            return []
        out = []
        for event in events:
            state = self._stream(event.stream)
            if event.kind == START:
                state.in_episode = True
                state.best = next((c for c in state.candidates if c.score.seq >= event.first_seq), None)
                state.candidates.clear()
            elif event.kind == END:
                if state.best is not None and state.best.score.seq == event.best_seq:
                    out.append(state.best)
                elif state.best is not None:
                    logger.debug("stream %s: episode's best frame %d is not the one held (%d)",
                                 event.stream, event.best_seq, state.best.score.seq)
                state.in_episode, state.best = False, None
        return out


# Seconds the explaining process may take to load the model and trace its first heat map.
START_TIMEOUT_S = 300.0


def _lowest_priority() -> None:
    """Every thread of this process at SCHED_IDLE where the kernel has it, and at nice 19.

    Under nice 19 alone a waking scoring thread can wait for the explaining
    process's time slice to end; a SCHED_IDLE task is preempted at once. Both
    are per thread on Linux: the threads that imports have started (numpy's
    BLAS pool) are set one by one, and those started later (TensorFlow's)
    inherit them from this one.
    """
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError) as exc:  # a thread that has ended, or a kernel without SCHED_IDLE
            logger.debug("saliency: thread %d keeps its priority (%s)", tid, exc)


def _explain_forever(path: str, conn) -> None:
    """The explaining process: load the bundle at ``path``, then answer (raw frame, window, position) requests.

    Each answer is ("ok", heat float32 (G_h, G_w), calibrated score) or
    ("error", one line); None ends it. The first message is ("ready", layer)
    or ("error", why it cannot start).
    """
    _lowest_priority()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf

        # One thread: however busy, the explaining process leaves every other core to scoring.
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from models import bundle as bundles
        from models.saliency import LayerCam

        runtime = bundles.load(path).runtime()
        cam = LayerCam(runtime)
        config = runtime.config
        cam.maps(np.zeros((1, config.image_size, config.image_size, 3), np.float32),
                 np.zeros((1, config.window, runtime.feature_dim), np.float32), [config.window - 1])
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {str(exc).strip()[:300]}"))
        return
    conn.send(("ready", cam.layer))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        raw, window, position = request
        try:
            saliency = cam.maps(runtime.preprocess(raw)[None], window[None], [position])
            conn.send(("ok", saliency.heat[0], float(saliency.scores[0])))
        except Exception as exc:  # one frame's failure is that frame's, not the process's
            conn.send(("error", f"{type(exc).__name__}: {str(exc).strip()[:200]}"))


class Explainer:
    """Heat maps computed in a child process at the lowest CPU priority, one request at a time; ``close`` ends it.

    The child loads a copy of ``runtime``'s model, saved to a temporary
    bundle; it is started again when it has died.
    """

    def __init__(self, runtime: Runtime) -> None:
        from models import bundle as bundles

        self.runtime = runtime
        self._folder = tempfile.TemporaryDirectory(prefix="fetalhead-saliency-")
        self._path = Path(self._folder.name) / "model.fhb"
        bundles.save(self._path, runtime.config, runtime.extractor, runtime.training_head,
                     calibration=runtime.calibration)
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._conn = None
        self.layer = self._start()

    def _start(self) -> str:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_explain_forever, args=(str(self._path), child),
                                              name="fetalhead-saliency", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(START_TIMEOUT_S):
            self._stop()
            raise ConfigError(f"saliency: the explaining process did not start within {START_TIMEOUT_S:g} s")
        try:
            kind, detail = parent.recv()
        except EOFError:
            kind, detail = "error", f"it ended with exit code {self._process.exitcode}"
        if kind != "ready":
            self._stop()
            raise ConfigError(f"saliency: the explaining process cannot start: {detail}")
        return detail

    @property
    def pid(self) -> int | None:
        """The explaining process's id, None while none runs."""
        return None if self._process is None else self._process.pid

    def explain(self, raw: np.ndarray, window: np.ndarray, position: int) -> tuple[np.ndarray, float]:
        """(heat float32 (G_h, G_w) in 0..1, calibrated score) of ``raw`` scored at ``position`` of ``window`` (W, F)."""
        if self._process is None or not self._process.is_alive():
            logger.warning("saliency: the explaining process has ended; starting it again")
            self._stop()
            self._start()
        try:
            self._conn.send((raw, window, position))
            answer = self._conn.recv()
        except (EOFError, OSError) as exc:
            # Reaped now, so that the next request starts a new one.
            self._stop()
            raise RuntimeError(f"the explaining process ended ({type(exc).__name__})") from None
        if answer[0] != "ok":
            raise RuntimeError(answer[1])
        return answer[1], answer[2]

    def _stop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (OSError, ValueError):
                pass
            self._conn.close()
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn = self._process = None

    def close(self) -> None:
        self._stop()
        self._folder.cleanup()


class SaliencyThread:
    """Heat maps of chosen frames, handed by a thread to an ``Explainer``; ``with`` starts and stops both.

    runtime: the worker's ``models.runtime.Runtime``; mode as ``parse_mode``
    gives it; threshold: the bundle's. Made before the stream starts: its
    ``Explainer`` loads the model and traces here. ``offer`` and ``episodes`` never
    block; ``results`` hands over the finished ``protocol.Saliency``
    messages; ``stats`` are the heartbeat's ``saliency.*`` counters.
    """

    def __init__(self, runtime: Runtime, mode: str, every: int = 0, *, threshold: float = 0.5,
                 warn_interval_s: float = 5.0) -> None:
        self.runtime = runtime
        self.chooser = Chooser(mode, every, threshold=threshold)
        # Started now, before the first frame: loading and tracing take seconds,
        # during which the process would compete with the first scores.
        self.explainer = Explainer(runtime)
        self.chosen = self.skipped = self.published = self.failed = 0
        self._jobs: queue.Queue[Job | None] = queue.Queue(QUEUE_SIZE)
        self._done: collections.deque[protocol.Saliency] = collections.deque()
        self._warn = net.Throttled(logger, warn_interval_s)
        self._thread = threading.Thread(target=self._run, name="saliency", daemon=True)

    def __enter__(self) -> "SaliencyThread":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    def finish(self) -> None:
        """Explain what is queued (at most ``QUEUE_SIZE`` frames), then stop the thread and the explaining process.

        ``results`` keeps the messages.
        """
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self.explainer.close()

    def offer(self, frame: protocol.Frame, window: np.ndarray, score: protocol.Score) -> None:
        """Frame ``frame`` was scored ``score`` over ``window`` float32 (k, F) of features ending at it."""
        self._queue(self.chooser.scored(Job(frame, window, score)))

    def episodes(self, events: Sequence[EpisodeEvent]) -> None:
        """Episode events of the scores offered so far."""
        self._queue(self.chooser.episodes(events))

    def _queue(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.chosen += 1
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                self.skipped += 1

    def results(self) -> list[protocol.Saliency]:
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def stats(self) -> dict[str, int]:
        return {"saliency.chosen": self.chosen, "saliency.skipped": self.skipped,
                "saliency.published": self.published, "saliency.failed": self.failed}

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._done.append(self.explain(job))
                self.published += 1
            except Exception as exc:  # one frame's heat map must never end the thread
                self.failed += 1
                self._warn.warning("saliency", f"saliency of {job.score.stream}#{job.score.seq} failed: "
                                               f"{type(exc).__name__}: {str(exc).strip()[:200]}")

    def explain(self, job: Job) -> protocol.Saliency:
        """The Saliency message of one job."""
        from models.saliency import square

        window = np.zeros((self.runtime.config.window, job.window.shape[-1]), np.float32)
        window[:len(job.window)] = job.window
        raw = job.frame.image()
        heat, _ = self.explainer.explain(raw, window, len(job.window) - 1)
        score = job.score
        return protocol.saliency_message(score.stream, score.seq, score.score, score.model, score.t_capture,
                                         self.explainer.layer, raw.shape[:2], square(raw, self.runtime.config), heat)
