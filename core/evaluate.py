"""The paper's evaluation: few-shot probes on embeddings vs label budget, with baselines and modality dropout.

For each AOI x representation (`s2rgb`, `s1amp`, `coh`, `fused`) x task (`LABEL_TASKS`) x budget
(5 ... 1000, all): mean and std over repeated random draws of R^2, Pearson r and MAE on a fixed
held-out test split, and the ratio to the full-label ("all") score. The same protocol runs on two
baselines: the same architecture randomly initialised (`random-init` embeddings) and hand-crafted
per-channel statistics (`core.features.handcrafted_features`). A task is *observable* on an AOI when
its label varies (std > 0.02) and at least 20 chips hold it (fraction > 0.05); others are marked.

Writes `<workspace>/evaluations/<run-name>/`: `results.csv`, `summary.md` (paper-style table and
target checks), `curves/<aoi>_<task>.png`, `dropout.csv` / `dropout.md` (score at a fixed budget
when a modality is missing at inference, via re-fusion, or a channel is missing, via the
`drop-<mod>-<channel>` embeddings) and `run.json` (settings, timings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.checkpoint import SHIPPED_CHECKPOINT, read_config
from core.embed import (
    SCENARIO_FULL,
    SCENARIO_RANDOM,
    drop_scenarios,
    embed_aoi,
    load_embeddings,
    model_name_of,
)
from core.features import handcrafted_features
from core.modalities import LABEL_TASKS
from core.probes import ESTIMATORS, fit_probe, split_pool_test
from data.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from data.workspace import Workspace

DEFAULT_BUDGETS: tuple[int | None, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, None)
QUICK_BUDGETS: tuple[int | None, ...] = (10, 100, None)
REPRESENTATIONS: tuple[str, ...] = ("s2rgb", "s1amp", "coh", "fused")
HANDCRAFTED = "handcrafted"
PRETRAINED, RANDOM_INIT = "pretrained", "random-init"
OBSERVABLE_STD = 0.02
OBSERVABLE_MIN_CHIPS = 20
PRESENCE_THRESHOLD = 0.05
DROPOUT_BUDGET = 250
TEST_FRACTION = 0.3
METRICS = ("r2", "pearson_r", "mae")
ProgressCallback = Callable[[float, str], None]


class EvaluationError(Exception):
    """The evaluation cannot run (no stores, bad budgets): the message says the fix."""


def budget_label(budget: int | None) -> str:
    """'all' for the full-label budget, else the number."""
    return "all" if budget is None else str(int(budget))


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


def observability(y: np.ndarray) -> tuple[bool, str]:
    """Whether a task's labels vary enough on an AOI to be evaluated, with the reason."""
    v = y[np.isfinite(y)]
    if len(v) == 0:
        return False, "no labels"
    std, n_pos = float(np.std(v)), int((v > PRESENCE_THRESHOLD).sum())
    ok = std > OBSERVABLE_STD and n_pos >= OBSERVABLE_MIN_CHIPS
    return ok, f"std {std:.3f}, {n_pos} chips > {PRESENCE_THRESHOLD:g}"


def _impute(x: np.ndarray) -> np.ndarray:
    """Column means for NaN features (a chip missing a modality), zeros for all-NaN columns."""
    x = np.asarray(x, dtype=np.float32).copy()
    with np.errstate(all="ignore"):
        means = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
    means = np.nan_to_num(means)
    bad = ~np.isfinite(x)
    x[bad] = np.take(means, np.nonzero(bad)[1])
    return x


def probe_rows(X: np.ndarray, y: np.ndarray, valid: np.ndarray, *, budgets: Sequence[int | None], task: str,
               estimator: str, repeats: int, seed: int, clip: bool = False) -> list[dict]:
    """One row per budget: metric means/stds over repeats on the fixed test split (budgets above the pool skipped, or clipped)."""
    present, valid = valid, valid & np.isfinite(y)
    if valid.sum() < 10:
        return []
    pool, test = split_pool_test(len(y), valid, test_fraction=TEST_FRACTION, seed=seed)
    rows = []
    for b in budgets:
        if b is not None and b > len(pool):
            if not clip:
                continue
            b = len(pool)  # a budget above the pool cannot be drawn; 'all' covers it
        res = fit_probe(X, y, task=task, estimator=estimator, budget=b, repeats=repeats if b is not None else 1,
                        seed=seed, pool=pool, test=test, presence_threshold=PRESENCE_THRESHOLD, valid=present)
        row = {"budget": budget_label(b), "n_train": int(res.n_train), "n_pool": len(pool), "n_test": len(test)}
        for name, (mean, std) in res.metrics.items():
            row[f"{name}_mean"], row[f"{name}_std"] = float(mean), float(std)
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


def evaluate_aoi(ws: Workspace, aoi: str, *, checkpoint: Path, budgets: Sequence[int | None], repeats: int,
                 estimator: str, seed: int, tasks: Sequence[str], progress: bool = False) -> pd.DataFrame:
    """The learning-curve table of one AOI: pretrained per representation, random-init and hand-crafted baselines."""
    store = ws.open_store(aoi)
    model_name = model_name_of(checkpoint)
    _ensure_embeddings(ws, aoi, checkpoint, [SCENARIO_FULL, SCENARIO_RANDOM], progress)
    sources: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for model, scenario in ((PRETRAINED, SCENARIO_FULL), (RANDOM_INIT, SCENARIO_RANDOM)):
        emb = load_embeddings(ws, aoi, model_name, scenario)
        for rep in REPRESENTATIONS:
            if rep in emb.vectors:
                v, p = emb.get(rep)
                sources.append((model, rep, v, p))
    feats = _impute(handcrafted_features(store))
    sources.append((HANDCRAFTED, HANDCRAFTED, feats, np.ones(len(store), dtype=bool)))
    rows: list[dict] = []
    for task in tasks:
        y = store.labels(task).astype(np.float64)
        observable, why = observability(y)
        for model, rep, X, present in sources:
            if not present.any():
                continue
            block = _with_ratio(probe_rows(X, y, present, budgets=budgets, task=task, estimator=estimator,
                                           repeats=repeats, seed=seed), "r2")
            for r in block:
                rows.append({"aoi": aoi, "simulated": bool(store.meta.simulated), "task": task,
                             "observable": observable, "observability": why, "model": model,
                             "representation": rep, "estimator": estimator, **r})
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
                  tasks: Sequence[str], channels: bool, progress: bool = False) -> pd.DataFrame:
    """Score at `budget` labels when a modality (re-fused without it) or a channel (drop scenario) is missing."""
    store = ws.open_store(aoi)
    model_name = model_name_of(checkpoint)
    full = load_embeddings(ws, aoi, model_name, SCENARIO_FULL)
    variants: list[tuple[str, str, np.ndarray, np.ndarray]] = [("none", "fused", *full.get("fused"))]
    for mod in full.modalities:
        if full.present[mod].any():
            variants.append((f"modality {mod}", "fused", *full.fused_without([mod])))
    if channels:
        for scenario in drop_scenarios(read_config(checkpoint)):
            mod = scenario.split("-")[1]
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
        for missing, rep, X, present in variants:
            res = probe_rows(X, y, present, budgets=[budget], task=task, estimator=estimator, repeats=repeats, seed=seed,
                             clip=True)
            if not res:
                continue
            r = res[0]
            rows.append({"aoi": aoi, "task": task, "observable": observable, "missing": missing, "representation": rep,
                         "budget": r["budget"], "r2_mean": r.get("r2_mean"), "r2_std": r.get("r2_std"),
                         "pearson_r_mean": r.get("pearson_r_mean"), "self_rank1": rank1[(missing, rep)]})
    df = pd.DataFrame(rows)
    if not df.empty:
        ref = df[df.missing == "none"].set_index(["task", "representation"])["r2_mean"]
        df["r2_change"] = [r.r2_mean - ref.get((r.task, r.representation), np.nan) for r in df.itertuples()]
    return df


# ----------------------------------------------------------------------------------------- reports
def _fmt(x: float, pct: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def summary_markdown(results: pd.DataFrame, dropout: pd.DataFrame | None, settings: dict) -> str:
    """The paper-style summary: % of full-label R^2 at 250/500 labels, baselines at <= 100 labels, target checks."""
    sim = bool(results["simulated"].any()) if not results.empty else False
    lines = [f"# Few-shot evaluation{' (SIMULATED AOIs)' if sim else ''}", "",
             f"Checkpoint `{settings['checkpoint']}`, estimator `{settings['estimator']}`, {settings['repeats']} repeats, "
             f"budgets {settings['budgets']}, held-out test split {int(TEST_FRACTION * 100)}%; created {settings['created']}.",
             "Scores are R^2 on the test split (mean over draws); 'all' = every chip of the training pool.", ""]
    if results.empty:
        return "\n".join(lines + ["No results (no AOI had enough labelled chips)."]) + "\n"
    r = results.copy()

    def score(model: str, rep: str, aoi: str, task: str, budget: str, col: str = "r2_mean") -> float:
        m = r[(r.model == model) & (r.representation == rep) & (r.aoi == aoi) & (r.task == task) & (r.budget == budget)]
        return float(m[col].iloc[0]) if len(m) else np.nan

    small = [b for b in ("25", "100") if b in set(r.budget)]
    lines += ["## Pretrained embeddings: share of the full-label score", "",
              "| AOI | task | observable | repr. | R^2 all | @250 | @500 | " + " | ".join(
                  f"@{b}: pre / rand / hand" for b in small) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(small)]
    checks = {"ratio": [], "random": [], "hand": []}
    for (aoi, task), g in r.groupby(["aoi", "task"], sort=False):
        obs = bool(g.observable.iloc[0])
        for rep in REPRESENTATIONS:
            if not ((g.model == PRETRAINED) & (g.representation == rep)).any():
                continue
            full = score(PRETRAINED, rep, aoi, task, "all")
            r250 = score(PRETRAINED, rep, aoi, task, "250", "ratio_to_full")
            r500 = score(PRETRAINED, rep, aoi, task, "500", "ratio_to_full")
            cells = []
            for b in small:
                cells.append(f"{_fmt(score(PRETRAINED, rep, aoi, task, b))} / {_fmt(score(RANDOM_INIT, rep, aoi, task, b))}"
                             f" / {_fmt(score(HANDCRAFTED, HANDCRAFTED, aoi, task, b))}")
            lines.append(f"| {aoi} | {task} | {'yes' if obs else 'no'} | {rep} | {_fmt(full)} | {_fmt(r250, True)} | "
                         f"{_fmt(r500, True)} | " + " | ".join(cells) + " |")
            if not obs:
                continue
            best = np.nanmax([r250, r500]) if np.isfinite([r250, r500]).any() else np.nan
            if np.isfinite(best):
                checks["ratio"].append((aoi, task, rep, best >= 0.95, best))
            budgets_le500 = [b for b in r.budget.unique() if b != "all" and int(b) <= 500]
            diffs = [score(PRETRAINED, rep, aoi, task, b) - score(RANDOM_INIT, rep, aoi, task, b) for b in budgets_le500]
            diffs = [d for d in diffs if np.isfinite(d)]
            if diffs:
                checks["random"].append((aoi, task, rep, min(diffs) > 0, min(diffs)))
            if rep == "fused":
                hd = [score(PRETRAINED, rep, aoi, task, b) - score(HANDCRAFTED, HANDCRAFTED, aoi, task, b)
                      for b in budgets_le500 if int(b) <= 100]
                hd = [d for d in hd if np.isfinite(d)]
                if hd:
                    checks["hand"].append((aoi, task, rep, np.mean(hd) > 0, float(np.mean(hd))))
    lines += ["", "Cells '@N: pre / rand / hand' are R^2 at N labels: pretrained (this representation) / random-init "
              "(same architecture, untrained) / hand-crafted per-channel statistics.", "", "## Targets (observable tasks only)", ""]
    for key, text in (("ratio", ">= 95% of the full-label score at 250 or 500 labels"),
                      ("random", "pretrained above random-init at every budget <= 500 (worst margin)"),
                      ("hand", "fused pretrained above hand-crafted statistics at <= 100 labels (mean margin)")):
        items = checks[key]
        ok = sum(1 for it in items if it[3])
        lines.append(f"- {text}: **{ok} / {len(items)}** pass")
        fails = [f"{a}/{t}/{rep} ({_fmt(v, key == 'ratio')})" for a, t, rep, passed, v in items if not passed]
        if fails:
            lines.append(f"  - not met: {', '.join(fails[:20])}{' ...' if len(fails) > 20 else ''}")
    unobs = sorted({(a, t) for a, t, o in r[["aoi", "task", "observable"]].itertuples(index=False) if not o})
    if unobs:
        lines += ["", "Not observable (label std <= 0.02 or < 20 chips with the class): "
                  + ", ".join(f"{a}/{t}" for a, t in unobs)]
    if dropout is not None and not dropout.empty:
        lines += ["", f"## Missing data at inference ({dropout.budget.iloc[0]} labels)", "", dropout_markdown(dropout, header=False)]
    return "\n".join(lines) + "\n"


def dropout_markdown(df: pd.DataFrame, header: bool = True) -> str:
    """Pivot of the dropout table: rows AOI x task x representation, columns what is missing (R^2, change)."""
    out = ["# Modality and channel dropout at inference", ""] if header else []
    if df.empty:
        return "\n".join(out + ["No results."]) + "\n"
    missing = list(dict.fromkeys(df.missing))
    out.append("| AOI | task | repr. | " + " | ".join(missing) + " |")
    out.append("|---|---|---|" + "---|" * len(missing))
    for (aoi, task, rep), g in df.groupby(["aoi", "task", "representation"], sort=False):
        cells = []
        for m in missing:
            row = g[g.missing == m]
            if not len(row):
                cells.append("")
            elif m == "none":
                cells.append(_fmt(row.r2_mean.iloc[0]))
            else:
                cells.append(f"{_fmt(row.r2_mean.iloc[0])} ({row.r2_change.iloc[0]:+.3f})")
        out.append(f"| {aoi} | {task} | {rep} | " + " | ".join(cells) + " |")
    if "self_rank1" in df.columns:
        out += ["", "Self-retrieval with the part missing (rank-1: the chip's nearest full embedding is its own; no labels):", "",
                "| AOI | repr. | " + " | ".join(m for m in missing if m != "none") + " |",
                "|---|---|" + "---|" * (len(missing) - 1)]
        first = df.drop_duplicates(["aoi", "missing", "representation"])
        for (aoi, rep), g in first.groupby(["aoi", "representation"], sort=False):
            cells = [_fmt(g[g.missing == m].self_rank1.iloc[0]) if (g.missing == m).any() else "" for m in missing if m != "none"]
            out.append(f"| {aoi} | {rep} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot_curves(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per AOI x task: R^2 vs labels per representation and baseline; full-label scores dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    colours = {"s2rgb": "tab:green", "s1amp": "tab:blue", "coh": "tab:purple", "fused": "black", HANDCRAFTED: "tab:orange"}
    paths = []
    for (aoi, task), g in results.groupby(["aoi", "task"], sort=False):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        for (model, rep), h in g.groupby(["model", "representation"], sort=False):
            if model == RANDOM_INIT and rep != "fused":
                continue  # one random-init line keeps the plot readable; the CSV holds every representation
            curve = h[h.budget != "all"]
            x = curve.n_train.to_numpy()
            m, s = curve.r2_mean.to_numpy(), curve.r2_std.to_numpy()
            style = {"pretrained": "-", RANDOM_INIT: ":", HANDCRAFTED: "-."}[model]
            label = rep if model == PRETRAINED else f"{rep} ({model})" if model == RANDOM_INIT else "hand-crafted stats"
            ax.plot(x, m, style, marker="o", ms=3, color=colours[rep], label=label)
            ax.fill_between(x, m - s, m + s, color=colours[rep], alpha=0.12)
            full = h[h.budget == "all"]
            if len(full) and model == PRETRAINED:
                ax.axhline(float(full.r2_mean.iloc[0]), ls="--", lw=0.8, color=colours[rep])
        ax.set_xscale("log")
        ax.set_xlabel("labelled chips")
        ax.set_ylabel("R^2 (test split)")
        sim = " (simulated)" if bool(g.simulated.iloc[0]) else ""
        obs = "" if bool(g.observable.iloc[0]) else " - not observable"
        ax.set_title(f"{aoi}{sim}: {task}{obs}", fontsize=10)
        lo = np.nanmin(g.r2_mean.to_numpy()) if len(g) else 0
        ax.set_ylim(max(-0.5, min(0.0, lo - 0.05)), 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out_dir / f"{aoi}_{task}.png"
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------- driver
def run_evaluation(ws: Workspace, *, aois: Sequence[str] | None = None, checkpoint: str | Path = SHIPPED_CHECKPOINT,
                   run_name: str | None = None, budgets: Sequence[int | None] = DEFAULT_BUDGETS, repeats: int = 10,
                   estimator: str = "ridge", seed: int = 0, tasks: Sequence[str] = LABEL_TASKS,
                   dropout_budget: int = DROPOUT_BUDGET, dropout_channels: bool = True, progress: bool = True,
                   progress_cb: ProgressCallback | None = None) -> Path:
    """Run the whole protocol on the workspace's AOIs and write the report folder; returns its path."""
    if estimator not in ESTIMATORS:
        raise EvaluationError(f"unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    if repeats < 1:
        raise EvaluationError(f"repeats must be >= 1, got {repeats}")
    bad = [t for t in tasks if t not in LABEL_TASKS]
    if bad:
        raise EvaluationError(f"unknown tasks {bad}; known: {list(LABEL_TASKS)}")
    if None not in budgets:
        budgets = tuple(budgets) + (None,)  # the full-label reference is what every ratio divides by
    checkpoint = Path(checkpoint)
    aois = list(aois or ws.list_stores())
    if not aois:
        raise EvaluationError(f"no chip stores in {ws.stores_dir}: build the workspace with "
                              f"`python -m core.pipeline build --workspace {ws.root}`")
    missing = [a for a in aois if a not in ws.list_stores()]
    if missing:
        raise EvaluationError(f"no store for AOI(s) {missing} in {ws.stores_dir}; known: {ws.list_stores()}")
    run_name = run_name or f"{model_name_of(checkpoint)}-{estimator}"
    out = ws.artifact_dir("evaluations", run_name)
    t0 = time.perf_counter()
    results, dropouts, timings = [], [], {}
    bar = tqdm(aois, desc="evaluate", unit="aoi", disable=not progress)
    for i, aoi in enumerate(bar):
        ta = time.perf_counter()
        bar.set_postfix_str(aoi)
        if progress_cb:
            progress_cb(i / len(aois), f"evaluating {aoi}")
        results.append(evaluate_aoi(ws, aoi, checkpoint=checkpoint, budgets=budgets, repeats=repeats,
                                    estimator=estimator, seed=seed, tasks=tasks, progress=progress))
        dropouts.append(dropout_table(ws, aoi, checkpoint=checkpoint, budget=dropout_budget, repeats=repeats,
                                      estimator=estimator, seed=seed, tasks=tasks, channels=dropout_channels,
                                      progress=progress))
        timings[aoi] = round(time.perf_counter() - ta, 1)
    res = pd.concat(results, ignore_index=True) if results else pd.DataFrame()
    drop = pd.concat(dropouts, ignore_index=True) if dropouts else pd.DataFrame()
    settings = {"checkpoint": str(checkpoint), "estimator": estimator, "repeats": repeats, "seed": seed,
                "budgets": [budget_label(b) for b in budgets], "tasks": list(tasks), "aois": aois,
                "dropout_budget": dropout_budget, "dropout_channels": dropout_channels,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.csv", res.to_csv(index=False))
    atomic_write_text(out / "dropout.csv", drop.to_csv(index=False))
    atomic_write_text(out / "dropout.md", dropout_markdown(drop))
    atomic_write_text(out / "summary.md", summary_markdown(res, drop, settings))
    pngs = plot_curves(res, out / "curves") if not res.empty else []
    atomic_write_json(out / "run.json", {**settings, "seconds_per_aoi": timings,
                                         "seconds": round(time.perf_counter() - t0, 1), "curves": [p.name for p in pngs]})
    ws.record(f"evaluations/{run_name}", seconds=round(time.perf_counter() - t0, 1), aois=aois)
    if progress_cb:
        progress_cb(1.0, f"evaluation written to {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: the paper-style evaluation of a workspace."""
    ap = argparse.ArgumentParser(
        prog="python -m core.evaluate",
        description="Few-shot evaluation like the paper: per AOI x representation (s2rgb, s1amp, coh, fused) x task x "
        "label budget, mean/std of R^2, Pearson r and MAE over repeated draws and the ratio to the full-label score, "
        "with random-init and hand-crafted baselines and a modality/channel dropout table. Missing embeddings "
        "(random-init, drop-<mod>-<channel>) are built first. Writes <workspace>/evaluations/<run-name>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--workspace", default=None, help="workspace directory (default: $EO_WORKSPACE or ./workspace)")
    ap.add_argument("--aoi", nargs="+", default=None, help="AOIs (default: every store in the workspace)")
    ap.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="checkpoint directory")
    ap.add_argument("--budgets", nargs="+", default=[budget_label(b) for b in DEFAULT_BUDGETS],
                    help="label budgets; 'all' = the whole training pool (always added)")
    ap.add_argument("--repeats", type=int, default=10, help="random draws per budget")
    ap.add_argument("--estimator", default="ridge", choices=list(ESTIMATORS))
    ap.add_argument("--tasks", nargs="+", default=list(LABEL_TASKS), choices=list(LABEL_TASKS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout-budget", type=int, default=DROPOUT_BUDGET, help="labels for the dropout table")
    ap.add_argument("--no-channel-dropout", action="store_true",
                    help="skip the drop-<mod>-<channel> embeddings (modality dropout still runs)")
    ap.add_argument("--run-name", default=None, help="output folder name (default: <model>-<estimator>)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: budgets {[budget_label(b) for b in QUICK_BUDGETS]}, 3 repeats, no channel dropout")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        budgets = QUICK_BUDGETS if args.quick else parse_budgets(args.budgets)
        repeats = 3 if args.quick else args.repeats
        dropout_budget = min(args.dropout_budget, 100) if args.quick else args.dropout_budget
        out = run_evaluation(Workspace(args.workspace), aois=args.aoi, checkpoint=args.checkpoint,
                             run_name=args.run_name or (f"{model_name_of(args.checkpoint)}-{args.estimator}-quick"
                                                        if args.quick else None),
                             budgets=budgets, repeats=repeats, estimator=args.estimator, seed=args.seed,
                             tasks=args.tasks, dropout_budget=dropout_budget,
                             dropout_channels=not (args.quick or args.no_channel_dropout), progress=not args.quiet)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
