"""Altair charts of the app: the UMAP scatter with selections, learning curves, predicted vs true, calibration,
and colour bars (numbers, units and what grey means) for the chip maps."""

from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from data.modalities import LABEL_TASKS
from ui.maps import NAN_RGBA, ColorScale

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


def selection_state(event: object, points: pd.DataFrame) -> tuple[list[str], bool]:
    """(chip ids selected in an embedding_scatter, whether a selection is active): the clicked point, else the
    points inside the box. A box over empty space is active with no ids ("0 selected")."""
    selection = getattr(event, "selection", None)
    if selection is None and isinstance(event, dict):
        selection = event.get("selection")
    if not selection:
        return [], False
    picked = selection.get(POINT_SELECTION) or []
    ids = [str(p["chip_id"]) for p in picked if isinstance(p, dict) and "chip_id" in p]
    if ids:
        return ids, True
    box = selection.get(BRUSH_SELECTION) or {}
    if "x" in box and "y" in box:
        (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
        inside = points["x"].between(x0, x1) & points["y"].between(y0, y1)
        return points.loc[inside, "chip_id"].astype(str).tolist(), True
    return [], False


def selected_chip_ids(event: object, points: pd.DataFrame) -> list[str]:
    """Chip ids selected in an embedding_scatter: the clicked point, else the points inside the box."""
    return selection_state(event, points)[0]


def learning_curve_chart(curves: pd.DataFrame, full_score: float | None, metric: str, height: int = 360,
                         current_budget: float | None = None) -> alt.LayerChart:
    """Score vs label budget (log axis): one line with a ± 1 std band per series, the full-label line, and a
    vertical mark at the budget chosen on the page.

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
    if current_budget is not None and np.isfinite(current_budget) and current_budget > 0:
        mark = pd.DataFrame({"budget": [float(current_budget)]})
        layers.append(alt.Chart(mark).mark_rule(color="#d62728", strokeWidth=2).encode(x="budget:Q"))
        layers.append(alt.Chart(mark).mark_text(align="left", dx=4, baseline="top", color="#d62728")
                      .encode(x="budget:Q", y=alt.value(4), text=alt.value(f"your budget: {current_budget:,.0f}")))
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


def calibration_chart(table: pd.DataFrame, task: str, threshold: float, height: int = 360) -> alt.LayerChart:
    """Calibration of a presence probability (core.diagnostics.calibration_table): mean predicted probability per
    bin against the observed share of present chips, dot size = chips in the bin; on y = x it is calibrated."""
    what = f"{task} > {threshold:g}"
    axis = alt.Scale(domain=[0, 1])
    dots = (
        alt.Chart(table)
        .mark_circle(opacity=0.8, color="#1f77b4")
        .encode(
            x=alt.X("predicted:Q", title=f"predicted P({what})", scale=axis, axis=alt.Axis(format=".0%")),
            y=alt.Y("observed:Q", title=f"observed share of chips with {what}", scale=axis, axis=alt.Axis(format=".0%")),
            size=alt.Size("chips:Q", title="chips in bin", scale=alt.Scale(range=[30, 400])),
            tooltip=[alt.Tooltip("bin_lo:Q", format=".1f", title="from"), alt.Tooltip("bin_hi:Q", format=".1f", title="to"),
                     alt.Tooltip("predicted:Q", format=".2f"), alt.Tooltip("observed:Q", format=".2f"),
                     alt.Tooltip("chips:Q")],
        )
    )
    line = dots.mark_line(color="#1f77b4", opacity=0.5).encode(size=alt.value(1.5))
    diag = alt.Chart(pd.DataFrame({"predicted": [0.0, 1.0], "observed": [0.0, 1.0]})).mark_line(
        color="#888", strokeDash=[4, 4]).encode(x="predicted:Q", y="observed:Q")
    return alt.layer(diag, line, dots).properties(height=height)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def colorbar_chart(scale: ColorScale, title: str, unit: str, grey: str, *, percent: bool = False,
                   width: int = 320) -> alt.HConcatChart:
    """A map's colour bar with numbers on its axis, the unit in its title, and a grey swatch saying what grey means.

    `percent` labels a 0..1 scale as percentages (fractions of a chip).
    """
    n = 64
    edges = np.linspace(scale.lo, scale.hi, n + 1)
    idx = np.linspace(0, len(scale.lut) - 1, n).round().astype(int)
    bar = pd.DataFrame({"x0": edges[:-1], "x1": edges[1:], "colour": [_hex(scale.lut[i]) for i in idx]})
    axis = alt.Axis(format=".0%" if percent else "~g", tickCount=5, title=f"{title} ({unit})" if unit else title)
    ramp = (
        alt.Chart(bar)
        .mark_rect()
        .encode(x=alt.X("x0:Q", axis=axis, scale=alt.Scale(domain=[scale.lo, scale.hi], nice=False, zero=False)),
                x2="x1:Q", color=alt.Color("colour:N", scale=None, legend=None))
        .properties(width=width, height=14)
    )
    swatch = pd.DataFrame({"x": [0]})
    nodata = alt.layer(
        alt.Chart(swatch).mark_rect(color=_hex(NAN_RGBA), width=14, height=14).encode(x=alt.X("x:Q", axis=None)),
        alt.Chart(swatch).mark_text(align="left", dx=10, fontSize=12).encode(x=alt.X("x:Q", axis=None),
                                                                               text=alt.value(f"grey: {grey}")),
    ).properties(width=240, height=14)
    return alt.hconcat(ramp, nodata, spacing=24).configure_view(stroke=None)
