"""The whole pipeline as supervised processes: capture, worker, recorder and viewer (``fetalhead run``).

``check_inputs`` opens the source and reads the model bundle's metadata the
way the capture and the worker will, so a wrong one is one line before any
process starts. ``build_specs`` turns a RunConfig into the
``stream.supervise.ProcessSpec`` of every child; ``run_pipeline`` runs them
under a ``Supervisor`` on free loopback ports. Consumers start first, the
capture last, once the worker is ready (``WorkerReady``), so no score is
published before its consumers listen. The run ends normally when the
processes marked ``final`` exit with 0: the recorder and viewer, which are
started with ``--until-eos``, or the worker (``--exit-after-eos 1``) when
there is neither. A child that exits with a configuration error ends the run
at once (``supervise.CONFIG_EXIT_CODES``); only crashes are restarted.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from pathlib import Path
from typing import Callable, Literal

import zmq

from models.settings import check, setting
from models.verdict import DEFAULT_HOLD, check_hold
from stream import keys, net, protocol
from stream.consumer import HOLD_HELP
from stream.keys import ClientKeys, keys_setting
from stream.sources import Source
from stream.supervise import (CONFIG_EXIT_CODES, ProcessSpec, Supervisor, WorkerReady, child_env,
                              subcommand)
from stream.view import DEFAULT_ADDR, check_free, is_loopback, split_addr

logger = logging.getLogger(__name__)

# The capture's heartbeats go out as ``_capture.<stream>``, an id of at most 64 characters too.
_CAPTURE_ID_PREFIX = "_capture."
MAX_STREAM_ID = 64 - len(_CAPTURE_ID_PREFIX)
# The source spec of the synthetic phantom (tools.sources.SYNTHETIC).
_SYNTHETIC = "synthetic"


def _is_live_source(source: str) -> bool:
    """A device index or the synthetic phantom: frames that are there only as they come."""
    text = source.strip()
    return text.isdigit() or text == _SYNTHETIC


def default_stream_id(source: str) -> str:
    """The stream id for a source spec: ``device0`` for ``0``, the file or folder name otherwise."""
    text = source.strip()
    if text.isdigit():
        return f"device{int(text)}"
    name = Path(text.rstrip("/\\")).stem or "stream"
    name = re.sub(r"[^A-Za-z0-9_.:-]", "-", name).lstrip("_")[:MAX_STREAM_ID]
    return name or "stream"


def default_mode(source: str) -> Literal["live", "lossless"]:
    """``lossless`` for a video file or scan folder, whose every frame is there to be scored;
    ``live`` for a device or the synthetic phantom."""
    return "live" if _is_live_source(source) else "lossless"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of ``fetalhead run`` (a ``[run]`` TOML table).

    ``mode`` None is ``default_mode`` of the source: lossless for a file or
    folder, live for a device or ``synthetic``; ``stream_mode`` is the one
    used. ``frames``/``scores`` None pick free loopback ports at start.
    ``watch`` shows the live table; ``csv``/``video``/``show``/``best_frames`` start a
    recorder; ``view`` serves the live web page on ``view_addr`` (loopback:
    to serve a network, run ``fetalhead view --allow-remote`` on its own).
    ``hold`` is the verdict's hysteresis in all of them.
    ``restarts`` is per process, for crashes only. ``log`` collects the logs
    of every child but the viewer in a file; None shares the supervisor's
    stderr (``fetalhead run`` gives a temporary file while its live table
    has the terminal).
    ``keys`` turns CURVE on for every link: each child gets ``--keys`` and
    uses its role's key pair there (``capture``, ``worker``, ``client``), as
    ``fetalhead keys DIR`` makes them.
    """

    source: str = setting("", "device index (0), video file, scan folder, or 'synthetic'")
    model: str = setting("", "model bundle file; required")
    mode: Literal["live", "lossless"] | None = setting(
        None, "live: newest frame first, frames dropped when the worker is slow and lost before it subscribed; "
              "lossless: every frame, in order, the capture waiting for the worker",
        shown="lossless for a video file or scan folder, live for a device or synthetic")
    stream: str | None = setting(None, "stream id", shown="the source's name")
    frames: str | None = setting(None, "frames address", shown="a free loopback port")
    scores: str | None = setting(None, "scores address", shown="a free loopback port")
    csv: Path | None = setting(None, "record every score to this CSV file")
    video: Path | None = setting(None, "record annotated frames to this .mp4 or .avi")
    best_frames: Path | None = setting(None, "write each head episode's best frame (PNG and DICOM) and episodes.csv "
                                             "into this folder")
    show: bool = setting(False, "show annotated frames in a window (needs opencv-python and a display)")
    watch: bool = setting(True, "show the live table")
    view: bool = setting(False, "serve the live web page (fetalhead view) too")
    view_addr: str = setting(DEFAULT_ADDR, "HOST:PORT of the live web page (loopback)")
    hold: int = setting(DEFAULT_HOLD, HOLD_HELP)
    on_bad_frame: Literal["skip", "stop"] = setting(
        "skip", "a frame of a file or scan folder that cannot be read: skip it (a gap in seq) or end the stream")
    fast: bool = setting(False, "play a file as fast as it is scored")
    loop: bool = setting(False, "replay a file or scan folder endlessly")
    fps: float | None = setting(None, "frame rate to play a file at", shown="its own")
    restarts: int = setting(3, "restarts allowed per crashed process")
    stop_timeout_s: float = setting(5.0, "seconds a stopping process gets before it is killed", flag="stop-timeout")
    log: Path | None = setting(None, "append the logs of every process but the viewer to this file",
                               shown="the terminal, or while the live table is on it a temporary file, "
                                     "deleted when the run ends well")
    verbose: bool = setting(False, "children log debug messages too")
    keys: Path | None = keys_setting("turn CURVE encryption on for every link: folder made by fetalhead keys DIR "
                                     "(capture, worker and client key pairs)")

    def __post_init__(self) -> None:
        check(bool(self.source), "source: give a device index, video file, scan folder or 'synthetic'")
        check(bool(self.model), "model: give --model BUNDLE")
        protocol.check_stream_id(self.stream)
        stream = self.stream_id
        check(len(stream) <= MAX_STREAM_ID,
              f"stream: {stream!r} is {len(stream)} characters, at most {MAX_STREAM_ID} fit: the capture's "
              f"heartbeats go out as {_CAPTURE_ID_PREFIX}<stream>, an id of at most 64")
        check(not (self.fast and self.fps is not None), "fast: --fast and --fps exclude each other")
        check(self.fps is None or self.fps > 0, f"fps: must be > 0, got {self.fps}")
        check(self.restarts >= 0, f"restarts: must be >= 0, got {self.restarts}")
        check(self.stop_timeout_s > 0, f"stop_timeout_s: must be > 0, got {self.stop_timeout_s}")
        check_hold(self.hold)
        host, _ = split_addr(self.view_addr)
        check(is_loopback(host), f"view_addr: {host} is not a loopback address; to serve the page to the network "
                                 f"run fetalhead view --allow-remote beside the run")

    @property
    def records(self) -> bool:
        return self.csv is not None or self.video is not None or self.show or self.best_frames is not None

    @property
    def stream_mode(self) -> Literal["live", "lossless"]:
        """The mode the run uses: ``mode``, or the source's default."""
        return self.mode or default_mode(self.source)

    @property
    def stream_id(self) -> str:
        """The stream id the run uses: ``stream``, or the source's name."""
        return self.stream or default_stream_id(self.source)


def check_inputs(config: RunConfig, open_source: Callable[..., Source]) -> None:
    """Read every child's keys, open the source as the capture will and the model bundle as the worker will.

    open_source: ``tools.sources.open_source`` (which knows scan folders and
    the synthetic phantom). A missing key, a source that cannot be opened
    or a bundle that cannot be used is one line (its FetalheadError), before
    any process is started; the cheap checks come first.
    """
    keys.server_keys(config.keys, "capture")
    keys.server_keys(config.keys, "worker")
    keys.client_keys(config.keys, "worker", "capture")
    keys.client_keys(config.keys, "client", "worker")
    with open_source(config.source, fps=config.fps, loop=config.loop):
        pass
    if config.view:
        check_free(config.view_addr)
    # Imported here: only a run reads a bundle, and the bundle module brings in Keras.
    from models.bundle import read_meta

    read_meta(config.model)


def build_specs(config: RunConfig, frames: str, scores: str, *,
                capture_when: Callable[[], bool] | None = None) -> list[ProcessSpec]:
    """The processes of one run, in start order: consumers first, so they are subscribed
    before the first score is published, then the worker, then the capture
    (held back by ``capture_when``, see ``WorkerReady``)."""
    stream = config.stream_id
    mode = config.stream_mode
    v = config.verbose
    curve = ["--keys", str(config.keys)] if config.keys is not None else []
    hold = ["--hold", str(config.hold)]
    specs = []
    if config.records:
        args = ["--sub", scores, "--stream", stream, "--until-eos", *hold]
        for flag, value in (("--csv", config.csv), ("--video", config.video), ("--fps", config.fps),
                            ("--best-frames", config.best_frames)):
            if value is not None:
                args += [flag, str(value)]
        if config.show:
            args.append("--show")
        argv = subcommand("record", *args, *curve, verbose=v)
        # A restarted recorder adds to what its crashed predecessor wrote.
        specs.append(ProcessSpec("record", argv, final=True, restart_argv=(*argv, "--append"), log=config.log))
    if config.watch:
        specs.append(ProcessSpec("watch", subcommand("watch", "--sub", scores, "--stream", stream, "--until-eos",
                                                     *hold, *curve, verbose=v), final=True))
    if config.view:
        specs.append(ProcessSpec("view", subcommand("view", "--sub", scores, "--stream", stream, "--until-eos",
                                                    "--addr", config.view_addr, *hold, *curve, verbose=v),
                                 final=True, log=config.log))
    worker = ["--model", config.model, "--sub", frames, "--pub", scores, "--mode", mode, *hold, *curve]
    if config.video is not None or config.show or config.view or config.best_frames is not None:
        worker.append("--forward-frames")
    consumers = config.records or config.watch or config.view
    if not consumers:
        worker += ["--exit-after-eos", "1"]
    specs.append(ProcessSpec("worker", subcommand("worker", *worker, verbose=v), final=not consumers,
                             log=config.log))
    capture = [config.source, "--pub", frames, "--mode", mode, "--stream", stream, "--on-bad-frame",
               config.on_bad_frame, *curve]
    if config.fast:
        capture.append("--fast")
    if config.loop:
        capture.append("--loop")
    if config.fps is not None:
        capture += ["--fps", str(config.fps)]
    specs.append(ProcessSpec("capture", subcommand("capture", *capture, verbose=v), log=config.log,
                             start_when=capture_when))
    return specs


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended.

    ``exit_code`` 0: the stream ended normally. ``pids``: every child
    started; ``restarts``: per process. ``failed`` names the child whose
    exit ended the run, ``error`` is its error line when it logged to a file
    (on a shared terminal it is already there to read). ``lost_at_start``
    counts, in live mode, the frames the capture published before the
    worker's subscription reached it, which nobody scored (None when not
    known: lossless mode, or no score came).
    """

    exit_code: int
    pids: tuple[int, ...]
    restarts: dict[str, int]
    failed: str | None = None
    error: str | None = None
    lost_at_start: int | None = None


class FirstScore:
    """A check that never blocks, for the first score of ``stream`` on the scores address.

    Its socket subscribes when the run starts, seconds before the capture
    (held back until the worker has loaded), so the first score the worker
    publishes is the first one seen here; the socket is closed once it is.
    """

    def __init__(self, addr: str, stream: str, curve: ClientKeys | None = None) -> None:
        self.score: protocol.Score | None = None
        self._sock = net.socket(zmq.SUB, connect=addr, subscribe=[protocol.topic(stream)], curve=curve)

    def __call__(self) -> protocol.Score | None:
        while self.score is None and (data := net.recv(self._sock, 0)) is not None:
            try:
                msg = protocol.decode(data)
            except protocol.ProtocolError:
                continue
            if isinstance(msg, protocol.Score):
                self.score = msg
                self.close()
        return self.score

    def close(self) -> None:
        self._sock.close(linger=0)


def run_pipeline(config: RunConfig, stop_event: threading.Event | None = None, *,
                 poll_s: float = 0.1) -> RunResult:
    """Run capture, worker and consumers until the stream ends, a child fails for good, or ``stop_event``.

    Exit code 0 when the stream ended normally, the code of a child that
    exited with a configuration error (never restarted) or crashed with no
    restarts left, 130 when stopped from outside. The keys, the source and
    the model are the caller's to check first (``check_inputs``).
    """
    stop = stop_event if stop_event is not None else threading.Event()
    client = keys.client_keys(config.keys, "client", "worker")
    frames = config.frames or net.free_tcp_address()
    scores = config.scores or net.free_tcp_address()
    live = config.stream_mode == "live"
    first_score = FirstScore(scores, config.stream_id, client) if live else None
    worker_ready = WorkerReady(scores, client)
    specs = build_specs(config, frames, scores, capture_when=worker_ready)
    logger.info("run: %s, frames on %s, scores on %s; %s", config.stream_mode, frames, scores,
                ", ".join(s.name for s in specs))
    supervisor = Supervisor(specs, max_restarts=config.restarts, stop_timeout_s=config.stop_timeout_s,
                            env=child_env(), config_exit_codes=CONFIG_EXIT_CODES)
    code: int | None = None
    try:
        supervisor.start()
        while code is None and not stop.is_set():
            code = supervisor.poll()
            if first_score is not None:
                first_score()
            if code is None:
                stop.wait(poll_s)
    finally:
        supervisor.stop()
        worker_ready.close()
        if first_score is not None:
            first_score.close()
    lost = None
    if first_score is not None and first_score.score is not None:
        # Frames the worker had and dropped for newer ones are its own count, not lost before it.
        lost = first_score.score.seq - first_score.score.dropped
    if code is None:
        code = 130
        logger.info("run: stopped")
    elif code == 0:
        logger.info("run: stream ended")
    failed = supervisor.failed
    return RunResult(code, tuple(supervisor.pids), supervisor.restarts(), failed,
                     supervisor.last_error(failed) if failed else None, lost)
