"""``fetalhead run``: capture, worker, recorder and viewer as separate, supervised processes.

``Supervisor`` is the process logic alone, driven by tests with tiny Python
children: it starts each ``ProcessSpec`` in its own session (so a Ctrl-C in
the terminal reaches only the supervisor, which then stops the children in
order), restarts a child that crashes with exponential backoff up to
``max_restarts`` times, and on ``stop()`` sends SIGINT, then SIGTERM, then
SIGKILL to each child's process group until none is left. On Linux each child
also gets PR_SET_PDEATHSIG, so it is told to stop even if the supervisor is
killed with SIGKILL.

``build_specs`` turns a RunConfig into the command lines; ``run_pipeline``
wires both together on free loopback ports. Consumers start first, the
capture last, once the worker is ready (``WorkerReady``), so no score is
published before its consumers listen. The run ends normally when the
processes marked ``final`` exit with 0: the recorder and viewer, which are
started with ``--until-eos``, or the worker (``--exit-after-eos 1``) when
there is neither.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import zmq

from models.config import check, load
from stream import keys, net, protocol
from stream.watch import check_stream_id
from tools.cli import parser as make_parser, run

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child between fork and exec should only call, not load.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """One supervised child.

    ``argv`` is the command line; ``restart_argv`` (default ``argv``) is used
    when it is restarted after a crash. ``final``: its exit with 0 is (part
    of) the run's normal end. ``log`` appends the child's stdout and stderr
    to a file instead of sharing the supervisor's. ``start_when``, a quick
    check that must not block, holds the first start back until it returns
    True (e.g. until the worker is ready).
    """

    name: str
    argv: tuple[str, ...]
    final: bool = False
    restart_argv: tuple[str, ...] | None = None
    log: Path | None = None
    start_when: Callable[[], bool] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError(f"process {self.name!r}: argv is empty")


@dataclasses.dataclass
class _Child:
    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    restarts: int = 0
    restart_at: float | None = None
    exit_code: int | None = None


def _exit_code(returncode: int) -> int:
    """Popen's returncode as a shell reports it: -N (killed by signal N) -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when its parent dies (Linux), else None."""
    if _LIBC is None:
        return None

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class Supervisor:
    """Start, watch, restart and stop a set of child processes.

    ``start()`` launches every spec in order, except those whose
    ``start_when`` is not yet true: ``poll()`` starts them once it is.
    ``poll()`` also reaps exits and restarts crashed children when their
    backoff is due. It returns None while the run goes on, 0 once every
    ``final`` child exited with 0 (or, with no final child, every child
    did), or the exit code of a child that crashed with no restarts left.
    A non-final child that exits with 0 (a capture at the end of its file)
    is left stopped. ``stop()`` ends every child still running, with the
    processes it started in its group, and waits for it; it is safe to
    call twice.

    PR_SET_PDEATHSIG fires when the *thread* that started a child exits, so
    drive a Supervisor from a thread that outlives it (the main thread).
    ``pids`` lists every child ever started, for checks that none is left.
    """

    def __init__(self, specs: Sequence[ProcessSpec], *, max_restarts: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, stop_timeout_s: float = 5.0, cwd: Path | None = None,
                 env: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique, got {names}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if not 0 < backoff_s <= max_backoff_s:
            raise ValueError(f"backoff needs 0 < backoff_s <= max_backoff_s, got {backoff_s} and {max_backoff_s}")
        if stop_timeout_s <= 0:
            raise ValueError(f"stop_timeout_s must be > 0, got {stop_timeout_s}")
        self.children = [_Child(spec) for spec in specs]
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stop_timeout_s = stop_timeout_s
        self.cwd = cwd
        self.env = env
        self.clock = clock
        self.pids: list[int] = []
        self.stopping = False

    def _launch(self, child: _Child, argv: Sequence[str]) -> None:
        out = None
        if child.spec.log is not None:
            child.spec.log.parent.mkdir(parents=True, exist_ok=True)
            out = child.spec.log.open("ab")
        try:
            child.proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
                cwd=self.cwd, env=self.env, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        finally:
            if out is not None:
                # The child holds its own copy of the descriptor.
                out.close()
        child.exit_code = None
        self.pids.append(child.proc.pid)
        logger.debug("started %s (pid %d): %s", child.spec.name, child.proc.pid, " ".join(argv))

    def start(self) -> None:
        """Start every child that may start now, in the order given."""
        self._start_waiting()

    def _start_waiting(self) -> None:
        for child in self.children:
            if child.proc is None and (child.spec.start_when is None or child.spec.start_when()):
                self._launch(child, child.spec.argv)

    def running(self) -> dict[str, int]:
        """name -> pid of the children alive now (not yet reaped)."""
        return {c.spec.name: c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None}

    def restarts(self) -> dict[str, int]:
        """name -> how many times that child was restarted."""
        return {c.spec.name: c.restarts for c in self.children}

    def poll(self) -> int | None:
        """Start, reap, restart what is due, and say whether the run is over (see the class doc)."""
        if not self.stopping:
            self._start_waiting()
        now = self.clock()
        for child in self.children:
            if child.proc is not None and child.exit_code is None:
                returncode = child.proc.poll()
                if returncode is None:
                    continue
                child.exit_code = code = _exit_code(returncode)
                if code == 0 or self.stopping:
                    logger.debug("%s (pid %d) exited with %d", child.spec.name, child.proc.pid, code)
                    continue
                if child.restarts >= self.max_restarts:
                    logger.error("%s (pid %d) exited with %d; no restarts left (%d used), stopping",
                                 child.spec.name, child.proc.pid, code, child.restarts)
                    return code
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** child.restarts)
                child.restart_at = now + delay
                logger.warning("%s (pid %d) exited with %d; restart %d of %d in %.1f s", child.spec.name,
                               child.proc.pid, code, child.restarts + 1, self.max_restarts, delay)
            if child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.restarts += 1
                self._launch(child, child.spec.restart_argv or child.spec.argv)
        finals = [c for c in self.children if c.spec.final] or self.children
        if all(c.exit_code == 0 for c in finals):
            return 0
        return None

    def _signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                try:
                    # The child leads its own group (start_new_session), so this reaches its helpers too.
                    os.killpg(child.proc.pid, sig)
                except ProcessLookupError:
                    pass

    def _wait_all(self, deadline: float) -> bool:
        """True when every child has exited before ``deadline``."""
        while True:
            if not self.running():
                return True
            if self.clock() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGINT every child's group, then SIGTERM after half ``stop_timeout_s``, then SIGKILL; reap all."""
        self.stopping = True
        for child in self.children:
            child.restart_at = None
        start = self.clock()
        for sig, wait_until in ((signal.SIGINT, start + self.stop_timeout_s / 2),
                                (signal.SIGTERM, start + self.stop_timeout_s)):
            self._signal_all(sig)
            if self._wait_all(wait_until):
                break
        else:
            stuck = ", ".join(f"{name} (pid {pid})" for name, pid in self.running().items())
            logger.warning("killing %s: still running %.1f s after SIGINT", stuck, self.stop_timeout_s)
            self._signal_all(signal.SIGKILL)
        for child in self.children:
            if child.proc is not None:
                child.proc.wait()
                if child.exit_code is None:
                    child.exit_code = _exit_code(child.proc.returncode)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the pipeline ---------------------------------------------------------------------


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

    source: str = ""
    model: str = ""
    mode: Literal["live", "lossless"] = "live"
    stream: str | None = None
    frames: str | None = None
    scores: str | None = None
    csv: Path | None = None
    video: Path | None = None
    show: bool = False
    watch: bool = True
    fast: bool = False
    loop: bool = False
    fps: float | None = None
    restarts: int = 3
    stop_timeout_s: float = 5.0
    log: Path | None = None
    verbose: bool = False
    keys: Path | None = None

    def __post_init__(self) -> None:
        check(bool(self.source), "source: give a device index, video file, scan folder or 'synthetic'")
        check(bool(self.model), "model: give --model BUNDLE")
        check_stream_id(self.stream)
        check(not (self.fast and self.fps is not None), "fast: --fast and --fps exclude each other")
        check(self.fps is None or self.fps > 0, f"fps: must be > 0, got {self.fps}")
        check(self.restarts >= 0, f"restarts: must be >= 0, got {self.restarts}")
        check(self.stop_timeout_s > 0, f"stop_timeout_s: must be > 0, got {self.stop_timeout_s}")

    @property
    def records(self) -> bool:
        return self.csv is not None or self.video is not None or self.show


def _command(name: str, *args: str, verbose: bool = False) -> tuple[str, ...]:
    return (sys.executable, "-m", "tools.cli", name, *(["-v"] if verbose else []), *args)


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
        argv = _command("record", *args, *curve, verbose=v)
        # A restarted recorder adds to what its crashed predecessor wrote.
        specs.append(ProcessSpec("record", argv, final=True, restart_argv=(*argv, "--append"), log=config.log))
    if config.watch:
        specs.append(ProcessSpec("watch", _command("watch", "--sub", scores, "--stream", stream, "--until-eos",
                                                   *curve, verbose=v), final=True))
    worker = ["--model", config.model, "--sub", frames, "--pub", scores, "--mode", config.mode, *curve]
    if config.video is not None or config.show:
        worker.append("--forward-frames")
    consumers = config.records or config.watch
    if not consumers:
        worker += ["--exit-after-eos", "1"]
    specs.append(ProcessSpec("worker", _command("worker", *worker, verbose=v), final=not consumers, log=config.log))
    capture = [config.source, "--pub", frames, "--mode", config.mode, "--stream", stream, *curve]
    if config.fast:
        capture.append("--fast")
    if config.loop:
        capture.append("--loop")
    if config.fps is not None:
        capture += ["--fps", str(config.fps)]
    specs.append(ProcessSpec("capture", _command("capture", *capture, verbose=v), log=config.log,
                             start_when=capture_when))
    return specs


class WorkerReady:
    """A non-blocking check, true once a ready worker's heartbeat has arrived on the scores address.

    A worker's heartbeats are marked ``loading`` until its model is loaded
    and warm, and a subscriber misses whatever is published before it has
    connected. The capture is therefore held back until this check has seen
    a heartbeat that is not ``loading``: by then the consumers, started long
    before and retrying their connection every 100 ms, are subscribed too,
    and no first score is lost.
    """

    def __init__(self, addr: str, curve: keys.ClientKeys | None = None) -> None:
        self.ready = False
        self._sock = net.socket(zmq.SUB, connect=addr, subscribe=[protocol.topic(protocol.process_id("worker"))],
                                curve=curve)

    def __call__(self) -> bool:
        while not self.ready and (data := net.recv(self._sock, 0)) is not None:
            try:
                msg = protocol.decode(data)
            except protocol.ProtocolError:
                continue
            self.ready = isinstance(msg, protocol.Heartbeat) and not msg.loading
        return self.ready

    def close(self) -> None:
        self._sock.close(linger=0)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended: exit code (0: the stream ended normally), every child pid, restarts per process."""

    exit_code: int
    pids: tuple[int, ...]
    restarts: dict[str, int]


def _child_env() -> dict[str, str]:
    """The supervisor's environment, with the project importable from any working directory."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + path if path else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


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
                            env=_child_env())
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


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("run", "Run capture, worker and viewer/recorder as supervised processes.")
    p.add_argument("source", help="device index (0), video file, scan folder, or 'synthetic'")
    p.add_argument("--model", help="model bundle file")
    p.add_argument("--mode", choices=("live", "lossless"),
                   help="live (default): newest frame first, drops when slow; lossless: every frame, in order")
    p.add_argument("--stream", help="stream id (default: the source's name)")
    p.add_argument("--csv", type=Path, help="record every score to this CSV file")
    p.add_argument("--video", type=Path, help="record annotated frames to this .mp4 or .avi")
    p.add_argument("--show", action="store_true", default=None,
                   help="show annotated frames in a window (needs opencv-python and a display)")
    p.add_argument("--no-watch", action="store_false", dest="watch", default=None, help="no live table")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--fast", action="store_true", default=None, help="play a file as fast as it is scored")
    pace.add_argument("--fps", type=float, help="frame rate to play a file at (default: its own)")
    p.add_argument("--loop", action="store_true", default=None, help="replay a file or scan folder endlessly")
    p.add_argument("--restarts", type=int, help="restarts allowed per crashed process (default 3)")
    p.add_argument("--frames", help="frames address (default: a free loopback port)")
    p.add_argument("--scores", help="scores address (default: a free loopback port)")
    p.add_argument("--log", type=Path, help="append the logs of every process but the viewer to this file "
                   "(default: the terminal, or a temporary file while the live table is on it)")
    p.add_argument("--keys", type=Path, help="turn CURVE encryption on for every link: folder made by "
                   "fetalhead keys DIR (capture, worker and client key pairs)")
    p.add_argument("--config", help="TOML file with a [run] table")
    args = p.parse_args(argv)
    overrides = {name: getattr(args, name) for name in
                 ("source", "model", "mode", "stream", "csv", "video", "show", "watch", "fast", "fps", "loop",
                  "restarts", "frames", "scores", "log", "keys")}
    overrides["verbose"] = args.verbose or None

    def work() -> int:
        config = load(RunConfig, "run", args.config, overrides)
        with net.signal_stop((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop:
            return run_pipeline(config, stop).exit_code

    return run(work, verbose=args.verbose)
