"""What the train tests share: a small phantom dataset, one full training run on it, and a recording Progress."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.config import ModelConfig
from train.config import TrainConfig
from train.synth import SynthConfig, synth_dataset

MODEL = ModelConfig(backbone="tiny", weights="none", image_size=48, lstm_units=(16, 8), dense_units=8)


def quick(tmp_path: Path, **changes) -> TrainConfig:
    """A TrainConfig for a run of seconds: 2 folds of 2 epochs, its feature cache under ``tmp_path``."""
    values = dict(folds=2, epochs=2, learning_rate=1e-3, stride=2, cache_dir=str(tmp_path / "cache"))
    values.update(changes)
    return TrainConfig(**values)


class RecordedTask:
    def __init__(self, description: str, total: int, completed: int) -> None:
        self.description, self.total, self.completed = description, total, completed
        self.descriptions = [description]
        self.notes: list[str] = []
        self.closed = False

    def update(self, *, advance: int = 0, completed: int | None = None, description: str | None = None,
               note: str | None = None) -> None:
        self.completed = self.completed + advance if completed is None else completed
        if description is not None:
            self.descriptions.append(description)
        if note is not None:
            self.notes.append(note)

    def close(self) -> None:
        self.closed = True


class RecordingProgress:
    """A ``models.progress.Progress`` that keeps every task it was asked for."""

    def __init__(self) -> None:
        self.tasks: list[RecordedTask] = []

    def task(self, description: str, total: int, completed: int = 0) -> RecordedTask:
        self.tasks.append(RecordedTask(description, total, completed))
        return self.tasks[-1]


@pytest.fixture
def recording_progress() -> RecordingProgress:
    return RecordingProgress()


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """Six synthetic scans of 40 frames, 72x96."""
    root = tmp_path_factory.mktemp("data") / "scans"
    synth_dataset(root, SynthConfig(scans=6, frames=40, height=72, width=96, seed=3))
    return root


@pytest.fixture(scope="session")
def full_run(phantom, tmp_path_factory):
    """A whole run on ``phantom`` with scan_005 held out: (tmp folder, TrainConfig, summary, what it reported)."""
    from train.kfold import train

    tmp = tmp_path_factory.mktemp("full")
    config = quick(tmp, holdout=("scan_005",))
    progress = RecordingProgress()
    return tmp, config, train(phantom, tmp / "run", MODEL, config, progress=progress), progress
