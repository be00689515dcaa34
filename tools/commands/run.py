"""``fetalhead run``: capture, worker and viewer/recorder as separate, supervised processes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from stream import net
from stream.run import RunConfig, RunResult, check_inputs, run_pipeline
from tools.command import add_config, add_settings, parser, run, settings
from tools.sources import open_source

_EPILOG = ("A video file or scan folder is replayed in lossless mode unless --mode live is given: every frame is "
           "scored, in order, the capture waiting for the worker. A device or 'synthetic' runs live. The source "
           "and the model are checked before any process starts; a process that fails on what it was given is "
           "not restarted, only crashes are.")


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """This process's log lines go to ``path`` instead of the terminal, where they would tear the table apart."""
    root = logging.getLogger()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
    saved, root.handlers = root.handlers, [handler]
    try:
        yield
    finally:
        root.handlers = saved
        handler.close()


def _report(result: RunResult, config: RunConfig) -> None:
    """After the table: the frames live mode lost at the start, and why the run failed, with where the log is.

    A child without a log file shares the terminal, where its error line already is.
    """
    if result.lost_at_start:
        print(f"fetalhead run: live mode: the first {result.lost_at_start} frames were published before the worker "
              f"had subscribed and were not scored (--mode lossless scores every frame)", file=sys.stderr)
    if result.failed is not None and config.log is not None:
        why = f": {result.error}" if result.error else ""
        print(f"fetalhead: error: {result.failed} exited with {result.exit_code}{why} (log: {config.log})",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("run", "Run capture, worker and viewer/recorder as supervised processes.")
    p.epilog = _EPILOG
    p.add_argument("source", help="device index (0), video file, scan folder, or 'synthetic'")
    add_settings(p.add_mutually_exclusive_group(), RunConfig, only=("fast", "fps"))
    # -v is the parser's own flag; the children get it too.
    add_settings(p, RunConfig, exclude=("source", "fast", "fps", "verbose"))
    add_config(p, "run")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, RunConfig, "run", source=args.source, verbose=args.verbose or None)
        check_inputs(config, open_source)
        # While the live table has the terminal, every other line would tear it apart: they go to a file.
        table = config.watch and sys.stdout.isatty()
        temporary = config.log is None and table
        if temporary:
            config = dataclasses.replace(config, log=Path(tempfile.gettempdir()) / f"fetalhead-run-{os.getpid()}.log")
        if table:
            print(f"fetalhead run: the processes log to {config.log}", file=sys.stderr)
        if config.view:
            print(f"fetalhead run: live web page on http://{config.view_addr}/", file=sys.stderr)
        with net.signal_stop((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop, \
                _logging_to(config.log) if table else contextlib.nullcontext():
            result = run_pipeline(config, stop)
        _report(result, config)
        if temporary and result.exit_code in (0, 130):
            config.log.unlink(missing_ok=True)
        return result.exit_code

    return run(work, verbose=args.verbose)
