"""Helpers of the few-shot probes page: budgets, the missing-channel embeddings, metrics and curves."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from core import pipeline
from core.embed import embed_aoi
from core.progress import clamp_fraction
from core.representations import HAND_CRAFTED, RANDOM_INIT, drop_scenarios_needed
from ui import cache
from ui.errors import UserError

CURVE_BUDGETS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
METRIC_ORDER = ("r2", "pearson_r", "mae", "f1")
METRIC_NAMES = {"r2": "R²", "pearson_r": "Pearson r", "mae": "MAE", "f1": "F1"}


def budget_options(n_labelled: int) -> list:
    """Slider stops: 5, 10, 25 ... below the number of labelled chips, then 'all'."""
    return [b for b in CURVE_BUDGETS if b < n_labelled * 0.7] + ["all"]


def default_budget(options: Sequence) -> Any:
    """50 labels when the AOI has that many, else the largest stop below 'all'."""
    return 50 if 50 in options else (options[-2] if len(options) > 1 else options[-1])


def ensure_drop_embeddings(ctx: Any, model: str, dropped_channels: Sequence[tuple[str, str]]) -> None:
    """Offer to build the embeddings of a missing-channel scenario (with progress) when they are absent."""
    for mod, scenario in drop_scenarios_needed(dropped_channels).items():
        chans = sorted(c for m, c in dropped_channels if m == mod)
        if cache.embeddings_stamp(ctx.root, ctx.aoi, model, scenario):
            continue
        st.info(f"Embeddings of {ctx.aoi} without {mod} {', '.join(chans)} are not built yet "
                f"(`python -m core.embed --aoi {ctx.aoi} --scenario {scenario}`).")
        if not st.button(f"Build embeddings without {mod} {', '.join(chans)}", key=f"probe_build_{scenario}"):
            st.stop()
        with st.status(f"Embedding {ctx.aoi} without {mod} {', '.join(chans)}…", expanded=True) as box:
            bar = st.progress(0.0)
            embed_aoi(ctx.workspace, ctx.aoi, ctx.checkpoint, scenario, progress=False,
                      progress_cb=lambda f, m: bar.progress(clamp_fraction(f), text=m))
            box.update(label=f"Built {scenario}.", state="complete", expanded=False)


def _metrics(result: dict) -> dict[str, tuple[float, float]]:
    m = result.get("metrics") or {}
    out = {}
    for k, v in m.items():
        if isinstance(v, (tuple, list, np.ndarray)) and len(v) == 2:
            out[k] = (float(v[0]), float(v[1]))
        elif isinstance(v, (int, float, np.floating)):
            out[k] = (float(v), 0.0)
    return out


def headline(result: dict) -> tuple[str, float]:
    """The main metric of a probe: (name, mean): R² for regression, F1 for classification."""
    m = _metrics(result)
    for k in ("r2", "f1", *m):
        if k in m:
            return k, m[k][0]
    raise UserError("The probe returned no metric.", "Try another estimator or a larger budget.")


def show_metrics(result: dict, full: dict, budget_label: Any) -> None:
    """Metric tiles: mean ± std over repeats, and the ratio of the full-label score."""
    m, fm = _metrics(result), _metrics(full)
    names = [k for k in METRIC_ORDER if k in m] + [k for k in m if k not in METRIC_ORDER]
    cols = st.columns(len(names) + 1)
    for col, k in zip(cols, names):
        mean, std = m[k]
        delta = f"{mean - fm[k][0]:+.3f} vs all labels" if k in fm and budget_label != "all" else None
        col.metric(METRIC_NAMES.get(k, k), f"{mean:.3f} ± {std:.3f}", delta=delta,
                   delta_color="inverse" if k == "mae" else "normal")
    key, score = headline(result)
    full_score = fm.get(key, (np.nan, 0))[0]
    # A ratio to a full-label score at or below zero means nothing (as in core.probes.learning_curve).
    ratio = score / full_score if np.isfinite(full_score) and full_score > 1e-9 else np.nan
    n_train = result.get("n_train")
    cols[-1].metric("of full-label score", f"{ratio:.0%}" if np.isfinite(ratio) else "n/a",
                    help=f"{METRIC_NAMES.get(key, key)} at this budget / with all labels (n/a when the full-label score is not positive)"
                    + (f"; trained on {int(n_train)} chips" if n_train is not None else ""))


def _curve_frame(table: pd.DataFrame, series: str, metric: str) -> pd.DataFrame:
    """A core.probes.learning_curve table -> budget, series, mean, lo, hi of one metric."""
    t = table.copy()
    if "budget" not in t.columns:
        raise ValueError(f"learning curve table has no 'budget' column: {list(t.columns)}")
    mean_col = next((c for c in (f"{metric}_mean", metric, "mean") if c in t.columns), None)
    std_col = next((c for c in (f"{metric}_std", "std") if c in t.columns), None)
    if "metric" in t.columns:
        t = t[t["metric"] == metric]
        mean_col, std_col = "mean", ("std" if "std" in t.columns else None)
    if mean_col is None:
        raise ValueError(f"learning curve table has no {metric} column: {list(t.columns)}")
    mean = t[mean_col].astype(float).to_numpy()
    std = t[std_col].astype(float).to_numpy() if std_col else np.zeros_like(mean)
    budget = t["n_train"] if "n_train" in t.columns else t["budget"]
    return pd.DataFrame({"budget": budget.astype(float).to_numpy(), "series": series, "mean": mean,
                         "lo": mean - std, "hi": mean + std})


def curves(ctx: Any, model: str, task: str, estimator: str, repeats: int, spec: dict, n_labelled: int) -> tuple[pd.DataFrame, str]:
    """Learning curves of the embeddings (this setting), random-init embeddings and hand-crafted features."""
    budgets = tuple(b for b in CURVE_BUDGETS if b < n_labelled * 0.7)
    metric = "f1" if estimator == "logistic" else "r2"
    rep = spec.get("representation", "fused")
    mine = "embeddings (this setting)" if rep == "fused" else f"{rep} (external)"
    # An external representation is compared with the model's fused embeddings and the same baselines.
    others = ((("fused", "model embeddings (fused)"),) if rep != "fused" else ()) + (
        (RANDOM_INIT, "random-init embeddings"), (HAND_CRAFTED, "hand-crafted features"))
    jobs = [(None, mine), *others]
    per_curve = cache.curve_fits(len(budgets), repeats)
    total = per_curve * len(jobs)
    bar = st.progress(0.0, text=f"Learning curves: 0 of {total:,} fits ({len(jobs)} curves: {len(budgets)} budgets "
                                f"x {repeats} repeats + all labels each)")
    frames = []
    for i, (name, label) in enumerate(jobs):
        def show(done: int, _total: int, now: str, i: int = i, label: str = label) -> None:
            count = i * per_curve + done
            bar.progress(clamp_fraction(count / total),
                         text=f"Learning curves: {count:,} of {total:,} fits ({now}, {label})")
        try:
            kw = spec if name is None else {"representation": name}
            table = cache.curve(ctx.root, ctx.aoi, model, task=task, estimator=estimator, budgets=budgets,
                                repeats=repeats, progress=show, **kw)
        except UserError as e:
            if name is None:
                raise
            st.caption(f"No {label} baseline: {e}")
            continue
        frames.append(_curve_frame(table, label, metric))
    bar.empty()
    return pd.concat(frames, ignore_index=True), {"r2": "R²", "f1": "F1"}[metric]


def probe(ctx: Any, model: str, *, task: str, estimator: str, budget: int | None, repeats: int,
          spec: dict) -> dict:
    """cache.probe with a progress bar counting its repeats while they are fitted (gone once done)."""
    what = "all labels" if budget is None else f"{budget:,} labels"
    bar = st.progress(0.0, text=f"Probe ({estimator}, {what}): fitting")

    def show(done: int, total: int, now: str) -> None:
        bar.progress(clamp_fraction(done / total),
                     text=f"Probe ({estimator}, {what}): {done} of {total} repeats fitted" + ("" if now == "done" else f", now {now}"))

    result = cache.probe(ctx.root, ctx.aoi, model, task=task, estimator=estimator, budget=budget, repeats=repeats,
                         progress=show, **spec)
    bar.empty()
    return result


def _field(result: dict, names: Sequence[str]) -> np.ndarray:
    """The first of `names` present in a probe result (field names of core.probes.ProbeResult)."""
    for name in names:
        if result.get(name) is not None:
            return np.asarray(result[name])
    raise ValueError(f"probe result has none of {list(names)} (fields: {sorted(result)})")


def test_pairs(result: dict, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) on the held-out chips of the first draw."""
    idx = _field(result, ("test_idx", "test_indices", "test")).astype(np.int64)
    pred = _field(result, ("test_predictions", "predictions", "test_pred")).astype(np.float64)
    if idx.size != pred.size:
        raise ValueError(f"probe returned {pred.size} test predictions for {idx.size} test chips")
    return labels[idx].astype(np.float64), pred


def all_predictions(result: dict, n: int) -> np.ndarray:
    """Predictions for every chip of the AOI [n] (first draw)."""
    pred = _field(result, ("all_predictions", "full_predictions", "aoi_predictions", "predictions_all")).astype(np.float64)
    if pred.shape != (n,):
        raise ValueError(f"probe returned {pred.shape} AOI predictions for {n} chips")
    return pred


def ensure_random_init(ctx: Any, model: str) -> None:
    """Build the random-init baseline embeddings of the AOI on first use (a few seconds), with progress."""
    if cache.embeddings_stamp(ctx.root, ctx.aoi, model, RANDOM_INIT):
        return
    with st.status("Embedding the AOI with the untrained model (the random-init baseline, once)…", expanded=True) as box:
        bar = st.progress(0.0)
        pipeline.build(ctx.workspace, [ctx.aoi], ["random-init"], checkpoint=ctx.checkpoint, progress=False,
                       progress_cb=lambda f, m: bar.progress(clamp_fraction(f), text=m))
        box.update(label="Random-init baseline ready.", state="complete", expanded=False)
