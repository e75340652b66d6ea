"""The evaluation protocol's names and settings, shared by `core.evaluate` (compute), `core.report` (tables)
and `core.plots` (curves): row-set models, default budgets, splits and draws, the observability filter and
the issue's targets."""

from __future__ import annotations

from typing import Iterable

from core.features import BASELINES

DEFAULT_BUDGETS: tuple[int | None, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, None)
QUICK_BUDGETS: tuple[int | None, ...] = (10, 100, None)
REPRESENTATIONS: tuple[str, ...] = ("s2rgb", "s1amp", "coh", "fused")
HANDCRAFTED = "handcrafted"          # the `model` of the cheap baselines (stats, hist, texture, combined)
PRETRAINED, RANDOM_INIT = "pretrained", "random-init"
EXTERNAL = "external"                # the `model` of embeddings brought by the user (data.external, issue #17)
DEFAULT_REPRESENTATIONS: tuple[str, ...] = (*REPRESENTATIONS, RANDOM_INIT, *BASELINES)
OBSERVABLE_STD = 0.02
OBSERVABLE_MIN_CHIPS = 20
PRESENCE_THRESHOLD = 0.05
DROPOUT_BUDGET = 250
TEST_FRACTION = 0.3
DEFAULT_BLOCK = 8
DEFAULT_BUFFER = 0
DEFAULT_SPLIT_SEEDS = 3
DEFAULT_REPEATS = 10
# the targets: beat the best baseline at these budgets; reach RATIO_TARGET of the full-label score at RATIO_BUDGET
HEADLINE_BUDGETS: tuple[str, ...] = ("25", "100")
RATIO_BUDGET = "250"
RATIO_TARGET = 0.95


METRIC_LABELS: dict[str, str] = {"r2": "R^2", "f1": "F1"}
"""The main score of a results table by estimator kind: R^2 for the regressors, F1 for the presence classifier."""


def main_metric(columns: Iterable[str]) -> tuple[str, str]:
    """(column prefix, label) of the main score in a results/dropout table: R^2, else F1 (logistic)."""
    cols = set(columns)
    return ("r2", METRIC_LABELS["r2"]) if "r2_mean" in cols or "f1_mean" not in cols else ("f1", METRIC_LABELS["f1"])
