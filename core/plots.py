"""The evaluation's learning-curve figures (matplotlib, headless): one PNG per AOI x task."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from core.protocol import EXTERNAL, HANDCRAFTED, PRETRAINED, RANDOM_INIT, main_metric
from core.report import series_order
from data.atomic import atomic_write_bytes


def plot_curves(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per AOI x task: R^2 vs labels per representation and baseline (band: ± std); pretrained 'all' dashed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = {"s2rgb": "tab:green", "s1amp": "tab:blue", "coh": "tab:purple", "fused": "black", "stats": "tab:orange",
               "hist": "tab:red", "hist-q": "tab:pink", "texture": "tab:brown", "combined": "tab:olive"}
    styles = {PRETRAINED: "-", EXTERNAL: "-", RANDOM_INIT: ":", HANDCRAFTED: "-."}
    paths = []
    results = results.copy()
    results["budget"] = results["budget"].astype(str)
    metric, label = main_metric(results.columns)
    for (aoi, task), g in results.groupby(["aoi", "task"], sort=False):
        fig = Figure(figsize=(6.4, 4.2), dpi=100)  # no pyplot: no global backend or figure registry
        ax = fig.subplots()
        for s in series_order(g):
            h = g[g.series == s]
            model, rep = h.model.iloc[0], h.representation.iloc[0]
            curve = h[h.budget != "all"]
            x = curve.n_train.to_numpy()
            m, sd = curve[f"{metric}_mean"].to_numpy(), curve[f"{metric}_std"].to_numpy()
            col = colours.get(rep, "tab:cyan" if model == EXTERNAL else "grey")
            ax.plot(x, m, styles.get(model, "--"), marker="o", ms=3, color=col, label=s)
            ax.fill_between(x, m - sd, m + sd, color=col, alpha=0.10)
            full = h[h.budget == "all"]
            if len(full) and model == PRETRAINED:
                ax.axhline(float(full[f"{metric}_mean"].iloc[0]), ls="--", lw=0.8, color=col)
        ax.set_xscale("log")
        ax.set_xlabel("labelled chips")
        ax.set_ylabel(f"{label} (blocked test split)")
        sim = " (simulated)" if bool(g.simulated.iloc[0]) else ""
        obs = "" if bool(g.observable.iloc[0]) else " - not observable"
        ax.set_title(f"{aoi}{sim}: {task}{obs}", fontsize=10)
        lo = np.nanmin(g[f"{metric}_mean"].to_numpy()) if len(g) else 0
        ax.set_ylim(max(-0.5, min(0.0, lo - 0.05)), 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right", ncol=2)
        fig.tight_layout()
        path = out_dir / f"{aoi}_{task}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
