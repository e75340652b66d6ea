"""The evaluation's reports, written by the code from results.csv / dropout.csv: summary.md (headline tables,
targets met or missed), dropout.md and the docs/EVALUATION.md page."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from core.features import BASELINES
from core.protocol import (
    DEFAULT_BLOCK,
    EXTERNAL,
    HANDCRAFTED,
    HEADLINE_BUDGETS,
    OBSERVABLE_MIN_CHIPS,
    OBSERVABLE_STD,
    PRESENCE_THRESHOLD,
    PRETRAINED,
    RANDOM_INIT,
    RATIO_BUDGET,
    RATIO_TARGET,
    REPRESENTATIONS,
    TEST_FRACTION,
    main_metric,
)


def _fmt(x: float, pct: bool = False) -> str:
    """A table cell: 3 decimals or a percentage; '-' for missing."""
    if x is None or not np.isfinite(x):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def series_order(r: pd.DataFrame) -> list[str]:
    """Pretrained series first (fused first), then random-init, then the hand-crafted baselines."""
    rank = {PRETRAINED: 0, EXTERNAL: 0.5, RANDOM_INIT: 1, HANDCRAFTED: 2}
    first = r.drop_duplicates("series")
    rep_rank = {k: i for i, k in enumerate(("fused", *REPRESENTATIONS, *BASELINES))}
    keyed = sorted(first.itertuples(), key=lambda t: (rank.get(t.model, 3), str(t.checkpoint),
                                                       rep_rank.get(t.representation, 99)))
    return [t.series for t in keyed]


def _budget_order(budgets) -> list[str]:
    return sorted({str(b) for b in budgets}, key=lambda b: (b == "all", int(b) if b != "all" else 0))


def headline_numbers(results: pd.DataFrame) -> dict:
    """The numbers behind the summary tables (observable pairs only), also written to run.json."""
    r = results[results.observable.astype(bool)].copy()
    r["budget"] = r["budget"].astype(str)
    m, _ = main_metric(r.columns)
    pairs = list(dict.fromkeys(zip(r.aoi, r.task)))
    mean_by_budget = {s: {b: float(g[f"{m}_mean"].mean()) for b, g in r[r.series == s].groupby("budget")}
                      for s in series_order(r)} if len(r) else {}
    # The fused embedding and every external one are compared with the best of the same cheap baselines.
    fused = [s for s in series_order(r) if (r[r.series == s].model.iloc[0] == PRETRAINED
             and r[r.series == s].representation.iloc[0] == "fused") or r[r.series == s].model.iloc[0] == EXTERNAL] \
        if len(r) else []
    baselines = [s for s in series_order(r) if r[r.series == s].model.iloc[0] not in (PRETRAINED, EXTERNAL)] \
        if len(r) else []
    idx = r.set_index(["series", "aoi", "task", "budget"])
    comp: dict[str, dict] = {}
    for fs in fused:
        per_pair = []
        for aoi, task in pairs:
            item = {"aoi": aoi, "task": task}
            for b in HEADLINE_BUDGETS:
                def get(s, col=f"{m}_mean"):
                    key = (s, aoi, task, b)
                    return float(idx.loc[key, col]) if key in idx.index else np.nan
                f = get(fs)
                cands = [(get(bs), bs) for bs in baselines if np.isfinite(get(bs))]
                best, name = max(cands) if cands else (np.nan, "-")
                item[b] = {"pretrained": f, "pretrained_std": get(fs, f"{m}_std"), "best_baseline": name,
                           "best_baseline_r2": best, "best_baseline_std": get(name, f"{m}_std") if cands else np.nan,
                           "difference": f - best}
            key = (fs, aoi, task, RATIO_BUDGET)
            item["ratio_at_250"] = float(idx.loc[key, "ratio_to_full"]) if key in idx.index else np.nan
            per_pair.append(item)
        wins = {b: sum(1 for it in per_pair if np.isfinite(it[b]["difference"]) and it[b]["difference"] > 0)
                for b in HEADLINE_BUDGETS}
        counted = {b: sum(1 for it in per_pair if np.isfinite(it[b]["difference"])) for b in HEADLINE_BUDGETS}
        ratios = [it["ratio_at_250"] for it in per_pair if np.isfinite(it["ratio_at_250"])]
        comp[fs] = {"pairs": per_pair, "wins": wins, "counted": counted,
                    "ratio_at_250_mean": float(np.mean(ratios)) if ratios else np.nan,
                    "below_target": [(it["aoi"], it["task"], it["ratio_at_250"]) for it in per_pair
                                     if np.isfinite(it["ratio_at_250"]) and it["ratio_at_250"] < RATIO_TARGET]}
    return {"metric": m, "pairs": pairs, "mean_by_budget": mean_by_budget, "fused": fused, "baselines": baselines,
            "comparison": comp}


def targets_markdown(series: str, comparison: dict, mean_by_budget: dict, baselines: Sequence[str],
                     label: str = "R^2") -> list[str]:
    """The issue's targets, checked by the code: wins on >= 2/3 of the pairs and on the mean at 25 and 100
    labels, and >= 95 % of the full-label score at 250 labels on the mean."""
    lines = [f"### Targets for {series}", ""]
    for b in HEADLINE_BUDGETS:
        wins, counted = comparison["wins"][b], comparison["counted"][b]
        need = math.ceil(2 * counted / 3)
        own = mean_by_budget.get(series, {}).get(b, np.nan)
        base = {bs: mean_by_budget.get(bs, {}).get(b, np.nan) for bs in baselines}
        best_name, best = max(((v, k) for k, v in base.items() if np.isfinite(v)), default=(np.nan, "-"))[::-1]
        ok_pairs, ok_mean = wins >= need, bool(np.isfinite(own) and np.isfinite(best) and own > best)
        lines.append(f"- At {b} labels: above the best baseline on {wins} / {counted} pairs (target {need}): "
                     f"**{'met' if ok_pairs else 'missed'}**; on the mean {_fmt(own)} vs the best baseline's mean "
                     f"({best_name}) {_fmt(best)}: **{'met' if ok_mean else 'missed'}**.")
    ratio = comparison["ratio_at_250_mean"]
    lines.append(f"- At {RATIO_BUDGET} labels: {_fmt(ratio, True)} of its own full-label {label} on the mean (target "
                 f"{int(RATIO_TARGET * 100)} %): **{'met' if np.isfinite(ratio) and ratio >= RATIO_TARGET else 'missed'}**.")
    return lines + [""]


def summary_markdown(results: pd.DataFrame, dropout: pd.DataFrame | None, settings: dict) -> str:
    """The headline tables: (a) mean R^2 by budget, (b) fused vs best baseline at 25/100, (c) share of the
    full-label score at 250, (d) the observability filter, (e) test/pool sizes; then the dropout table."""
    sim = bool(results["simulated"].any()) if not results.empty else False
    ck = settings.get("checkpoints") or [settings.get("checkpoint")]
    lines = [f"# Few-shot evaluation{' (SIMULATED AOIs)' if sim else ''}", "",
             f"Checkpoint(s) {', '.join(f'`{c}`' for c in ck)}; estimator `{settings['estimator']}`; created "
             f"{settings['created']}.",
             "",
             f"Protocol: spatially blocked splits: whole {settings.get('block', DEFAULT_BLOCK)} x "
             f"{settings.get('block', DEFAULT_BLOCK)}-chip squares of the AOI grid go to the test set "
             f"({int(100 * settings.get('test_fraction', TEST_FRACTION))} % of the labelled chips)"
             + (f", pool chips within {settings['buffer']} chip(s) of a test square dropped" if settings.get("buffer")
                else "") +
             f"; split seeds {settings.get('split_seeds')}; {settings['repeats']} random draws per budget and split "
             "seed. The same test chips for every representation of a task (a representation that cannot see a "
             "chip, e.g. one lacking that modality, is scored on the test chips it sees; see (e)). Scores: " + main_metric(results.columns)[1] + " on "
             "the test chips, mean over split seeds x draws ('all' = the whole pool, one fit per split seed); "
             "'±' = std over split seeds x draws.", ""]
    if results.empty:
        return "\n".join(lines + ["No results (no AOI had enough labelled chips)."]) + "\n"
    r = results.copy()
    r["budget"] = r["budget"].astype(str)
    m, label = main_metric(r.columns)
    h = headline_numbers(r)
    pairs, order = h["pairs"], series_order(r)
    budgets = _budget_order(r.budget)
    obs = r[r.observable.astype(bool)]
    # (a)
    lines += [f"## (a) Mean {label} by label budget over the {len(pairs)} observable AOI x task pairs", "",
              "| representation | " + " | ".join(budgets) + " |", "|---|" + "---|" * len(budgets)]
    for s in order:
        cells = []
        for b in budgets:
            g = obs[(obs.series == s) & (obs.budget == b)]
            v = _fmt(g[f"{m}_mean"].mean()) if len(g) else "-"
            cells.append(v + (f" ({len(g)})" if 0 < len(g) < len(pairs) else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "A number in brackets: pairs whose pool holds that budget (the mean is over those only).", ""]
    # (b), (c)
    for fs, c in h["comparison"].items():
        lines += [f"## (b) {fs} vs the best baseline at {' and '.join(HEADLINE_BUDGETS)} labels", "",
                  f"Best baseline = the highest mean {label} among " + ", ".join(h["baselines"]) +
                  " for that pair and budget (chosen on the test scores, which favours the baselines).", "",
                  "| AOI | task | " + " | ".join(f"{fs.split()[-1]} @{b} | best baseline @{b} | diff @{b}"
                                                   for b in HEADLINE_BUDGETS) + " |",
                  "|---|---|" + "---|---|---|" * len(HEADLINE_BUDGETS)]
        for it in c["pairs"]:
            cells = []
            for b in HEADLINE_BUDGETS:
                d = it[b]
                cells += [f"{_fmt(d['pretrained'])} ± {_fmt(d['pretrained_std'])}",
                          f"{d['best_baseline']} {_fmt(d['best_baseline_r2'])} ± {_fmt(d['best_baseline_std'])}",
                          "-" if not np.isfinite(d["difference"]) else f"{d['difference']:+.3f}"]
            lines.append(f"| {it['aoi']} | {it['task']} | " + " | ".join(cells) + " |")
        lines += ["", "Pairs where " + fs + " beats the best baseline: " + ", ".join(
            f"**{c['wins'][b]} / {c['counted'][b]}** at {b} labels" for b in HEADLINE_BUDGETS) + ".", ""]
        lines += targets_markdown(fs, c, h["mean_by_budget"], h["baselines"], label)
        lines += [f"## (c) {fs}: share of the full-label score at {RATIO_BUDGET} labels", "",
                  f"Mean over the observable pairs: **{_fmt(c['ratio_at_250_mean'], True)}** of the full-label {label}. "
                  f"Pairs below {int(RATIO_TARGET * 100)} %: " + (", ".join(
                      f"{a}/{t} ({_fmt(v, True)})" for a, t, v in c["below_target"]) or "none") + ".", ""]
    # (d)
    all_pairs = list(dict.fromkeys(zip(r.aoi, r.task)))
    dropped = r.drop_duplicates(["aoi", "task"])
    dropped = dropped[~dropped.observable.astype(bool)]
    lines += ["## (d) Observability filter", "",
              f"A task is scored on an AOI only if its label std > {OBSERVABLE_STD} and at least "
              f"{OBSERVABLE_MIN_CHIPS} chips hold the class (fraction > {PRESENCE_THRESHOLD}). Kept {len(pairs)} of "
              f"{len(all_pairs)} AOI x task pairs; dropped: " + (", ".join(
                  f"{t.aoi}/{t.task} ({t.observability})" for t in dropped.itertuples()) or "none") +
              ". Dropped pairs are still in results.csv and the curves, marked not observable.", ""]
    # (e)
    lines += ["## (e) Pool and test sizes", "",
              "Per AOI x task: chips in the AOI, the training pool ('all' budget) and test chips of the shared split "
              "(mean over split seeds); representations that see fewer test chips are listed with their count.", "",
              "| AOI | task | chips | pool | test chips | fewer test chips |", "|---|---|---|---|---|---|"]
    n_chips = settings.get("chips_per_aoi", {})
    for (aoi, task), g in r[r.budget == "all"].groupby(["aoi", "task"], sort=False):
        split_n = int(g.n_test_split.max())
        fewer = [f"{t.series} {int(t.n_test)}" for t in g.itertuples() if int(t.n_test) < split_n]
        lines.append(f"| {aoi} | {task} | {n_chips.get(aoi, '-')} | {int(g.n_pool.max())} | {split_n} | "
                     f"{', '.join(fewer) or '-'} |")
    if dropout is not None and not dropout.empty:
        lines += ["", f"## Missing data at inference ({dropout.budget.iloc[0]} labels)", "", dropout_markdown(dropout, header=False)]
    return "\n".join(lines) + "\n"


def dropout_markdown(df: pd.DataFrame, header: bool = True) -> str:
    """Pivot of the dropout table: rows AOI x task x representation, columns what is missing (main score, change)."""
    out = ["# Modality and channel dropout at inference", ""] if header else []
    if df.empty:
        return "\n".join(out + ["No results."]) + "\n"
    missing = list(dict.fromkeys(df.missing))
    metric, _ = main_metric(df.columns)
    out.append("| AOI | task | repr. | " + " | ".join(missing) + " |")
    out.append("|---|---|---|" + "---|" * len(missing))
    for (aoi, task, rep), g in df.groupby(["aoi", "task", "representation"], sort=False):
        cells = []
        for m in missing:
            row = g[g.missing == m]
            if not len(row):
                cells.append("")
            elif m == "none":
                cells.append(_fmt(row[f"{metric}_mean"].iloc[0]))
            else:
                cells.append(f"{_fmt(row[f'{metric}_mean'].iloc[0])} ({row[f'{metric}_change'].iloc[0]:+.3f})")
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


def docs_page(summary: str, run: dict, command: str) -> str:
    """docs/EVALUATION.md: what the numbers are measured on, how to reproduce them, then the generated report."""
    simulated = "SIMULATED" in summary.splitlines()[0] if summary else False
    head = ["# Few-shot evaluation", "",
            "This page is written by the code (`" + command.strip() + "`); do not edit it by hand.", ""]
    if simulated:
        head += ["**Everything on this page is measured on SIMULATED data**: the five procedural demo AOIs that "
                 "`make run` builds (`data.simulate`, seed 0), with checkpoints pretrained on other simulated seeds. "
                 "The simulator's sensor models are calibrated against the real samples in `../shared/data` "
                 "(see [CALIBRATION.md](CALIBRATION.md)); the numbers say how the method does on this simulator, "
                 "not on Sentinel data.", ""]
    head += ["Representations: `pretrained <key>` are the checkpoint's embeddings (per modality and fused); "
             "`random-init fused` is the same architecture untrained; the cheap baselines (`core/features.py`) are "
             "`stats` (per-channel mean, std, 10/50/90 % quantiles), `hist` (16-bin per-channel histograms over "
             "the registry range), `hist-q` (16 equal-mass bins), `texture` (gradient statistics at two scales and "
             "statistics of per-pixel channel differences such as VV-VH) and `combined` (all four side by side). "
             "Every representation is fitted with the same estimator on the same draws and scored on the same "
             "test chips.", "",
             f"Run time: {run.get('seconds', '?')} s on this machine for {len(run.get('aois', []))} AOIs; pool per "
             f"AOI (the 'all' budget): {run.get('pool_per_aoi', {})}. Budgets up to 1,000 fit in one AOI's pool, so "
             "no pool larger than one AOI is needed.", ""]
    body = "\n".join(("#" + line) if line.startswith("#") else line for line in summary.splitlines()[1:])
    return "\n".join(head) + "\n" + body.lstrip("\n") + "\n"
