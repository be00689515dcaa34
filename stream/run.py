"""The whole pipeline as supervised processes: capture, worker, recorder and viewer (``fetalhead run``).

``build_specs`` turns a RunConfig into the ``stream.supervise.ProcessSpec``
of every child; ``run_pipeline`` runs them under a ``Supervisor`` on free
loopback ports. Consumers start first, the capture last, once the worker is
ready (``WorkerReady``), so no score is published before its consumers
listen. The run ends normally when the processes marked ``final`` exit with
0: the recorder and viewer, which are started with ``--until-eos``, or the
worker (``--exit-after-eos 1``) when there is neither.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Literal

from models.settings import check, setting
from stream import keys, net, protocol
from stream.keys import keys_setting
from stream.supervise import ProcessSpec, Supervisor, WorkerReady, child_env, subcommand

logger = logging.getLogger(__name__)


def default_stream_id(source: str) -> str:
    """The stream id for a source spec: ``device0`` for ``0``, the file or folder name otherwise."""
    text = source.strip()
    if text.isdigit():
        return f"device{int(text)}"
    name = Path(text.rstrip("/\\")).stem or "stream"
    name = re.sub(r"[^A-Za-z0-9_.:-]", "-", name).lstrip("_")[:64]
    return name or "stream"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of ``fetalhead run`` (a ``[run]`` TOML table).

    ``frames``/``scores`` None pick free loopback ports at start. ``watch``
    shows the live table; ``csv``/``video``/``show`` start a recorder.
    ``restarts`` is per process. ``log`` collects the logs of every child but
    the viewer in a file; None shares the supervisor's stderr, except while
    the live table is on a terminal, when they go to a temporary file.
    ``keys`` turns CURVE on for every link: each child gets ``--keys`` and
    uses its role's key pair there (``capture``, ``worker``, ``client``), as
    ``fetalhead keys DIR`` makes them.
    """

    source: str = setting("", "device index (0), video file, scan folder, or 'synthetic'")
    model: str = setting("", "model bundle file; required")
    mode: Literal["live", "lossless"] = setting(
        "live", "live: newest frame first, drops when slow; lossless: every frame, in order")
    stream: str | None = setting(None, "stream id", shown="the source's name")
    frames: str | None = setting(None, "frames address", shown="a free loopback port")
    scores: str | None = setting(None, "scores address", shown="a free loopback port")
    csv: Path | None = setting(None, "record every score to this CSV file")
    video: Path | None = setting(None, "record annotated frames to this .mp4 or .avi")
    show: bool = setting(False, "show annotated frames in a window (needs opencv-python and a display)")
    watch: bool = setting(True, "show the live table")
    fast: bool = setting(False, "play a file as fast as it is scored")
    loop: bool = setting(False, "replay a file or scan folder endlessly")
    fps: float | None = setting(None, "frame rate to play a file at", shown="its own")
    restarts: int = setting(3, "restarts allowed per crashed process")
    stop_timeout_s: float = setting(5.0, "seconds a stopping process gets before it is killed", flag="stop-timeout")
    log: Path | None = setting(None, "append the logs of every process but the viewer to this file",
                               shown="the terminal, or a temporary file while the live table is on it")
    verbose: bool = setting(False, "children log debug messages too")
    keys: Path | None = keys_setting("turn CURVE encryption on for every link: folder made by fetalhead keys DIR "
                                     "(capture, worker and client key pairs)")

    def __post_init__(self) -> None:
        check(bool(self.source), "source: give a device index, video file, scan folder or 'synthetic'")
        check(bool(self.model), "model: give --model BUNDLE")
        protocol.check_stream_id(self.stream)
        check(not (self.fast and self.fps is not None), "fast: --fast and --fps exclude each other")
        check(self.fps is None or self.fps > 0, f"fps: must be > 0, got {self.fps}")
        check(self.restarts >= 0, f"restarts: must be >= 0, got {self.restarts}")
        check(self.stop_timeout_s > 0, f"stop_timeout_s: must be > 0, got {self.stop_timeout_s}")

    @property
    def records(self) -> bool:
        return self.csv is not None or self.video is not None or self.show


def build_specs(config: RunConfig, frames: str, scores: str, *,
                capture_when: Callable[[], bool] | None = None) -> list[ProcessSpec]:
    """The processes of one run, in start order: consumers first, so they are subscribed
    before the first score is published, then the worker, then the capture
    (held back by ``capture_when``, see ``WorkerReady``)."""
    stream = config.stream or default_stream_id(config.source)
    v = config.verbose
    curve = ["--keys", str(config.keys)] if config.keys is not None else []
    specs = []
    if config.records:
        args = ["--sub", scores, "--stream", stream, "--until-eos"]
        for flag, value in (("--csv", config.csv), ("--video", config.video), ("--fps", config.fps)):
            if value is not None:
                args += [flag, str(value)]
        if config.show:
            args.append("--show")
        argv = subcommand("record", *args, *curve, verbose=v)
        # A restarted recorder adds to what its crashed predecessor wrote.
        specs.append(ProcessSpec("record", argv, final=True, restart_argv=(*argv, "--append"), log=config.log))
    if config.watch:
        specs.append(ProcessSpec("watch", subcommand("watch", "--sub", scores, "--stream", stream, "--until-eos",
                                                     *curve, verbose=v), final=True))
    worker = ["--model", config.model, "--sub", frames, "--pub", scores, "--mode", config.mode, *curve]
    if config.video is not None or config.show:
        worker.append("--forward-frames")
    consumers = config.records or config.watch
    if not consumers:
        worker += ["--exit-after-eos", "1"]
    specs.append(ProcessSpec("worker", subcommand("worker", *worker, verbose=v), final=not consumers,
                             log=config.log))
    capture = [config.source, "--pub", frames, "--mode", config.mode, "--stream", stream, *curve]
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
    """How a run ended: exit code (0: the stream ended normally), every child pid, restarts per process."""

    exit_code: int
    pids: tuple[int, ...]
    restarts: dict[str, int]


def run_pipeline(config: RunConfig, stop_event: threading.Event | None = None, *,
                 poll_s: float = 0.1) -> RunResult:
    """Run capture, worker and consumers until the stream ends, a child fails for good, or ``stop_event``.

    Exit code 0 when the stream ended normally, the crashed child's code
    when it had no restarts left, 130 when stopped from outside.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    if config.log is None and config.watch and sys.stdout.isatty():
        # Log lines from other processes would tear the live table apart.
        config = dataclasses.replace(config, log=Path(tempfile.gettempdir()) / f"fetalhead-run-{os.getpid()}.log")
        logger.info("run: the other processes log to %s while the table has the terminal", config.log)
    # Every child's keys are checked here, so a missing one is one line before anything starts.
    keys.server_keys(config.keys, "capture")
    keys.server_keys(config.keys, "worker")
    keys.client_keys(config.keys, "worker", "capture")
    client = keys.client_keys(config.keys, "client", "worker")
    frames = config.frames or net.free_tcp_address()
    scores = config.scores or net.free_tcp_address()
    worker_ready = WorkerReady(scores, client)
    specs = build_specs(config, frames, scores, capture_when=worker_ready)
    logger.info("run: frames on %s, scores on %s; %s", frames, scores, ", ".join(s.name for s in specs))
    supervisor = Supervisor(specs, max_restarts=config.restarts, stop_timeout_s=config.stop_timeout_s,
                            env=child_env())
    code: int | None = None
    try:
        supervisor.start()
        while code is None and not stop.is_set():
            code = supervisor.poll()
            if code is None:
                stop.wait(poll_s)
    finally:
        supervisor.stop()
        worker_ready.close()
    if code is None:
        code = 130
        logger.info("run: stopped")
    elif code == 0:
        logger.info("run: stream ended")
    return RunResult(code, tuple(supervisor.pids), supervisor.restarts())
