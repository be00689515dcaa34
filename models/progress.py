"""How long library work reports its progress, without the library drawing anything.

Feature extraction, training and dataset writing take a ``Progress``; the
commands hand in one that draws rich progress bars (``tools.render``), tests
and library callers take ``NO_PROGRESS``, which draws nothing.
"""

from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    """One bar: ``update`` moves it (``advance`` steps more, or ``completed`` in all) and may change its text."""

    def update(self, *, advance: int = 0, completed: int | None = None, description: str | None = None,
               note: str | None = None) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    """Starts a ``Task`` of ``total`` steps, ``completed`` of them already done."""

    def task(self, description: str, total: int, completed: int = 0) -> Task: ...


class _Silent:
    def update(self, *, advance: int = 0, completed: int | None = None, description: str | None = None,
               note: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def task(self, description: str, total: int, completed: int = 0) -> _Silent:
        return self


NO_PROGRESS: Progress = _Silent()
