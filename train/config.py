"""Settings of training (``TrainConfig``) and of the dataset check (``CheckConfig``).

TrainConfig's defaults are the seed's: focal loss 2.0/0.79, Adam 1e-5, batch 8, 50 epochs,
but for one: Adam's learning rate depends on what is trained. The seed's 1e-5
suits a head on frozen pretrained features over 24,000 frames; a network whose
backbone trains from random weights on a few hundred frames barely moves at
it, so with ``train_backbone`` the default is ``SCRATCH_LEARNING_RATE``
(measured: docs/training.md).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from models.settings import check, setting


SEED_LEARNING_RATE = 1e-5
SCRATCH_LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the temporal head is trained and evaluated by k-fold cross-validation (TOML table ``[train]``).

    ``fold`` runs that one fold alone (0-based) for runs spread over machines.
    ``final_epochs`` None means the median of the folds' best epochs.
    ``threshold_rule`` picks each fold's threshold on its training scans and
    the bundle's threshold on the pooled out-of-fold scores. The bundle's
    model is chosen by ``bundle_heads`` and calibrated by ``calibrate``: the
    defaults are what held best on held-out scans (docs/calibration.md). ``xla`` compiles
    the training step with XLA: "auto" does so for packs of several heads
    long enough to repay the compile (see ``train.trainer.compile_with_xla``).
    ``ray`` is a Ray cluster's address (``train.cluster``), "" to train here.
    ``progress`` is read by the command, which draws the bars.
    """

    folds: int = setting(5, "folds of the cross-validation, grouped by scan")
    fold: int | None = setting(None, "run only this fold (0-based), for runs spread over machines",
                               shown="every fold")
    epochs: int = setting(50, "most epochs per fold")
    final_epochs: int | None = setting(None, "epochs of the final model", shown="the folds' median best epoch")
    final: bool = setting(True, "write the bundle (with bundle_heads final, after training the final model on "
                                "every non-holdout scan)")
    batch_size: int = setting(8, "windows per training batch")
    learning_rate: float | None = setting(None, "Adam's learning rate",
                                          shown=f"{SEED_LEARNING_RATE:g} for a frozen backbone, "
                                                f"{SCRATCH_LEARNING_RATE:g} with --train-backbone")
    focal_gamma: float = setting(2.0, "focusing parameter of the focal loss")
    focal_alpha: float = setting(0.79, "weight of the Head class in the focal loss")
    early_stopping: bool = setting(True, "stop a fold when its validation loss stops improving")
    patience: int = setting(30, "epochs without a better validation loss before a fold stops")
    stride: int = setting(1, "step in frames between training windows")
    seed: int = setting(0, "seed of the folds, the batches and the weights")
    holdout: tuple[str, ...] = setting((), "scans left out of the folds for a final test")
    threshold_rule: Literal["calibrated", "youden", "f1"] = setting(
        "calibrated", "how the decision threshold is chosen (calibrated: where Platt scaling gives 0.5)")
    calibrate: bool = setting(True, "the bundle scores through Platt scaling fitted on the pooled out-of-fold "
                                    "scores, so a score is the probability of Head (docs/calibration.md)")
    bundle_heads: Literal["auto", "folds", "final"] = setting(
        "auto", "what the bundle scores with: folds (the fold models' heads averaged, frozen backbone only), final "
                "(one model trained on every non-holdout scan); auto: folds unless the backbone trains")
    train_backbone: bool = setting(False, "train the backbone too (no feature cache), for when no pretrained "
                                          "weights exist")
    cache_dir: str = setting("", "feature cache folder", shown="$FETALHEAD_CACHE or ~/.cache/fetalhead/features")
    extract_batch: int = setting(32, "frames per batch through the backbone when extracting features")
    xla: Literal["auto", "on", "off"] = setting("auto", "compile training steps with XLA (auto: for long runs "
                                                        "of several heads)")
    ray: str = setting("", "train the folds and the final model as tasks on the Ray cluster at this address "
                           "(auto: the one running here, else a new local one); docs/cluster.md",
                       shown="no cluster")
    progress: bool = setting(True, "draw progress bars")

    def __post_init__(self) -> None:
        if self.learning_rate is None:
            # Resolved here so that the report, the bundle and a resumed run all record the value used.
            object.__setattr__(self, "learning_rate",
                               SCRATCH_LEARNING_RATE if self.train_backbone else SEED_LEARNING_RATE)
        if self.bundle_heads == "auto":
            object.__setattr__(self, "bundle_heads", "final" if self.train_backbone else "folds")
        check(not (self.bundle_heads == "folds" and self.train_backbone),
              "bundle_heads: folds needs a frozen backbone (with train_backbone every fold trains a backbone of its "
              "own); use final")
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


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """Settings of the dataset check (``train.data.check_dataset``); TOML table ``[data]``."""

    window: int = setting(8, "frames per training window; shorter scans are left out")
    check_images: bool = setting(True, "decode every image and video frame (--no-images is faster)", flag="images")

    def __post_init__(self) -> None:
        check(self.window >= 1, f"window: must be >= 1, got {self.window}")
