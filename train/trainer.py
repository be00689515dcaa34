"""Fitting one model: window batches, focal loss, early stopping, resumable epochs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd

from models.cnn_lstm import build_cnn_lstm, build_temporal_head
from models.config import ModelConfig
from train.config import TrainConfig
from train.data import windows
from train.files import replacing, write_json

log = logging.getLogger(__name__)


def focal_loss(config: TrainConfig) -> keras.losses.Loss:
    """Binary focal loss; alpha weights the Head class.

    Keras ignores alpha unless class balancing is on, so it is always on here.
    """
    return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=config.focal_alpha,
                                                gamma=config.focal_gamma)


class WindowBatches(keras.utils.PyDataset):
    """Batches of consecutive-frame windows drawn from per-scan arrays.

    inputs: per scan, float32 (N, F) features or (N, S, S, 3) images; labels:
    per scan, int (N,). Windows never cross scans. Yields x (B, W, ...) and
    y float32 (B, W); reshuffled every epoch from ``seed`` when ``shuffle``.
    """

    def __init__(self, inputs: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, window: int,
                 stride: int, batch_size: int, shuffle: bool, seed: int) -> None:
        super().__init__()
        self.inputs = list(inputs)
        self.labels = [np.asarray(l, np.float32) for l in labels]
        index = [(s, start) for s, x in enumerate(self.inputs)
                 for start in windows(len(x), window, stride)[:, 0]]
        self.index = np.asarray(index, np.int64).reshape(-1, 2)
        self.window = window
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.index))
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.index[self.order[i * self.batch_size:(i + 1) * self.batch_size]]
        x = np.stack([self.inputs[s][start:start + self.window] for s, start in rows])
        y = np.stack([self.labels[s][start:start + self.window] for s, start in rows])
        return x, y

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every window at once, in index order: x (n, W, ...), y float32 (n, W).

        For cached features this fits in memory and lets Keras slice batches
        itself, which is about twice as fast as a Python dataset per step.
        """
        x = np.stack([self.inputs[s][start:start + self.window] for s, start in self.index])
        y = np.stack([self.labels[s][start:start + self.window] for s, start in self.index])
        return x, y


class BestAndPatience(keras.callbacks.Callback):
    """Early stopping on validation loss that survives a restart.

    Keras's EarlyStopping keeps its best weights and patience count in memory,
    so a resumed fit would forget them; here both live in the fold folder.
    """

    def __init__(self, folder: Path, patience: int | None) -> None:
        super().__init__()
        self.folder = folder
        self.patience = patience
        self.state_path = folder / "early_stopping.json"
        self.weights_path = folder / "best.weights.h5"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.best = state.get("best", math.inf)
        self.best_epoch = state.get("best_epoch", -1)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is not None and math.isfinite(loss) and loss < self.best:
            self.best, self.best_epoch = float(loss), epoch
            with replacing(self.weights_path) as tmp:
                self.model.save_weights(tmp)
        write_json(self.state_path, {"best": self.best, "best_epoch": self.best_epoch, "epoch": epoch})
        if self.patience is not None and epoch - self.best_epoch >= self.patience:
            log.info("early stopping at epoch %d: best val_loss %.5f at epoch %d", epoch + 1, self.best,
                     self.best_epoch + 1)
            self.model.stop_training = True

    def restore_best(self) -> None:
        if self.weights_path.exists():
            self.model.load_weights(self.weights_path)


class HistoryLog(keras.callbacks.Callback):
    """The per-epoch log (epoch, losses) in a CSV file that is rewritten whole after every epoch.

    Keras's CSVLogger appends, so a kill in the middle of a line would leave
    a torn row for the resumed run to read; a rewrite through ``replacing``
    leaves the previous epoch's file or the new one.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.rows = read_history(path).to_dict("records")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}})
        with replacing(self.path) as tmp:
            pd.DataFrame(self.rows).to_csv(tmp, index=False)


class EpochBar(keras.callbacks.Callback):
    """One rich progress bar over epochs, with the latest losses."""

    def __init__(self, description: str, epochs: int, enabled: bool) -> None:
        super().__init__()
        self.description = description
        self.epochs = epochs
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, logs=None) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[losses]}"), TimeElapsedColumn())
        self.bar.start()
        start = getattr(self.model, "_initial_epoch", 0) or 0
        self.task = self.bar.add_task(self.description, total=self.epochs, completed=start, losses="")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.bar is None:
            return
        logs = logs or {}
        losses = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if "loss" in k)
        self.bar.update(self.task, completed=epoch + 1, losses=losses)

    def on_train_end(self, logs=None) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def build_trainable(model_config: ModelConfig, train_config: TrainConfig, feature_dim: int,
                    extractor: keras.Model | None) -> tuple[keras.Model, keras.Model]:
    """(model to fit, its temporal head). With an extractor, the model is end to end."""
    head = build_temporal_head(model_config, feature_dim)
    if extractor is None:
        model = head
    else:
        extractor.trainable = True
        model = build_cnn_lstm(model_config, extractor, head)
    model.compile(optimizer=keras.optimizers.Adam(train_config.learning_rate), loss=focal_loss(train_config))
    return model, head


def fit(model: keras.Model, folder: Path, train_data: WindowBatches, val_data: WindowBatches | None, *,
        epochs: int, train_config: TrainConfig, description: str, in_memory: bool) -> pd.DataFrame:
    """Fit ``model`` in ``folder``, resuming from its last finished epoch.

    ``in_memory`` fits on all windows as arrays (cached features), else
    batch by batch (images, for --train-backbone). Returns the per-epoch log
    (epoch, loss, val_loss). Weights end at the best
    validation epoch when there is validation data and early stopping is on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    patience = train_config.patience if train_config.early_stopping else None
    best = BestAndPatience(folder, patience if val_data is not None else None)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(folder / "backup"), double_checkpoint=True),
        HistoryLog(folder / "history.csv"),
        best,
        EpochBar(description, epochs, train_config.progress),
    ]
    state = json.loads(best.state_path.read_text()) if best.state_path.exists() else {}
    last = state.get("epoch", -1)
    # A fit that ended (all epochs, or stopped early) before the fold's result
    # was written must not start again: its backup is already gone.
    finished = last + 1 >= epochs or (best.patience is not None and last - state.get("best_epoch", -1) >= patience)
    fitted = folder / "fitted.weights.h5"
    if not finished or not fitted.exists():
        if in_memory:
            x, y = train_data.arrays()
            model.fit(x, y, batch_size=train_config.batch_size, shuffle=True, epochs=epochs, callbacks=callbacks,
                      validation_data=val_data.arrays() if val_data is not None else None, verbose=0)
        else:
            model.fit(train_data, validation_data=val_data, epochs=epochs, callbacks=callbacks, verbose=0)
        with replacing(fitted) as tmp:
            model.save_weights(tmp)
    else:
        # Build the optimizer so its saved state loads too, as BackupAndRestore does.
        model.optimizer.build(model.trainable_variables)
        model.load_weights(fitted)
    if val_data is not None and train_config.early_stopping:
        best.restore_best()
    return read_history(folder / "history.csv")


def read_history(path: Path) -> pd.DataFrame:
    """The epoch log; after a restart an epoch may be logged twice, the last counts."""
    if not path.exists():
        return pd.DataFrame(columns=["epoch", "loss", "val_loss"])
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").reset_index(drop=True)
