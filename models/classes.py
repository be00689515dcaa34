"""The two classes every frame is scored into, named once for bundles, data files, CSVs and views."""

from __future__ import annotations

NOT_HEAD, HEAD = 0, 1
CLASS_NAMES = ("Not-Head", "Head")


def class_name(decision: bool | int) -> str:
    """``Head`` for a true decision (or label 1), ``Not-Head`` otherwise."""
    return CLASS_NAMES[bool(decision)]
