"""Diagnostics of a fitted probe or map: is it degenerate, is a presence probability calibrated, what it confuses.

The app picks the plot by estimator: regression probes get predicted vs true; a presence classifier
(logistic) gets a calibration table (mean predicted probability against the observed share of present
chips, per probability bin) and a confusion table at a threshold, never its probability against the
fraction with a y = x line, which is not a comparison of like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CONSTANT_TOL = 1e-6
"""Predictions whose range (max - min over the finite ones) is below this are one constant value."""


@dataclass(frozen=True)
class Degeneracy:
    """A model whose predictions do not vary: `value` is the one prediction, `n` the chips it covers."""

    value: float
    n: int


def constant_prediction(predictions: np.ndarray, tol: float = CONSTANT_TOL) -> Degeneracy | None:
    """A Degeneracy when every finite prediction is (almost) the same value, else None (also for no predictions)."""
    p = np.asarray(predictions, dtype=np.float64)
    p = p[np.isfinite(p)]
    if p.size < 2 or float(p.max() - p.min()) >= tol:
        return None
    return Degeneracy(float(np.median(p)), int(p.size))


def calibration_table(probability: np.ndarray, present: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per probability bin of equal width: bin edges, mean predicted probability, observed share present, chips.

    Empty bins are left out; chips with a non-finite probability or truth are ignored.
    """
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(present, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities for {y.size} truths")
    keep = np.isfinite(p) & np.isfinite(y)
    p, y = np.clip(p[keep], 0.0, 1.0), y[keep]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)  # p = 1 falls in the last bin
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "predicted": float(p[inside].mean()),
                         "observed": float(y[inside].mean()), "chips": int(inside.sum())})
    return pd.DataFrame(rows, columns=["bin_lo", "bin_hi", "predicted", "observed", "chips"])


def confusion_table(probability: np.ndarray, present: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """2 x 2 chip counts: rows truly present / absent, columns predicted present (p >= threshold) / absent."""
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(present, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(y)
    pred, truth = p[keep] >= threshold, y[keep] > 0.5
    return pd.DataFrame(
        {"predicted present": [int((pred & truth).sum()), int((pred & ~truth).sum())],
         "predicted absent": [int((~pred & truth).sum()), int((~pred & ~truth).sum())]},
        index=pd.Index(["truly present", "truly absent"], name="chips"),
    )
