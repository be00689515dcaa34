"""Fold runs made on separate machines (``train --fold I``) combined into one run folder and report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from models.config import ModelConfig
from models.errors import FetalheadError
from models.settings import from_mapping
from train.config import TrainConfig
from train.files import copy_file, copy_tree, write_json
from train.kfold import load_fold_predictions, summarise
from train.metrics import choose_threshold
from train.report import write_report


def merge_runs(runs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Copy every fold of ``runs`` into ``out`` and write the cross-validation report there.

    The runs must share their data and config (run.json) and together hold
    every fold. Returns ``run`` (the folder), ``folds`` (results in fold
    order), ``cross_validation`` (``train.kfold.summarise``'s figures),
    ``report`` (its folder) and ``data_root`` (the dataset the runs were made
    from, for training the final model into ``out``).
    """
    out = Path(out)
    identity = None
    results: dict[int, dict[str, Any]] = {}
    for run_dir in map(Path, runs):
        meta_path = run_dir / "run.json"
        if not meta_path.exists():
            raise FetalheadError(f"run folder {run_dir}: no run.json (not a fetalhead training run)")
        meta = json.loads(meta_path.read_text())
        if identity is None:
            identity = meta
        elif any(meta.get(k) != identity.get(k) for k in ("data", "model", "train_split")):
            raise FetalheadError(f"run folder {run_dir}: made with other data or config than {runs[0]}")
        for result_path in sorted(run_dir.glob("folds/fold_*/result.json")):
            result = json.loads(result_path.read_text())
            results.setdefault(result["fold"], result)
            target = out / "folds" / f"fold_{result['fold']}"
            if target.resolve() != result_path.parent.resolve():
                copy_tree(result_path.parent, target, last="result.json")
        if (run_dir / "folds.csv").exists() and not (out / "folds.csv").exists():
            copy_file(run_dir / "folds.csv", out / "folds.csv")
    if identity is None:
        raise ValueError("merge_runs needs at least one run folder")
    expected = identity["train_split"]["folds"]
    missing = sorted(set(range(expected)) - set(results))
    if missing:
        raise FetalheadError(f"merge: folds {', '.join(map(str, missing))} of {expected} have no result yet")
    ordered = [results[i] for i in range(expected)]
    write_json(out / "run.json", identity)
    model_config = from_mapping(ModelConfig, identity["model"])
    train_config = from_mapping(TrainConfig, identity["train_split"])
    oof = load_fold_predictions(out, ordered)
    threshold = choose_threshold(oof["label"], oof["score"], train_config.threshold_rule)
    folder = write_report(out, model_config, train_config, ordered, oof, threshold)
    return {"run": str(out), "folds": ordered, "cross_validation": summarise(ordered, oof, threshold),
            "report": str(folder), "data_root": identity.get("data_root")}
