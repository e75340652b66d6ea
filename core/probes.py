"""Few-shot probes: fit a classical estimator on n labelled chips and score it on a fixed held-out split.

A *task* is a label column of the chip store (`data.modalities.LABEL_TASKS`: fractions in [0, 1], NaN
unknown). The protocol, deterministic given `seed`:

1. `split_pool_test` splits the chips with a finite label and finite features once into a training
   pool and a held-out test set (the same split for every budget, estimator and feature set that
   shares the mask and seed).
2. For a budget n, each of `repeats` draws takes n random chips from the pool, fits the estimator and
   scores it on the whole test set; metrics are the mean and std over draws. Budget `None` ("all")
   is the full-label reference: the whole pool, one draw.

Estimators (`PROBES`, a registry of scikit-learn `Pipeline`s built by `probe_pipeline`: a frozen
StandardScaler, then the estimator): `ridge` (`RidgeLOO`: scikit-learn RidgeCV's estimator, alpha chosen
from a fixed log grid by the exact leave-one-out error, vectorised over the grid from one SVD),
`random_forest`, `knn` (k = min(10, n)) and `logistic` (presence = fraction > `presence_threshold`; metric
F1). Regression predictions are clipped to [0, 1]; metrics R², MAE, Pearson r. The linear estimators'
scaler is fitted on all chips with finite features (no labels are used, so this leaks nothing from the test
labels) and frozen, so fitting a draw fits the estimator only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import RandomForestRegressor
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from data.cli import KnownError
from data.modalities import LABEL_TASKS

REGRESSION_METRICS: tuple[str, ...] = ("r2", "mae", "pearson_r")
CLASSIFICATION_METRICS: tuple[str, ...] = ("f1", "accuracy")
DEFAULT_BUDGETS: tuple[int | None, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, None)
RIDGE_ALPHAS: np.ndarray = np.logspace(-2, 5, 29)
"""Alpha grid of the ridge probe (features standardised, so the scale is comparable across feature sets)."""
KNN_K = 10
RF_TREES = 100
MIN_BUDGET = 2


class ProbeError(KnownError, ValueError):
    """Bad probe input (unknown task/estimator, impossible budget, NaN features...): the message says how to fix it."""


@dataclass
class ProbeResult:
    """Outcome of one probe: metric mean/std over draws, per-draw scores and the first draw's predictions."""

    task: str
    estimator: str
    budget: int | None                    # None = all labels (the full pool)
    repeats: int                          # draws actually made (1 for budget None)
    metrics: dict[str, tuple[float, float]]   # name -> (mean, std) over draws
    draw_scores: dict[str, np.ndarray]    # name -> [repeats] per-draw scores
    n_train: int                          # chips per draw
    n_pool: int
    n_test: int
    pool_idx: np.ndarray                  # [n_pool] row indices of the training pool
    test_idx: np.ndarray                  # [n_test] row indices of the held-out test set
    train_idx: np.ndarray                 # [n_train] rows of the first draw
    test_predictions: np.ndarray          # [n_test] first draw: fraction (regression) or P(present) (logistic)
    all_predictions: np.ndarray           # [N] first draw, every row; NaN where features are not finite
    presence_threshold: float | None = None   # logistic only
    alphas: np.ndarray | None = None      # ridge: alpha chosen per draw
    notes: list[str] = field(default_factory=list)   # fallbacks taken (e.g. a single-class draw)

    @property
    def headline(self) -> tuple[str, float]:
        """The main metric (name, mean): R² for regression, F1 for presence."""
        name = "f1" if "f1" in self.metrics else "r2"
        return name, self.metrics[name][0]


# ----------------------------------------------------------------------------------------- validation
def _check_task(task: str) -> None:
    if task not in LABEL_TASKS:
        raise ProbeError(f"unknown task {task!r}; tasks are the label columns {list(LABEL_TASKS)}")


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ProbeError(f"unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}")


def _as_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ProbeError(f"features must be a 2-D array [N, D], got shape {X.shape}")
    if y.ndim != 1:
        raise ProbeError(f"labels must be a 1-D array [N], got shape {y.shape}")
    if len(X) != len(y):
        raise ProbeError(f"features have {len(X)} rows but labels have {len(y)}: pass one label per feature row "
                         "(both in store order)")
    if len(X) == 0 or X.shape[1] == 0:
        raise ProbeError(f"empty input (features of shape {X.shape}): the AOI has no chips or no features to probe")
    if not np.isfinite(y).any():
        raise ProbeError("every label is NaN: this AOI has no labels for the task; pick another task or AOI")
    fin = y[np.isfinite(y)]
    if fin.min() < -1e-6 or fin.max() > 1 + 1e-6:
        raise ProbeError(f"labels must be fractions in [0, 1] (NaN = unknown), got values in [{fin.min():.3g}, "
                         f"{fin.max():.3g}]")
    return X, y


def _check_budget(budget: int | str | None, n_pool: int) -> int | None:
    if budget is None or (isinstance(budget, str) and budget.lower() == "all"):
        return None
    if isinstance(budget, str) or isinstance(budget, bool) or int(budget) != budget:
        raise ProbeError(f"budget must be an integer number of labelled chips or None/'all', got {budget!r}")
    budget = int(budget)
    if budget < MIN_BUDGET:
        raise ProbeError(f"budget {budget} is too small: a probe needs at least {MIN_BUDGET} labelled chips")
    if budget > n_pool:
        raise ProbeError(f"budget {budget} is larger than the training pool ({n_pool} labelled chips); "
                         f"use a budget <= {n_pool} or None for all labels")
    return budget


def _check_indices(name: str, idx: np.ndarray | Sequence[int], n: int) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ProbeError(f"{name} must be a 1-D array of integer row indices, got dtype {idx.dtype} shape {idx.shape}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ProbeError(f"{name} indices out of range for {n} rows")
    if np.unique(idx).size != idx.size:
        raise ProbeError(f"{name} indices contain duplicates")
    return idx


# ----------------------------------------------------------------------------------------- split
def split_pool_test(n: int, valid_mask: np.ndarray | None = None, *, test_fraction: float = 0.3,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (pool_idx, test_idx) over the valid rows: a seeded permutation, `test_fraction` held out; both sorted."""
    if n < 1:
        raise ProbeError("empty input: no chips to split into a training pool and a test set")
    valid = np.ones(n, dtype=bool) if valid_mask is None else np.asarray(valid_mask, dtype=bool)
    if valid.shape != (n,):
        raise ProbeError(f"valid_mask has shape {valid.shape}, expected ({n},)")
    if not 0.0 < test_fraction < 1.0:
        raise ProbeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rows = np.flatnonzero(valid)
    n_test = int(round(len(rows) * test_fraction))
    if len(rows) < MIN_BUDGET + 1 or n_test < 1 or len(rows) - n_test < MIN_BUDGET:
        raise ProbeError(f"only {len(rows)} chips have a finite label and valid features: too few to hold out a "
                         f"test set and keep a training pool of >= {MIN_BUDGET}; label more chips")
    perm = np.random.default_rng(seed).permutation(rows)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def probe_split(rows: np.ndarray, cols: np.ndarray, valid: np.ndarray | None = None, *, block: int = 8,
                test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The app's live-probe split: `blocked_split` with the block shrunk (8, 4, 2, 1) until the AOI holds at
    least 12 squares, so small real scenes still get a spatially blocked test set. Returns (pool, test, block)."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    side = int(max(np.ptp(rows), np.ptp(cols))) + 1 if len(rows) else 1
    b = int(block)
    while b > 1 and (side / b) ** 2 < 12:
        b //= 2
    pool, test = blocked_split(rows, cols, valid, block=b, test_fraction=test_fraction, seed=seed)
    return pool, test, b


def blocked_split(rows: np.ndarray, cols: np.ndarray, valid: np.ndarray | None = None, *, block: int = 8,
                  test_fraction: float = 0.3, seed: int = 0, buffer: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spatially blocked (pool_idx, test_idx): whole `block` x `block` squares of the AOI's chip grid go to test.

    rows, cols: the chips' grid position (the store index's `row` / `col`). The grid is cut into squares of
    `block` x `block` chips, with a seeded origin offset (0..block-1 in each direction) so that different
    seeds cut different squares. Squares holding valid chips are shuffled (seeded) and taken into the test
    set until it holds `round(test_fraction * n_valid)` valid chips (the last square is kept whole, so the
    test set is slightly larger or smaller than that). No square has chips in both sets, so train and test
    are spatially disjoint up to the squares' common edges. `buffer` > 0 also drops pool chips within
    `buffer` grid steps (Chebyshev distance) of any test chip, so no training chip touches a test chip.
    Only valid rows enter either set; both are sorted store positions.
    """
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    n = len(rows)
    if rows.shape != (n,) or cols.shape != (n,):
        raise ProbeError(f"rows and cols must be 1-D arrays of the same length, got {rows.shape} and {cols.shape}")
    if n < 1:
        raise ProbeError("empty input: no chips to split into a training pool and a test set")
    if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
        if not (np.all(np.isfinite(rows)) and np.all(np.isfinite(cols)) and np.all(rows == np.round(rows))
                and np.all(cols == np.round(cols))):
            raise ProbeError("rows and cols must be integer grid positions (the store index's row/col columns)")
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (n,):
        raise ProbeError(f"valid has shape {valid.shape}, expected ({n},)")
    if int(block) != block or block < 1:
        raise ProbeError(f"block must be a positive integer number of chips per side, got {block!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ProbeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if int(buffer) != buffer or buffer < 0:
        raise ProbeError(f"buffer must be a non-negative integer number of chips, got {buffer!r}")
    block, buffer = int(block), int(buffer)
    idx = np.flatnonzero(valid)
    n_want = int(round(len(idx) * test_fraction))
    if len(idx) < MIN_BUDGET + 1 or n_want < 1:
        raise ProbeError(f"only {len(idx)} chips have a finite label and valid features: too few to hold out a "
                         f"test set and keep a training pool of >= {MIN_BUDGET}; label more chips")
    rng = np.random.default_rng([int(seed), 8_147])
    off_r, off_c = (int(v) for v in rng.integers(0, block, size=2))
    r0, c0 = rows.min(), cols.min()
    br, bc = (rows - r0 + off_r) // block, (cols - c0 + off_c) // block
    key = br * (int(bc.max()) + 1) + bc                               # one id per square
    squares, inverse, counts = np.unique(key[idx], return_inverse=True, return_counts=True)
    if len(squares) < 2:
        raise ProbeError(f"the valid chips lie in a single {block} x {block} square: use a smaller block "
                         "(the AOI grid is too small for a blocked split)")
    order = rng.permutation(len(squares))
    cum = np.cumsum(counts[order])
    k = int(np.searchsorted(cum, n_want))                            # first k+1 squares reach n_want
    # take k or k+1 squares, whichever lands nearer the target; always at least one, never all
    if k >= len(squares) or (k > 0 and abs(cum[k - 1] - n_want) <= abs(cum[k] - n_want)):
        k -= 1
    k = min(max(k, 0), len(squares) - 2)
    test_sq = np.zeros(len(squares), dtype=bool)
    test_sq[order[:k + 1]] = True
    is_test = test_sq[inverse]
    test, pool = idx[is_test], idx[~is_test]
    if buffer and len(pool):
        near = np.zeros(len(pool), dtype=bool)
        tr, tc = rows[test], cols[test]
        for a in range(0, len(pool), 2048):
            p = pool[a:a + 2048]
            d = np.maximum(np.abs(rows[p, None] - tr[None]), np.abs(cols[p, None] - tc[None]))
            near[a:a + 2048] = (d <= buffer).any(axis=1)
        pool = pool[~near]
    if len(pool) < MIN_BUDGET:
        raise ProbeError(f"the blocked split leaves {len(pool)} pool chips (block {block}, buffer {buffer}): "
                         "use a smaller block, buffer or test fraction")
    return np.sort(pool), np.sort(test)


# ----------------------------------------------------------------------------------------- estimators
def fit_scaler(X: np.ndarray, rows: np.ndarray) -> StandardScaler:
    """A StandardScaler fitted on `rows` of X (labels unused), in float64; constant columns get scale 1."""
    return StandardScaler().fit(np.asarray(X, dtype=np.float64)[rows])


def standardise(X: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Z-score the columns of X over the valid rows with finite features (no labels used); other rows become 0."""
    X = np.asarray(X, dtype=np.float64)
    ok = np.isfinite(X).all(axis=1) & (True if valid is None else np.asarray(valid, dtype=bool))
    if not ok.any():
        return np.zeros(X.shape, dtype=np.float64)
    scaler = fit_scaler(X, np.flatnonzero(ok))
    return np.where(ok[:, None], scaler.transform(np.where(ok[:, None], X, 0.0)), 0.0)


def ridge_loo(X: np.ndarray, y: np.ndarray, alphas: np.ndarray = RIDGE_ALPHAS) -> tuple[np.ndarray, float, float]:
    """Ridge with an unpenalised intercept, alpha chosen by exact leave-one-out error: (coef, intercept, alpha).

    The same estimator and selection rule as scikit-learn's `RidgeCV(alphas)` (GCV mode: mean squared LOO
    error), vectorised over the whole alpha grid from one thin SVD of the centred X: with X_c = U S V^T,
    the hat matrix is 1/n + U diag(s^2 / (s^2 + alpha)) U^T and the LOO residual is (y - y_hat) / (1 - h).
    Ties go to the smallest alpha, as in scikit-learn.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    xm, ym = X.mean(axis=0), y.mean()
    Xc, yc = X - xm, y - ym
    U, sv, Vt = np.linalg.svd(Xc, full_matrices=False)
    s2 = sv ** 2
    alphas = np.asarray(alphas, dtype=np.float64)
    shrink = s2[:, None] / (s2[:, None] + alphas[None, :])            # [k, A]
    uty = U.T @ yc                                                    # [k]
    fitted = U @ (shrink * uty[:, None])                              # [n, A] centred predictions
    h = np.square(U) @ shrink + 1.0 / n                               # [n, A] hat diagonal
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = (yc[:, None] - fitted) / (1.0 - h)
    err = np.where(np.isfinite(loo), loo, np.inf) ** 2
    best = int(np.argmin(err.mean(axis=0)))
    alpha = float(alphas[best])
    coef = Vt.T @ ((sv / (s2 + alpha)) * uty)
    return coef, float(ym - xm @ coef), alpha


class RidgeLOO(RegressorMixin, BaseEstimator):
    """`ridge_loo` as a scikit-learn regressor: RidgeCV's estimator and alpha, 3-5x faster than RidgeCV
    (measured at D=128, n=25..1428, one thread), which matters for thousands of draws per evaluation."""

    def __init__(self, alphas: np.ndarray = RIDGE_ALPHAS) -> None:
        self.alphas = alphas

    def fit(self, X: np.ndarray, y: np.ndarray) -> "RidgeLOO":
        """Fit the coefficients and choose alpha_ by exact leave-one-out error."""
        self.coef_, self.intercept_, self.alpha_ = ridge_loo(X, y, self.alphas)
        self.n_features_in_ = len(self.coef_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Linear predictions (not clipped)."""
        check_is_fitted(self, "coef_")
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_


@dataclass(frozen=True)
class ProbeSpec:
    """One estimator of the registry: how to build it for a draw, and whether it needs standardised features."""

    make: Callable[[int, int, int], BaseEstimator]   # (n_train, seed, n_jobs) -> unfitted estimator
    scaled: bool                                      # linear: features z-scored first
    presence: bool = False                            # classifier of presence (y > threshold), scored by F1


def _random_forest(n_train: int, seed: int, n_jobs: int) -> RandomForestRegressor:
    # sqrt features per split: ~3x faster than 0.33 at D=128, and the usual choice for wide inputs.
    # Small draws build trees faster than threads start: one job below a few hundred chips.
    return RandomForestRegressor(n_estimators=RF_TREES, max_features="sqrt", n_jobs=n_jobs if n_train >= 200 else 1,
                                 random_state=seed)


PROBES: dict[str, ProbeSpec] = {
    "ridge": ProbeSpec(lambda n, seed, jobs: RidgeLOO(RIDGE_ALPHAS), scaled=True),
    "random_forest": ProbeSpec(_random_forest, scaled=False),
    "knn": ProbeSpec(lambda n, seed, jobs: KNeighborsRegressor(n_neighbors=min(KNN_K, n)), scaled=False),
    "logistic": ProbeSpec(lambda n, seed, jobs: LogisticRegression(C=1.0, max_iter=500), scaled=True, presence=True),
}
"""The probe estimators by name; `probe_pipeline` wraps one with its scaler."""
ESTIMATORS: tuple[str, ...] = tuple(PROBES)


def probe_pipeline(estimator: str, scaler: StandardScaler | None, *, n_train: int, seed: int = 0,
                   n_jobs: int = 1) -> Pipeline:
    """Pipeline(scale, estimator) for one draw: `scaler` is fitted beforehand on every chip with valid features
    (labels unused, so it leaks nothing) and frozen, so fitting on a draw fits the estimator only;
    "passthrough" when the estimator needs no scaling or `scaler` is None (features already standardised)."""
    _check_estimator(estimator)
    spec = PROBES[estimator]
    scale = FrozenEstimator(scaler) if spec.scaled and scaler is not None else "passthrough"
    return Pipeline([("scale", scale), (estimator, spec.make(n_train, seed, n_jobs))])


class _Fitted:
    """A fitted probe: predict() returns fractions (regression) or P(present) (logistic)."""

    def __init__(self, predict, alpha: float | None = None, note: str | None = None) -> None:
        self.predict, self.alpha, self.note = predict, alpha, note


def _fit(estimator: str, scaler: StandardScaler | None, Xtr: np.ndarray, ytr: np.ndarray, *, seed: int,
         n_jobs: int) -> _Fitted:
    """Fit one draw's pipeline; a presence draw holding one class predicts that class (nothing to fit)."""
    if PROBES[estimator].presence:
        classes = np.unique(ytr)
        if len(classes) == 1:
            c = float(classes[0])
            return _Fitted(lambda Z: np.full(len(Z), c),
                           note=f"a draw held only {'present' if c else 'absent'} chips: predicted that class for all")
        pipe = probe_pipeline(estimator, scaler, n_train=len(ytr), seed=seed, n_jobs=n_jobs).fit(Xtr, ytr.astype(int))
        return _Fitted(lambda Z: pipe.predict_proba(Z)[:, 1])
    pipe = probe_pipeline(estimator, scaler, n_train=len(ytr), seed=seed, n_jobs=n_jobs).fit(Xtr, ytr)
    return _Fitted(pipe.predict, alpha=getattr(pipe[-1], "alpha_", None))


def _scores(estimator: str, y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if estimator == "logistic":
        cls = (pred >= 0.5).astype(int)
        return {"f1": float(f1_score(y_true.astype(int), cls, zero_division=0.0)),
                "accuracy": float(np.mean(cls == y_true.astype(int)))}
    # A constant prediction has no covariance with the truth: Pearson r is reported as 0, not NaN.
    y_true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    dt, dp = y_true - y_true.mean(), pred - pred.mean()
    st, sp = np.sqrt(dt @ dt), np.sqrt(dp @ dp)
    r = float(dt @ dp / (st * sp)) if sp > 1e-12 * np.sqrt(len(pred)) and st > 1e-12 * np.sqrt(len(pred)) else 0.0
    res = y_true - pred
    ss_res, ss_tot = float(res @ res), float(dt @ dt)
    # R^2 as scikit-learn's r2_score (force_finite): a constant truth gives 1 if predicted exactly, else 0
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {"r2": r2, "mae": float(np.abs(res).mean()), "pearson_r": r}


# ----------------------------------------------------------------------------------------- probe
def _draw_rng(seed: int, budget: int | None) -> np.random.Generator:
    """Draws depend on (seed, budget) only, so a budget gives the same draws alone or in a learning curve."""
    return np.random.default_rng([int(seed), 0 if budget is None else int(budget)])


@dataclass(frozen=True)
class ProbeData:
    """A probe's validated inputs, shared by every estimator, budget and draw on one feature set and task:
    the features, the labels, which rows are usable, the fixed split and the frozen scaler."""

    task: str
    X: np.ndarray                         # [N, D] features as given (rows outside `usable` are never read)
    y: np.ndarray                         # [N] float64 label fractions, NaN unknown
    usable: np.ndarray                    # [N] bool: finite features (and valid)
    pool: np.ndarray                      # [n_pool] rows of the training pool
    test: np.ndarray                      # [n_test] rows of the held-out test set
    test_features: np.ndarray             # [n_test, D] float64 features of the test rows
    scaler: StandardScaler | None         # fitted on every usable row (labels unused); None: no scaling
    seed: int
    presence_threshold: float

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float64 features of `rows` (every row when None); unusable rows are zeros (they are never scored)."""
        x = np.asarray(self.X if rows is None else self.X[rows], dtype=np.float64)
        ok = self.usable if rows is None else self.usable[rows]
        return x if ok.all() else np.where(ok[:, None], x, 0.0)

    def target(self, estimator: str) -> np.ndarray:
        """[N] what the estimator learns: presence (fraction > threshold) for the classifier, else the fraction."""
        return (self.y > self.presence_threshold).astype(np.float64) if PROBES[estimator].presence else self.y


@dataclass
class ProbeDraw:
    """One fitted draw of a probe: its test scores and, for the first draw, its predictions."""

    draw: int                             # 0-based draw number (seeds the estimator)
    scores: dict[str, float]
    train_idx: np.ndarray                 # [n_train] rows it was fitted on
    test_predictions: np.ndarray          # [n_test]
    all_predictions: np.ndarray | None    # [N] when asked for (NaN where rows are not usable)
    alpha: float | None = None
    note: str | None = None


def prepare_probe(X: np.ndarray, y: np.ndarray, *, task: str, seed: int = 0, pool: np.ndarray | None = None,
                  test: np.ndarray | None = None, presence_threshold: float = 0.05, test_fraction: float = 0.3,
                  valid: np.ndarray | None = None, scale: bool = True) -> ProbeData:
    """Validate a probe's inputs and fix its split and scaler once (see `fit_probe` for the arguments);
    scale=False when no scaled estimator will use it or the features are already standardised."""
    _check_task(task)
    X, y = _as_xy(X, y)
    finite_x = np.isfinite(X).all(axis=1)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (len(y),):
            raise ProbeError(f"valid must be a bool array of shape ({len(y)},), got {valid.shape}")
        finite_x &= valid
    if not finite_x.any():
        raise ProbeError("every feature row has NaN/inf values: impute or drop missing features before probing")
    if (pool is None) != (test is None):
        raise ProbeError("pass both pool and test (from split_pool_test) or neither")
    if pool is None:
        pool, test = split_pool_test(len(y), np.isfinite(y) & finite_x, test_fraction=test_fraction, seed=seed)
    pool, test = _check_indices("pool", pool, len(y)), _check_indices("test", test, len(y))
    if len(test) == 0:
        raise ProbeError("the test set is empty: pass a non-empty test split (see split_pool_test)")
    if np.intersect1d(pool, test).size:
        raise ProbeError("pool and test share chips: the held-out test set must be disjoint from the training pool")
    for name, idx in (("pool", pool), ("test", test)):
        if not np.isfinite(y[idx]).all():
            raise ProbeError(f"the {name} holds chips with NaN labels: build the split from np.isfinite(y) & valid "
                             "(split_pool_test does)")
        if not finite_x[idx].all():
            raise ProbeError(f"the {name} holds chips with NaN features (e.g. a missing modality): exclude them "
                             "from the split's valid mask or impute the features")
    # scaled once over every chip with valid features, inside each draw's pipeline (frozen): no labels used
    scaler = fit_scaler(X, np.flatnonzero(finite_x)) if scale else None
    return ProbeData(task=task, X=X, y=y, usable=finite_x, pool=pool, test=test,
                     test_features=np.asarray(X[test], dtype=np.float64), scaler=scaler, seed=int(seed),
                     presence_threshold=float(presence_threshold))


def draw_train_sets(data: ProbeData, budget: int | str | None, repeats: int) -> list[np.ndarray]:
    """The training rows of each of `repeats` draws at `budget` (the whole pool, once, for None/'all'),
    from the (seed, budget) generator: draw d is the same whatever the number of repeats."""
    budget = _check_budget(budget, len(data.pool))
    if repeats < 1:
        raise ProbeError(f"repeats must be >= 1, got {repeats}")
    if budget is None:
        return [data.pool.copy()]
    rng = _draw_rng(data.seed, budget)
    return [np.sort(rng.choice(data.pool, size=budget, replace=False)) for _ in range(int(repeats))]


def fit_draw(data: ProbeData, estimator: str, train: np.ndarray, draw: int, *, n_jobs: int = 2,
             predict_all: bool = False) -> ProbeDraw:
    """Fit one draw on rows `train` and score it on the test set; predict every row too when `predict_all`."""
    _check_estimator(estimator)
    target = data.target(estimator)
    fitted = _fit(estimator, data.scaler, data.features(train), target[train], seed=data.seed * 1000 + int(draw),
                  n_jobs=n_jobs)
    pred = fitted.predict(data.test_features)
    if estimator != "logistic":
        pred = np.clip(pred, 0.0, 1.0)
    allp = None
    if predict_all:
        allp = np.where(data.usable, np.clip(fitted.predict(data.features()), 0.0, 1.0), np.nan)
    return ProbeDraw(draw=int(draw), scores=_scores(estimator, target[data.test], pred), train_idx=train,
                     test_predictions=pred, all_predictions=allp, alpha=fitted.alpha, note=fitted.note)


def combine_draws(data: ProbeData, estimator: str, budget: int | None, draws: Sequence[ProbeDraw]) -> ProbeResult:
    """The ProbeResult of draws made in order (metrics: mean and std over them; predictions of the first)."""
    if not draws:
        raise ProbeError("no draws to combine: fit at least one")
    scores: dict[str, list[float]] = {}
    alphas = [d.alpha for d in draws if d.alpha is not None]
    notes: list[str] = []
    for d in draws:
        for k, v in d.scores.items():
            scores.setdefault(k, []).append(v)
        if d.note and d.note not in notes:
            notes.append(d.note)
    if estimator == "logistic":
        t_true = data.target(estimator)[data.test]
        n_pos = int(t_true.sum())
        if n_pos == 0 or n_pos == len(t_true):
            notes.append(f"the test set holds only {'present' if n_pos else 'absent'} chips at threshold "
                         f"{data.presence_threshold:g}: F1 is not informative")
    first = draws[0]
    draw_scores = {k: np.asarray(v) for k, v in scores.items()}
    metrics = {k: (float(v.mean()), float(v.std())) for k, v in draw_scores.items()}
    return ProbeResult(task=data.task, estimator=estimator, budget=budget, repeats=len(draws), metrics=metrics,
                       draw_scores=draw_scores, n_train=len(first.train_idx), n_pool=len(data.pool),
                       n_test=len(data.test), pool_idx=data.pool, test_idx=data.test, train_idx=first.train_idx,
                       test_predictions=first.test_predictions,
                       all_predictions=(first.all_predictions if first.all_predictions is not None
                                        else np.full(len(data.y), np.nan)),
                       presence_threshold=data.presence_threshold if estimator == "logistic" else None,
                       alphas=np.asarray(alphas) if alphas else None, notes=notes)


def fit_prepared(data: ProbeData, estimator: str, budget: int | str | None, repeats: int, *, n_jobs: int = 2,
                 predict_all: bool = True) -> ProbeResult:
    """`fit_probe` on prepared inputs: every draw at `budget`, combined."""
    _check_estimator(estimator)
    budget = _check_budget(budget, len(data.pool))
    trains = draw_train_sets(data, budget, repeats)
    draws = [fit_draw(data, estimator, t, d, n_jobs=n_jobs, predict_all=predict_all and d == 0)
             for d, t in enumerate(trains)]
    return combine_draws(data, estimator, budget, draws)


def fit_probe(X: np.ndarray, y: np.ndarray, *, task: str, estimator: str = "ridge", budget: int | str | None = None,
              repeats: int = 10, seed: int = 0, pool: np.ndarray | None = None, test: np.ndarray | None = None,
              presence_threshold: float = 0.05, test_fraction: float = 0.3, n_jobs: int = 2,
              valid: np.ndarray | None = None, standardised: bool = False,
              predict_all: bool = True) -> ProbeResult:
    """Probe one task at one label budget: `repeats` random draws of `budget` pool chips, scored on the test set.

    valid: optional bool [N], rows whose features mean something (e.g. the embedding's presence flag: a
    chip without the modality has a zero vector, finite but meaningless). Invalid rows are treated like
    rows with NaN features: left out of the split and the standardisation, and predicted as NaN.
    standardised: X is already standardised (e.g. by `standardise`, once per feature set): skip it here.
    predict_all: fill `all_predictions` (one extra prediction over every row); False leaves it all-NaN.
    The steps (`prepare_probe`, `draw_train_sets`, `fit_draw`, `combine_draws`) let a caller cache or count draws.
    """
    _check_task(task)
    _check_estimator(estimator)
    data = prepare_probe(X, y, task=task, seed=seed, pool=pool, test=test, presence_threshold=presence_threshold,
                         test_fraction=test_fraction, valid=valid,
                         scale=PROBES[estimator].scaled and not standardised)
    return fit_prepared(data, estimator, budget, repeats, n_jobs=n_jobs, predict_all=predict_all)


def probe_summary(result: ProbeResult) -> ProbeResult:
    """The result without its per-chip arrays (a learning-curve point: metrics, sizes, notes)."""
    empty = np.zeros(0, dtype=np.int64)
    return replace(result, pool_idx=empty, test_idx=empty, train_idx=empty, test_predictions=np.zeros(0),
                   all_predictions=np.zeros(0))


def budget_label(budget: int | None) -> str:
    """'all' for the full-label budget, else the number as text."""
    return "all" if budget is None else str(int(budget))


def curve_table(full: ProbeResult, points: Sequence[ProbeResult], skipped: Sequence[int] = ()) -> pd.DataFrame:
    """Tidy learning-curve table from the full-label probe and one probe per budget (see `learning_curve`)."""
    rows = []
    for res in points:
        for name, (mean, std) in res.metrics.items():
            ref = full.metrics[name][0]
            ratio = mean / ref if abs(ref) > 1e-12 and (name == "mae" or ref > 0) else np.nan
            rows.append({"budget": budget_label(res.budget), "n_train": res.n_train, "repeats": res.repeats,
                         "metric": name, "mean": mean, "std": std, "full": ref, "ratio_to_full": ratio})
    df = pd.DataFrame(rows, columns=["budget", "n_train", "repeats", "metric", "mean", "std", "full", "ratio_to_full"])
    df.attrs.update(task=full.task, estimator=full.estimator, n_pool=full.n_pool, n_test=full.n_test,
                    skipped=list(skipped), notes=list(full.notes))
    return df


def curve_budgets(budgets: Sequence[int | str | None], n_pool: int,
                  skip_too_large: bool = True) -> tuple[list[int | None], list[int]]:
    """(budgets to fit, budgets skipped as larger than the pool); 'all' becomes None."""
    fit, skipped = [], []
    for b in budgets:
        b = None if b is None or (isinstance(b, str) and b.lower() == "all") else b
        if b is not None and not isinstance(b, str) and b > n_pool and skip_too_large:
            skipped.append(int(b))
            continue
        fit.append(b)
    return fit, skipped


def learning_curve(X: np.ndarray, y: np.ndarray, *, budgets: Sequence[int | str | None] = DEFAULT_BUDGETS,
                   task: str, estimator: str = "ridge", repeats: int = 10, seed: int = 0,
                   pool: np.ndarray | None = None, test: np.ndarray | None = None,
                   presence_threshold: float = 0.05, test_fraction: float = 0.3, n_jobs: int = 2,
                   skip_too_large: bool = True, valid: np.ndarray | None = None) -> pd.DataFrame:
    """Tidy table, one row per (budget, metric): budget ('all' = full pool), n_train, mean, std, ratio_to_full.

    Budgets above the pool are skipped (listed in `df.attrs["skipped"]`) unless `skip_too_large=False`,
    which raises. The full-label reference is always fitted, so `ratio_to_full` (mean / full-label mean)
    is filled even when None is not among `budgets`.
    """
    _check_task(task)
    _check_estimator(estimator)
    X, y = _as_xy(X, y)
    if pool is None and test is None:
        finite_x = np.isfinite(X).all(axis=1) & (True if valid is None else np.asarray(valid, dtype=bool))
        pool, test = split_pool_test(len(y), np.isfinite(y) & finite_x, test_fraction=test_fraction, seed=seed)
    data = prepare_probe(X, y, task=task, seed=seed, pool=pool, test=test, presence_threshold=presence_threshold,
                         valid=valid, scale=PROBES[estimator].scaled)
    # The curve reads metrics only: no prediction over every chip (the costly part at 150 K chips).
    full = fit_prepared(data, estimator, None, repeats, n_jobs=n_jobs, predict_all=False)
    fit, skipped = curve_budgets(budgets, full.n_pool, skip_too_large)
    points = [full if b is None else fit_prepared(data, estimator, b, repeats, n_jobs=n_jobs, predict_all=False)
              for b in fit]
    return curve_table(full, points, skipped)
