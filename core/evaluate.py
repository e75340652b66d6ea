"""The paper's evaluation: few-shot probes vs label budget under spatially blocked splits, with strong baselines.

Protocol (see docs/EVALUATION.md and docs/CONTRACTS.md):

- Splits: for every AOI x task x split seed (`--split-seeds`, default 3), `core.probes.blocked_split` puts
  whole `block` x `block` squares of the AOI's chip grid (default 8 x 8 chips) into the test set (30 %),
  so training and test chips are spatially disjoint; `--buffer` also drops pool chips next to a test square.
  The split is computed once from the chips with a finite label and is the SAME for every representation:
  a representation that cannot see a chip (presence False, e.g. the chip lacks that modality) is scored on
  the test chips it can see and drawn from the pool chips it can see; `n_test` is recorded per row.
- Draws: per budget (5 ... 1000, 'all' = the whole pool), `repeats` random draws per split seed; mean and
  std are over all split seeds x draws (for 'all': over split seeds). Ridge probe (RidgeCV, alpha by LOO).
- Representations: the pretrained per-modality and fused embeddings (one set per `--checkpoint`), and
  baselines under the same protocol: the same architecture untrained (`random-init`, fused), per-channel
  statistics (`stats`), per-channel histograms (`hist`: fixed bins over the registry range; `hist-q`:
  equal-mass bins from the AOI's pixel quantiles), gradient-texture and within-modality channel
  difference statistics (`texture`), and all three together (`combined`), from `core.features`.
- External representations (issue #17): any other name, e.g. `alphaearth`, is an embedding brought by the user
  (`python -m data.ingest embeddings`), loaded through `core.representations`, scored on the same splits and
  compared with the best baseline like the fused embedding (series `external <name>`).
- A task is *observable* on an AOI when its label varies (std > 0.02) and at least 20 chips hold the class
  (fraction > 0.05); headline numbers use observable pairs only, and the summary lists what is dropped.

Writes `<workspace>/evaluations/<run-name>/`: `results.csv`, `summary.md` (headline tables written by the
code, `core.report`), `curves/<aoi>_<task>.png` (`core.plots`), `dropout.csv` / `dropout.md` (score at a fixed budget when a modality or
a channel is missing at inference) and `run.json` (settings, pool sizes, timings).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.checkpoint import SHIPPED_CHECKPOINT, read_config
from core.embed import embed_aoi
from core.embeddings import (
    SCENARIO_FULL,
    SCENARIO_RANDOM,
    drop_scenarios,
    ids_digest,
    load_embeddings,
    model_name_of,
)
from core.features import BASELINES, baseline_features
from core.plots import plot_curves
from core.probes import ESTIMATORS, ProbeError, blocked_split, budget_label, fit_probe, standardise
from core.progress import ProgressCallback
from core.protocol import (
    DEFAULT_BLOCK,
    DEFAULT_BUDGETS,
    DEFAULT_BUFFER,
    DEFAULT_REPEATS,
    DEFAULT_REPRESENTATIONS,
    DEFAULT_SPLIT_SEEDS,
    DROPOUT_BUDGET,
    EXTERNAL,
    HANDCRAFTED,
    OBSERVABLE_MIN_CHIPS,
    OBSERVABLE_STD,
    PRESENCE_THRESHOLD,
    PRETRAINED,
    QUICK_BUDGETS,
    RANDOM_INIT,
    REPRESENTATIONS,
    TEST_FRACTION,
    main_metric,
)
from core.representations import RepresentationError, is_external, load_representation
from core.report import docs_page, dropout_markdown, summary_markdown
from data.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from data.cli import KnownError, command_line
from data.modalities import LABEL_TASKS
from data.store import ChipStore
from data.workspace import Workspace, locked, parse_scenario

FEATURES_VERSION = 2


class EvaluationError(KnownError):
    """The evaluation cannot run (no stores, bad budgets): the message says the fix."""


def parse_budgets(items: Sequence[str]) -> tuple[int | None, ...]:
    """CLI budgets ('5', '250', 'all') -> ints and None, checked positive."""
    out: list[int | None] = []
    for item in items:
        if str(item).lower() == "all":
            out.append(None)
            continue
        try:
            b = int(item)
        except ValueError:
            raise EvaluationError(f"budget {item!r} is neither a positive integer nor 'all'") from None
        if b < 2:
            raise EvaluationError(f"budget {b} is too small: a probe needs at least 2 labelled chips")
        out.append(b)
    return tuple(out)


def parse_representations(items: Sequence[str]) -> tuple[str, ...]:
    """Representation names: s2rgb/s1amp/coh/fused (pretrained), random-init[:key], stats/hist/texture/combined,
    or the name of an external representation (checked against each AOI when it is loaded)."""
    out = []
    for item in items:
        key = item.split(":", 1)[1] if item.startswith(RANDOM_INIT + ":") else item
        if item not in (*REPRESENTATIONS, RANDOM_INIT, *BASELINES) and not (
                item.startswith(RANDOM_INIT + ":") and key in REPRESENTATIONS) and not _external_name(item):
            raise EvaluationError(f"unknown representation {item!r}; choose from {list(DEFAULT_REPRESENTATIONS)}, "
                                  f"random-init:<{'|'.join(REPRESENTATIONS)}> or an external representation's name")
        out.append(item)
    if not out:
        raise EvaluationError("no representations to evaluate")
    return tuple(dict.fromkeys(out))


def _external_name(name: str) -> bool:
    try:
        return is_external(name)
    except RepresentationError:
        return False


def observability(y: np.ndarray) -> tuple[bool, str]:
    """Whether a task's labels vary enough on an AOI to be evaluated, with the reason."""
    v = y[np.isfinite(y)]
    if len(v) == 0:
        return False, "no labels"
    std, n_pos = float(np.std(v)), int((v > PRESENCE_THRESHOLD).sum())
    ok = std > OBSERVABLE_STD and n_pos >= OBSERVABLE_MIN_CHIPS
    return ok, f"std {std:.3f}, {n_pos} chips > {PRESENCE_THRESHOLD:g}"


# ----------------------------------------------------------------------------------------- splits and probes
@dataclass
class Split:
    """One spatially blocked split of an AOI x task: the pool and test chips every representation shares."""

    seed: int
    pool: np.ndarray
    test: np.ndarray


def task_splits(store: ChipStore, y: np.ndarray, seeds: Sequence[int], *, block: int = DEFAULT_BLOCK,
                buffer: int = DEFAULT_BUFFER, test_fraction: float = TEST_FRACTION) -> list[Split]:
    """The blocked splits of one task (one per seed) from the chips with a finite label; [] if too few."""
    valid = np.isfinite(y)
    rows, cols = store.index["row"].to_numpy(), store.index["col"].to_numpy()
    out = []
    for s in seeds:
        try:
            pool, test = blocked_split(rows, cols, valid, block=block, test_fraction=test_fraction, seed=int(s),
                                       buffer=buffer)
        except ProbeError:
            return []
        out.append(Split(int(s), pool, test))
    return out


def probe_rows(X: np.ndarray, y: np.ndarray, present: np.ndarray, splits: Sequence[Split], *,
               budgets: Sequence[int | None], task: str, estimator: str, repeats: int, clip: bool = False,
               standardised: bool = False) -> list[dict]:
    """One row per budget: metric mean/std over split seeds x draws on the shared splits, restricted to `present`.

    Budgets above the smallest pool are skipped ('all' covers them), or clipped to it with `clip`.
    """
    present = np.asarray(present, dtype=bool) & np.isfinite(y)
    if not splits:
        return []
    Z = X if standardised else standardise(X, present)
    views = [(sp, sp.pool[present[sp.pool]], sp.test[present[sp.test]]) for sp in splits]
    views = [v for v in views if len(v[1]) >= 2 and len(v[2]) >= 2]
    if not views:
        return []
    min_pool = min(len(v[1]) for v in views)
    rows = []
    for b in budgets:
        if b is not None and b > min_pool:
            if not clip:
                continue
            b = min_pool  # a budget above the pool cannot be drawn; 'all' covers it
        scores: dict[str, list[float]] = {}
        n_train = []
        for sp, pool, test in views:
            res = fit_probe(Z, y, task=task, estimator=estimator, budget=b, repeats=repeats if b is not None else 1,
                            seed=sp.seed, pool=pool, test=test, presence_threshold=PRESENCE_THRESHOLD, valid=present,
                            standardised=True, predict_all=False, n_jobs=1)
            for name, v in res.draw_scores.items():
                scores.setdefault(name, []).extend(v.tolist())
            n_train.append(res.n_train)
        row = {"budget": budget_label(b), "n_train": int(round(np.mean(n_train))),
               "n_pool": int(round(np.mean([len(v[1]) for v in views]))),
               "n_test": int(round(np.mean([len(v[2]) for v in views]))),
               "n_test_min": int(min(len(v[2]) for v in views)),
               "n_test_split": int(round(np.mean([len(v[0].test) for v in views]))),
               "split_seeds": len(views), "draws": len(next(iter(scores.values())))}
        for name, v in scores.items():
            row[f"{name}_mean"], row[f"{name}_std"] = float(np.mean(v)), float(np.std(v))
        rows.append(row)
    return rows


def _with_ratio(rows: list[dict], metric: str) -> list[dict]:
    full = next((r.get(f"{metric}_mean") for r in rows if r["budget"] == "all"), None)
    for r in rows:
        r[f"{metric}_full"] = full
        m = r.get(f"{metric}_mean")
        r["ratio_to_full"] = (m / full) if (full is not None and m is not None and full > 0) else np.nan
    return rows


def _ensure_embeddings(ws: Workspace, aoi: str, checkpoint: Path, scenarios: Sequence[str], progress: bool) -> None:
    for scenario in scenarios:
        embed_aoi(ws, aoi, checkpoint, scenario, progress=progress)


def _store_key(store: ChipStore) -> str:
    meta = store.path / "store.json"
    st = meta.stat()
    return hashlib.sha256(f"{st.st_size}|{st.st_mtime_ns}|{ids_digest(store.index['chip_id'])}|"
                          f"{FEATURES_VERSION}".encode()).hexdigest()[:16]


def cached_baselines(ws: Workspace, store: ChipStore, kinds: Sequence[str], *,
                     progress: bool = False) -> dict[str, np.ndarray]:
    """The cheap baselines of an AOI, cached under <workspace>/evaluations/_features/<aoi>/ (keyed by the store)."""
    kinds = [k for k in kinds if k in BASELINES]
    if not kinds:
        return {}
    path = ws.features_cache_dir(store.meta.aoi) / f"baselines-{_store_key(store)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                if all(k in z.files for k in kinds):
                    return {k: z[k] for k in kinds}
        except (OSError, ValueError):
            pass  # an unreadable cache file is recomputed below and rewritten atomically
    feats = baseline_features(store, BASELINES, progress=progress)
    buf = io.BytesIO()
    np.savez(buf, **feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("baselines-*.npz"):
        old.unlink(missing_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return {k: feats[k] for k in kinds}


@dataclass
class Series:
    """One row set of the results: a representation's features (standardised) and which chips it can see."""

    name: str          # table label, e.g. "pretrained fused", "random-init fused", "hist"
    model: str         # pretrained / random-init / handcrafted
    representation: str
    checkpoint: str    # checkpoint name ('' for hand-crafted baselines)
    X: np.ndarray
    present: np.ndarray


def series_name(model: str, rep: str, checkpoint: str = "", multi: bool = False) -> str:
    """The label of a row set in the tables."""
    if model == HANDCRAFTED:
        return rep
    if model == PRETRAINED and multi:
        return f"pretrained[{checkpoint}] {rep}"
    return f"{model} {rep}"


def aoi_series(ws: Workspace, aoi: str, *, checkpoints: Sequence[Path], representations: Sequence[str],
               progress: bool = False) -> list[Series]:
    """Every representation of one AOI, standardised once (features are reused across tasks and splits)."""
    store = ws.open_store(aoi)
    multi = len(checkpoints) > 1
    out: list[Series] = []
    pre = [r for r in representations if r in REPRESENTATIONS]
    rand = [("fused" if r == RANDOM_INIT else r.split(":", 1)[1]) for r in representations
            if r == RANDOM_INIT or r.startswith(RANDOM_INIT + ":")]
    for i, ck in enumerate(checkpoints):
        name = model_name_of(ck)
        scen = [SCENARIO_FULL] + ([SCENARIO_RANDOM] if rand and i == 0 else [])
        if pre or (rand and i == 0):
            _ensure_embeddings(ws, aoi, ck, scen, progress)
        if pre:
            emb = load_embeddings(ws, aoi, name, SCENARIO_FULL)
            for rep in pre:
                if rep in emb.vectors:
                    v, p = emb.get(rep)
                    if p.any():
                        out.append(Series(series_name(PRETRAINED, rep, name, multi), PRETRAINED, rep, name,
                                          standardise(v, p), p))
        if rand and i == 0:  # the untrained architecture: one set (of the first checkpoint's architecture)
            emb = load_embeddings(ws, aoi, name, SCENARIO_RANDOM)
            for rep in rand:
                if rep in emb.vectors:
                    v, p = emb.get(rep)
                    if p.any():
                        out.append(Series(series_name(RANDOM_INIT, rep), RANDOM_INIT, rep, name, standardise(v, p), p))
    kinds = [r for r in representations if r in BASELINES]
    if kinds:
        feats = cached_baselines(ws, store, kinds, progress=progress)
        ones = np.ones(len(store), dtype=bool)
        for k in kinds:
            out.append(Series(k, HANDCRAFTED, k, "", standardise(feats[k]), ones))
    for rep in (r for r in representations if _external_name(r)):
        # RepresentationError (not ingested for this AOI, or pooled on an older grid) says how to fix it.
        v = load_representation(ws, aoi, "", rep, store=store)
        out.append(Series(series_name(EXTERNAL, rep), EXTERNAL, rep, "", standardise(v.X, v.valid), v.valid))
    return out


def evaluate_aoi(ws: Workspace, aoi: str, *, checkpoint: Path | Sequence[Path], budgets: Sequence[int | None],
                 repeats: int, estimator: str, seed: int = 0, tasks: Sequence[str], progress: bool = False,
                 split_seeds: Sequence[int] | None = None, block: int = DEFAULT_BLOCK, buffer: int = DEFAULT_BUFFER,
                 representations: Sequence[str] = DEFAULT_REPRESENTATIONS, test_fraction: float = TEST_FRACTION) -> pd.DataFrame:
    """The learning-curve table of one AOI: every representation on the same blocked splits of each task."""
    store = ws.open_store(aoi)
    checkpoints = [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(c) for c in checkpoint]
    seeds = list(split_seeds) if split_seeds is not None else [seed + i for i in range(DEFAULT_SPLIT_SEEDS)]
    series = aoi_series(ws, aoi, checkpoints=checkpoints, representations=representations, progress=progress)
    rows: list[dict] = []
    for task in tasks:
        y = store.labels(task).astype(np.float64)
        observable, why = observability(y)
        splits = task_splits(store, y, seeds, block=block, buffer=buffer, test_fraction=test_fraction)
        for s in series:
            scored = probe_rows(s.X, y, s.present, splits, budgets=budgets, task=task, estimator=estimator,
                                repeats=repeats, standardised=True)
            block_rows = _with_ratio(scored, main_metric(scored[0] if scored else ())[0])
            for r in block_rows:
                rows.append({"aoi": aoi, "simulated": bool(store.meta.simulated), "task": task,
                             "observable": observable, "observability": why, "model": s.model,
                             "checkpoint": s.checkpoint, "representation": s.representation, "series": s.name,
                             "estimator": estimator, **r})
    return pd.DataFrame(rows)


def self_rank1(X: np.ndarray, present: np.ndarray, ref: np.ndarray, ref_present: np.ndarray, block: int = 4096) -> float:
    """Share of chips whose embedding with something missing is nearest its own full embedding (of all chips')."""
    ok = np.flatnonzero(present & ref_present)
    if ok.size == 0:
        return float("nan")
    R = ref[ok]
    hits = 0
    for start in range(0, ok.size, block):  # blocks keep the similarity matrix small at paper scale
        rows = ok[start:start + block]
        hits += int((np.argmax(X[rows] @ R.T, axis=1) == np.arange(start, start + len(rows))).sum())
    return hits / ok.size


def dropout_table(ws: Workspace, aoi: str, *, checkpoint: Path, budget: int, repeats: int, estimator: str, seed: int,
                  tasks: Sequence[str], channels: bool, progress: bool = False, split_seeds: Sequence[int] | None = None,
                  block: int = DEFAULT_BLOCK, buffer: int = DEFAULT_BUFFER,
                  test_fraction: float = TEST_FRACTION) -> pd.DataFrame:
    """Score at `budget` labels when a modality (re-fused without it) or a channel (drop scenario) is missing.

    Same blocked splits as the learning curves (every variant of a task shares them).
    """
    store = ws.open_store(aoi)
    seeds = list(split_seeds) if split_seeds is not None else [seed]
    model_name = model_name_of(checkpoint)
    full = load_embeddings(ws, aoi, model_name, SCENARIO_FULL)
    variants: list[tuple[str, str, np.ndarray, np.ndarray]] = [("none", "fused", *full.get("fused"))]
    for mod in full.modalities:
        if full.present[mod].any():
            variants.append((f"modality {mod}", "fused", *full.fused_without([mod])))
    if channels:
        for scenario in drop_scenarios(read_config(checkpoint)):
            (mod,) = parse_scenario(scenario)
            if not store.has_modality(mod):
                continue
            embed_aoi(ws, aoi, checkpoint, scenario, progress=progress)
            emb = load_embeddings(ws, aoi, model_name, scenario)
            label = f"channel {scenario[len('drop-'):]}"
            variants.append((label, "fused", *emb.get("fused")))
            variants.append((label, mod, *emb.get(mod)))
            if not any(v[0] == "none" and v[1] == mod for v in variants):
                variants.append(("none", mod, *full.get(mod)))
    # Robustness without labels: is the chip still its own nearest neighbour with this part missing?
    rank1 = {(missing, rep): self_rank1(X, present, *full.get(rep)) for missing, rep, X, present in variants}
    rows = []
    for task in tasks:
        y = store.labels(task).astype(np.float64)
        observable, _ = observability(y)
        splits = task_splits(store, y, seeds, block=block, buffer=buffer, test_fraction=test_fraction)
        for missing, rep, X, present in variants:
            res = probe_rows(X, y, present, splits, budgets=[budget], task=task, estimator=estimator, repeats=repeats,
                             clip=True)
            if not res:
                continue
            r = res[0]
            m, _ = main_metric(r)
            rows.append({"aoi": aoi, "task": task, "observable": observable, "missing": missing, "representation": rep,
                         "budget": r["budget"], f"{m}_mean": r.get(f"{m}_mean"), f"{m}_std": r.get(f"{m}_std"),
                         "pearson_r_mean": r.get("pearson_r_mean"), "self_rank1": rank1[(missing, rep)]})
    df = pd.DataFrame(rows)
    if not df.empty:
        m, _ = main_metric(df.columns)
        ref = df[df.missing == "none"].set_index(["task", "representation"])[f"{m}_mean"]
        df[f"{m}_change"] = [getattr(r, f"{m}_mean") - ref.get((r.task, r.representation), np.nan)
                             for r in df.itertuples()]
    return df


# ----------------------------------------------------------------------------------------- driver
@locked("evaluation")
def run_evaluation(ws: Workspace, *, aois: Sequence[str] | None = None,
                   checkpoint: str | Path | Sequence[str | Path] = SHIPPED_CHECKPOINT,
                   run_name: str | None = None, budgets: Sequence[int | None] = DEFAULT_BUDGETS,
                   repeats: int = DEFAULT_REPEATS, estimator: str = "ridge", seed: int = 0,
                   tasks: Sequence[str] = LABEL_TASKS, dropout_budget: int = DROPOUT_BUDGET,
                   dropout_channels: bool = True, progress: bool = True, progress_cb: ProgressCallback | None = None,
                   split_seeds: Sequence[int] | None = None, block: int = DEFAULT_BLOCK, buffer: int = DEFAULT_BUFFER,
                   representations: Sequence[str] = DEFAULT_REPRESENTATIONS, dropout: bool = True,
                   test_fraction: float = TEST_FRACTION) -> Path:
    """Run the whole protocol on the workspace's AOIs and write the report folder; returns its path.

    checkpoint: one checkpoint or several (one pretrained row set per checkpoint, labelled by its name).
    split_seeds: the blocked splits' seeds (default: DEFAULT_SPLIT_SEEDS seeds from `seed`).
    """
    if estimator not in ESTIMATORS:
        raise EvaluationError(f"unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    if repeats < 1:
        raise EvaluationError(f"repeats must be >= 1, got {repeats}")
    if block < 1 or buffer < 0:
        raise EvaluationError(f"block must be >= 1 and buffer >= 0, got block {block}, buffer {buffer}")
    bad = [t for t in tasks if t not in LABEL_TASKS]
    if bad:
        raise EvaluationError(f"unknown tasks {bad}; known: {list(LABEL_TASKS)}")
    representations = parse_representations(representations)
    if None not in budgets:
        budgets = tuple(budgets) + (None,)  # the full-label reference is what every ratio divides by
    checkpoints = [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(c) for c in checkpoint]
    if not checkpoints:
        raise EvaluationError("no checkpoint given")
    names = [model_name_of(c) for c in checkpoints]
    if len(set(names)) != len(names):
        raise EvaluationError(f"checkpoints must have distinct directory names (they label the rows), got {names}")
    seeds = [int(s) for s in split_seeds] if split_seeds is not None else [seed + i for i in range(DEFAULT_SPLIT_SEEDS)]
    if not seeds:
        raise EvaluationError("no split seeds")
    aois = list(aois or ws.list_stores())
    if not aois:
        raise EvaluationError(f"no chip stores in {ws.stores_dir}: build the workspace with "
                              f"`python -m core.pipeline build --workspace {ws.root}`")
    missing = [a for a in aois if a not in ws.list_stores()]
    if missing:
        raise EvaluationError(f"no store for AOI(s) {missing} in {ws.stores_dir}; known: {ws.list_stores()}")
    run_name = run_name or f"{'_'.join(names)}-{estimator}"
    out = ws.evaluation_dir(run_name)
    t0 = time.perf_counter()
    results, dropouts, timings, chips = [], [], {}, {}
    split_kw = dict(split_seeds=seeds, block=block, buffer=buffer, test_fraction=test_fraction)
    bar = tqdm(aois, desc="evaluate", unit="aoi", disable=not progress)
    for i, aoi in enumerate(bar):
        ta = time.perf_counter()
        bar.set_postfix_str(aoi)
        if progress_cb:
            progress_cb(i / len(aois), f"evaluating {aoi}")
        chips[aoi] = len(ws.open_store(aoi))
        results.append(evaluate_aoi(ws, aoi, checkpoint=checkpoints, budgets=budgets, repeats=repeats,
                                    estimator=estimator, seed=seed, tasks=tasks, progress=progress,
                                    representations=representations, **split_kw))
        if dropout and any(r in REPRESENTATIONS for r in representations):
            dropouts.append(dropout_table(ws, aoi, checkpoint=checkpoints[0], budget=dropout_budget, repeats=repeats,
                                          estimator=estimator, seed=seed, tasks=tasks, channels=dropout_channels,
                                          progress=progress, **split_kw))
        timings[aoi] = round(time.perf_counter() - ta, 1)
    res = pd.concat(results, ignore_index=True) if results else pd.DataFrame()
    drop = pd.concat(dropouts, ignore_index=True) if dropouts else pd.DataFrame()
    settings = {"checkpoint": str(checkpoints[0]), "checkpoints": [str(c) for c in checkpoints],
                "estimator": estimator, "repeats": repeats, "seed": seed, "split_seeds": seeds, "block": block,
                "buffer": buffer, "test_fraction": test_fraction, "representations": list(representations),
                "budgets": [budget_label(b) for b in budgets], "tasks": list(tasks),
                "aois": aois, "chips_per_aoi": chips, "dropout": dropout, "dropout_budget": dropout_budget,
                "dropout_channels": dropout_channels,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.csv", res.to_csv(index=False))
    atomic_write_text(out / "dropout.csv", drop.to_csv(index=False))
    atomic_write_text(out / "dropout.md", dropout_markdown(drop))
    atomic_write_text(out / "summary.md", summary_markdown(res, drop, settings))
    pngs = plot_curves(res, out / "curves") if not res.empty else []
    pools = ({a: int(g.n_pool.max()) for a, g in res[res.budget.astype(str) == "all"].groupby("aoi")}
             if not res.empty else {})
    atomic_write_json(out / "run.json", {**settings, "pool_per_aoi": pools, "seconds_per_aoi": timings,
                                         "seconds": round(time.perf_counter() - t0, 1), "curves": [p.name for p in pngs]})
    ws.record(f"evaluations/{run_name}", seconds=round(time.perf_counter() - t0, 1), aois=aois)
    if progress_cb:
        progress_cb(1.0, f"evaluation written to {out}")
    return out


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: the paper-style evaluation of a workspace."""
    ap = argparse.ArgumentParser(
        prog="python -m core.evaluate",
        description="Few-shot evaluation: per AOI x task x representation x label budget, R^2 / Pearson r / MAE of a "
        "ridge probe on spatially blocked test splits (whole BLOCK x BLOCK-chip squares held out; the same test "
        "chips for every representation), mean and std over split seeds x random draws, and the ratio to the "
        "full-label score. Representations: pretrained s2rgb/s1amp/coh/fused (per --checkpoint), random-init "
        "(same architecture untrained), and hand-crafted baselines stats (per-channel mean/std/quantiles), hist "
        "(per-channel histograms over the registry range), hist-q (equal-mass bins), texture (gradient and channel-difference statistics), combined (all three). "
        "Also a modality/channel dropout table. Missing embeddings are built first. Writes "
        "<workspace>/evaluations/<run-name>/ (summary.md holds the headline tables).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--workspace", default=None, help="workspace directory (default: $EO_WORKSPACE or ./workspace)")
    ap.add_argument("--aoi", "--aois", dest="aoi", nargs="+", default=None,
                    help="AOIs (default: every store in the workspace; each is evaluated with all its chips)")
    ap.add_argument("--checkpoint", action="append", default=None,
                    help=f"checkpoint directory; repeat for several (one row set each, labelled by the directory "
                    f"name; default {SHIPPED_CHECKPOINT})")
    ap.add_argument("--budgets", nargs="+", default=[budget_label(b) for b in DEFAULT_BUDGETS],
                    help="label budgets; 'all' = the whole training pool (always added)")
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="random draws per budget and split seed")
    ap.add_argument("--split-seeds", nargs="+", type=int, default=None,
                    help=f"seeds of the blocked test splits (default: {DEFAULT_SPLIT_SEEDS} seeds from --seed)")
    ap.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="side of the held-out squares, in chips")
    ap.add_argument("--buffer", type=int, default=DEFAULT_BUFFER,
                    help="drop pool chips within this many chips of a test square (0: none)")
    ap.add_argument("--test-fraction", type=float, default=TEST_FRACTION, help="share of labelled chips in the test set")
    ap.add_argument("--representations", nargs="+", default=list(DEFAULT_REPRESENTATIONS),
                    help="row sets: s2rgb s1amp coh fused (pretrained), random-init (fused) or random-init:<key>, "
                    "stats, hist, hist-q, texture, combined")
    ap.add_argument("--estimator", default="ridge", choices=list(ESTIMATORS))
    ap.add_argument("--tasks", nargs="+", default=list(LABEL_TASKS), choices=list(LABEL_TASKS))
    ap.add_argument("--seed", type=int, default=0, help="first split seed when --split-seeds is not given")
    ap.add_argument("--dropout-budget", type=int, default=DROPOUT_BUDGET, help="labels for the dropout table")
    ap.add_argument("--no-channel-dropout", action="store_true",
                    help="skip the drop-<mod>-<channel> embeddings (modality dropout still runs)")
    ap.add_argument("--no-dropout", action="store_true", help="skip the dropout table altogether")
    ap.add_argument("--run-name", default=None, help="output folder name (default: <model>-<estimator>)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: budgets {[budget_label(b) for b in QUICK_BUDGETS]}, 3 repeats, one split seed, "
                    "no channel dropout")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--docs", default=None, metavar="PATH",
                    help="also write the report as a documentation page (how docs/EVALUATION.md is made)")
    args = ap.parse_args(argv)
    checkpoints = args.checkpoint or [str(SHIPPED_CHECKPOINT)]
    budgets = QUICK_BUDGETS if args.quick else parse_budgets(args.budgets)
    repeats = 3 if args.quick else args.repeats
    split_seeds = args.split_seeds or ([args.seed] if args.quick else None)
    dropout_budget = min(args.dropout_budget, 100) if args.quick else args.dropout_budget
    name = "_".join(model_name_of(c) for c in checkpoints)
    out = run_evaluation(Workspace(args.workspace), aois=args.aoi, checkpoint=checkpoints,
                         run_name=args.run_name or (f"{name}-{args.estimator}-quick" if args.quick else None),
                         budgets=budgets, repeats=repeats, estimator=args.estimator, seed=args.seed,
                         tasks=args.tasks, dropout_budget=dropout_budget,
                         dropout_channels=not (args.quick or args.no_channel_dropout), progress=not args.quiet,
                         split_seeds=split_seeds, block=args.block, buffer=args.buffer,
                         representations=args.representations, dropout=not args.no_dropout,
                         test_fraction=args.test_fraction)
    print((out / "summary.md").read_text())
    print(f"written: {out}")
    if args.docs:
        command = "python -m core.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
        atomic_write_text(Path(args.docs), docs_page((out / "summary.md").read_text(), json.loads(
            (out / "run.json").read_text()), command))
        print(f"written: {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
