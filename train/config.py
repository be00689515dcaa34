"""Training settings; defaults are the seed's (focal loss 2.0/0.79, Adam 1e-5, batch 8, 50 epochs)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from models.config import check


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the temporal head is trained and evaluated by k-fold cross-validation.

    ``fold`` runs that one fold alone (0-based) for runs spread over machines.
    ``final_epochs`` None means the median of the folds' best epochs.
    ``threshold_rule`` picks each fold's threshold on its training scans and
    the bundle's threshold on the pooled out-of-fold scores. ``xla`` compiles
    the training step with XLA: "auto" does so for packs of several heads
    long enough to repay the compile (see ``train.trainer.compile_with_xla``).
    """

    folds: int = 5
    fold: int | None = None
    epochs: int = 50
    final_epochs: int | None = None
    final: bool = True
    batch_size: int = 8
    learning_rate: float = 1e-5
    focal_gamma: float = 2.0
    focal_alpha: float = 0.79
    early_stopping: bool = True
    patience: int = 30
    stride: int = 1
    seed: int = 0
    holdout: tuple[str, ...] = ()
    threshold_rule: Literal["youden", "f1"] = "youden"
    train_backbone: bool = False
    cache_dir: str = ""
    extract_batch: int = 32
    xla: Literal["auto", "on", "off"] = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.folds >= 2, f"folds: must be >= 2, got {self.folds}")
        check(self.fold is None or 0 <= self.fold < self.folds,
              f"fold: must be 0..{self.folds - 1} for {self.folds} folds, got {self.fold}")
        check(self.epochs >= 1, f"epochs: must be >= 1, got {self.epochs}")
        check(self.final_epochs is None or self.final_epochs >= 1,
              f"final_epochs: must be >= 1, got {self.final_epochs}")
        check(self.batch_size >= 1, f"batch_size: must be >= 1, got {self.batch_size}")
        check(self.learning_rate > 0, f"learning_rate: must be > 0, got {self.learning_rate}")
        check(self.focal_gamma >= 0, f"focal_gamma: must be >= 0, got {self.focal_gamma}")
        check(0 < self.focal_alpha < 1, f"focal_alpha: must be in (0, 1), got {self.focal_alpha}")
        check(self.patience >= 1, f"patience: must be >= 1, got {self.patience}")
        check(self.stride >= 1, f"stride: must be >= 1, got {self.stride}")
        check(self.extract_batch >= 1, f"extract_batch: must be >= 1, got {self.extract_batch}")
