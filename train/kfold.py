"""K-fold cross-validation of the CNN-LSTM on scan folders, then the bundle.

The bundle scores with the fold models' heads averaged (a frozen backbone)
or with a final model trained on every non-holdout scan (``bundle_heads``),
through Platt scaling fitted on the pooled out-of-fold scores
(``calibrate``): what held best on held-out scans, docs/calibration.md.

Layout of a run folder::

    run.json                 config + data fingerprint; a rerun must match it
    folds.csv                scan -> fold assignment (and holdout scans)
    folds/fold_I/            history.csv, best.weights.h5, predictions.csv, result.json
    final/                   the model trained on every non-holdout scan (bundle_heads final)
    packs/NAME/backup/       Keras's backup of a pack being trained (train.trainer)
    model.fhb                the bundle the worker loads
    report/                  metrics, plots and report.md (train/report.py)

Every result file is written to a temporary name and renamed, and a fold
counts as done only once its result.json exists, so a killed run resumes
from the last finished fold (and, inside a fold, from its last epoch).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from models.bundle import save as save_bundle
from models.calibration import Calibration
from models.cnn_lstm import build_cnn_lstm, build_feature_extractor, build_temporal_head, ensemble_head
from models.config import ModelConfig
from models.errors import ConfigError, FetalheadError
from models.preprocess import preprocess_batch
from models.progress import NO_PROGRESS, Progress
from models.runtime import Runtime
from models.scoring import window_scores
from models.settings import to_dict
from models.windows import sliding
from train.cache import FeatureCache, ScanFeatures, data_fingerprint, frame_hash
from train.calibration import fit_platt
from train.config import TrainConfig
from train.data import Scan, load_dataset
from train.files import replacing, write_json
from train.folds import scan_folds
from train.metrics import METRIC_NAMES, binary_metrics, choose_threshold
from train.trainer import (Member, Windows, compile_with_xla, epoch_steps, fit_pack, kept_weights,
                           read_history)

log = logging.getLogger(__name__)


@dataclass
class ScanData:
    """One scan ready for training or scoring: its model inputs, labels and content hashes.

    inputs: float32 (N, F) cached features, or (N, S, S, 3) preprocessed
    images when the backbone is trained too.
    """

    name: str
    inputs: np.ndarray
    labels: np.ndarray
    hashes: list[str]


def prepare(scans: list[Scan], model_config: ModelConfig, train_config: TrainConfig,
            extractor: keras.Model, progress: Progress = NO_PROGRESS) -> list[ScanData]:
    """Features from the cache, or preprocessed images for --train-backbone."""
    if train_config.train_backbone:
        out = []
        for scan in scans:
            frames = list(scan.iter_frames())
            out.append(ScanData(scan.name, preprocess_batch(frames, model_config),
                                np.asarray(scan.labels, np.int8), [frame_hash(f) for f in frames]))
        return out
    runtime = Runtime(model_config, extractor, build_temporal_head(model_config, extractor.output_shape[-1]))
    cache = FeatureCache(runtime, train_config.cache_dir or None, batch_size=train_config.extract_batch)
    features = cache.extract(scans, progress=progress)
    return [from_features(features[s.name]) for s in scans]


def from_features(item: ScanFeatures) -> ScanData:
    """A scan's cached features as model inputs."""
    return ScanData(item.scan, item.features, item.labels, item.hashes)


def _check_run_folder(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to mix results made with another config or other data into ``out``."""
    path = out / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        for key in ("data", "model", "train_split"):
            if previous.get(key) != identity.get(key):
                raise FetalheadError(
                    f"run folder {out}: made with another {'dataset' if key == 'data' else 'config'} "
                    f"({key} differs); use a new --out folder")
    write_json(path, identity)


def split_identity(train_config: TrainConfig) -> dict[str, Any]:
    """The settings that must agree for fold results to be combined."""
    settings = to_dict(train_config)
    for free in ("fold", "progress", "cache_dir", "extract_batch", "final", "final_epochs", "xla", "ray", "calibrate",
                 "bundle_heads"):
        settings.pop(free)
    return settings


def score_scans(runtime: Runtime, data: list[ScanData], *, images: bool = False) -> pd.DataFrame:
    """Streaming-equivalent per-frame scores of each scan: scan, frame, label, score.

    The one per-scan score table, of fold predictions, holdout scans and
    ``train.evaluate``; ``images`` when the inputs are preprocessed images.
    """
    rows = []
    for item in data:
        features = runtime.features(item.inputs) if images else item.inputs
        scores = runtime.scan_scores(features)
        rows.append(pd.DataFrame({"scan": item.name, "frame": np.arange(len(scores)),
                                  "label": item.labels.astype(int), "score": scores}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["scan", "frame", "label", "score"])


def window_metrics(runtime: Runtime, data: list[ScanData], *, images: bool, threshold: float) -> dict[str, float]:
    """The seed's per-window view: every position of every stride-1 window."""
    scores, labels = [], []
    window = runtime.config.window
    for item in data:
        features = runtime.features(item.inputs) if images else item.inputs
        w = window_scores(features, runtime.score_windows, window)
        if len(w):
            scores.append(w.ravel())
            labels.append(sliding(item.labels, window).ravel())
    if not scores:
        return {}
    return binary_metrics(np.concatenate(labels), np.concatenate(scores), threshold)


def _fresh_extractor(model_config: ModelConfig, shared: keras.Model, train_config: TrainConfig) -> keras.Model:
    if not train_config.train_backbone:
        return shared
    extractor = build_feature_extractor(model_config)
    extractor.set_weights(shared.get_weights())
    return extractor


def distribution_scope():
    """MirroredStrategy's scope when TensorFlow sees several GPUs, else a no-op."""
    import contextlib

    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        return contextlib.nullcontext()
    log.info("training on %d GPUs with MirroredStrategy", len(gpus))
    return tf.distribute.MirroredStrategy().scope()


@dataclass
class Job:
    """One model to train: fold ``tag`` "fold_I" (with validation scans) or "final"."""

    tag: str
    name: str
    folder: Path
    train: list[ScanData]
    val: list[ScanData]
    epochs: int
    seed: int


def train_pack(out: Path, jobs: list[Job], model_config: ModelConfig, train_config: TrainConfig,
               shared_extractor: keras.Model, progress: Progress = NO_PROGRESS
               ) -> list[tuple[Runtime, pd.DataFrame]]:
    """Fit every job's head (and backbone, with --train-backbone) in one pack; (runtime, history) per job."""
    sets = dict(window=model_config.window, stride=train_config.stride)
    train_sets, val_sets = [], []
    for job in jobs:
        train_sets.append(Windows([d.inputs for d in job.train], [d.labels for d in job.train], **sets))
        if len(train_sets[-1]) == 0:
            raise FetalheadError(f"{job.name}: no training window of {model_config.window} frames")
        val = Windows([d.inputs for d in job.val], [d.labels for d in job.val], **sets)
        val_sets.append(val if len(val) else None)
    epochs = max(job.epochs for job in jobs)
    xla = compile_with_xla(train_config, len(jobs), epoch_steps(train_sets, train_config.batch_size) * epochs)
    with distribution_scope():
        extractors, heads, members = [], [], []
        for job, train_set, val_set in zip(jobs, train_sets, val_sets):
            # Each job's weights from its own seed: a fold trains alike in a pack, alone (--fold) or on a cluster.
            keras.utils.set_random_seed(job.seed)
            extractor = _fresh_extractor(model_config, shared_extractor, train_config)
            head = build_temporal_head(model_config, int(extractor.output_shape[-1]), name=f"head_{job.tag}")
            if train_config.train_backbone:
                extractor.trainable = True
                model = build_cnn_lstm(model_config, extractor, head)
            else:
                model = head
            extractors.append(extractor)
            heads.append(head)
            members.append(Member(job.name, job.folder, model, train_set, val_set, job.epochs, job.seed))
        names = ", ".join(job.name for job in jobs)
        log.info("training %s (%s)", names, "XLA" if xla else "no XLA")
        histories = fit_pack(members, out / "packs" / "-".join(job.tag for job in jobs), train_config, xla=xla,
                             description=names if len(jobs) < 3 else f"{len(jobs)} models", progress=progress)
    runtimes = []
    for extractor, head in zip(extractors, heads):
        extractor.trainable = False
        runtimes.append(Runtime(model_config, extractor, head))
    return list(zip(runtimes, histories))


def fold_job(out: Path, index: int, train_scans: list[str], val_scans: list[str], data: dict[str, ScanData],
             train_config: TrainConfig) -> Job:
    return Job(f"fold_{index}", f"fold {index + 1}/{train_config.folds}", out / "folds" / f"fold_{index}",
               [data[s] for s in train_scans], [data[s] for s in val_scans], train_config.epochs,
               train_config.seed + index)


def final_job(out: Path, pool: list[str], data: dict[str, ScanData], train_config: TrainConfig, epochs: int) -> Job:
    return Job("final", "final model", out / "final", [data[n] for n in pool], [], epochs, train_config.seed + 1000)


def finish_fold(job: Job, index: int, runtime: Runtime, history: pd.DataFrame,
                train_config: TrainConfig) -> dict[str, Any]:
    """Score fold ``index``'s scans with its trained model; returns (and writes) its result."""
    images = train_config.train_backbone
    train_scores = score_scans(runtime, job.train, images=images)
    threshold = choose_threshold(train_scores["label"], train_scores["score"], train_config.threshold_rule)
    predictions = score_scans(runtime, job.val, images=images)
    predictions["fold"] = index
    with replacing(job.folder / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    val_loss = history["val_loss"] if "val_loss" in history else pd.Series(dtype=float)
    best_epoch = int(val_loss.idxmin()) + 1 if len(val_loss.dropna()) else len(history)
    result = {
        "fold": index,
        "train_scans": [d.name for d in job.train],
        "val_scans": [d.name for d in job.val],
        "epochs_run": int(len(history)),
        "best_epoch": best_epoch,
        "threshold": threshold,
        "threshold_rule": train_config.threshold_rule,
        "at_0.5": binary_metrics(predictions["label"], predictions["score"], 0.5),
        "at_threshold": binary_metrics(predictions["label"], predictions["score"], threshold),
        "windows_at_0.5": window_metrics(runtime, job.val, images=images, threshold=0.5),
    }
    write_json(job.folder / "result.json", result)
    return result


def run_folds(out: Path, folds: list[tuple[list[str], list[str]]], todo: list[int], data: dict[str, ScanData],
              model_config: ModelConfig, train_config: TrainConfig, extractor: keras.Model,
              final: Job | None, progress: Progress = NO_PROGRESS, cluster: Any = None
              ) -> tuple[dict[int, dict[str, Any]], Runtime | None]:
    """Train folds ``todo`` not done yet, in one pack with ``final`` when given.

    With --train-backbone every fold is a pack of its own: packing several
    end-to-end models would hold several backbones' activations at once for
    little gain. A ``cluster`` (``train.cluster.RayTrainer``) gets every job
    at once and trains each as a task of its own. Returns the results of
    folds ``todo`` and the final model's runtime (None without ``final``).
    """
    results: dict[int, dict[str, Any]] = {}
    jobs = []
    for i in todo:
        done = out / "folds" / f"fold_{i}" / "result.json"
        if done.exists():
            log.info("fold %d already done: %s", i, done)
            results[i] = json.loads(done.read_text())
        else:
            jobs.append(fold_job(out, i, *folds[i], data, train_config))
    packs = [[job] for job in jobs] if train_config.train_backbone else [jobs] if jobs else []
    if final is not None:
        if packs:
            packs[-1].append(final)
        else:
            packs.append([final])
    fit = train_pack
    if cluster is not None:
        fit = cluster.train_jobs
        packs = [[job for pack in packs for job in pack]] if packs else []
    final_runtime = None
    for pack in packs:
        trained = fit(out, pack, model_config, train_config, extractor, progress)
        for job, (runtime, history) in zip(pack, trained):
            if job is final:
                final_runtime = runtime
            else:
                index = int(job.tag.removeprefix("fold_"))
                results[index] = finish_fold(job, index, runtime, history, train_config)
    return results, final_runtime


def load_fold_predictions(out: Path, folds: list[dict[str, Any]]) -> pd.DataFrame:
    frames = [pd.read_csv(out / "folds" / f"fold_{f['fold']}" / "predictions.csv") for f in folds]
    return pd.concat(frames, ignore_index=True)


def final_epochs(folds: list[dict[str, Any]], train_config: TrainConfig) -> int:
    """Epochs for the final model: set, or the median of the folds' best epochs."""
    if train_config.final_epochs is not None:
        return train_config.final_epochs
    if not train_config.early_stopping:
        return train_config.epochs
    return max(1, int(round(statistics.median(f["best_epoch"] for f in folds))))


def train(data_root: str | Path, out: str | Path, model_config: ModelConfig, train_config: TrainConfig,
          progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """The whole run: check data, features, k folds, the bundle's model, bundle, report.

    Returns a summary: ``run`` folder, ``folds`` results, ``cross_validation``
    (``summarise``'s figures; None when only one fold was run), ``bundle``
    path (None without ``final``), ``report`` folder (None when only
    one fold was run) and ``warnings`` (``learning_warnings``: signs the
    model did not learn, also at the top of the report). ``progress`` gets the feature extraction's and every
    pack's epochs as tasks.
    """
    from train.report import episode_summary, write_report

    out = Path(out)
    scans = load_dataset(data_root, window=model_config.window)
    names = [s.name for s in scans]
    unknown = [h for h in train_config.holdout if h not in names]
    if unknown:
        raise ConfigError(f"holdout: no scan named {', '.join(unknown)} in {data_root}")
    cluster = None
    if train_config.ray:
        from train.cluster import RayTrainer

        cluster = RayTrainer(train_config.ray, train_pack)
    extractor = build_feature_extractor(model_config)
    if cluster is not None and not train_config.train_backbone:
        prepared = [from_features(f) for f in cluster.features(scans, model_config, train_config, extractor, progress)]
    else:
        prepared = prepare(scans, model_config, train_config, extractor, progress)
    data = {d.name: d for d in prepared}
    identity = {"data": data_fingerprint_of(data.values()), "model": to_dict(model_config),
                "train_split": split_identity(train_config), "data_root": str(Path(data_root).resolve())}
    _check_run_folder(out, identity)

    pool = [n for n in names if n not in train_config.holdout]
    folds = scan_folds(pool, [data[n].labels for n in pool], train_config.folds, seed=train_config.seed)
    assignment = [{"scan": scan, "fold": i, "frames": len(data[scan].labels), "head": int(data[scan].labels.sum())}
                  for i, (_, val) in enumerate(folds) for scan in val]
    assignment += [{"scan": scan, "fold": "holdout", "frames": len(data[scan].labels),
                    "head": int(data[scan].labels.sum())} for scan in train_config.holdout]
    with replacing(out / "folds.csv") as tmp:
        pd.DataFrame(assignment).to_csv(tmp, index=False)

    todo = list(range(train_config.folds)) if train_config.fold is None else [train_config.fold]
    # The final model's epochs are known before the folds run unless they come
    # from the folds' early stopping; then it can train in the folds' pack.
    final = None
    if train_config.final and train_config.fold is None and train_config.bundle_heads == "final" and (
            not train_config.train_backbone) and (train_config.final_epochs is not None
                                                  or not train_config.early_stopping):
        final = final_job(out, pool, data, train_config, final_epochs([], train_config))
    by_fold, runtime = run_folds(out, folds, todo, data, model_config, train_config, extractor, final, progress,
                                cluster)
    results = [by_fold[i] for i in todo]
    summary: dict[str, Any] = {"run": str(out), "folds": results, "cross_validation": None, "bundle": None,
                               "report": None, "warnings": []}
    if train_config.fold is not None:
        return summary

    oof = load_fold_predictions(out, results)
    histories = {f"fold {r['fold']}": read_history(out / "folds" / f"fold_{r['fold']}" / "history.csv")
                 for r in results}
    calibration, calibration_warning = fit_calibration(oof, train_config)
    if calibration is not None and train_config.threshold_rule == "calibrated":
        # The rule's own Platt fit is this calibration: on its scale the threshold is 0.5 by definition.
        threshold = 0.5
    else:
        threshold = choose_threshold(oof["label"], oof["score"], train_config.threshold_rule)
        threshold = threshold if calibration is None else float(calibration.apply(threshold))
    if calibration is not None:
        # From here on every score, the threshold included, is on the calibrated scale the bundle scores on.
        oof = oof.assign(score=calibration.apply(oof["score"].to_numpy()))
    summary["cross_validation"] = summarise(results, oof, threshold)
    summary["warnings"] = learning_warnings(summary["cross_validation"], histories, train_config.learning_rate)
    summary["warnings"] += [calibration_warning] if calibration_warning else []
    holdout_predictions = None
    bundle_model = ""
    if train_config.final:
        epochs = None
        if train_config.bundle_heads == "folds":
            heads = [fold_head(out, r, model_config, int(extractor.output_shape[-1]), train_config) for r in results]
            runtime = Runtime(model_config, extractor, ensemble_head(model_config, heads), calibration=calibration)
            bundle_model = f"the mean score of the {len(heads)} fold models' heads on the shared frozen backbone"
        else:
            epochs = final_epochs(results, train_config)
            if runtime is None:
                job = final_job(out, pool, data, train_config, epochs)
                fit = cluster.train_jobs if cluster else train_pack
                runtime, _ = fit(out, [job], model_config, train_config, extractor, progress)[0]
            runtime = Runtime(model_config, runtime.extractor, runtime.training_head, calibration=calibration)
            bundle_model = f"the final model, trained on all {len(pool)} non-holdout scans for {epochs} epochs"
        if train_config.holdout:
            holdout_predictions = score_scans(runtime, [data[n] for n in train_config.holdout],
                                              images=train_config.train_backbone)
            holdout_predictions["fold"] = "holdout"
        rule = f"{train_config.threshold_rule} on pooled out-of-fold per-frame scores"
        info = {
            "trained_on": pool, "holdout": list(train_config.holdout), "final_epochs": epochs,
            "heads": bundle_model, "data_fingerprint": identity["data"],
            "threshold_rule": rule + (", then calibrated" if calibration is not None else ""),
            "train_config": to_dict(train_config),
            "cross_validation": summary["cross_validation"],
        }
        summary["bundle"] = str(save_bundle(out / "model.fhb", model_config, runtime.extractor, runtime.training_head,
                                            threshold=threshold, info=info, calibration=calibration))
    summary["report"] = str(write_report(out, model_config, train_config, results, oof, threshold,
                                         holdout_predictions, warnings=summary["warnings"], calibration=calibration,
                                         episodes=episode_summary(oof, threshold), bundle_model=bundle_model))
    return summary


def fit_calibration(oof: pd.DataFrame, train_config: TrainConfig) -> tuple[Calibration | None, str]:
    """Platt scaling of the pooled out-of-fold scores (None when ``calibrate`` is off), or why there is none."""
    if not train_config.calibrate:
        return None, ""
    try:
        return fit_platt(oof["label"].to_numpy(), oof["score"].to_numpy(),
                         fitted_on=f"{len(oof)} pooled out-of-fold frames"), ""
    except ValueError as exc:
        return None, f"the bundle is not calibrated: {exc}"


def fold_head(out: Path, result: dict[str, Any], model_config: ModelConfig, feature_dim: int,
              train_config: TrainConfig) -> keras.Model:
    """Fold ``result``'s trained head, with the weights that made its out-of-fold scores."""
    folder = out / "folds" / f"fold_{result['fold']}"
    head = build_temporal_head(model_config, feature_dim, name=f"head_fold_{result['fold']}")
    head.load_weights(kept_weights(folder, True, train_config))
    return head


# A cross-validated ROC-AUC below this is reported as near chance.
NEAR_CHANCE_AUC = 0.6
# A training loss whose best later epoch is not below this fraction of its first epoch's did not fall.
LOSS_FELL_TO = 0.95


def learning_warnings(cross_validation: dict[str, Any], histories: dict[str, pd.DataFrame],
                      learning_rate: float) -> list[str]:
    """One line per sign that the model did not learn: ROC-AUC near or below chance, a loss that did not fall."""
    warnings = []
    auc = cross_validation["mean_within_scan_roc_auc"]
    what = "mean within-scan ROC-AUC"
    if not np.isfinite(auc):
        auc, what = cross_validation["pooled_out_of_fold"]["roc_auc"], "pooled ROC-AUC"
    if np.isfinite(auc) and auc < NEAR_CHANCE_AUC:
        warnings.append(f"the cross-validated {what} is {auc:.2f}, {'below' if auc < 0.5 else 'near'} chance "
                        f"(0.5): this model does not tell Head from Not-Head; check the labels "
                        f"(fetalhead data check), then train longer or with another --learning-rate "
                        f"(this run: {learning_rate:g})")
    for name, history in histories.items():
        loss = history["loss"].dropna().to_numpy(float) if "loss" in history else np.array([])
        if len(loss) >= 2 and loss[1:].min() > LOSS_FELL_TO * loss[0]:
            warnings.append(f"the training loss of {name} did not fall ({loss[0]:.4g} at the first epoch, "
                            f"{loss[1:].min():.4g} at best): the learning rate ({learning_rate:g}) may be too low")
    return warnings


def data_fingerprint_of(data) -> str:
    return data_fingerprint(ScanFeatures(d.name, d.inputs, d.hashes, d.labels) for d in data)


def summarise(results: list[dict[str, Any]], oof: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Mean and standard deviation over folds, and pooled out-of-fold metrics."""
    table = pd.DataFrame([r["at_threshold"] for r in results])
    per_scan_auc = []
    for _, group in oof.groupby("scan"):
        if group["label"].nunique() == 2:
            per_scan_auc.append(binary_metrics(group["label"], group["score"])["roc_auc"])
    return {
        "folds_mean": {k: float(table[k].mean()) for k in METRIC_NAMES},
        "folds_std": {k: float(table[k].std(ddof=0)) for k in METRIC_NAMES},
        "pooled_out_of_fold": binary_metrics(oof["label"], oof["score"], threshold),
        "mean_within_scan_roc_auc": float(np.mean(per_scan_auc)) if per_scan_auc else float("nan"),
        "threshold": threshold,
    }
