"""train.merge: fold runs made on separate machines combine into one report."""

import pandas as pd
import pytest

from models.errors import FetalheadError
from tests.train.conftest import MODEL, quick
from tools.commands.train import main
from train.data import load_dataset
from train.kfold import train
from train.merge import merge_runs

# Slow tier: every test here trains whole k-fold runs.
pytestmark = pytest.mark.slow


def test_single_folds_merge_into_one_report(phantom, tmp_path):
    for fold in range(2):
        train(phantom, tmp_path / f"machine{fold}", MODEL, quick(tmp_path, fold=fold, epochs=1))
    assert main(["merge", *(str(tmp_path / f"machine{i}") for i in range(2)), "--out", str(tmp_path / "all")]) == 0
    predictions = pd.read_csv(tmp_path / "all" / "report" / "predictions.csv")
    assert sorted(predictions["fold"].unique()) == [0, 1]
    assert len(predictions) == sum(len(s) for s in load_dataset(phantom))
    with pytest.raises(FetalheadError, match="merge: folds 1 of 2 have no result yet"):
        merge_runs([tmp_path / "machine0"], tmp_path / "half")
    with pytest.raises(FetalheadError, match="no run.json"):
        merge_runs([tmp_path], tmp_path / "none")
