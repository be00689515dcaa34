"""train.trainer: the focal loss, the epoch log, and packs of heads fitted as one model, each exactly as alone."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from models.cnn_lstm import build_temporal_head
from models.config import ModelConfig
from train.config import TrainConfig
from train.trainer import EpochBar, HistoryLog, Member, PackBatches, Windows, compile_with_xla, fit_pack, focal_loss, read_history

MODEL = ModelConfig(backbone="tiny", weights="none", image_size=48, lstm_units=(16, 8), dense_units=8)
FEATURES = 12


def scans(seed: int, lengths: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Features whose first column carries the label, so a head can learn it."""
    rng = np.random.default_rng(seed)
    labels = [(np.arange(n) // 6 % 2).astype(np.int8) for n in lengths]
    inputs = [rng.normal(size=(n, FEATURES)).astype(np.float32) + 2.0 * y[:, None] for n, y in zip(lengths, labels)]
    return inputs, labels


def member(tmp_path, tag: str, seed: int, lengths: list[int], *, epochs: int, val: bool = True) -> Member:
    sets = dict(window=MODEL.window, stride=2)
    train_set = Windows(*scans(seed, lengths), **sets)
    val_set = Windows(*scans(seed + 100, [30]), **sets) if val else None
    head = build_temporal_head(MODEL, FEATURES, name=f"head_{tag}")
    return Member(tag, tmp_path / tag, head, train_set, val_set, epochs, seed)


def config(**changes) -> TrainConfig:
    values = dict(learning_rate=1e-2, xla="off")
    values.update(changes)
    return TrainConfig(**values)


def weights_of(m: Member) -> list[np.ndarray]:
    return [np.asarray(w) for w in m.model.get_weights()]


def fit(tmp_path, name: str, members: list[Member], train_config: TrainConfig):
    return fit_pack(members, tmp_path / "packs" / name, train_config, xla=train_config.xla == "on",
                    description=name)


@pytest.mark.slow
def test_a_head_in_a_pack_ends_exactly_as_when_fitted_alone(tmp_path):
    keras.utils.set_random_seed(5)
    alone = member(tmp_path / "alone", "a", 1, [40, 36], epochs=3)
    fit(tmp_path, "alone", [alone], config())

    keras.utils.set_random_seed(5)
    first = member(tmp_path / "pack", "a", 1, [40, 36], epochs=3)
    # Fewer windows and fewer epochs, and a different label rule: nothing of it may leak into the first.
    other = member(tmp_path / "pack", "b", 2, [30], epochs=2)
    histories = fit(tmp_path, "pack", [first, other], config())

    for got, want in zip(weights_of(first), weights_of(alone)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(histories[0]) == 3 and len(histories[1]) == 2
    assert {"loss", "val_loss"} <= set(histories[0].columns)
    state = json.loads((tmp_path / "pack" / "b" / "early_stopping.json").read_text())
    assert state["stopped"] and state["epoch"] == 1 and state["pack"] == "pack"


@pytest.mark.slow
def test_a_member_that_stops_keeps_its_weights_from_then(tmp_path):
    keras.utils.set_random_seed(0)
    short = member(tmp_path, "short", 3, [36], epochs=1, val=False)
    long = member(tmp_path, "long", 4, [60, 60], epochs=4, val=False)
    fit(tmp_path, "pack", [short, long], config())
    fitted = keras.models.clone_model(short.model)
    fitted.load_weights(tmp_path / "short" / "fitted.weights.h5")
    for got, want in zip(weights_of(short), [np.asarray(w) for w in fitted.get_weights()]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_early_stopping_restores_each_members_best_epoch(tmp_path):
    keras.utils.set_random_seed(1)
    members = [member(tmp_path, t, s, [60, 60], epochs=6) for t, s in (("x", 6), ("y", 7))]
    histories = fit(tmp_path, "pack", members, config(patience=1, learning_rate=0.05))
    for m, history in zip(members, histories):
        state = json.loads((m.folder / "early_stopping.json").read_text())
        assert state["best_epoch"] == int(history["val_loss"].idxmin())
        assert len(history) <= min(6, state["best_epoch"] + 2)
        best = keras.models.clone_model(m.model)
        best.load_weights(m.folder / "best.weights.h5")
        for got, want in zip(weights_of(m), [np.asarray(w) for w in best.get_weights()]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_a_finished_pack_is_not_fitted_again(tmp_path):
    keras.utils.set_random_seed(2)
    m = member(tmp_path, "a", 8, [40], epochs=2)
    fit(tmp_path, "pack", [m], config())
    before = weights_of(m)
    keras.utils.set_random_seed(3)
    again = member(tmp_path, "a", 8, [40], epochs=2)
    history = fit(tmp_path, "pack", [again], config())
    assert len(history[0]) == 2
    for got, want in zip(weights_of(again), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_a_member_left_unfinished_in_another_pack_starts_afresh(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "early_stopping.json").write_text(json.dumps(
        {"pack": "old", "best": 0.01, "best_epoch": 7, "epoch": 9, "stopped": False}))
    (folder / "history.csv").write_text("epoch,loss,val_loss\n" + "".join(f"{i},1,1\n" for i in range(10)))
    keras.utils.set_random_seed(4)
    m = member(tmp_path, "a", 9, [40], epochs=2)
    (history,) = fit(tmp_path, "new", [m], config())
    assert list(history["epoch"]) == [0, 1]
    assert json.loads((folder / "early_stopping.json").read_text())["pack"] == "new"


def test_pack_batches_give_every_window_each_epoch_in_full_batches():
    def numbered(first: int, lengths: list[int]) -> Windows:
        """Each frame's features hold its own number, so a batch says which windows it holds."""
        starts = np.cumsum([first, *lengths[:-1]])
        inputs = [np.repeat(np.arange(s, s + n, dtype=np.float32)[:, None], FEATURES, 1) for s, n in zip(starts, lengths)]
        return Windows(inputs, [np.zeros(n) for n in lengths], window=8, stride=1)

    small, large = numbered(0, [20]), numbered(1000, [40, 30])
    batches = PackBatches([small, large], batch_size=8, seeds=[0, 1])
    assert len(batches) == -(-len(large) // 8)
    for _ in range(2):
        starts: list[list[float]] = [[], []]
        for i in range(len(batches)):
            xs, ys = batches[i]
            assert [x.shape for x in xs] == [(8, 8, FEATURES)] * 2 and [y.shape for y in ys] == [(8, 8)] * 2
            for k, x in enumerate(xs):
                assert (np.diff(x[:, :, 0], axis=1) == 1).all()  # consecutive frames of one scan
                starts[k] += list(x[:, 0, 0])
        assert set(starts[0]) == {float(i) for i in range(13)}  # 20 frames: 13 windows, each at least once
        assert len(set(starts[1])) == len(large) == len(starts[1]) - (len(starts[1]) - len(large))
        batches.on_epoch_end()


def test_only_long_packs_of_several_heads_compile_with_xla_unless_forced():
    assert compile_with_xla(config(xla="auto"), members=6, steps=10**6)
    assert not compile_with_xla(config(xla="auto"), members=1, steps=10**6)
    assert not compile_with_xla(config(xla="auto"), members=6, steps=100)
    assert compile_with_xla(config(xla="on"), members=1, steps=1)
    assert not compile_with_xla(config(xla="off"), members=6, steps=10**6)


@pytest.mark.slow
def test_a_pack_under_xla_learns(tmp_path):
    keras.utils.set_random_seed(6)
    members = [member(tmp_path, t, s, [60, 60], epochs=6) for t, s in (("p", 10), ("q", 11))]
    histories = fit(tmp_path, "pack", members, config(xla="on", early_stopping=False))
    for history in histories:
        assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]


def test_focal_loss_equals_the_textbook_formula():
    y = np.array([[1, 0, 1, 0]], np.float32)
    p = np.array([[0.9, 0.2, 0.3, 0.6]], np.float32)
    loss = float(focal_loss(TrainConfig())(y, p))
    alpha_t = np.where(y == 1, 0.79, 0.21)
    p_t = np.where(y == 1, p, 1 - p)
    assert loss == pytest.approx(float(np.mean(-alpha_t * (1 - p_t) ** 2 * np.log(p_t))), rel=1e-5)
    assert loss == pytest.approx(0.134509, abs=1e-6)
    plain = keras.losses.BinaryFocalCrossentropy(gamma=0.0)(y, p)
    bce = keras.losses.BinaryCrossentropy()(y, p)
    assert float(plain) == pytest.approx(float(bce), rel=1e-5)


def test_history_log_rewrites_the_whole_file_and_resumes(tmp_path):
    path = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [0, 1], "loss": [0.5, 0.4], "val_loss": [0.6, 0.5]}).to_csv(path, index=False)
    history = HistoryLog(path)
    history.on_epoch_end(1, {"loss": 0.35, "val_loss": 0.45})  # epoch 1 again, after a resume
    history.on_epoch_end(2, {"loss": 0.3, "val_loss": 0.4})
    assert read_history(path).to_dict("list") == {"epoch": [0, 1, 2], "loss": [0.5, 0.35, 0.3],
                                                  "val_loss": [0.6, 0.45, 0.4]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_the_epoch_bar_reports_each_epoch_and_its_losses(recording_progress):
    bar = EpochBar(recording_progress, "fold 1/2", 3)
    bar.set_model(build_temporal_head(MODEL, FEATURES))
    bar.on_train_begin()
    for epoch in range(2):
        bar.on_epoch_end(epoch, {"loss": 0.5 - epoch / 10, "val_loss": 0.6, "seconds": 1.0})
    bar.on_train_end()
    (task,) = recording_progress.tasks
    assert (task.description, task.total, task.completed, task.closed) == ("fold 1/2", 3, 2, True)
    assert task.notes == ["loss 0.5000 val_loss 0.6000", "loss 0.4000 val_loss 0.6000"]