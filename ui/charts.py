"""Altair charts of the app: the UMAP scatter with selections, learning curves, predicted vs true."""

from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from data.modalities import LABEL_TASKS

POINT_SELECTION = "picked"
BRUSH_SELECTION = "brush"
_TASK_SCHEMES = {"vegetation": "greens", "builtup": "reds", "cropland": "yelloworangebrown", "water": "blues"}


def embedding_scatter(points: pd.DataFrame, color: str, *, tooltip: Sequence[str], height: int = 520) -> alt.Chart:
    """UMAP scatter (columns x, y, chip_id, the colour column): drag a box or click a point to select."""
    if color in LABEL_TASKS:
        enc = alt.Color(
            f"{color}:Q",
            scale=alt.Scale(scheme=_TASK_SCHEMES[color], domain=[0, 1]),
            legend=alt.Legend(title=f"{color} fraction", format=".0%"),
        )
    else:
        enc = alt.Color(f"{color}:N", legend=alt.Legend(title=color))
    brush = alt.selection_interval(name=BRUSH_SELECTION, encodings=["x", "y"])
    picked = alt.selection_point(name=POINT_SELECTION, fields=["chip_id"], on="click", clear="dblclick")
    return (
        alt.Chart(points)
        .mark_circle(size=28, opacity=0.85)
        .encode(
            x=alt.X("x:Q", title="UMAP 1", axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("y:Q", title="UMAP 2", axis=alt.Axis(labels=False, ticks=False)),
            color=alt.condition(brush, enc, alt.value("#d0d0d0")),
            tooltip=list(tooltip),
        )
        .add_params(brush, picked)
        .properties(height=height)
    )


def selected_chip_ids(event: object, points: pd.DataFrame) -> list[str]:
    """Chip ids selected in an embedding_scatter: the clicked point, else the points inside the box."""
    selection = getattr(event, "selection", None)
    if selection is None and isinstance(event, dict):
        selection = event.get("selection")
    if not selection:
        return []
    picked = selection.get(POINT_SELECTION) or []
    ids = [str(p["chip_id"]) for p in picked if isinstance(p, dict) and "chip_id" in p]
    if ids:
        return ids
    box = selection.get(BRUSH_SELECTION) or {}
    if "x" in box and "y" in box:
        (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
        inside = points["x"].between(x0, x1) & points["y"].between(y0, y1)
        return points.loc[inside, "chip_id"].astype(str).tolist()
    return []


def learning_curve_chart(curves: pd.DataFrame, full_score: float | None, metric: str, height: int = 360) -> alt.LayerChart:
    """Score vs label budget (log axis): one line with a ± 1 std band per series, and the full-label line.

    `curves` has columns budget, series, mean, lo, hi.
    """
    base = alt.Chart(curves).encode(
        x=alt.X("budget:Q", scale=alt.Scale(type="log"), title="labelled chips (budget)"),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", columns=2)),
    )
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("lo:Q", title=metric), y2="hi:Q")
    line = base.mark_line(point=True).encode(
        y="mean:Q",
        tooltip=[
            alt.Tooltip("series:N"),
            alt.Tooltip("budget:Q"),
            alt.Tooltip("mean:Q", format=".3f"),
            alt.Tooltip("lo:Q", format=".3f", title="mean - 1 std"),
            alt.Tooltip("hi:Q", format=".3f", title="mean + 1 std"),
        ],
    )
    layers = [band, line]
    if full_score is not None and np.isfinite(full_score):
        rule = pd.DataFrame({"score": [full_score], "label": [f"all labels: {full_score:.3f}"]})
        layers.append(alt.Chart(rule).mark_rule(strokeDash=[6, 4], color="#444").encode(y="score:Q"))
        layers.append(
            alt.Chart(rule).mark_text(align="left", dx=4, dy=-6, color="#444").encode(y="score:Q", x=alt.value(4), text="label:N")
        )
    return alt.layer(*layers).properties(height=height)


def predicted_vs_true_chart(y_true: np.ndarray, y_pred: np.ndarray, task: str, height: int = 360,
                            predicted_title: str | None = None) -> alt.LayerChart:
    """Scatter of predicted vs true label fractions (or P(present), titled so) on held-out chips, with y = x."""
    frame = pd.DataFrame({"true": np.asarray(y_true, float), "predicted": np.asarray(y_pred, float)})
    lo = float(np.nanmin([frame.min().min(), 0.0]))
    hi = float(np.nanmax([frame.max().max(), 1.0]))
    dots = (
        alt.Chart(frame)
        .mark_circle(size=22, opacity=0.6)
        .encode(
            x=alt.X("true:Q", title=f"true {task} fraction", scale=alt.Scale(domain=[lo, hi])),
            y=alt.Y("predicted:Q", title=predicted_title or f"predicted {task} fraction", scale=alt.Scale(domain=[lo, hi])),
            tooltip=[alt.Tooltip("true:Q", format=".3f"), alt.Tooltip("predicted:Q", format=".3f")],
        )
    )
    diag = alt.Chart(pd.DataFrame({"true": [lo, hi], "predicted": [lo, hi]})).mark_line(color="#888", strokeDash=[4, 4]).encode(
        x="true:Q", y="predicted:Q"
    )
    return alt.layer(diag, dots).properties(height=height)
