"""Fitting models in packs: window batches, focal loss, early stopping, resumable epochs.

A pack is several models (the k folds' heads, and the final model's) fitted
side by side as one Keras model: each member gets its own batches of its own
windows and its own loss, and nothing else is shared (batch normalisation
sees only the member's batch, dropout and gradients stay the member's). On
a CPU a training step of the two LSTMs over 8 time steps at batch 8 is
bound by per-operation overhead, not arithmetic, so one step for five heads
costs far less than five steps; under XLA a pack of five runs at about a
fifth of the per-head cost of separate fits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd

from models.progress import NO_PROGRESS, Progress
from models.windows import window_starts
from train.config import TrainConfig
from train.files import replacing, write_json

log = logging.getLogger(__name__)


def focal_loss(config: TrainConfig) -> keras.losses.Loss:
    """Binary focal loss; alpha weights the Head class.

    Keras ignores alpha unless class balancing is on, so it is always on here.
    """
    return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=config.focal_alpha,
                                                gamma=config.focal_gamma)


class Windows:
    """Every window of ``window`` consecutive frames of some scans, by (scan, start).

    inputs: per scan, float32 (N, F) features or (N, S, S, 3) images; labels:
    per scan, int (N,). Windows never cross scans; starts are ``stride`` apart.
    """

    def __init__(self, inputs: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, window: int,
                 stride: int) -> None:
        self.inputs = list(inputs)
        self.labels = [np.asarray(l, np.float32) for l in labels]
        index = [(s, start) for s, x in enumerate(self.inputs) for start in window_starts(len(x), window, stride)]
        self.index = np.asarray(index, np.int64).reshape(-1, 2)
        self.window = window

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``rows`` of the index: x (B, W, ...), y float32 (B, W)."""
        picked = self.index[rows]
        x = np.stack([self.inputs[s][start:start + self.window] for s, start in picked])
        y = np.stack([self.labels[s][start:start + self.window] for s, start in picked])
        return x, y


class PackBatches(keras.utils.PyDataset):
    """Batches for a pack: step i gives every member a full batch of its own windows.

    An epoch is as many steps as the member with the most windows needs; a
    member with fewer draws the difference again at random from its own
    windows, so each member sees every one of its windows once per epoch
    (a few twice) and every batch has the same shape, which XLA compiles once.
    Each member's order is reshuffled every epoch from its own seed.
    """

    def __init__(self, sets: Sequence[Windows], batch_size: int, seeds: Sequence[int]) -> None:
        super().__init__()
        self.sets = list(sets)
        self.batch_size = batch_size
        self.steps = epoch_steps(self.sets, batch_size)
        self.rngs = [np.random.default_rng(seed) for seed in seeds]
        self.orders = [self._order(k) for k in range(len(self.sets))]

    def _order(self, k: int) -> np.ndarray:
        n, rng = len(self.sets[k]), self.rngs[k]
        extra = rng.choice(n, self.steps * self.batch_size - n, replace=True)
        return np.concatenate([rng.permutation(n), extra])

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
        pairs = [w.take(order[batch]) for w, order in zip(self.sets, self.orders)]
        return tuple(x for x, _ in pairs), tuple(y for _, y in pairs)

    def on_epoch_end(self) -> None:
        self.orders = [self._order(k) for k in range(len(self.sets))]


@dataclasses.dataclass
class Member:
    """One model of a pack: a fold's head (with validation windows) or the final model's.

    model maps windows (B, W, ...) to per-frame scores (B, W) and is trained
    in place; its history, early-stopping state and weights live in ``folder``.
    """

    name: str
    folder: Path
    model: keras.Model
    train: Windows
    val: Windows | None
    epochs: int
    seed: int


@dataclasses.dataclass
class MemberState:
    """A member's early-stopping state, kept in its folder so that a resumed run keeps it.

    ``pack`` names the pack it was trained in: a member found in another,
    unfinished pack starts afresh, since that pack's backup is not ours.
    """

    pack: str
    best: float = math.inf
    best_epoch: int = -1
    epoch: int = -1
    stopped: bool = False

    @classmethod
    def load(cls, folder: Path, pack: str) -> MemberState:
        path = folder / "early_stopping.json"
        state = cls(**json.loads(path.read_text())) if path.exists() else cls(pack)
        if state.pack != pack and not state.stopped:
            log.info("%s: left unfinished in another pack (%s); training it afresh", folder, state.pack)
            for name in ("early_stopping.json", "history.csv", "best.weights.h5", "fitted.weights.h5"):
                (folder / name).unlink(missing_ok=True)
            state = cls(pack)
        return state

    def store(self, folder: Path) -> None:
        write_json(folder / "early_stopping.json", dataclasses.asdict(self))


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
    """One ``models.progress`` task over a pack's epochs, noting the latest losses."""

    def __init__(self, progress: Progress, description: str, epochs: int) -> None:
        super().__init__()
        self.progress = progress
        self.description = description
        self.epochs = epochs
        self.task = None

    def on_train_begin(self, logs=None) -> None:
        start = getattr(self.model, "_initial_epoch", 0) or 0
        self.task = self.progress.task(self.description, self.epochs, start)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        losses = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if "loss" in k)
        self.task.update(completed=epoch + 1, note=losses)

    def on_train_end(self, logs=None) -> None:
        self.task.close()
        self.task = None


class PackMonitor(keras.callbacks.Callback):
    """Per member, after every epoch: validation loss, history, best weights, and when to stop.

    Keras's EarlyStopping watches one model and keeps its state in memory;
    here every member stops on its own (patience on its validation loss, or
    its epochs), with its state in its folder so that a resumed run keeps it.
    A stopped member's weights are saved then, so the steps the pack runs
    for the others afterwards change nothing of its result. The pack stops
    when every member has. History rows hold the member's training loss,
    validation loss and the pack's wall time for the epoch (``seconds``).
    """

    def __init__(self, members: Sequence[Member], states: Sequence[MemberState], train_config: TrainConfig,
                 chunk: int) -> None:
        super().__init__()
        self.members = list(members)
        self.states = list(states)
        self.patience = train_config.patience if train_config.early_stopping else None
        self.loss = focal_loss(train_config)
        self.chunk = chunk
        self.histories = [HistoryLog(m.folder / "history.csv") for m in self.members]

    def validation_losses(self, members: Sequence[int]) -> dict[int, float]:
        """Focal loss over each of ``members``' validation windows, as Keras's val_loss would be.

        Through the pack's own compiled predict, all members at once in
        chunks of one shape (short ones padded), so it is traced once.
        """
        if not members:
            return {}
        sizes = [len(m.val) if k in members else 0 for k, m in enumerate(self.members)]
        chunk = min(self.chunk, max(sizes))
        totals = dict.fromkeys(members, 0.0)
        for start in range(0, max(sizes), chunk):
            xs, ys = [], {}
            for k, member in enumerate(self.members):
                x = np.zeros((chunk, member.train.window, *member.train.inputs[0].shape[1:]), np.float32)
                rows = np.arange(start, min(start + chunk, sizes[k]))
                if len(rows):
                    x[:len(rows)], ys[k] = member.val.take(rows)
                xs.append(x)
            scores = self.model.predict_on_batch(xs)
            # A pack of one is a one-output model: Keras returns the array alone.
            scores = scores if isinstance(scores, (list, tuple)) else [scores]
            for k, y in ys.items():
                totals[k] += float(self.loss(y, scores[k][:len(y)])) * len(y)
        return {k: totals[k] / sizes[k] for k in members}

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs if logs is not None else {}
        active = [k for k, state in enumerate(self.states) if not state.stopped]
        val_losses = self.validation_losses([k for k in active if self.members[k].val is not None])
        seconds = time.perf_counter() - self.started
        for k in active:
            member, state = self.members[k], self.states[k]
            row = {"loss": float(logs.get(f"member_{k}_loss", logs.get("loss", math.nan))), "seconds": seconds}
            if k in val_losses:
                row["val_loss"] = val_losses[k]
                if math.isfinite(row["val_loss"]) and row["val_loss"] < state.best:
                    state.best, state.best_epoch = row["val_loss"], epoch
                    with replacing(member.folder / "best.weights.h5") as tmp:
                        member.model.save_weights(tmp)
            self.histories[k].on_epoch_end(epoch, row)
            state.epoch = epoch
            patience_out = (self.patience is not None and member.val is not None
                            and epoch - state.best_epoch >= self.patience)
            if patience_out or epoch + 1 >= member.epochs:
                if patience_out:
                    log.info("%s: early stopping at epoch %d: best val_loss %.5f at epoch %d", member.name,
                             epoch + 1, state.best, state.best_epoch + 1)
                with replacing(member.folder / "fitted.weights.h5") as tmp:
                    member.model.save_weights(tmp)
                state.stopped = True
            state.store(member.folder)
        if val_losses:
            logs["val_loss"] = float(np.mean(list(val_losses.values())))
        if all(s.stopped for s in self.states):
            self.model.stop_training = True


# Long runs (at least this many pack steps) pay for compiling: a pack of six
# heads takes about 50 s to compile under XLA on this 2-core machine against
# 25 s to trace, then steps 25% faster (56 against 76 ms); a single head steps
# faster without XLA. Short runs (tests, the demo) never repay the compile.
LONG_RUN_STEPS = 2000


def compile_with_xla(train_config: TrainConfig, members: int, steps: int) -> bool:
    """Whether a pack of ``members`` running ``steps`` steps in all is compiled with XLA.

    ``train_config.xla`` "on"/"off" forces the answer; other backends than
    TensorFlow compile anyway.
    """
    if keras.backend.backend() != "tensorflow" or train_config.xla == "on":
        return True
    return train_config.xla == "auto" and steps >= LONG_RUN_STEPS and members >= 2


def epoch_steps(sets: Sequence[Windows], batch_size: int) -> int:
    """Steps in one epoch of a pack (see ``PackBatches``): what its largest member needs."""
    return max(math.ceil(len(w) / batch_size) for w in sets)


def build_pack(members: Sequence[Member], train_config: TrainConfig, *, xla: bool) -> keras.Model:
    """The members side by side: input k and output ``member_k`` are member k's, losses summed.

    Their weights are shared with the members' own models, so training the
    pack trains each of them. Members must have distinct model names.
    """
    inputs, outputs = [], []
    for k, member in enumerate(members):
        x = keras.Input(member.model.input_shape[1:], name=f"input_{k}")
        inputs.append(x)
        outputs.append(keras.layers.Identity(name=f"member_{k}")(member.model(x)))
    pack = keras.Model(inputs, outputs, name="pack")
    # Only TensorFlow takes a plain on/off; JAX compiles anyway, and "auto" keeps torch.compile off.
    jit = xla if keras.backend.backend() == "tensorflow" else "auto"
    pack.compile(optimizer=keras.optimizers.Adam(train_config.learning_rate),
                 loss=[focal_loss(train_config)] * len(members), jit_compile=jit)
    return pack


def fit_pack(members: Sequence[Member], folder: Path, train_config: TrainConfig, *, xla: bool,
             description: str, progress: Progress = NO_PROGRESS) -> list[pd.DataFrame]:
    """Fit every member at once in one pack, resuming from the pack's last finished epoch.

    ``folder`` holds the pack's backup (named for its members, so a pack of
    other members never resumes from it). Each member ends with its weights
    from its best validation epoch when it has validation windows and early
    stopping is on, else from its last epoch. Returns the members' per-epoch
    logs (epoch, loss, val_loss). ``progress`` gets a task over the epochs,
    named ``description``.
    """
    for member in members:
        member.folder.mkdir(parents=True, exist_ok=True)
    states = [MemberState.load(m.folder, folder.name) for m in members]
    pack = build_pack(members, train_config, xla=xla)
    finished = all(s.stopped and (m.folder / "fitted.weights.h5").exists() for m, s in zip(members, states))
    if not finished:
        images = members[0].train.inputs[0].ndim > 2
        callbacks = [
            keras.callbacks.BackupAndRestore(str(folder / "backup"), double_checkpoint=True),
            PackMonitor(members, states, train_config, chunk=train_config.batch_size if images else 256),
            EpochBar(progress, description, max(m.epochs for m in members)),
        ]
        batches = PackBatches([m.train for m in members], train_config.batch_size, [m.seed for m in members])
        # shuffle=False: Keras would reorder the batches from Python's global random state.
        pack.fit(batches, epochs=max(m.epochs for m in members), callbacks=callbacks, shuffle=False, verbose=0)
    for member in members:
        member.model.load_weights(kept_weights(member.folder, member.val is not None, train_config))
    return [read_history(m.folder / "history.csv") for m in members]


def kept_weights(folder: Path, validated: bool, train_config: TrainConfig) -> Path:
    """The weights file a trained member ends with: its best epoch's under early stopping, else its last."""
    best = folder / "best.weights.h5"
    return best if validated and train_config.early_stopping and best.exists() else folder / "fitted.weights.h5"


def read_history(path: Path) -> pd.DataFrame:
    """The epoch log; after a restart an epoch may be logged twice, the last counts."""
    if not path.exists():
        return pd.DataFrame(columns=["epoch", "loss", "val_loss"])
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").reset_index(drop=True)
