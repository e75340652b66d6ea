"""Few-shot probes: protocol, determinism, learning-curve shape, ridge correctness and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from core.probes import (ESTIMATORS, PROBES, RIDGE_ALPHAS, ProbeError, RidgeLOO, blocked_split, fit_probe, fit_scaler,
                         learning_curve, probe_pipeline, probe_split, ridge_loo, split_pool_test, standardise)


def synthetic(n: int = 1500, d: int = 32, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linear task: y = sigmoid(X w) + noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d) * 2 / np.sqrt(d)
    y = 1 / (1 + np.exp(-(X @ w))) + rng.normal(scale=noise, size=n)
    return X, np.clip(y, 0, 1)


def test_split_is_fixed_disjoint_and_valid_only():
    valid = np.ones(100, bool)
    valid[::7] = False
    pool, test = split_pool_test(100, valid, test_fraction=0.3, seed=3)
    pool2, test2 = split_pool_test(100, valid, test_fraction=0.3, seed=3)
    assert np.array_equal(pool, pool2) and np.array_equal(test, test2)
    assert np.intersect1d(pool, test).size == 0
    assert set(pool) | set(test) == set(np.flatnonzero(valid))
    assert len(test) == round(valid.sum() * 0.3)
    assert not np.array_equal(test, split_pool_test(100, valid, seed=4)[1])


def test_probe_is_deterministic_and_seed_dependent():
    X, y = synthetic(600, 16)
    a = fit_probe(X, y, task="water", estimator="ridge", budget=25, repeats=5, seed=1)
    b = fit_probe(X, y, task="water", estimator="ridge", budget=25, repeats=5, seed=1)
    assert a.metrics == b.metrics
    assert np.array_equal(a.test_predictions, b.test_predictions) and np.array_equal(a.train_idx, b.train_idx)
    c = fit_probe(X, y, task="water", estimator="ridge", budget=25, repeats=5, seed=2)
    assert c.metrics != a.metrics
    for est in ("random_forest", "knn", "logistic"):
        r1 = fit_probe(X, y, task="water", estimator=est, budget=30, repeats=2, seed=0, n_jobs=1)
        r2 = fit_probe(X, y, task="water", estimator=est, budget=30, repeats=2, seed=0, n_jobs=1)
        assert r1.metrics == r2.metrics, est


def test_result_fields_and_clipping():
    X, y = synthetic(600, 16)
    X[5] = np.nan  # a chip without features: excluded from the split, NaN in the AOI predictions
    r = fit_probe(X, y, task="vegetation", estimator="ridge", budget=50, repeats=4, seed=0)
    assert r.n_train == 50 and r.repeats == 4 and len(r.train_idx) == 50
    assert set(r.metrics) == {"r2", "mae", "pearson_r"}
    assert all(len(v) == 4 for v in r.draw_scores.values())
    mean, std = r.metrics["r2"]
    assert mean == pytest.approx(r.draw_scores["r2"].mean()) and std == pytest.approx(r.draw_scores["r2"].std())
    assert r.test_predictions.shape == (r.n_test,) and r.all_predictions.shape == (600,)
    assert np.isnan(r.all_predictions[5]) and 5 not in r.pool_idx and 5 not in r.test_idx
    fin = np.delete(r.all_predictions, 5)
    assert fin.min() >= 0 and fin.max() <= 1
    assert np.allclose(r.all_predictions[r.test_idx], r.test_predictions)
    assert set(r.train_idx) <= set(r.pool_idx)
    assert r.alphas is not None and len(r.alphas) == 4


def test_learning_curve_monotone_on_linear_task():
    X, y = synthetic(1500, 32)
    lc = learning_curve(X, y, task="water", estimator="ridge", budgets=(10, 50, 500, None), repeats=10, seed=0)
    r2 = lc[lc.metric == "r2"].set_index("budget")["mean"]
    assert r2["500"] > r2["50"] > r2["10"]
    assert r2["all"] > 0.9  # the task is nearly linear
    assert set(lc.columns) >= {"budget", "n_train", "metric", "mean", "std", "ratio_to_full"}


def test_full_label_reference_equals_budget_none():
    X, y = synthetic(800, 16)
    pool, test = split_pool_test(len(y), np.isfinite(y), seed=0)
    full = fit_probe(X, y, task="water", budget=None, repeats=10, seed=0, pool=pool, test=test)
    assert full.repeats == 1 and full.n_train == len(pool) and full.metrics["r2"][1] == 0.0
    assert np.array_equal(full.train_idx, pool)
    assert fit_probe(X, y, task="water", budget="all", seed=0, pool=pool, test=test).metrics == full.metrics
    # A budget equal to the pool trains on the same chips: the same ridge fit, up to float order
    same = fit_probe(X, y, task="water", budget=len(pool), repeats=2, seed=0, pool=pool, test=test)
    assert same.metrics["r2"][0] == pytest.approx(full.metrics["r2"][0], abs=1e-9)
    lc = learning_curve(X, y, task="water", budgets=(25, None), repeats=3, seed=0, pool=pool, test=test)
    row = lc[(lc.budget == "all") & (lc.metric == "r2")].iloc[0]
    assert row["mean"] == full.metrics["r2"][0] and row["ratio_to_full"] == 1.0
    # ratio_to_full is filled even when None is not requested; too-large budgets are skipped and listed
    lc2 = learning_curve(X, y, task="water", budgets=(25, 5000), repeats=3, seed=0, pool=pool, test=test)
    assert list(lc2.budget.unique()) == ["25"] and lc2.attrs["skipped"] == [5000]
    r25 = lc2[lc2.metric == "r2"].iloc[0]
    assert r25["ratio_to_full"] == pytest.approx(r25["mean"] / full.metrics["r2"][0])
    # a budget in the curve gives the same draws as fit_probe alone
    alone = fit_probe(X, y, task="water", budget=25, repeats=3, seed=0, pool=pool, test=test)
    assert r25["mean"] == alone.metrics["r2"][0]


def test_ridge_alpha_is_ridgecv_on_each_draw():
    X, y = synthetic(300, 20, noise=0.2)
    r = fit_probe(X, y, task="cropland", estimator="ridge", budget=100, repeats=3, seed=0)
    assert len(r.alphas) == 3 and set(np.round(r.alphas, 12)) <= set(np.round(RIDGE_ALPHAS, 12))


def test_ridge_budget_500_times_10_runs():
    # correctness at the app's largest interactive budget (speed is measured in benchmarks/bench_probes.py)
    X, y = synthetic(2025, 128)
    r = fit_probe(X, y, task="cropland", estimator="ridge", budget=500, repeats=10, seed=0)
    assert r.repeats == 10 and r.n_train == 500
    assert np.all(np.isfinite(r.draw_scores["r2"])) and r.metrics["r2"][0] > 0.8


def test_logistic_f1_and_single_class_fallback():
    X, y = synthetic(800, 16, noise=0.02)
    r = fit_probe(X, y, task="builtup", estimator="logistic", budget=200, repeats=3, seed=0, presence_threshold=0.5)
    assert set(r.metrics) == {"f1", "accuracy"} and r.metrics["f1"][0] > 0.85
    assert r.presence_threshold == 0.5 and r.test_predictions.min() >= 0 and r.test_predictions.max() <= 1
    # Only a few chips present: small draws often hold one class -> predict it, say so, don't crash
    y2 = np.zeros(800)
    y2[:8] = 0.9
    r2 = fit_probe(X, y2, task="builtup", estimator="logistic", budget=5, repeats=5, seed=0)
    assert any("only absent" in n for n in r2.notes)
    assert np.isfinite(r2.metrics["f1"][0])


def test_other_estimators_run_and_learn():
    X, y = synthetic(600, 8)
    for est in ("random_forest", "knn"):
        r = fit_probe(X, y, task="water", estimator=est, budget=300, repeats=2, seed=0, n_jobs=1)
        assert r.metrics["r2"][0] > 0.5, est
    small = fit_probe(X, y, task="water", estimator="knn", budget=3, repeats=2, seed=0)  # k = min(10, n)
    assert np.isfinite(small.metrics["mae"][0])
    assert set(ESTIMATORS) == {"ridge", "random_forest", "knn", "logistic"}


def test_clear_errors():
    X, y = synthetic(100, 4)
    with pytest.raises(ProbeError, match="unknown task"):
        fit_probe(X, y, task="forest", budget=10)
    with pytest.raises(ProbeError, match="unknown estimator"):
        fit_probe(X, y, task="water", estimator="svm", budget=10)
    with pytest.raises(ProbeError, match="larger than the training pool"):
        fit_probe(X, y, task="water", budget=500)
    with pytest.raises(ProbeError, match="too small"):
        fit_probe(X, y, task="water", budget=1)
    with pytest.raises(ProbeError, match="100 rows but labels have 99"):
        fit_probe(X, y[:99], task="water", budget=10)
    with pytest.raises(ProbeError, match="empty input"):
        fit_probe(np.zeros((0, 4)), np.zeros(0), task="water", budget=10)
    with pytest.raises(ProbeError, match="every label is NaN"):
        fit_probe(X, np.full(100, np.nan), task="water", budget=10)
    with pytest.raises(ProbeError, match="every feature row has NaN"):
        fit_probe(np.full((100, 4), np.nan), y, task="water", budget=10)
    pool, test = split_pool_test(100, seed=0)
    Xn = X.copy()
    Xn[pool[0], 1] = np.nan
    with pytest.raises(ProbeError, match="NaN features"):
        fit_probe(Xn, y, task="water", budget=10, pool=pool, test=test)
    yn = y.copy()
    yn[test[0]] = np.nan
    with pytest.raises(ProbeError, match="NaN labels"):
        fit_probe(X, yn, task="water", budget=10, pool=pool, test=test)
    with pytest.raises(ProbeError, match="share chips"):
        fit_probe(X, y, task="water", budget=10, pool=pool, test=pool[:5])
    with pytest.raises(ProbeError, match=r"fractions in \[0, 1\]"):
        fit_probe(X, y * 100, task="water", budget=10)
    with pytest.raises(ProbeError, match="too few"):
        split_pool_test(10, np.arange(10) < 2)
    with pytest.raises(ProbeError, match="unknown task"):
        learning_curve(X, y, task="nope")
    with pytest.raises(ProbeError, match="larger than the training pool"):
        learning_curve(X, y, task="water", budgets=(10, 1000), skip_too_large=False)


def test_rows_marked_invalid_are_left_out_and_not_predicted():
    X, y = synthetic(600, 16)
    valid = np.ones(600, dtype=bool)
    valid[:100] = False
    X = X.copy()
    X[:100] = 0.0  # a modality absent: zero vectors, finite but meaningless
    r = fit_probe(X, y, task="cropland", budget=50, repeats=2, seed=0, valid=valid)
    assert not np.isin(np.arange(100), np.r_[r.pool_idx, r.test_idx]).any()
    assert np.isnan(r.all_predictions[:100]).all() and np.isfinite(r.all_predictions[100:]).all()
    with pytest.raises(ProbeError, match="valid"):
        fit_probe(X, y, task="cropland", budget=50, valid=valid[:10])


# ----------------------------------------------------------------------------------------- blocked splits
def grid(n_rows: int = 45, n_cols: int = 45, r0: int = 171, c0: int = 171):
    rr, cc = np.meshgrid(np.arange(r0, r0 + n_rows), np.arange(c0, c0 + n_cols), indexing="ij")
    return rr.ravel(), cc.ravel()


def test_blocked_split_is_spatially_disjoint_and_reproducible():
    rows, cols = grid()
    valid = np.ones(len(rows), bool)
    valid[::13] = False
    for block in (8, 5):
        pool, test = blocked_split(rows, cols, valid, block=block, test_fraction=0.3, seed=0)
        assert np.intersect1d(pool, test).size == 0
        assert set(pool) | set(test) == set(np.flatnonzero(valid))          # buffer 0: every valid chip used
        assert abs(len(test) - 0.3 * valid.sum()) <= block * block             # within one square of the target
        # no square shared: recover the squares from the test chips' grid cells (any origin offset)
        ok = False
        for dr in range(block):
            for dc in range(block):
                sq = lambda i: ((rows[i] - rows.min() + dr) // block, (cols[i] - cols.min() + dc) // block)  # noqa: E731
                if not ({sq(i) for i in pool} & {sq(i) for i in test}):
                    ok = True
        assert ok, "pool and test share a block under every origin offset"
        # spatially disjoint: a test chip's pool neighbours touch it only across a square's edge, and most
        # test chips have no pool chip within 1 step
        t_set = set(zip(rows[test], cols[test]))
        interior = sum(all((r + a, c + b) in t_set or not (171 <= r + a < 216 and 171 <= c + b < 216)
                           or not valid[(r + a - 171) * 45 + (c + b - 171)]
                           for a in (-1, 0, 1) for b in (-1, 0, 1)) for r, c in t_set)
        assert interior > 0.3 * len(t_set)
        p2, t2 = blocked_split(rows, cols, valid, block=block, test_fraction=0.3, seed=0)
        assert np.array_equal(pool, p2) and np.array_equal(test, t2)
        assert not np.array_equal(test, blocked_split(rows, cols, valid, block=block, seed=1)[1])


def test_blocked_split_buffer_keeps_pool_away_from_test():
    rows, cols = grid()
    pool, test = blocked_split(rows, cols, block=8, seed=2, buffer=1)
    d = np.maximum(np.abs(rows[pool, None] - rows[None, test]), np.abs(cols[pool, None] - cols[None, test]))
    assert d.min() >= 2
    pool0, test0 = blocked_split(rows, cols, block=8, seed=2)
    assert np.array_equal(test, test0) and set(pool) < set(pool0)


def test_blocked_split_errors():
    rows, cols = grid(6, 6)
    with pytest.raises(ProbeError, match="single 8 x 8 square"):
        blocked_split(np.zeros(10, int), np.zeros(10, int), block=8)
    with pytest.raises(ProbeError, match="block must be"):
        blocked_split(rows, cols, block=0)
    with pytest.raises(ProbeError, match="same length"):
        blocked_split(rows, cols[:-1])
    pool, test = blocked_split(rows, cols, block=2, seed=0)
    assert len(pool) + len(test) == 36 and 0 < len(test) < 36


def test_ridge_loo_matches_sklearn_ridgecv():
    rng = np.random.default_rng(0)
    for n, d in ((8, 40), (60, 20), (400, 64)):
        X = rng.normal(size=(n, d))
        X[:, 1] = X[:, 0]  # collinear columns
        y = np.clip(0.5 + 0.1 * X[:, :4].sum(1) + rng.normal(scale=0.2, size=n), 0, 1)
        coef, intercept, alpha = ridge_loo(X, y, RIDGE_ALPHAS)
        ref = RidgeCV(alphas=RIDGE_ALPHAS).fit(X, y)
        assert alpha == ref.alpha_
        Z = rng.normal(size=(30, d))
        np.testing.assert_allclose(Z @ coef + intercept, ref.predict(Z), atol=1e-8)


def test_probe_split_shrinks_the_block_on_small_scenes():
    rows, cols = np.divmod(np.arange(45 * 45), 45)
    pool, test, block = probe_split(rows, cols, seed=0)
    assert block == 8 and len(np.intersect1d(pool, test)) == 0 and 0.2 < len(test) / 2025 < 0.4
    rows, cols = np.divmod(np.arange(64), 8)   # a real 8 x 8-chip scene (Sen1Floods11)
    pool, test, block = probe_split(rows, cols, seed=0)
    assert block == 2 and len(pool) and len(test) and len(np.intersect1d(pool, test)) == 0


def test_probes_are_scikit_learn_pipelines_with_a_frozen_scaler():
    X, y = synthetic(300, 8)
    X = X * np.arange(1, 9) + 5.0                        # unscaled columns: the scaler matters
    scaler = fit_scaler(X, np.arange(300))
    assert set(PROBES) == set(ESTIMATORS) == {"ridge", "random_forest", "knn", "logistic"}
    pipe = probe_pipeline("ridge", scaler, n_train=50).fit(X[:50], y[:50])
    # fitting a draw fits the estimator only: the scaler keeps the statistics of all 300 chips
    np.testing.assert_allclose(pipe[0].mean_, X.mean(axis=0))
    ref = RidgeCV(alphas=RIDGE_ALPHAS).fit(standardise(X)[:50], y[:50])
    assert pipe[-1].alpha_ == ref.alpha_
    np.testing.assert_allclose(pipe.predict(X[200:]), ref.predict(standardise(X)[200:]), atol=1e-8)
    assert probe_pipeline("knn", scaler, n_train=5)[0] == "passthrough"   # trees/neighbours on raw features
    assert probe_pipeline("ridge", None, n_train=5)[0] == "passthrough"   # features already standardised
    est = clone(RidgeLOO())                                               # a well-behaved sklearn estimator
    np.testing.assert_array_equal(est.get_params()["alphas"], RIDGE_ALPHAS)
    with pytest.raises(ProbeError, match="unknown estimator"):
        probe_pipeline("svm", scaler, n_train=5)


def test_standardise_matches_a_standard_scaler_on_valid_rows():
    rng = np.random.default_rng(3)
    X = rng.normal(2.0, 3.0, size=(50, 4)).astype(np.float32)
    X[:, 2] = 1.5                                                         # constant column: scale 1
    X[7] = np.nan
    valid = np.ones(50, bool)
    valid[9] = False
    Z = standardise(X, valid)
    ok = np.isfinite(X).all(1) & valid
    np.testing.assert_allclose(Z[ok], StandardScaler().fit_transform(X[ok].astype(np.float64)), atol=1e-12)
    assert (Z[~ok] == 0).all() and (Z[ok, 2] == 0).all() and Z.dtype == np.float64
