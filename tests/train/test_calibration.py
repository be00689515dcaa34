"""train.calibration and a bundle's calibration: Platt fitting recovers a known map, ECE is right on known
cases, and a calibrated bundle scores calibrated on every path while older bundles load as before."""

import io
import json
import zipfile

import numpy as np
import pytest
from rich.console import Console

from models.bundle import load, read_meta, save
from models.calibration import Calibration
from models.errors import BundleError
from train.calibration import brier_score, expected_calibration_error, fit_platt, reliability
from tools.render import print_bundle_info


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 40_000)
    labels = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    # Overconfident and shifted scores: the true probability is sigmoid(0.5 * logit(score) - 0.5).
    scores = 1 / (1 + np.exp(-(2 * z + 1)))
    calibration = fit_platt(labels, scores, fitted_on="test")
    assert calibration.slope == pytest.approx(0.5, abs=0.03)
    assert calibration.intercept == pytest.approx(-0.5, abs=0.05)
    calibrated = calibration.apply(scores)
    assert expected_calibration_error(labels, calibrated) < 0.02 < expected_calibration_error(labels, scores)
    assert brier_score(labels, calibrated) < brier_score(labels, scores)


def test_platt_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="one class only"):
        fit_platt(np.ones(5), np.linspace(0.1, 0.9, 5))
    with pytest.raises(ValueError, match="decreases with the score"):
        fit_platt(np.array([1, 1, 1, 0, 0, 0]), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))


def test_ece_on_known_cases():
    labels = np.array([0, 0, 1, 1])
    # One frame per bin, gaps 0.05, 0.15, 0.15, 0.05.
    assert expected_calibration_error(labels, np.array([0.05, 0.15, 0.85, 0.95])) == pytest.approx(0.1)
    seven = np.array([1] * 7 + [0] * 3)
    assert expected_calibration_error(seven, np.full(10, 0.7)) == pytest.approx(0.0)
    five = np.array([1] * 5 + [0] * 5)
    assert expected_calibration_error(five, np.full(10, 0.7)) == pytest.approx(0.2)
    # A score of exactly 1 lies in the last bin, not past it.
    table = reliability(np.array([1, 0]), np.array([1.0, 0.0]), bins=4)
    assert list(table["frames"]) == [1, 1] and list(table["high"]) == [0.25, 1.0]


def test_calibration_rejects_bad_parameters():
    with pytest.raises(ValueError, match="slope must be a finite number above 0"):
        Calibration(slope=0.0, intercept=0.0)
    with pytest.raises(ValueError, match="intercept must be finite"):
        Calibration(slope=1.0, intercept=float("nan"))


def test_calibrated_bundle_round_trip_scores_calibrated_on_every_path(tmp_path, tiny_config, tiny_models, rng):
    extractor, head = tiny_models
    calibration = Calibration(slope=0.5, intercept=-1.0, fitted_on="pooled out-of-fold scores")
    path = save(tmp_path / "model.fhb", tiny_config, extractor, head, threshold=0.2, calibration=calibration)
    old = save(tmp_path / "old.fhb", tiny_config, extractor, head, threshold=0.5)
    assert "calibration" not in read_meta(old)
    bundle, plain = load(path), load(old)
    assert bundle.calibration == calibration and plain.calibration is None
    frames = [rng.integers(0, 256, (90, 120), dtype=np.uint8) for _ in range(12)]
    runtime, raw_runtime = bundle.runtime(), plain.runtime()
    features = runtime.frame_features(frames)
    raw = raw_runtime.scan_scores(features)
    scores = runtime.scan_scores(features)
    np.testing.assert_allclose(scores, calibration.apply(raw), atol=1e-6)
    assert not np.allclose(scores, raw)
    # The worker's path (newest frame of a growing window) gives the offline scores.
    streamed = [runtime.score_newest([features[max(0, i + 1 - tiny_config.window):i + 1]])[0]
                for i in range(len(features))]
    np.testing.assert_allclose(streamed, scores, atol=1e-5)
    shown = io.StringIO()
    print_bundle_info(path, read_meta(path), bundle.model_id, Console(file=shown, width=200))
    assert "Platt scaling" in shown.getvalue() and "calibrated scores" in shown.getvalue()
    shown = io.StringIO()
    print_bundle_info(old, read_meta(old), plain.model_id, Console(file=shown, width=200))
    assert "none: the threshold applies to the model's own scores" in shown.getvalue()


def test_malformed_calibration_is_one_line(tmp_path, tiny_config, tiny_models):
    extractor, head = tiny_models
    good = save(tmp_path / "good.fhb", tiny_config, extractor, head)
    bad = tmp_path / "bad.fhb"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "bundle.json":
                meta = json.loads(data)
                meta["calibration"] = {"slope": -2, "intercept": 0}
                data = json.dumps(meta).encode()
            dst.writestr(name, data)
    with pytest.raises(BundleError, match=r"bad.fhb: bundle.json calibration: calibration slope must be") as info:
        read_meta(bad)
    assert "\n" not in str(info.value)


def test_the_calibrated_rule_puts_the_threshold_where_platt_gives_one_half():
    from train.metrics import choose_threshold

    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 5_000)
    labels = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    scores = 1 / (1 + np.exp(-(2 * z + 1)))
    threshold = choose_threshold(labels, scores, "calibrated")
    assert fit_platt(labels, scores).apply(np.array([threshold]))[0] == pytest.approx(0.5, abs=1e-6)
    # The true map is sigmoid(0.5 * logit(score) - 0.5): one half at logit(score) = 1.
    assert threshold == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.02)
    # Nothing to fit: one class, or scores that fall with Head.
    assert choose_threshold(np.ones(4), np.linspace(0.1, 0.9, 4), "calibrated") == 0.5
    assert choose_threshold(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9]), "calibrated") == 0.5


def test_fold_heads_need_a_frozen_backbone():
    from models.errors import ConfigError
    from train.config import TrainConfig

    assert TrainConfig().bundle_heads == "folds" and TrainConfig(train_backbone=True).bundle_heads == "final"
    with pytest.raises(ConfigError, match=r"^bundle_heads: folds needs a frozen backbone"):
        TrainConfig(train_backbone=True, bundle_heads="folds")
