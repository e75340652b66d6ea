"""Helpers of the few-shot mapping page ("Label & map") and of labelling from search results.

Label sets live in the workspace (`data.labelsets`) and every change is saved at once, so a reload or a
server restart finds them again. Fitting, suggestions and exports are `core.mapping`'s; this module wires
them to widgets: the active label set, map clicks as labels, the accept/reject grid, the map's colours
before and after a model, and the download buttons.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Collection, Sequence

import matplotlib
import numpy as np
import pandas as pd
import streamlit as st

from core.grid import ChipGrid
from core.mapping import EXPORT_FORMATS, MapResult, MappingError, detections, export_label_set, export_map, map_provenance
from core.representations import RepresentationError
from data.labelsets import LabelSet, LabelSetError, list_label_sets, load_label_set, save_label_set
from data.store import ChipStore
from data.workspace import Workspace
from ui import cache, gallery, maps, rastermap, state
from ui.errors import UserError

BRUSH_KEY = "map_brush"
REMOVE = "remove"
MESSAGE_KEY = "map_message"
NEW_NAME_KEY = "map_new_name"
REP_KEY, EST_KEY, THRESHOLD_KEY, VIEW_KEY = "map_rep", "map_est", "map_threshold", "map_view"
VIEWS = ("prediction", "detections")
SUGGESTIONS = 12
_CLASS_RGBA = {"present": maps.POSITIVE_RGBA, "absent": maps.NEGATIVE_RGBA}
_MIME = {"geojson": "application/geo+json", "geoparquet": "application/vnd.apache.parquet", "csv": "text/csv"}
_SUFFIX = {"geojson": "geojson", "geoparquet": "parquet", "csv": "csv"}


# ----------------------------------------------------------------------------------------- state
def labelset_key(aoi: str) -> str:
    """Session key (and selectbox key) of the active label set of an AOI; the similarity page reads it too."""
    return f"map_labelset::{aoi}"


def active_key(aoi: str) -> str:
    """Session key that remembers the active label set across pages (widget keys are dropped off their page)."""
    return f"map_active::{aoi}"


def chip_key(aoi: str) -> str:
    """Session key of the chip last clicked on the mapping page (shown beside the map, kept in the URL)."""
    return f"map_chip::{aoi}"


def raster_key(aoi: str) -> str:
    """Widget key of the map (stable: zoom and pan survive reruns; a click is a trigger, so the same chip
    clicked twice registers twice)."""
    return f"map_raster::{aoi}"


def restore_from_url(aoi: str, label_sets: Sequence[str], representations: Sequence[str], estimators: Sequence[str],
                     chip_ids: Collection[str]) -> None:
    """A reload or a shared link restores the label set, representation, estimator, threshold and chip."""
    state.from_url("labels", labelset_key(aoi), allowed=label_sets)
    state.from_url("rep", REP_KEY, allowed=representations)
    state.from_url("est", EST_KEY, allowed=estimators)
    state.from_url("thr", THRESHOLD_KEY, cast=_threshold)
    state.from_url("chip", chip_key(aoi), allowed=chip_ids)


def _threshold(text: str) -> float:
    value = round(float(text), 2)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def brush_options(label_set: LabelSet) -> list[str]:
    """What a map click does: label the chip with one of the set's classes, or remove its label."""
    classes = list(label_set.classes)
    if label_set.kind == "binary":
        classes = ["present", "absent"]  # the class being mapped first
    return classes + [REMOVE]


# ----------------------------------------------------------------------------------------- label sets
def names(root: str, aoi: str) -> list[str]:
    """The label sets saved for an AOI."""
    return list_label_sets(Workspace(root), aoi)


def choose_default(aoi: str, label_sets: Sequence[str]) -> None:
    """Before the label set picker: keep the set chosen earlier in the session (or on another page), else the first."""
    key = labelset_key(aoi)
    if st.session_state.get(key) not in label_sets:
        remembered = st.session_state.get(active_key(aoi))
        st.session_state[key] = remembered if remembered in label_sets else (label_sets[0] if label_sets else None)


def active(root: str, aoi: str) -> LabelSet | None:
    """The active label set of an AOI (read from the workspace), or None when none is chosen."""
    name = st.session_state.get(labelset_key(aoi))
    if not name or name not in names(root, aoi):
        return None
    st.session_state[active_key(aoi)] = name
    return load_label_set(Workspace(root), aoi, name)


def create(root: str, aoi: str) -> None:
    """Button callback: create an empty binary label set under the typed name and make it active."""
    name = str(st.session_state.get(NEW_NAME_KEY, "")).strip()
    try:
        if name in names(root, aoi):
            raise LabelSetError(f"a label set {name!r} already exists for this AOI: pick it in the list")
        save_label_set(Workspace(root), LabelSet(aoi, name), store=cache.store(root, aoi))
    except LabelSetError as e:
        st.session_state[MESSAGE_KEY] = str(e)
        return
    st.session_state[labelset_key(aoi)] = st.session_state[active_key(aoi)] = name
    st.session_state[NEW_NAME_KEY] = ""


def apply_label(root: str, aoi: str, name: str, chip_ids: Sequence[str], label: str, source: str) -> LabelSet:
    """Label chips (or remove their labels with REMOVE) in a saved label set, and save it at once."""
    ws = Workspace(root)
    label_set = load_label_set(ws, aoi, name)
    label_set = label_set.remove(chip_ids) if label == REMOVE else label_set.add(chip_ids, label, source=source)
    save_label_set(ws, label_set, store=cache.store(root, aoi))
    return label_set


def _apply_safely(root: str, aoi: str, name: str | None, chip_ids: Sequence[str], label: str, source: str) -> None:
    # Callbacks run before the page: an error here is kept and shown by the page, never as a traceback.
    if not name:
        st.session_state[MESSAGE_KEY] = "Choose or create a label set first."
        return
    try:
        apply_label(root, aoi, name, chip_ids, label, source)
    except LabelSetError as e:
        st.session_state[MESSAGE_KEY] = str(e)


def on_raster_click(root: str, aoi: str, key: str, grid: ChipGrid) -> None:
    """Map click callback: the chip under the click gets the brush's class (or loses its label); a click off the
    chips is ignored."""
    pos = rastermap.clicked_position(grid, key)
    if pos is None:
        return
    chip = str(grid.chip_ids[pos])
    _apply_safely(root, aoi, st.session_state.get(labelset_key(aoi)), [chip], st.session_state.get(BRUSH_KEY, "present"),
                  "map")
    st.session_state[chip_key(aoi)] = chip


def on_review(root: str, aoi: str, name: str, chip_id: str, label: str, source: str) -> None:
    """Accept/reject button callback: label one chip of a gallery."""
    _apply_safely(root, aoi, name, [chip_id], label, source)


def show_message() -> None:
    """The message a callback left (a refused name, an unknown chip), once."""
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        st.warning(message)


def fittable(label_set: LabelSet) -> bool:
    """Whether the labels can train a map: two classes labelled (3 fractions for a fraction set)."""
    counts = label_set.counts()
    if label_set.kind == "fraction":
        return counts["labelled"] >= 3
    return sum(v > 0 for v in counts.values()) >= 2


def fit(root: str, aoi: str, model: str, representation: str, estimator: str, label_set: LabelSet) -> MapResult | None:
    """The label set's map on a representation, None until it can be trained; core's refusals are shown as a warning
    (not raised: the map stays on the page so that the analyst can label the chips it asks for)."""
    if not fittable(label_set):
        return None
    try:
        return cache.label_map(root, aoi, model, representation, estimator, label_set)
    except MappingError as e:
        st.warning(f"The map cannot be trained yet: {e}")
        return None


# ----------------------------------------------------------------------------------------- map colours
def first_component(X: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each chip's coordinate on the embeddings' main axis of variation (PCA 1), NaN where not valid."""
    out = np.full(len(X), np.nan)
    rows = np.flatnonzero(valid & np.isfinite(X).all(axis=1))
    if rows.size < 2:
        return out
    Z = X[rows].astype(np.float64)
    Z -= Z.mean(axis=0)
    # The D x D covariance is small (D ~ 128) even at 150 K chips: its top eigenvector is the axis.
    _, vecs = np.linalg.eigh(Z.T @ Z)
    out[rows] = Z @ vecs[:, -1]
    return out


def map_colours(result: MapResult | None, threshold: float, view: str, X: np.ndarray, valid: np.ndarray,
                label_set: LabelSet, lookup: dict[str, int]) -> tuple[np.ndarray, maps.ColorScale, str, str]:
    """(values, colour scale, tooltip name, legend) of the map: prediction or detections with a model; before one,
    the similarity to the last labelled chip, or the embeddings' main axis while nothing is labelled."""
    if result is not None and view == "detections":
        det = detections(result, threshold)
        values = np.where(result.valid, det.astype(float), np.nan)
        scale = maps.color_scale("similarity", 0.0, 1.0, title="detected")
        return values, scale, "detected", f"Yellow: detected (prediction ≥ {threshold:.2f}); purple: not detected."
    if result is not None:
        title = {"binary": "P(present)", "fraction": "predicted fraction"}.get(result.kind, "P(predicted class)")
        scale = maps.color_scale("similarity", 0.0, 1.0, title=title)
        return result.predictions, scale, title, f"Colour: {title} from the model trained on your labels."
    ids = label_set.chip_ids
    known = [c for c in ids if c in lookup]
    if known:
        last = known[-1]
        norms = np.linalg.norm(X, axis=1)
        x = X[lookup[last]] / max(float(norms[lookup[last]]), 1e-12)
        values = np.where(valid, X @ x / np.maximum(norms, 1e-12), np.nan)
        scale = maps.color_scale("similarity", *maps.robust_range(values), title=f"similarity to {last}")
        return values, scale, "similarity", (f"No model yet (label both classes to train one). Colour: similarity to the "
                                             f"last labelled chip {last}.")
    values = first_component(X, valid)
    scale = maps.color_scale("similarity", *maps.robust_range(values), title="embedding axis 1")
    return values, scale, "embedding axis 1", ("No labels yet. Colour: the embeddings' main axis of variation (PCA 1); "
                                               "chips of similar colour look alike to the model.")


ALL_AOIS_KEY = "map_all_aois"
OVERVIEW_COLUMNS = 2


def overview_key(aoi: str) -> str:
    """Widget key of one AOI's map under "Apply to all AOIs"."""
    return f"map_overview::{aoi}"


def show_all_aois(root: str, aois: Sequence[str], aoi: str, model: str, representation: str, estimator: str,
                  label_set: LabelSet, result: MapResult, threshold: float) -> None:
    """The map applied to every AOI: detections per AOI at the threshold (a table) and one raster map per AOI.

    A raster per AOI (one pixel per chip, ~0.1 MB and ~40 ms at 150 K chips) rather than pydeck dots: at 150 K
    chips the dots of the capped 20 K highest detections were 5.5 MB of JSON per rerun (1 s to build), and the
    chip footprints they need took 6 s per AOI to prepare.
    """
    rows, rasters, skipped = [], [], []
    for a in aois:
        try:
            grid = cache.grid(root, a)
            emb = cache.embeddings(root, a, model)
            if a == aoi:
                predictions = result.predictions   # the fitted AOI itself: exactly the map above
            else:
                predictions = cache.applied_map(root, aoi, model, representation, estimator, label_set, a)
        except (UserError, KeyError, RepresentationError):
            skipped.append(a)   # no embeddings (or no such representation) there yet: the others are still mapped
            continue
        # core's detection rule, on this AOI's predictions (NaN = no vector = never a detection).
        det = detections(dataclasses.replace(result, predictions=predictions, valid=np.isfinite(predictions)),
                         threshold)
        simulated = cache.store(root, a).meta.simulated
        rows.append({"AOI": a, "data": "simulated" if simulated else "real",
                     "chips mapped": int(np.isfinite(predictions).sum()), "detections": int(det.sum()),
                     "share": float(det.mean()) if len(det) else 0.0})
        # Map rows are embedding rows; lay them out by store position (found by id: the orders need not match).
        pos = pd.Index(grid.chip_ids).get_indexer(np.asarray(emb.chip_ids).astype(str))
        values = np.full(len(grid), np.nan)
        values[pos[pos >= 0]] = np.asarray(predictions, dtype=np.float64)[pos >= 0]
        rasters.append((a, grid, values, simulated))
    st.subheader("Applied to all AOIs")
    if not rows:
        st.info("No AOI has embeddings of this model yet: build them on the Home page.")
        return
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"share": st.column_config.ProgressColumn("share", format="percent", min_value=0.0,
                                                                          max_value=1.0)})
    # Below the threshold every chip gets the darkest colour (the scale is clipped): the bright chips are detections.
    scale = maps.color_scale("similarity", float(threshold), 1.0, title="prediction")
    units = f"detections ≥ {threshold:.2f}; darkest: below"
    for start in range(0, len(rasters), OVERVIEW_COLUMNS):
        cols = st.columns(OVERVIEW_COLUMNS)
        for col, (a, grid, values, simulated) in zip(cols, rasters[start:start + OVERVIEW_COLUMNS]):
            with col:
                st.caption(f"**{a}**: {len(grid):,} chips")
                rastermap.score_map(grid, values, scale, units=units, key=overview_key(a), height=260,
                                    note="simulated AOI" if simulated else "")
    simulated = set(table["data"]) == {"simulated"}
    st.caption(f"Detections at threshold {threshold:.2f} of the map trained on {aoi}'s labels ({label_set.name}), "
               f"applied to every AOI: one map per AOI, one pixel per chip, coloured by the prediction (threshold ← → 1;"
               f" chips below the threshold darkest, grey: no embedding)." + (" Simulated AOIs." if simulated else ""))
    if skipped:
        st.caption(f"Not mapped (no {representation} embeddings of this model yet): {', '.join(skipped)}.")


MAX_LABEL_MARKS = 5000
"""At most this many labelled chips are marked on the map (the latest); each is a small element in the browser."""


def marks(grid: ChipGrid, lookup: dict[str, int], label_set: LabelSet, suggested: Sequence[int] = (),
          clicked: str | None = None) -> tuple[list[dict], list[dict]]:
    """(marks, legend keys) of the map: labelled chips filled in their class colour, the suggested chips (dashed,
    numbered) and the last clicked chip; `lookup`: chip id -> row of the map's values (= store position)."""
    table = label_set.labels.tail(MAX_LABEL_MARKS)
    table = table.assign(pos=table["chip_id"].astype(str).map(lookup)).dropna(subset=["pos"])
    out: list[dict] = []
    keys: list[dict] = []
    palette = _palette(label_set)
    for cls, rgba in palette.items():
        here = table[table["label"] == cls]
        out += maps.chip_marks(grid, here["pos"].astype(np.int64), "label", [cls] * len(here), color=rgba[:3])
        keys.append({"text": cls, "kind": "label", "color": list(rgba[:3])})
    if not palette and len(table):
        # A fraction label set has no classes: one neutral mark per labelled chip, its value in the hover title.
        out += maps.chip_marks(grid, table["pos"].astype(np.int64), "label", [f"{v:.2f}" for v in table["value"]])
        keys.append({"text": "labelled", "kind": "label"})
    out += maps.chip_marks(grid, list(suggested), "suggested", [str(i + 1) for i in range(len(suggested))])
    if len(suggested):
        keys.append({"text": "label next", "kind": "suggested"})
    if clicked in lookup:
        out += maps.chip_marks(grid, [lookup[clicked]], "clicked")
        keys.append({"text": "last clicked", "kind": "clicked"})
    return out, keys


def _palette(label_set: LabelSet) -> dict[str, tuple]:
    if label_set.kind == "binary":
        return dict(_CLASS_RGBA)
    if label_set.kind == "fraction":
        return {}
    cmap = matplotlib.colormaps["tab10"]
    return {c: tuple(int(v * 255) for v in cmap(i % 10)[:3]) + (255,) for i, c in enumerate(label_set.classes)}


def legend_classes(label_set: LabelSet) -> str:
    """Legend of the marks (also under the map as coloured keys)."""
    if label_set.kind == "binary":
        return "Marks: green = present, red = absent, dashed cyan = suggested next, magenta = last clicked."
    return "Marks: labelled chips in their class colour, dashed cyan = suggested next, magenta = last clicked."


# ----------------------------------------------------------------------------------------- galleries
def review_grid(store: ChipStore, chip_ids: Sequence[str], positions: Sequence[int], captions: Sequence[str], *,
                modality: str, root: str, label_set: LabelSet, source: str, key_prefix: str, per_row: int = 6) -> None:
    """Thumbnails with one button per class under each (accept = present, reject = absent for a binary set)."""
    thumbs = gallery.thumbnails(store, positions, modality)
    classes = brush_options(label_set)[:-1]
    for start in range(0, len(thumbs), per_row):
        cols = st.columns(per_row)
        for col, thumb, chip, caption in zip(cols, thumbs[start:start + per_row], chip_ids[start:start + per_row],
                                             captions[start:start + per_row]):
            current = label_set.label_of(chip)
            col.image(thumb, caption=f"{caption}\n{chip}" + (f"\nlabelled: {current}" if current is not None else ""),
                      width=110, clamp=True)
            for cls in classes:
                icon = {"present": "✓ ", "absent": "✗ "}.get(cls, "")
                col.button(f"{icon}{cls}", key=f"{key_prefix}_{cls}_{chip}", width="stretch",
                           type="primary" if current == cls else "secondary",
                           on_click=on_review, args=(root, label_set.aoi, label_set.name, chip, cls, source))


def results_review(root: str, aoi: str, store: ChipStore, results, per_row: int = 6, limit: int = 12) -> None:
    """Accept/reject the search results of this AOI into a label set (the one active on Label & map by default)."""
    st.subheader("Label these results")
    sets = names(root, aoi)
    if not sets:
        st.caption("Create a label set on the Label & map page to label search results here.")
        return
    key = f"sim_labelset::{aoi}"
    if st.session_state.get(key) not in sets:
        remembered = st.session_state.get(active_key(aoi))
        st.session_state[key] = remembered if remembered in sets else sets[0]
    name = st.selectbox("Label set", sets, key=key, help="Saved in the workspace; train it on the Label & map page.")
    st.session_state[active_key(aoi)] = name
    label_set = load_label_set(Workspace(root), aoi, name)
    here = results[results["aoi"] == aoi].head(limit)
    review_grid(store, here["chip_id"].tolist(), here["position"].tolist(), [f"#{r}" for r in here["rank"]],
                modality=thumbnail_modalities(store)[0], root=root, label_set=label_set, source="gallery",
                key_prefix="sim_lab", per_row=per_row)


def thumbnail_modalities(store: ChipStore) -> list[str]:
    """Modalities the store holds, optical first (what a person recognises best)."""
    return [m for m in ("s2rgb", "s1amp", "coh") if store.has_modality(m)]


# ----------------------------------------------------------------------------------------- exports
def _map_bytes(result: MapResult, store: ChipStore, label_set: LabelSet, threshold: float, checkpoint, modalities,
               fmt: str, detections_only: bool, external: dict | None = None) -> bytes:
    provenance = map_provenance(checkpoint=checkpoint, representation=result.representation, modalities=modalities,
                                label_set=label_set, result=result, threshold=threshold, store=store, external=external)
    return export_map(result, store, label_set, threshold=threshold, provenance=provenance, fmt=fmt,
                      detections_only=detections_only)


def export_buttons(result: MapResult | None, store: ChipStore, label_set: LabelSet, threshold: float, checkpoint,
                   modalities: Sequence[str], detections_only: bool, external: dict | None = None) -> None:
    """Download buttons for the map (or its detections) and the labels; files are made on click (deferred);
    `external`: the provenance of an external representation the map was trained on."""
    stem = f"{label_set.aoi}-{label_set.name}"
    cols = st.columns(2 * len(EXPORT_FORMATS))
    for i, fmt in enumerate(EXPORT_FORMATS):
        what = "detections" if detections_only else "map"
        if result is not None:
            data = functools.partial(_map_bytes, result, store, label_set, threshold, checkpoint, list(modalities), fmt,
                                     detections_only, external)
            cols[i].download_button(f"{what.capitalize()} ({fmt})", data, f"{stem}-{what}.{_SUFFIX[fmt]}", _MIME[fmt],
                                    key=f"map_dl_map_{fmt}", on_click="ignore")
        if len(label_set):
            cols[len(EXPORT_FORMATS) + i].download_button(
                f"Labels ({fmt})", functools.partial(export_label_set, label_set, store, fmt),
                f"{stem}-labels.{_SUFFIX[fmt]}", _MIME[fmt], key=f"map_dl_labels_{fmt}", on_click="ignore")
