"""Supervision of ``fetalhead`` child processes, for ``fetalhead run``, ``bench`` and ``soak`` alike.

``Supervisor`` is the process logic alone, driven by tests with tiny Python
children: it starts each ``ProcessSpec`` in its own session (so a Ctrl-C in
the terminal reaches only the supervisor, which then stops the children in
order), restarts a child that crashes with ``Backoff`` up to
``max_restarts`` times, but never one that exits with a configuration error
(``CONFIG_EXIT_CODES`` for ``fetalhead`` children), and on ``stop()`` sends
SIGINT, then SIGTERM, then SIGKILL to each child's process group until none
is left. On Linux each child also gets PR_SET_PDEATHSIG, so it is told to
stop even if the supervisor is killed with SIGKILL. ``error_line`` picks the
line of a child's log that says why it ended.

``subcommand`` is the command line of a ``fetalhead`` subcommand run as a
child, ``child_env`` the environment it needs. ``WorkerReady`` (a check
that never blocks, for ``ProcessSpec.start_when``) and ``wait_ready`` (one
that does) tell when a worker has loaded its model; ``rss_bytes`` reads a
child's resident memory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Collection, Sequence

import zmq

from models.errors import FetalheadError
from stream import net, protocol
from stream.keys import ClientKeys

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child between fork and exec should only call, not load.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_REPO_ROOT = Path(__file__).resolve().parent.parent
# A prefix, not a whole topic: a sharded or named worker beats as ``_worker.NAME``.
_WORKER_PREFIX = protocol.process_id("worker").encode()

# How a fetalhead child ends (tools.command): 1 after its one-line error (a setting, the source or the
# model is wrong) and 2 after a bad flag. Starting it again cannot help; any other status is a crash.
CONFIG_EXIT_CODES = frozenset({1, 2})
# What a fetalhead child prints before it exits with 1 (tools.command.run).
ERROR_PREFIX = "fetalhead: error: "
# The most of a child's log read to find its last error line.
_LOG_TAIL_BYTES = 64 * 1024


class Backoff:
    """Exponential retry delays: ``initial`` seconds, doubling up to ``maximum``."""

    def __init__(self, initial: float = 0.5, maximum: float = 8.0, factor: float = 2.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial} and {maximum}")
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.attempts = 0

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0 for the first), in seconds."""
        return min(self.maximum, self.initial * self.factor ** attempt)

    def next(self) -> float:
        """The delay before the next attempt, in seconds."""
        delay = self.delay(self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """It works again: the next failure starts from ``initial``."""
        self.attempts = 0


def subcommand(name: str, *args: str, verbose: bool = False) -> tuple[str, ...]:
    """The command line of ``fetalhead NAME ARGS`` in this Python: ``python -m tools.cli NAME [-v] ARGS``."""
    return (sys.executable, "-m", "tools.cli", name, *(["-v"] if verbose else []), *args)


def child_env() -> dict[str, str]:
    """This process's environment, with the project importable from any working directory."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + path if path else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def error_line(log: str) -> str | None:
    """The line of a child's log that says why it ended, None for an empty log.

    Its last one-line error (after ``ERROR_PREFIX``, which is left off), or
    else the last line: a traceback ends with the exception.
    """
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):]
    return lines[-1] if lines else None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes (VmRSS from /proc), None when it is gone or unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


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
    # Where this start's output begins in its log, which other children may share.
    log_from: int = 0


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
    is left stopped. A child that exits with one of ``config_exit_codes``
    is not restarted: the run is over with its code. ``failed`` then names
    the child that ended the run, and ``last_error`` gives its error line.
    ``stop()`` ends every child still running, with the processes it started
    in its group, and waits for it; it is safe to call twice.

    PR_SET_PDEATHSIG fires when the *thread* that started a child exits, so
    drive a Supervisor from a thread that outlives it (the main thread).
    ``pids`` lists every child ever started, for checks that none is left.
    """

    def __init__(self, specs: Sequence[ProcessSpec], *, max_restarts: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, stop_timeout_s: float = 5.0, cwd: Path | None = None,
                 env: dict[str, str] | None = None, config_exit_codes: Collection[int] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique, got {names}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if stop_timeout_s <= 0:
            raise ValueError(f"stop_timeout_s must be > 0, got {stop_timeout_s}")
        # One schedule for all: a child's restarts so far say where it is on it.
        self.backoff = Backoff(backoff_s, max_backoff_s)
        self.children = [_Child(spec) for spec in specs]
        self.max_restarts = max_restarts
        self.stop_timeout_s = stop_timeout_s
        self.cwd = cwd
        self.env = env
        self.config_exit_codes = frozenset(config_exit_codes)
        self.clock = clock
        self.pids: list[int] = []
        self.stopping = False
        self.failed: str | None = None

    def _launch(self, child: _Child, argv: Sequence[str]) -> None:
        out = None
        if child.spec.log is not None:
            child.spec.log.parent.mkdir(parents=True, exist_ok=True)
            out = child.spec.log.open("ab")
            child.log_from = out.tell()
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
                if code in self.config_exit_codes:
                    logger.error("%s (pid %d) exited with %d, an error in what it was given: not restarted, "
                                 "stopping", child.spec.name, child.proc.pid, code)
                    self.failed = child.spec.name
                    return code
                if child.restarts >= self.max_restarts:
                    logger.error("%s (pid %d) exited with %d; no restarts left (%d used), stopping",
                                 child.spec.name, child.proc.pid, code, child.restarts)
                    self.failed = child.spec.name
                    return code
                delay = self.backoff.delay(child.restarts)
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

    def last_error(self, name: str) -> str | None:
        """``error_line`` of what child ``name`` wrote to its log since its latest start; None without a log."""
        child = next(c for c in self.children if c.spec.name == name)
        if child.spec.log is None:
            return None
        try:
            with child.spec.log.open("rb") as fh:
                fh.seek(max(child.log_from, fh.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                return error_line(fh.read().decode("utf-8", "replace"))
        except OSError:
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


class WorkerReady:
    """A non-blocking check, true once a ready worker's heartbeat has arrived on the scores address.

    A worker's heartbeats are marked ``loading`` until its model is loaded
    and warm, and a subscriber misses whatever is published before it has
    connected. ``fetalhead run`` therefore holds the capture back until this
    check has seen a heartbeat that is not ``loading``: by then the
    consumers, started long before and retrying their connection every
    100 ms, are subscribed too, and no first score is lost.
    """

    def __init__(self, addr: str, curve: ClientKeys | None = None) -> None:
        self.ready = False
        self._sock = net.socket(zmq.SUB, connect=addr, subscribe=[_WORKER_PREFIX], curve=curve)

    def __call__(self, timeout_s: float = 0.0) -> bool:
        """Whether the worker is ready, waiting up to ``timeout_s`` seconds for its first ready heartbeat."""
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            data = net.recv(self._sock, max(0.0, deadline - time.monotonic()))
            if data is None:
                break
            try:
                msg = protocol.decode(data)
            except protocol.ProtocolError:
                continue
            self.ready = isinstance(msg, protocol.Heartbeat) and msg.role == "worker" and not msg.loading
        return self.ready

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> WorkerReady:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_ready(addr: str, *, timeout_s: float, curve: ClientKeys | None = None,
               alive: Callable[[], bool] | None = None, poll_s: float = 0.5) -> float:
    """Block until a worker publishing on ``addr`` is ready; returns the seconds waited.

    ``alive`` (e.g. ``lambda: process.poll() is None``) is asked every
    ``poll_s`` seconds; a FetalheadError (one line) says when it turns false
    or ``timeout_s`` passes first.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    with WorkerReady(addr, curve) as ready:
        while not ready(min(poll_s, max(0.0, deadline - time.monotonic()))):
            if alive is not None and not alive():
                raise FetalheadError(f"the worker on {addr} exited before it was ready")
            if time.monotonic() >= deadline:
                raise FetalheadError(f"no ready worker on {addr} within {timeout_s:g} s")
    return time.monotonic() - started
