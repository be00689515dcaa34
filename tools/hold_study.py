"""How much hysteresis the shown verdict needs: a training run's out-of-fold scores smoothed with each hold.

``python -m tools.hold_study RUN [--threshold T] [--holds 1,2,...]`` reads
``RUN/report/predictions.csv`` (every frame's out-of-fold score and label),
smooths each scan's decisions with ``models.verdict.smooth`` and prints, per
hold: the verdict's changes per 100 frames against the labels' own,
spurious changes (beyond the labels'), frame accuracy, and the mean delay
in frames from a label change to the verdict's. ``docs/verdict.md`` holds
the table that chose ``DEFAULT_HOLD``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from models.verdict import flips, smooth


def _delays(labels: np.ndarray, verdicts: np.ndarray) -> list[int]:
    """Frames from each label change to the first frame at which the verdict agrees with the new label."""
    out = []
    for change in np.flatnonzero(labels[1:] != labels[:-1]) + 1:
        later = np.flatnonzero(verdicts[change:] == labels[change])
        if later.size:
            out.append(int(later[0]))
    return out


def hold_table(predictions: pd.DataFrame, threshold: float, holds: list[int]) -> pd.DataFrame:
    """One row per hold: flips_per_100, label_flips_per_100, spurious_per_100, accuracy, delay_frames."""
    rows = []
    scans = [group.sort_values("frame") for _, group in predictions.groupby("scan")]
    frames = sum(len(s) for s in scans)
    label_flips = sum(flips(s["label"].to_numpy(bool)) for s in scans)
    for hold in holds:
        verdict_flips, correct, delays = 0, 0, []
        for scan in scans:
            labels = scan["label"].to_numpy(bool)
            verdicts = smooth(scan["score"].to_numpy() >= threshold, hold)
            verdict_flips += flips(verdicts)
            correct += int(np.count_nonzero(verdicts == labels))
            delays += _delays(labels, verdicts)
        rows.append({"hold": hold, "flips_per_100": 100 * verdict_flips / frames,
                     "label_flips_per_100": 100 * label_flips / frames,
                     "spurious_per_100": 100 * max(0, verdict_flips - label_flips) / frames,
                     "accuracy": correct / frames, "delay_frames": float(np.mean(delays)) if delays else float("nan")})
    return pd.DataFrame(rows)


def _run_threshold(run: Path) -> float:
    match = re.search(r"Decision threshold: \*\*([0-9.]+)\*\*", (run / "report" / "report.md").read_text())
    if match is None:
        raise SystemExit(f"{run}/report/report.md: no decision threshold in it; give --threshold")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.hold_study", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder (fetalhead train --out)")
    parser.add_argument("--threshold", type=float, default=None, help="(default: the run's decision threshold)")
    parser.add_argument("--holds", default="1,2,3,4,5,6,8", help="(default: 1,2,3,4,5,6,8)")
    args = parser.parse_args(argv)
    path = args.run / "report" / "predictions.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; is {args.run} a finished training run?")
    threshold = args.threshold if args.threshold is not None else _run_threshold(args.run)
    table = hold_table(pd.read_csv(path), threshold, [int(h) for h in args.holds.split(",")])
    out = Table(title=f"verdict hysteresis on {path} (threshold {threshold:.4f})")
    for column in ("hold", "verdict flips /100 frames", "label flips /100", "spurious /100", "accuracy",
                   "delay (frames)"):
        out.add_column(column, justify="right")
    for row in table.itertuples(index=False):
        out.add_row(str(row.hold), *(f"{v:.3f}" for v in row[1:]))
    Console().print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
