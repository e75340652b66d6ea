"""Few-shot probe speed: `fit_probe` for budgets 5..500 x 10 repeats with each estimator, N=2025, D=128.

Data are synthetic (not embeddings of real or simulated chips): L2-normalised Gaussian vectors and a
label y = sigmoid(X w) + noise in [0, 1], so the probes have something to learn. For each estimator
and budget the table gives the wall time of one `fit_probe` call (all repeats, scoring on the ~600
test chips and the first draw's prediction for all N chips included) and the mean R² / F1. The
probe's ridge is `RidgeCV` with its efficient leave-one-out alpha search; the baseline is the usual
alternative, 5-fold cross-validation over the same alpha grid (`RidgeCV(cv=5)`), fitted on the same
draws and timed in the same run; the ratio is baseline time / probe time. BLAS and the random forest
use --threads threads (default 2, the app's budget).

Run: `python -m benchmarks.bench_probes --help`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from core.probes import ESTIMATORS, RIDGE_ALPHAS, _draw_rng, fit_probe, learning_curve, split_pool_test

BUDGETS = (5, 10, 25, 50, 100, 250, 500)


def synthetic_task(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors [n, dim] (float32) and a label in [0, 1] that depends on them (a logistic of a projection)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    w = rng.normal(size=dim) * 3.0
    y = 1.0 / (1.0 + np.exp(-(X @ w) * 2.0)) + rng.normal(scale=0.05, size=n)
    return X, np.clip(y, 0.0, 1.0)


def ridgecv_baseline(X: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray, budget: int, repeats: int,
                     seed: int) -> tuple[float, float]:
    """(seconds, mean R²) of 5-fold-CV RidgeCV per draw on the same draws and standardisation as fit_probe."""
    t0 = time.perf_counter()
    mean, std = X.mean(axis=0), X.std(axis=0)
    Z = (X - mean) / np.where(std > 1e-12, std, 1.0)
    rng = _draw_rng(seed, budget)
    scores = []
    for d in range(repeats):
        train = np.sort(rng.choice(pool, size=budget, replace=False))
        model = RidgeCV(alphas=RIDGE_ALPHAS, cv=min(5, budget)).fit(Z[train], y[train])
        pred = np.clip(model.predict(Z[test]), 0, 1)
        scores.append(r2_score(y[test], pred))
        if d == 0:
            np.clip(model.predict(Z), 0, 1)  # the AOI prediction map, as fit_probe makes it
    return time.perf_counter() - t0, float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    """Time the probes and print a table (optionally write JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2025, help="chips (default 2025, a 45 x 45 demo AOI)")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension (default 128, the embedding size)")
    ap.add_argument("--repeats", type=int, default=10, help="draws per budget (default 10)")
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="label budgets (default 5..500)")
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS, help="estimators to time")
    ap.add_argument("--threads", type=int, default=2, help="BLAS / random-forest threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)

    X, y = synthetic_task(args.n, args.dim, args.seed)
    pool, test = split_pool_test(len(y), np.isfinite(y), seed=args.seed)
    budgets = [b for b in args.budgets if b <= len(pool)]
    rows = []
    with threadpool_limits(args.threads):
        fit_probe(X, y, task="water", budget=budgets[0], repeats=1, pool=pool, test=test)  # warm-up (imports, BLAS)
        jobs = [(e, b) for e in args.estimators for b in budgets]
        for est, b in tqdm(jobs, desc="probes", unit="fit", leave=False):
            t0 = time.perf_counter()
            r = fit_probe(X, y, task="water", estimator=est, budget=b, repeats=args.repeats, seed=args.seed,
                          pool=pool, test=test, n_jobs=args.threads)
            dt = time.perf_counter() - t0
            name, score = r.headline
            row = {"estimator": est, "budget": b, "repeats": args.repeats, "seconds": dt, "metric": name, "score": score}
            if est == "ridge":
                bt, bscore = ridgecv_baseline(X, y, pool, test, b, args.repeats, args.seed)
                row.update(ridgecv_seconds=bt, ridgecv_r2=bscore, speedup=bt / dt)
            rows.append(row)
        t0 = time.perf_counter()
        learning_curve(X, y, task="water", estimator="ridge", budgets=budgets + [None], repeats=args.repeats,
                       seed=args.seed, pool=pool, test=test)
        curve_s = time.perf_counter() - t0

    print(f"fit_probe, N={args.n}, D={args.dim}, pool={len(pool)}, test={len(test)}, {args.repeats} repeats, "
          f"{args.threads} threads (synthetic data)")
    print(f"{'estimator':<14}{'budget':>7}{'seconds':>9}{'score':>12}{'5-fold s':>11}{'5-fold R2':>12}{'speed-up':>10}")
    for r in rows:
        base = (f"{r['ridgecv_seconds']:>11.3f}{r['ridgecv_r2']:>12.3f}{r['speedup']:>9.1f}x" if "speedup" in r
                else f"{'':>11}{'':>12}{'':>10}")
        print(f"{r['estimator']:<14}{r['budget']:>7}{r['seconds']:>9.3f}{r['metric'] + ' ' + format(r['score'], '.3f'):>12}{base}")
    print(f"ridge learning curve (budgets {budgets} + all, {args.repeats} repeats): {curve_s:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ridge_curve_seconds": curve_s, "n": args.n, "dim": args.dim,
                                         "threads": args.threads}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
