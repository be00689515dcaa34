"""The report folder of a run: tables, plots and report.md that shows them.

Written by ``train.kfold.train``, ``train.merge.merge_runs`` and ``train.evaluate.evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from models.classes import CLASS_NAMES  # noqa: E402
from models.config import ModelConfig, weights_phrase  # noqa: E402
from models.settings import to_dict, to_toml  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.files import copy_file, replacing, write_text  # noqa: E402
from train.metrics import METRIC_NAMES, binary_metrics  # noqa: E402
from train.trainer import read_history  # noqa: E402


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with replacing(path) as tmp:
        frame.to_csv(tmp, index=False)


def _write_text(text: str, path: Path) -> None:
    write_text(path, text)


def _save_figure(fig, path: Path) -> None:
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def per_scan_rows(predictions: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row of metrics per scan (and fold) at ``threshold``."""
    rows = []
    for (scan, fold), group in predictions.groupby(["scan", "fold"], sort=False):
        row = {"scan": scan, "fold": fold}
        row.update(binary_metrics(group["label"], group["score"], threshold))
        rows.append(row)
    return pd.DataFrame(rows)


def _plot_curves(predictions: pd.DataFrame, path_roc: Path, path_pr: Path) -> None:
    fig_roc, ax_roc = plt.subplots(figsize=(5, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 5))
    groups = list(predictions.groupby("fold", sort=False)) + [("pooled", predictions)]
    for name, group in groups:
        if group["label"].nunique() < 2:
            continue
        pooled = name == "pooled"
        style = dict(lw=2.2 if pooled else 1, color="black" if pooled else None, alpha=1 if pooled else 0.7)
        fpr, tpr, _ = skm.roc_curve(group["label"], group["score"])
        auc = skm.roc_auc_score(group["label"], group["score"])
        ax_roc.plot(fpr, tpr, label=f"{'pooled' if pooled else f'fold {name}'} AUC {auc:.3f}", **style)
        precision, recall, _ = skm.precision_recall_curve(group["label"], group["score"])
        ap = skm.average_precision_score(group["label"], group["score"])
        ax_pr.plot(recall, precision, label=f"{'pooled' if pooled else f'fold {name}'} AP {ap:.3f}", **style)
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, per-frame scores")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall, per-frame scores")
    for fig, ax, path in ((fig_roc, ax_roc, path_roc), (fig_pr, ax_pr, path_pr)):
        ax.legend(fontsize=7, loc="lower right" if ax is ax_roc else "lower left")
        fig.tight_layout()
        _save_figure(fig, path)


def _plot_confusion(labels: np.ndarray, scores: np.ndarray, threshold: float, path: Path) -> None:
    matrix = skm.confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="predicted", ylabel="true", title=f"threshold {threshold:.3f}")
    fig.tight_layout()
    _save_figure(fig, path)


def _plot_training(histories: dict[str, pd.DataFrame], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        if history.empty:
            continue
        line, = ax.plot(history["epoch"] + 1, history["loss"], lw=1, label=f"{name} train")
        if "val_loss" in history:
            ax.plot(history["epoch"] + 1, history["val_loss"], lw=1, ls="--", color=line.get_color(),
                    label=f"{name} val")
    ax.set(xlabel="epoch", ylabel="focal loss", title="Training curves")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save_figure(fig, path)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def metrics_table(results: Sequence[dict[str, Any]], oof: pd.DataFrame, threshold: float,
                  holdout: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows per fold (per frame at 0.5 and at its own threshold; per window at 0.5), mean, std, pooled."""
    rows = []
    for result in results:
        for key in ("at_0.5", "at_threshold"):
            rows.append({"fold": result["fold"], "at": "0.5" if key == "at_0.5" else "fold threshold",
                         **result[key]})
        if result.get("windows_at_0.5"):
            # The seed's view: every position of every window, frames counted once per window.
            rows.append({"fold": result["fold"], "at": "0.5, per window", **result["windows_at_0.5"]})
    table = pd.DataFrame(rows)
    summary = []
    if rows:
        chosen = table[table["at"] == "fold threshold"]
        summary.append({"fold": "mean", "at": "fold threshold", **{k: float(chosen[k].mean()) for k in METRIC_NAMES}})
        summary.append({"fold": "std", "at": "fold threshold",
                        **{k: float(chosen[k].std(ddof=0)) for k in METRIC_NAMES}})
    summary.append({"fold": "pooled", "at": "run threshold", **binary_metrics(oof["label"], oof["score"], threshold)})
    if holdout is not None and len(holdout):
        summary.append({"fold": "holdout", "at": "run threshold",
                        **binary_metrics(holdout["label"], holdout["score"], threshold)})
    combined = pd.concat([table, pd.DataFrame(summary)], ignore_index=True)
    counts = [c for c in ("frames", "head", "tn", "fp", "fn", "tp") if c in combined]
    combined[counts] = combined[counts].astype("Int64")  # mean/std rows have none
    return combined


def write_report(out: Path, model_config: ModelConfig, train_config: TrainConfig | None,
                 results: Sequence[dict[str, Any]], oof: pd.DataFrame, threshold: float,
                 holdout: pd.DataFrame | None = None, *, title: str = "Cross-validation report",
                 warnings: Sequence[str] = ()) -> Path:
    """Write ``out/report``; returns its path.

    oof: per-frame out-of-fold predictions (scan, frame, label, score, fold).
    ``warnings`` (signs the model did not learn) head the report.
    """
    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"model": to_dict(model_config)}
    if train_config is not None:
        tables["train"] = to_dict(train_config)
    _write_text(to_toml(tables), folder / "config.toml")
    if (Path(out) / "folds.csv").exists():
        copy_file(Path(out) / "folds.csv", folder / "folds.csv")
    predictions = pd.concat([oof, holdout], ignore_index=True) if holdout is not None else oof
    _write_csv(predictions[["scan", "frame", "label", "score", "fold"]], folder / "predictions.csv")
    metrics = metrics_table(results, oof, threshold, holdout)
    _write_csv(metrics, folder / "metrics.csv")
    per_scan = per_scan_rows(predictions, threshold)
    _write_csv(per_scan, folder / "per_scan.csv")
    labels, scores = oof["label"].to_numpy(int), oof["score"].to_numpy(float)
    report = [f"Pooled out-of-fold per-frame scores, {len(labels)} frames", "",
              f"at threshold {threshold:.4f}:",
              skm.classification_report(labels, (scores >= threshold).astype(int), labels=[0, 1],
                                        target_names=list(CLASS_NAMES), zero_division=0, digits=4),
              "at threshold 0.5:",
              skm.classification_report(labels, (scores >= 0.5).astype(int), labels=[0, 1],
                                        target_names=list(CLASS_NAMES), zero_division=0, digits=4)]
    _write_text("\n".join(report), folder / "classification_report.txt")
    _plot_curves(predictions, folder / "roc.png", folder / "pr.png")
    _plot_confusion(labels, scores, threshold, folder / "confusion.png")
    histories = {f"fold {r['fold']}": read_history(Path(out) / "folds" / f"fold_{r['fold']}" / "history.csv")
                 for r in results}
    if (Path(out) / "final" / "history.csv").exists():
        histories["final"] = read_history(Path(out) / "final" / "history.csv")
    if any(not h.empty for h in histories.values()):
        _plot_training(histories, folder / "curves.png")

    within = [binary_metrics(g["label"], g["score"])["roc_auc"] for _, g in oof.groupby("scan")
              if g["label"].nunique() == 2]
    shown = metrics[["fold", "at", *METRIC_NAMES, "tn", "fp", "fn", "tp"]]
    lines = [
        f"# {title}", "",
        *([f"**Warning:** {w}." for w in warnings] + [""] if warnings else []),
        f"Backbone `{model_config.backbone}` ({weights_phrase(model_config.weights)}), "
        f"image {model_config.image_size}, window {model_config.window}. Scores are streaming-equivalent per-frame scores: frame t is scored "
        f"by the window ending at t, as the live worker scores it.", "",
        *([f"Trained with Adam at learning rate {train_config.learning_rate:g} "
           f"({'backbone trained too' if train_config.train_backbone else 'frozen backbone'}), "
           f"batch {train_config.batch_size}, at most {train_config.epochs} epochs per fold.", ""]
          if train_config is not None else []),
        f"Decision threshold: **{threshold:.4f}**"
        + (f" ({train_config.threshold_rule} rule on the pooled out-of-fold scores; each fold's own threshold "
           f"is chosen by the same rule on its training scans)." if train_config else "."), "",
        f"Mean ROC-AUC within each scan: **{np.mean(within):.4f}** over {len(within)} scans with both classes. "
        "The pooled ROC-AUC mixes folds whose scores can sit at different levels, which is why each fold "
        "also picks its own threshold." if within else "", "",
        "## Metrics", "", _markdown_table(shown), "",
        "## Curves", "", "![ROC](roc.png) ![PR](pr.png)", "", "![confusion](confusion.png)", "",
    ]
    if (folder / "curves.png").exists():
        lines += ["![training curves](curves.png)", ""]
    lines += ["## Per scan", "", _markdown_table(per_scan[["scan", "fold", "frames", "head", "accuracy",
                                                            "recall", "precision", "roc_auc"]]), "",
              "Files: config.toml, folds.csv, metrics.csv, per_scan.csv, predictions.csv, "
              "classification_report.txt.", ""]
    _write_text("\n".join(lines), folder / "report.md")
    return folder
