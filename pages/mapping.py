"""Label & map: label a few chips of your scene, train a probe on the embeddings, map the whole AOI, export."""

from __future__ import annotations

import functools

import numpy as np
import streamlit as st

from core.diagnostics import constant_prediction
from core.mapping import MAP_ESTIMATORS, detections
from core.representations import external_names, external_provenance
from core.search import SPACES, space_name
from ui import cache, labelling, maps, rastermap, state
from ui.errors import UserError, page_guard

state.require_entrypoint("pages/mapping.py")


def _unit(title: str) -> str:
    """The unit of the map's colour scale, from its title (see labelling.map_colours)."""
    if title == "detected":
        return "1 = detected, 0 = not"
    if title.startswith("P("):
        return "probability"
    if title == "predicted fraction":
        return "share of the chip"
    if title.startswith("similarity"):
        return "cosine similarity of the embeddings"
    return "position along the main axis, no unit"


ctx = state.context()
st.title("Label & map")
st.caption("Click chips on the map to label them: the map retrains on every label. Then label the suggested chips, "
           "set a threshold and export.")

with page_guard("label & map"):
    if ctx.aoi is None:
        raise UserError("This workspace holds no AOI yet.", "Build the simulated AOIs on the Home page.", "info")
    model = cache.model_name(ctx.checkpoint)
    store = cache.store(ctx.root, ctx.aoi)
    grid = cache.grid(ctx.root, ctx.aoi)
    emb = cache.embeddings(ctx.root, ctx.aoi, model)
    lookup = cache.chip_lookup(ctx.root, ctx.aoi, model)
    externals = external_names(ctx.workspace, ctx.aoi)  # embeddings brought by the user (#17)
    reps = [s for s in SPACES if s in emb.vectors and emb.get(s)[1].any()] + externals
    names = labelling.names(ctx.root, ctx.aoi)
    labelling.restore_from_url(ctx.aoi, names, reps, MAP_ESTIMATORS, lookup)
    labelling.show_message()

    c1, c2 = st.columns([3, 2])
    set_key = labelling.labelset_key(ctx.aoi)
    labelling.choose_default(ctx.aoi, names)
    c1.selectbox("Label set", names, key=set_key, placeholder="create one on the right",
                 help="Labels of this AOI, saved in the workspace (labelsets/): they survive a restart.")
    c2.text_input("New label set (present / absent)", key=labelling.NEW_NAME_KEY, placeholder="e.g. flooded_fields")
    c2.button("Create", key="map_create", on_click=labelling.create, args=(ctx.root, ctx.aoi))
    label_set = labelling.active(ctx.root, ctx.aoi)
    if label_set is None:
        state.to_url(aoi=ctx.aoi)
        raise UserError("No label set yet for this AOI.", "Type a name and press Create to start labelling.", "info")

    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    brush = c1.radio("Click on the map labels a chip as", labelling.brush_options(label_set), key=labelling.BRUSH_KEY,
                     horizontal=True)
    rep = c2.selectbox("Representation", reps, format_func=space_name, key=labelling.REP_KEY,
                       help="Which embedding the probe learns from: fused (all present modalities), one modality, or "
                            "an external representation (`python -m data.ingest embeddings`).")
    estimator = c3.selectbox("Estimator", list(MAP_ESTIMATORS), key=labelling.EST_KEY,
                             help="logistic: fast and robust with few labels; random forest / kNN: non-linear.")
    view = c4.radio("Map shows", list(labelling.VIEWS), key=labelling.VIEW_KEY, horizontal=True)

    if rep in externals:
        X, valid = cache.representation(ctx.root, ctx.aoi, model, rep)[1:]
    else:
        X, valid = emb.get(rep)
    result = labelling.fit(ctx.root, ctx.aoi, model, rep, estimator, label_set)
    counts = label_set.counts()
    m1, m2, m3 = st.columns(3)
    m1.metric("Labels", len(label_set), help=", ".join(f"{k}: {v}" for k, v in counts.items()))
    st.session_state.setdefault(labelling.THRESHOLD_KEY, 0.5)
    threshold = st.slider("Detection threshold", 0.0, 1.0, step=0.01, key=labelling.THRESHOLD_KEY,
                          help="Chips whose prediction is at least this are detections.")
    chip = st.session_state.get(labelling.chip_key(ctx.aoi))
    state.to_url(aoi=ctx.aoi, labels=label_set.name, rep=rep, est=estimator, thr=float(threshold), chip=chip)
    st.caption(" · ".join(f"{k}: {v}" for k, v in counts.items()))
    if result is None:
        m2.metric("Cross-validated score", "n/a")
        m3.metric("Detections", "n/a")
        st.info("Label at least one present and one absent chip to train the map.")
    else:
        det = detections(result, threshold)
        m2.metric(f"CV {result.cv_metric}", f"{result.cv_mean:.2f} ± {result.cv_std:.2f}" if result.cv_folds else "n/a",
                  help=f"{result.cv_text}, on {result.n_labels} labels")
        m3.metric("Detections", f"{int(det.sum())} of {int(result.valid.sum())}")
        st.markdown(f"**{int(det.sum())} chips detected of {int(result.valid.sum())}** at threshold {threshold:.2f} "
                    f"({result.cv_text}; {result.n_labels} labels).")
        if result.warning:
            st.warning(result.warning)
        flat = constant_prediction(result.predictions)
        if flat is not None:
            st.warning(f"This map is degenerate: the model predicts the same value ({flat.value:.2f}) for every chip, "
                       "so the map is one flat colour. Label more chips of both classes, or choose another estimator.")

    suggested = cache.suggestions(ctx.root, ctx.aoi, model, rep, estimator, label_set, labelling.SUGGESTIONS,
                                  result is not None)
    values, scale, _, legend = labelling.map_colours(result, threshold, view, X, valid, label_set, lookup)
    # A raster of the AOI, one pixel per chip (not pydeck polygons: ~10 MB of JSON per rerun at 150 K chips,
    # and clicks dropped by deck.gl picking under software WebGL); a click is resolved to the chip under it.
    marks, keys = labelling.marks(grid, lookup, label_set, suggested, chip)
    key = labelling.raster_key(ctx.aoi)
    note = f"n/a: no {space_name(rep)} embedding" + (" · simulated AOI" if store.meta.simulated else "")
    rastermap.raster_map(grid, maps.png_data_url(maps.score_png(grid, values, scale)),
                         maps.legend_spec(scale, _unit(scale.title)), marks, key=key, aspect=maps.cell_aspect(grid),
                         height=540, note=note, view_id=ctx.aoi, keys=keys, action=f"label it {brush}",
                         on_click=functools.partial(labelling.on_raster_click, ctx.root, ctx.aoi, key, grid))
    st.caption(f"{legend} {labelling.legend_classes(label_set)} One pixel per chip ({len(grid):,} chips): scroll to "
               f"zoom, drag to pan. Click a chip to label it **{brush}**."
               + (" Simulated AOI." if store.meta.simulated else ""))
    st.caption(f"Representation in use: {space_name(rep)}.")
    if chip:
        st.caption(f"Last clicked: {chip} (label: {label_set.label_of(chip) or 'none'}).")
    if len(ctx.aois) > 1 and st.toggle("Apply to all AOIs", key=labelling.ALL_AOIS_KEY, disabled=result is None,
                                      help="Run this map on every AOI's chips (same model and representation) and "
                                           "count the detections at the threshold."):
        if result is not None:
            labelling.show_all_aois(ctx.root, ctx.aois, ctx.aoi, model, rep, estimator, label_set, result, threshold)

    st.subheader("Label these next")
    st.caption("Chips the model is least sure about, from different parts of the embedding space (before a model: "
               "diverse chips). Accept or reject each; the map retrains.")
    mods = labelling.thumbnail_modalities(store)
    modality = (st.radio("Thumbnails", mods, key="map_thumb_mod", horizontal=True, format_func=space_name)
                if len(mods) > 1 else mods[0])
    ids = grid.chip_ids[np.asarray(suggested, dtype=np.int64)].tolist()
    preds = result.predictions[suggested] if result is not None else np.full(len(ids), np.nan)
    captions = [f"#{i + 1}" + (f" · {p:.2f}" if np.isfinite(p) else "") for i, p in enumerate(preds)]
    labelling.review_grid(store, ids, list(suggested), captions, modality=modality, root=ctx.root, label_set=label_set,
                          source="suggestion", key_prefix="map_sug")

    st.subheader("Export")
    only = st.toggle("Detections only", key="map_dl_detonly", disabled=result is None)
    external = external_provenance(ctx.workspace, ctx.aoi, rep) if rep in externals else None
    labelling.export_buttons(result, store, label_set, threshold, ctx.checkpoint,
                             [] if external else emb.modalities if rep == "fused" else [rep], only and result is not None,
                             external=external)
    st.caption("Files carry their provenance (model, representation, labels, estimator, CV score, threshold)"
               + ("; every row is marked simulated." if store.meta.simulated else "."))
