"""A bundle's probability calibration: a map from the model's own scores to calibrated ones.

Here, without scikit-learn, so that every scoring path (``models.runtime``)
applies the same map; ``train.calibration`` fits it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Platt scaling of the model's own scores: ``sigmoid(slope * logit(score) + intercept)``.

    Fitted by ``train.calibration.fit_platt``; applied here, without
    scikit-learn, so that every scoring path (``models.runtime.Runtime``)
    gives the same calibrated scores. It is monotone increasing (slope > 0),
    so it never reorders frames: ROC-AUC is unchanged, only what a score means.
    """

    slope: float
    intercept: float
    kind: str = "platt"
    fitted_on: str = ""

    def __post_init__(self) -> None:
        if self.kind != "platt":
            raise ValueError(f"calibration kind must be 'platt', got {self.kind!r}")
        if not (math.isfinite(self.slope) and self.slope > 0):
            raise ValueError(f"calibration slope must be a finite number above 0, got {self.slope}")
        if not math.isfinite(self.intercept):
            raise ValueError(f"calibration intercept must be finite, got {self.intercept}")

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Raw scores float (any shape) in [0, 1] -> calibrated float32 of the same shape."""
        # Clipping keeps logit finite for scores of exactly 0 or 1 (float32 sigmoid saturates there).
        raw = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
        z = self.slope * np.log(raw / (1 - raw)) + self.intercept
        return (1 / (1 + np.exp(-z))).astype(np.float32)

    def inverse(self, calibrated: float) -> float:
        """The model's own score that calibrates to ``calibrated`` (in (0, 1))."""
        z = (math.log(calibrated / (1 - calibrated)) - self.intercept) / self.slope
        return float(1 / (1 + math.exp(-z))) if z > -700 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> Calibration:
        """The calibration stored in bundle.json; ValueError naming what is wrong."""
        if not isinstance(value, dict):
            raise ValueError(f"must be a table, got {type(value).__name__}")
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        for name in ("slope", "intercept"):
            if not _is_number(value.get(name)):
                raise ValueError(f"{name} must be a number, got {value.get(name)!r}")
        if not isinstance(value.get("fitted_on", ""), str) or not isinstance(value.get("kind", "platt"), str):
            raise ValueError("kind and fitted_on must be text")
        return cls(**value)

    def describe(self) -> str:
        """One line for ``model info`` and the report."""
        where = f", fitted on {self.fitted_on}" if self.fitted_on else ""
        sign = "-" if self.intercept < 0 else "+"
        return (f"Platt scaling sigmoid({self.slope:.4g} * logit(score) {sign} {abs(self.intercept):.4g}){where}; "
                "the threshold applies to calibrated scores")
