"""The report folder of a run: tables, plots and report.md that shows them.

Written by ``train.kfold.train``, ``train.merge.merge_runs`` (into RUN/report)
and ``train.evaluate.evaluate`` (into its own OUT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from models.bundle import Calibration  # noqa: E402
from models.classes import CLASS_NAMES  # noqa: E402
from models.config import ModelConfig, weights_phrase  # noqa: E402
from models.episodes import episode_metrics  # noqa: E402
from models.settings import to_dict, to_toml  # noqa: E402
from models.verdict import DEFAULT_HOLD  # noqa: E402
from train.calibration import DEFAULT_BINS, brier_score, expected_calibration_error, reliability  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.files import copy_file, replacing, write_text  # noqa: E402
from train.metrics import METRIC_NAMES, binary_metrics  # noqa: E402
from train.trainer import read_history  # noqa: E402

# What each TrainConfig.threshold_rule does (train.metrics.choose_threshold), for the report's readers.
THRESHOLD_RULES = {
    "calibrated": "the calibrated rule: the score at which Platt scaling fitted to the scores gives 0.5, where "
                  "Head becomes the likelier class (docs/calibration.md)",
    "youden": "Youden's rule: the score that maximises true positive rate - false positive rate "
              "(sensitivity + specificity - 1) along the ROC curve",
    "f1": "the F1 rule: the score that maximises F1, the harmonic mean of precision and recall, "
          "along the precision-recall curve",
}

# The seed's headline figure (its README, "Key Results"): validation windows of its 72 real scans.
SEED_ACCURACY = 0.906

# One panel per scan stays readable up to about this many; the worst scans are the ones worth seeing.
MAX_TIMELINES = 24


class _Folder:
    """The report folder; remembers every file written, for the list at the end of report.md."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: list[str] = []
        path.mkdir(parents=True, exist_ok=True)

    def _target(self, name: str) -> Path:
        self.written.append(name)
        return self.path / name

    def csv(self, frame: pd.DataFrame, name: str) -> None:
        with replacing(self._target(name)) as tmp:
            frame.to_csv(tmp, index=False)

    def text(self, text: str, name: str) -> None:
        write_text(self._target(name), text)

    def copied(self, source: Path, name: str) -> None:
        copy_file(source, self._target(name))

    def figure(self, fig, name: str) -> None:
        with replacing(self._target(name)) as tmp:
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


def curve_groups(oof: pd.DataFrame, holdout: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """The ROC / PR curves drawn, as (legend name, predictions): each fold, pooled, holdout.

    Pooled is the out-of-fold predictions only, as in the metrics table; the
    holdout scans, scored by the bundle's model, are a curve of their own. One
    fold alone (an evaluation) is not drawn twice.
    """
    folds = list(oof.groupby("fold", sort=False))
    groups = [(f"fold {name}", group) for name, group in folds] if len(folds) > 1 else []
    groups.append(("pooled", oof))
    if holdout is not None and len(holdout):
        groups.append(("holdout", holdout))
    return groups


def _at_threshold(frame: pd.DataFrame, threshold: float) -> dict[str, float]:
    """The ROC and PR point of ``frame`` (both classes present) at ``threshold``; precision NaN when none is Head."""
    m = binary_metrics(frame["label"], frame["score"], threshold)
    predicted = m["tp"] + m["fp"]
    return {"fpr": m["fp"] / (m["fp"] + m["tn"]), "tpr": m["recall"],
            "precision": m["tp"] / predicted if predicted else float("nan")}


def _plot_curves(oof: pd.DataFrame, holdout: pd.DataFrame | None, threshold: float, out: _Folder) -> None:
    fig_roc, ax_roc = plt.subplots(figsize=(5, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 5))
    for name, group in curve_groups(oof, holdout):
        if group["label"].nunique() < 2:
            continue
        style = {"pooled": dict(lw=2.2, color="black"), "holdout": dict(lw=1.8, color="tab:red")}.get(
            name, dict(lw=1, alpha=0.7))
        fpr, tpr, _ = skm.roc_curve(group["label"], group["score"])
        auc = skm.roc_auc_score(group["label"], group["score"])
        ax_roc.plot(fpr, tpr, label=f"{name} AUC {auc:.3f}", **style)
        precision, recall, _ = skm.precision_recall_curve(group["label"], group["score"])
        ap = skm.average_precision_score(group["label"], group["score"])
        ax_pr.plot(recall, precision, label=f"{name} AP {ap:.3f}", **style)
        if name == "pooled":
            point = _at_threshold(group, threshold)
            mark = dict(marker="o", ms=8, color="tab:orange", mec="black", ls="none",
                        label=f"threshold {threshold:.3f}", zorder=5)
            ax_roc.plot(point["fpr"], point["tpr"], **mark)
            if np.isfinite(point["precision"]):
                ax_pr.plot(point["tpr"], point["precision"], **mark)
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, per-frame scores")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall, per-frame scores")
    for fig, ax, name in ((fig_roc, ax_roc, "roc.png"), (fig_pr, ax_pr, "pr.png")):
        ax.legend(fontsize=7, loc="lower right" if ax is ax_roc else "lower left")
        fig.tight_layout()
        out.figure(fig, name)


def _plot_confusion(labels: np.ndarray, scores: np.ndarray, threshold: float, out: _Folder) -> None:
    matrix = skm.confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="predicted", ylabel="true", title=f"threshold {threshold:.3f}")
    fig.tight_layout()
    out.figure(fig, "confusion.png")


def _plot_training(histories: dict[str, pd.DataFrame], kept: str, out: _Folder) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    marked = False
    for name, history in histories.items():
        if history.empty:
            continue
        line, = ax.plot(history["epoch"] + 1, history["loss"], lw=1, label=f"{name} train")
        if "val_loss" not in history:
            continue
        ax.plot(history["epoch"] + 1, history["val_loss"], lw=1, ls="--", color=line.get_color(),
                label=f"{name} val")
        if history["val_loss"].notna().any():
            best = history.loc[history["val_loss"].idxmin()]
            ax.plot(best["epoch"] + 1, best["val_loss"], marker="*", ms=11, color=line.get_color(),
                    mec="black", ls="none", zorder=5)
            marked = True
    handles, names = ax.get_legend_handles_labels()
    if marked:
        handles.append(Line2D([], [], marker="*", ms=11, color="grey", mec="black", ls="none"))
        names.append(f"lowest val_loss ({kept})")
    ax.set(xlabel="epoch", ylabel="focal loss", title="Training curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles, names, fontsize=6, ncol=2)
    fig.tight_layout()
    out.figure(fig, "curves.png")


def _head_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], labels.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def _fold_words(fold: Any) -> str:
    return "" if fold == "eval" else "holdout" if fold == "holdout" else f"fold {fold}"


def _plot_timelines(predictions: pd.DataFrame, per_scan: pd.DataFrame, threshold: float, out: _Folder) -> int:
    """Score over frames of at most MAX_TIMELINES scans, the worst by accuracy first; returns how many drawn."""
    shown = per_scan.sort_values("accuracy", kind="stable").head(MAX_TIMELINES)
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 0.4 + 1.3 * len(shown)), squeeze=False)
    groups = dict(list(predictions.groupby(["scan", "fold"], sort=False)))
    for ax, row in zip(axes[:, 0], shown.itertuples(index=False)):
        scan = groups[(row.scan, row.fold)].sort_values("frame")
        frames = scan["frame"].to_numpy()
        for first, last in _head_runs(scan["label"].to_numpy(int)):
            ax.axvspan(frames[first] - 0.5, frames[last] + 0.5, color="tab:green", alpha=0.2, lw=0)
        ax.plot(frames, scan["score"], lw=1, color="tab:blue")
        ax.axhline(threshold, ls="--", lw=0.8, color="black")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlim(frames[0] - 0.5, frames[-1] + 0.5)
        where = _fold_words(row.fold)
        ax.set_title(f"{row.scan}{f' ({where})' if where else ''}: accuracy {row.accuracy:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    height = fig.get_figheight()
    fig.legend([Line2D([], [], color="tab:blue", lw=1), plt.Rectangle((0, 0), 1, 1, color="tab:green", alpha=0.2),
                Line2D([], [], ls="--", lw=0.8, color="black")],
               ["score", f"{CLASS_NAMES[1]} (label)", f"threshold {threshold:.3f}"],
               fontsize=7, loc="upper center", ncol=3, frameon=False)
    axes[-1, 0].set_xlabel("frame", fontsize=7)
    # Room at the top for the legend, the same in inches however many panels there are.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))
    out.figure(fig, "timelines.png")
    return len(shown)


def _calibration_rows(sets: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per named set of predictions: frames, expected calibration error and Brier score."""
    return pd.DataFrame([{"set": name, "frames": len(frame), "bins": DEFAULT_BINS,
                          "ece": expected_calibration_error(frame["label"], frame["score"]),
                          "brier": brier_score(frame["label"], frame["score"])} for name, frame in sets.items()])


def _plot_reliability(tables: dict[str, pd.DataFrame], scale: str, out: _Folder) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfectly calibrated")
    width = 1 / DEFAULT_BINS / len(tables)
    for i, (name, table) in enumerate(tables.items()):
        color = "tab:red" if name == "holdout" else "black"
        top.plot(table["mean_score"], table["head_fraction"], marker="o", color=color, label=name)
        bottom.bar(table["low"] + width * (i + 0.5), table["frames"], width=width, color=color, alpha=0.6)
    top.set(ylabel=f"fraction of {CLASS_NAMES[1]} frames", xlim=(0, 1), ylim=(0, 1),
            title=f"Reliability of the {scale} scores")
    top.legend(fontsize=7, loc="lower right")
    bottom.set(xlabel=f"mean score in bin ({DEFAULT_BINS} equal-width bins)", ylabel="frames")
    bottom.set_yscale("log")
    fig.tight_layout()
    out.figure(fig, "reliability.png")


def episode_summary(predictions: pd.DataFrame, threshold: float, hold: int = DEFAULT_HOLD) -> dict[str, Any]:
    """``models.episodes.episode_metrics`` of per-frame predictions, per scan in frame order, plus ``hold``.

    predictions: scan, frame, label, score. This dict is what ``write_report``
    takes as ``episodes``.
    """
    ordered = predictions.sort_values(["scan", "frame"], kind="stable")
    figures = episode_metrics(ordered["label"].to_numpy(int), ordered["score"].to_numpy(float), threshold, hold,
                              groups=ordered["scan"].to_numpy())
    return {**figures, "hold": hold}


def _cell(value: Any) -> str:
    if value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "-"  # counts of mean/std rows, AUCs of one-class scans: nothing to show
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
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


def _threshold_text(threshold: float, train_config: TrainConfig | None, threshold_rule: str) -> str:
    if train_config is not None:
        return (f"Decision threshold: **{threshold:.4f}**, by {THRESHOLD_RULES[train_config.threshold_rule]}, "
                "on the pooled out-of-fold scores. Each fold's own threshold (the \"fold threshold\" rows) is "
                "chosen by the same rule on its training scans' scores.")
    if not threshold_rule:
        return (f"Decision threshold: **{threshold:.4f}**, the bundle's own; the bundle does not record how it "
                "was chosen.")
    rule = THRESHOLD_RULES.get(threshold_rule.split()[0])
    return (f"Decision threshold: **{threshold:.4f}**, the bundle's own, chosen when it was trained: "
            f"{threshold_rule}" + (f" ({rule})." if rule else "."))


def _episodes_lines(episodes: dict[str, Any], over: str) -> list[str]:
    table = pd.DataFrame([{k: episodes[k] for k in ("truth", "found", "missed", "false", "split", "predicted")}
                          | {"start delay": episodes["start_delay"], "end delay": episodes["end_delay"]}])
    return ["## Episodes", "",
            f"{over}: a run of {CLASS_NAMES[1]} labels is one true episode; a predicted episode is a run of the "
            f"smoothed verdict at the threshold (hold {episodes['hold']} frames, as the live view shows it). "
            "A true episode is found when a predicted one overlaps it, else missed; a predicted episode "
            "overlapping none is false; split counts extra predicted episodes on one true episode. Delays are "
            "mean frames over found episodes, positive when the prediction starts or ends late "
            "(docs/verdict.md).", "", _markdown_table(table), ""]


def write_report(out: Path, model_config: ModelConfig, train_config: TrainConfig | None,
                 results: Sequence[dict[str, Any]], oof: pd.DataFrame, threshold: float,
                 holdout: pd.DataFrame | None = None, *, title: str = "Cross-validation report",
                 warnings: Sequence[str] = (), calibration: Calibration | None = None, threshold_rule: str = "",
                 episodes: dict[str, Any] | None = None, folder: Path | None = None, bundle_model: str = "") -> Path:
    """Write the report into ``folder`` (default ``out/report``); returns its path.

    oof: per-frame out-of-fold predictions (scan, frame, label, score, fold);
    ``results`` the folds' results, empty for an evaluation (then ``oof`` is
    every evaluated frame, and nothing is read from ``out``).
    ``warnings`` (signs the model did not learn) head the report.
    ``calibration``: the one the scores went through, None for the model's own.
    ``threshold_rule``: how ``threshold`` was chosen, when ``train_config`` is None.
    ``episodes``: ``episode_summary`` of ``oof`` at ``threshold``.
    ``bundle_model``: what the run's bundle scores with, in words.
    """
    out = Path(out)
    cross_validated = bool(results)
    folder = _Folder(Path(folder) if folder is not None else out / "report")
    tables = {"model": to_dict(model_config)}
    if train_config is not None:
        tables["train"] = to_dict(train_config)
    folder.text(to_toml(tables), "config.toml")
    if cross_validated and (out / "folds.csv").exists():
        folder.copied(out / "folds.csv", "folds.csv")
    has_holdout = holdout is not None and len(holdout) > 0
    predictions = pd.concat([oof, holdout], ignore_index=True) if has_holdout else oof
    folder.csv(predictions[["scan", "frame", "label", "score", "fold"]], "predictions.csv")
    metrics = metrics_table(results, oof, threshold, holdout)
    folder.csv(metrics, "metrics.csv")
    per_scan = per_scan_rows(predictions, threshold)
    folder.csv(per_scan, "per_scan.csv")
    sets = {"pooled": oof, **({"holdout": holdout} if has_holdout else {})}
    calibration_table = _calibration_rows(sets)
    folder.csv(calibration_table, "calibration.csv")
    bins = {name: reliability(frame["label"], frame["score"]) for name, frame in sets.items()}
    folder.csv(pd.concat([t.assign(set=name) for name, t in bins.items()], ignore_index=True), "reliability.csv")
    if episodes is not None:
        folder.csv(pd.DataFrame([episodes]), "episodes.csv")
    labels, scores = oof["label"].to_numpy(int), oof["score"].to_numpy(float)
    pooled_words = "Pooled out-of-fold" if cross_validated else "All evaluated"
    report = [f"{pooled_words} per-frame scores, {len(labels)} frames", "",
              f"at threshold {threshold:.4f}:",
              skm.classification_report(labels, (scores >= threshold).astype(int), labels=[0, 1],
                                        target_names=list(CLASS_NAMES), zero_division=0, digits=4),
              "at threshold 0.5:",
              skm.classification_report(labels, (scores >= 0.5).astype(int), labels=[0, 1],
                                        target_names=list(CLASS_NAMES), zero_division=0, digits=4)]
    folder.text("\n".join(report), "classification_report.txt")
    _plot_curves(oof, holdout, threshold, folder)
    _plot_confusion(labels, scores, threshold, folder)
    scale = "calibrated" if calibration is not None else "model's own"
    _plot_reliability(bins, scale, folder)
    drawn = _plot_timelines(predictions, per_scan, threshold, folder)
    histories = {f"fold {r['fold']}": read_history(out / "folds" / f"fold_{r['fold']}" / "history.csv")
                 for r in results}
    if cross_validated and (out / "final" / "history.csv").exists():
        histories["final"] = read_history(out / "final" / "history.csv")
    # The trainer restores the lowest-val_loss weights only when early stopping is on.
    kept = "the weights kept" if train_config is None or train_config.early_stopping else \
        "early stopping off: the last epoch's weights are kept"
    if any(not h.empty for h in histories.values()):
        _plot_training(histories, kept, folder)

    within = [binary_metrics(g["label"], g["score"])["roc_auc"] for _, g in oof.groupby("scan")
              if g["label"].nunique() == 2]
    pooled = metrics[metrics["fold"] == "pooled"].iloc[0]
    shown = metrics[["fold", "at", *METRIC_NAMES, "tn", "fp", "fn", "tp"]]
    lines = [
        f"# {title}", "",
        *([f"**Warning:** {w}." for w in warnings] + [""] if warnings else []),
        f"Backbone `{model_config.backbone}` ({weights_phrase(model_config.weights)}), "
        f"image {model_config.image_size}, window {model_config.window}. Scores are streaming-equivalent "
        "per-frame scores: frame t is scored by the window ending at t, as the live worker scores it.", "",
        (f"The scores shown are calibrated: {calibration.describe()}. The fold rows of the metrics table are "
         "each fold model's own scores at its own threshold, before calibration." if calibration is not None
         else "The scores shown are the model's own sigmoid outputs, not calibrated."), "",
        *([f"Trained with Adam at learning rate {train_config.learning_rate:g} "
           f"({'backbone trained too' if train_config.train_backbone else 'frozen backbone'}), "
           f"batch {train_config.batch_size}, at most {train_config.epochs} epochs per fold.", ""]
          if train_config is not None else []),
        _threshold_text(threshold, train_config, threshold_rule), "",
        *([f"The bundle scores with {bundle_model}.", ""] if bundle_model else []),
        f"Mean ROC-AUC within each scan: **{np.mean(within):.4f}** over {len(within)} scans with both classes."
        + (" The pooled ROC-AUC mixes folds whose scores can sit at different levels, which is why each fold "
           "also picks its own threshold." if cross_validated else "") if within else "", "",
        f"The seed reports ~{100 * SEED_ACCURACY:.1f} % accuracy on validation windows of its 72 real ultrasound "
        f"scans; {'this run' if cross_validated else 'these scans'}: {100 * pooled['accuracy']:.1f} % "
        f"({pooled_words.lower()} frames, {oof['scan'].nunique()} scans, at the threshold). Other scans, labels "
        "and counting, so the two do not compare the models.", "",
        "## Metrics", "", _markdown_table(shown), "",
        "## Curves", "",
        "Pooled is " + ("the out-of-fold frames only" if cross_validated else "every evaluated frame")
        + (", as in the table; the holdout scans, scored by the bundle's model, are a curve of their own"
           if has_holdout else "")
        + ". The dot on the pooled curve is the decision threshold.", "",
        "![ROC](roc.png) ![PR](pr.png)", "", "![confusion](confusion.png)", "",
    ]
    if "curves.png" in folder.written:
        lines += ["![training curves](curves.png)", "",
                  f"A star marks each fold's epoch of lowest validation loss ({kept}).", ""]
    lines += ["## Calibration", "",
              f"How far the {scale} scores lie from the observed fraction of {CLASS_NAMES[1]} frames: "
              f"ECE is the frame-weighted mean gap over {DEFAULT_BINS} equal-width score bins, Brier the mean "
              "squared gap between score and label (0 is perfect for both).", "",
              _markdown_table(calibration_table[["set", "frames", "ece", "brier"]]), "",
              "![reliability](reliability.png)", ""]
    if episodes is not None:
        lines += _episodes_lines(episodes, f"Over the {'out-of-fold' if cross_validated else 'evaluated'} scans, "
                                            "each in frame order")
    left_out = len(per_scan) - drawn
    lines += ["## Per scan", "", _markdown_table(per_scan[["scan", "fold", "frames", "head", "accuracy",
                                                            "recall", "precision", "roc_auc"]]), "",
              "Score over frames, the worst scans by accuracy first; shaded where the label is "
              f"{CLASS_NAMES[1]}" + (f"; {left_out} better scans left out (per_scan.csv has every scan)"
                                     if left_out else "") + ".", "",
              "![timelines](timelines.png)", ""]
    lines += [f"Files: {', '.join(folder.written + ['report.md'])}.", ""]
    folder.text("\n".join(lines), "report.md")
    return folder.path
