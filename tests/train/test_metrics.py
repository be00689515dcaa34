"""Per-frame metrics and the threshold rules, on labels and scores small enough to check by hand."""

import math

import numpy as np
import pytest

from train.metrics import METRIC_NAMES, binary_metrics, choose_threshold


def test_metrics_at_a_threshold_count_score_equal_to_it_as_head():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.6, 0.8, 0.3])
    m = binary_metrics(labels, scores, 0.6)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (1, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert (m["frames"], m["head"], m["threshold"]) == (5, 3, 0.6)
    assert set(METRIC_NAMES) <= set(m)


def test_curves_are_undefined_with_one_class():
    m = binary_metrics(np.ones(4, int), np.array([0.2, 0.4, 0.6, 0.8]))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert choose_threshold(np.ones(4, int), np.linspace(0, 1, 4)) == 0.5


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ in shape"):
        binary_metrics(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("rule", ["youden", "f1"])
def test_separable_scores_get_a_threshold_between_the_classes(rule):
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    threshold = choose_threshold(labels, scores, rule)
    assert 0.3 < threshold <= 0.7
    assert binary_metrics(labels, scores, threshold)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="threshold rule"):
        choose_threshold(labels, scores, "best")
