"""Active learning vs random labelling: labels needed to map a class on a simulated AOI.

The analyst's loop of `core.mapping`, simulated: a binary task is derived from a label column of a
simulated store (default: water fraction > 0.1 on `conus`, a rare class, about 5 % of chips present),
the "analyst" answers with that truth. Each run holds out a fixed test set (`core.probes.split_pool_test`, 30 %),
starts from --start random pool chips (at least two present, as an analyst starts from a few examples),
then adds -k labels per round, either the chips `core.mapping.suggest_next` proposes (uncertain and
diverse; *active*) or random pool chips (*random*, the baseline, measured in the same run with the same
start), refits `core.mapping.fit_label_map` (logistic on the fused embeddings of the shipped
checkpoint) and scores ROC-AUC on the test set. Reported per strategy, mean over seeds: labels needed
to reach the target AUC (default: --target-of-full x the AUC of the same probe fitted on the whole pool,
per seed, so the target suits the task; or an absolute --target), runs that never reach it count as
--max-labels and are flagged (the ratio is then a lower bound), and the AUC at 20/50/100/200 labels
(the last round with at most that many). Measured: 183 s for the defaults on 2 busy cores. The
ratio is random labels-to-target / active labels-to-target.

Data: the workspace's embeddings of the AOI when built (`python -m core.pipeline build`), otherwise a
--grid x --grid simulated store is built and embedded with the shipped checkpoint in a temp workspace
(about 30 s for 30 x 30 on 2 cores).

Run: `python -m benchmarks.bench_active --help`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from core.embed import embed_aoi
from core.embeddings import EmbeddingError, load_embeddings
from core.mapping import fit_label_map, suggest_next
from core.probes import split_pool_test
from data.labelsets import LabelSet
from data.simulate import simulate_store
from data.workspace import Workspace

STRATEGIES = ("active", "random")
REPORT_AT = (20, 50, 100, 200)


def load_or_build(ws_root: str | None, aoi: str, grid: int, tmp: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, object, str]:
    """(X, valid, chip_ids, store, where) from the workspace's embeddings, or from a small store built in `tmp`."""
    ws = Workspace(ws_root)
    try:
        emb = load_embeddings(ws, aoi)
        where = f"workspace {ws.root}"
    except EmbeddingError:
        ws = Workspace(tmp / "ws")
        simulate_store(ws.store_path(aoi), aoi, grid, grid, 0, progress=False)
        embed_aoi(ws, aoi, progress=False)
        emb = load_embeddings(ws, aoi)
        where = f"temp store {grid}x{grid} (built: no embeddings of {aoi!r} in {Workspace(ws_root).root})"
    X, present = emb.get("fused")
    return X, present.astype(bool), emb.chip_ids, ws.open_store(aoi), where


def run_loop(X: np.ndarray, valid: np.ndarray, ids: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray,
             start: np.ndarray, strategy: str, k: int, max_labels: int, seed: int) -> list[tuple[int, float]]:
    """(labels, test AUC) after each round of one labelling run."""
    rng = np.random.default_rng([seed, 1])
    labelled = list(start)
    in_test = np.zeros(len(X), dtype=bool)
    in_test[test] = True
    curve = []
    while True:
        rows = np.asarray(labelled)
        ls = LabelSet("bench", "task").add(ids[rows[y[rows]]], "present").add(ids[rows[~y[rows]]], "absent")
        result = fit_label_map(X, valid, ids, ls, seed=seed)
        curve.append((len(labelled), float(roc_auc_score(y[test], result.predictions[test]))))
        if len(labelled) >= max_labels:
            return curve
        if strategy == "active":
            # Test chips count as "labelled" here only so they are never proposed: they stay held out.
            picks = suggest_next(X, valid, result.labelled | in_test, result.predictions, k=k, seed=seed)
        else:
            free = np.setdiff1d(pool, rows)
            picks = rng.choice(free, size=min(k, len(free)), replace=False)
        labelled += [int(p) for p in picks]


def labels_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first label count whose AUC reaches the target (None if never)."""
    return next((n for n, auc in curve if auc >= target), None)


def main(argv: list[str] | None = None) -> int:
    """Simulate labelling runs, print the table and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", default=None, help="workspace whose embeddings to use (default $EO_WORKSPACE or ./workspace)")
    ap.add_argument("--aoi", default="conus", help="simulated AOI (default conus)")
    ap.add_argument("--task", default="water", help="label column (vegetation, builtup, cropland, water)")
    ap.add_argument("--presence", type=float, default=0.1, help="present = fraction > this (default 0.1)")
    ap.add_argument("--grid", type=int, default=30, help="rows = cols of the temp store when none is built (default 30)")
    ap.add_argument("--seeds", type=int, default=5, help="runs per strategy (default 5)")
    ap.add_argument("--start", type=int, default=10, help="random labels to start from (default 10)")
    ap.add_argument("-k", type=int, default=20, help="labels per round (default 20)")
    ap.add_argument("--max-labels", type=int, default=200, help="stop at this many labels (default 200)")
    ap.add_argument("--target", type=float, default=None, help="absolute test ROC-AUC to reach (default: relative)")
    ap.add_argument("--target-of-full", type=float, default=0.95,
                    help="target = this x the full-pool AUC of each seed, when --target is not given (default 0.95)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        X, valid, ids, store, where = load_or_build(args.workspace, args.aoi, args.grid, Path(tmp))
        frac = store.labels(args.task)
        known = np.isfinite(frac) & valid
        y = np.nan_to_num(frac) > args.presence
        print(f"data: {where}; {len(X)} chips, task {args.task} > {args.presence:g}: {y[known].mean():.1%} present "
              f"(simulated: {store.meta.simulated}); setup {time.perf_counter() - t0:.1f} s")
        results: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in STRATEGIES}
        targets, full_aucs = [], []
        t1 = time.perf_counter()
        for seed in range(args.seeds):
            pool, test = split_pool_test(len(X), known, seed=seed)
            rng = np.random.default_rng([seed, 0])
            pos, neg = pool[y[pool]], pool[~y[pool]]
            start = np.r_[rng.choice(pos, 2, replace=False), rng.choice(neg, args.start - 2, replace=False)]
            full = run_loop(X, valid, ids, y, pool, test, pool, "random", args.k, 0, seed)[0][1]
            full_aucs.append(full)
            targets.append(args.target if args.target is not None else args.target_of_full * full)
            for strategy in STRATEGIES:
                results[strategy].append(run_loop(X, valid, ids, y, pool, test, start, strategy, args.k,
                                                  args.max_labels, seed))
        loop_s = time.perf_counter() - t1

    at = [n for n in REPORT_AT if n <= args.max_labels]
    header = f"{'strategy':<9} {'labels to target':>22} " + " ".join(f"{'AUC@' + str(n):>12}" for n in at)
    print(header)
    print("-" * len(header))
    means = {}
    for strategy in STRATEGIES:
        hits = [labels_to_target(c, t) for c, t in zip(results[strategy], targets)]
        needed = [h if h is not None else args.max_labels for h in hits]
        missed = sum(h is None for h in hits)
        means[strategy] = float(np.mean(needed))
        cell = f"{np.mean(needed):.0f} ± {np.std(needed):.0f}" + (f" ({missed} never)" if missed else "")
        aucs = []
        for n in at:
            # The AUC of the last round with at most n labels (rounds of k need not land on n).
            vals = [max(((m, a) for m, a in c if m <= n), default=(0, np.nan))[1] for c in results[strategy]]
            aucs.append(f"{np.nanmean(vals):.3f}±{np.nanstd(vals):.3f}")
        print(f"{strategy:<9} {cell:>22} " + " ".join(f"{a:>12}" for a in aucs))
    missed_random = means["random"] >= args.max_labels or any(
        labels_to_target(c, t) is None for c, t in zip(results["random"], targets))
    how = f"{args.target:.2f}" if args.target is not None else (
        f"{args.target_of_full:g} x full-pool AUC {np.mean(full_aucs):.3f} = {np.mean(targets):.3f}")
    print(f"\ntarget AUC: {how} ({len(pool)} pool chips); ratio (random / active labels to reach it): "
          f"{'>= ' if missed_random else ''}{means['random'] / means['active']:.2f}x over {args.seeds} seeds; "
          f"loops {loop_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
