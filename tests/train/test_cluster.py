"""Training on a cluster: a local Ray cluster, and the Slurm example script's steps, reproduce a local run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.bundle import load as load_bundle
from models.errors import ConfigError
from tests.train.conftest import MODEL, quick
from train.kfold import train

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "slurm_folds.sh"
FLAGS = dict(epochs=1)


@pytest.fixture(scope="module")
def local_run(phantom, tmp_path_factory):
    """The reference: a whole local run of 2 folds, 1 epoch, and its summary."""
    tmp = tmp_path_factory.mktemp("local")
    return train(phantom, tmp / "run", MODEL, quick(tmp, **FLAGS))


def fold_results(run: Path) -> list[dict]:
    return [json.loads((run / "folds" / f"fold_{i}" / "result.json").read_text()) for i in range(2)]


def assert_same_folds(run: Path, reference: Path) -> None:
    """Same split, same fold metrics and out-of-fold scores, bit for bit (one CPU process per model both ways)."""
    pd.testing.assert_frame_equal(pd.read_csv(run / "folds.csv"), pd.read_csv(reference / "folds.csv"))
    assert fold_results(run) == fold_results(reference)
    for i in range(2):
        predictions = f"folds/fold_{i}/predictions.csv"
        pd.testing.assert_frame_equal(pd.read_csv(run / predictions), pd.read_csv(reference / predictions),
                                      check_exact=True)


def assert_same_bundle(path: Path, reference: Path) -> None:
    bundle, expected = load_bundle(path), load_bundle(reference)
    assert bundle.threshold == expected.threshold
    for got, want in zip(bundle.head.get_weights(), expected.head.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_a_ray_run_reproduces_the_local_run(phantom, local_run, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=80 * 1024 ** 2, include_dashboard=False, log_to_driver=False)
    try:
        summary = train(phantom, tmp_path / "run", MODEL, quick(tmp_path, ray="auto", **FLAGS))
    finally:
        ray.shutdown()
    reference = Path(local_run["run"])
    assert_same_folds(tmp_path / "run", reference)
    assert summary["cross_validation"] == local_run["cross_validation"]
    assert_same_bundle(Path(summary["bundle"]), Path(local_run["bundle"]))


def test_ray_missing_is_one_line_naming_the_extra(phantom, tmp_path, monkeypatch):
    # None in sys.modules makes `import ray` raise ImportError, as where Ray is not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"^--ray: Ray is not installed; pip install -e '\.\[ray\]'$"):
        train(phantom, tmp_path / "run", MODEL, quick(tmp_path, ray="auto"))


@pytest.mark.slow
def test_the_slurm_script_steps_reproduce_the_local_run(phantom, local_run, tmp_path):
    fetalhead = str(Path(sys.executable).with_name("fetalhead"))
    flags = ["--backbone", "tiny", "--weights", "none", "--image-size", str(MODEL.image_size),
             "--lstm-units", "16,8", "--dense-units", "8", "--epochs", "1", "--learning-rate", "1e-3",
             "--stride", "2", "--cache-dir", str(tmp_path / "cache")]
    args = ["bash", str(SCRIPT), str(phantom), str(tmp_path / "run"), "2", *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"FETALHEAD": fetalhead}
    # What Slurm runs: each array task, then the merge job once they all succeeded.
    for task in ("0", "1"):
        subprocess.run(args, env=env | {"SLURM_ARRAY_TASK_ID": task}, check=True, capture_output=True)
    subprocess.run(args, env=env | {"FETALHEAD_MERGE": "1"}, check=True, capture_output=True)
    merged = tmp_path / "run" / "merged"
    assert_same_folds(merged, Path(local_run["run"]))
    assert_same_bundle(merged / "model.fhb", Path(local_run["bundle"]))


def test_the_slurm_script_submits_an_array_of_folds_then_a_dependent_merge(tmp_path):
    # No Slurm here: a stand-in sbatch records each submission and answers a job id, as `sbatch --parsable` does.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$*" >> "$SUBMITTED"\nwc -l < "$SUBMITTED"\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "SUBMITTED": str(tmp_path / "submitted")}
    done = subprocess.run(["bash", str(SCRIPT), "DATA", "RUN", "3", "--epochs", "5"], env=env, check=True,
                          capture_output=True, text=True)
    array, merge = (tmp_path / "submitted").read_text().splitlines()
    assert array == f"--parsable --array=0-2 {SCRIPT} DATA RUN 3 --epochs 5"
    assert merge == f"--parsable --dependency=afterok:1 --export=ALL,FETALHEAD_MERGE=1 {SCRIPT} DATA RUN 3 --epochs 5"
    assert "array job 1" in done.stdout and "job 2" in done.stdout
