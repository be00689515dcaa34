"""Result files written whole or not at all: a temporary name next to the target, then a rename.

``os.replace`` is atomic within one file system, so a run killed at any
moment leaves the old file or the new one, never half of one, and a rerun
never reads a torn result. The temporary name is fixed per target
(``predictions.csv`` -> ``predictions.partial.csv``), so one left behind by
a kill is overwritten by the next write instead of piling up; it keeps the
target's suffixes, which writers such as Keras and matplotlib read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


def partial_path(path: Path) -> Path:
    """The temporary name of ``path``: ``.partial`` after its stem (``best.weights.h5`` -> ``best.partial.weights.h5``)."""
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f"{stem}.partial{dot}{suffixes}")


def is_partial(path: Path) -> bool:
    """True for a temporary name made by ``partial_path``."""
    rest = path.name.partition(".")[2]
    return rest == "partial" or rest.startswith("partial.")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only when the block succeeds.

    The parent folder is created; on an error the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """``text`` to ``path``, atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented JSON to ``path``, atomically (non-JSON values as ``str``)."""
    write_text(path, json.dumps(value, indent=2, default=str))


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst``, atomically."""
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def copy_tree(src: str | Path, dst: str | Path, *, last: str | None = None) -> None:
    """Copy every file under ``src`` to ``dst`` (merging into what is there), each atomically.

    ``last`` names a file copied after all the others: the one whose presence
    says the folder is complete (a fold's ``result.json``).
    """
    src, dst = Path(src), Path(dst)
    # A temporary file left by a killed writer is not a result.
    files = sorted(p for p in src.rglob("*") if p.is_file() and not is_partial(p))
    files.sort(key=lambda p: p.name == last)
    for path in files:
        copy_file(path, dst / path.relative_to(src))
