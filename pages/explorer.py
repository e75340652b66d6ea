"""Embedding explorer: a UMAP of one AOI's (or all AOIs') embeddings; colour by label, AOI or availability; select to map."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.project import fit_sample_for
from core.representations import availability, external_names
from core.search import SPACES, space_name
from data.modalities import LABEL_TASKS
from ui import cache, charts, maps, rastermap, state
from ui.errors import UserError, page_guard
from ui.gallery import show_gallery
from ui.text import md_escape

state.require_entrypoint("pages/explorer.py")
ctx = state.context()
st.title("Embedding explorer")

# At most this many points in the scatter (a seeded random sample beyond): a browser chart of 150 K points is sluggish.
MAX_POINTS = 20_000
# At most this many selected chips marked on the map (each mark is a DOM element).
MAX_MARKS = 2_000


with page_guard("embedding explorer"):
    if ctx.aoi is None:
        raise UserError("This workspace holds no AOI yet.", "Build the simulated AOIs on the Home page.", "info")
    model = cache.model_name(ctx.checkpoint)
    store = cache.store(ctx.root, ctx.aoi)
    emb = cache.embeddings(ctx.root, ctx.aoi, model)
    keys = [k for k in SPACES if k in emb.vectors]
    externals = external_names(ctx.workspace, ctx.aoi)  # embeddings brought by the user (#17)
    # A reload, a shared link or a story step restores the settings from the URL.
    state.from_url("emb", "exp_key", allowed=keys + externals)
    state.from_url("scope", "exp_scope", allowed=["this AOI", "all AOIs"])
    c1, c2, c3 = st.columns([3, 3, 2])
    key = c1.selectbox("Embedding", keys + externals, format_func=space_name, key="exp_key",
                       help="The model's embeddings (fused or one modality) or an external representation.")
    external = key in externals
    st.caption(f"Representation in use: {space_name(key)}.")
    scope = c3.radio("Points", ["this AOI", "all AOIs"], key="exp_scope", horizontal=True,
                     help="All AOIs: one UMAP of every AOI's embeddings together (computed once, then cached).")
    aois = [ctx.aoi]
    if scope == "all AOIs" and external:
        built = [a for a in ctx.aois if key in external_names(ctx.workspace, a)]
        aois = [ctx.aoi] + [a for a in built if a != ctx.aoi]
        if len(built) < len(ctx.aois):
            st.caption(f"Not shown (no {key} vectors): {', '.join(a for a in ctx.aois if a not in built)}.")
    elif scope == "all AOIs":
        built = [a for a in ctx.aois if cache.embeddings_stamp(ctx.root, a, model)]
        aois = [ctx.aoi] + [a for a in built if a != ctx.aoi]
        if len(built) < len(ctx.aois):
            st.caption(f"Not shown (no embeddings yet): {', '.join(a for a in ctx.aois if a not in built)}.")
    stores, embs = {}, {}
    reading = st.progress(0.0, text=f"Reading embeddings: 0 of {len(aois)} AOIs") if len(aois) > 1 else None
    for i, a in enumerate(aois):
        if reading is not None:
            reading.progress(i / len(aois), text=f"Reading embeddings: {i} of {len(aois)} AOIs, now {a}")
        stores[a] = cache.store(ctx.root, a)
        embs[a] = emb if a == ctx.aoi else cache.embeddings(ctx.root, a, model)
    if reading is not None:
        reading.empty()
    # The points' presence: the chosen representation's valid flags (an external one has its own).
    present = {a: (cache.representation_embeddings(ctx.root, a, model, key).present[key] if external
                   else embs[a].present[key]) for a in aois}
    known = [t for t in LABEL_TASKS if any(np.isfinite(stores[a].labels(t)).any() for a in aois)]
    options = [*known, *(["AOI"] if len(aois) > 1 else []), "modality availability"]
    state.from_url("color", "exp_color", allowed=options)
    color = c2.selectbox("Colour by", options, key="exp_color",
                         help="A label fraction of the chip, its AOI, or which modalities the chip has.")
    state.to_url(aoi=ctx.aoi, emb=key, color=color, scope=scope)
    # The UMAP draws its own progress bar (stages, then chips placed); computed once, stored in the workspace.
    if len(aois) == 1:
        xy = (cache.umap_representation(ctx.root, ctx.aoi, model, key) if external
              else cache.umap(ctx.root, ctx.aoi, model, key))
    else:
        xy = cache.umap_joint(ctx.root, aois, model, key, external=external)
    n_rows = sum(len(embs[a]) for a in aois)
    if fit_sample_for(n_rows) is not None:
        st.caption(f"UMAP fitted on a random {fit_sample_for(n_rows):,} of the {n_rows:,} chips; the others were "
                   "placed with UMAP's transform (a full fit of this many chips takes far too long on a few cores).")
    frames = []
    for a in aois:
        e, st_a = embs[a], stores[a]
        f = pd.DataFrame({"aoi": a, "chip_id": e.chip_ids if len(aois) == 1 else [f"{a}:{c}" for c in e.chip_ids],
                          "position": np.arange(len(e)), "availability": availability(e.present), "present": present[a]})
        for t in known:
            f[t] = st_a.labels(t)
        frames.append(f)
    points = pd.concat(frames, ignore_index=True)
    points["x"], points["y"] = xy[:, 0], xy[:, 1]
    points["AOI"] = points["aoi"].map(lambda a: cache.aoi_label(ctx.root, a))
    points = points[points["present"].to_numpy() & np.isfinite(points["x"].to_numpy())].drop(columns="present")
    if points.empty:
        raise UserError(f"No chip of this AOI has {space_name(key)} embeddings.", "Choose another embedding.")
    drawn = points.sample(MAX_POINTS, random_state=0) if len(points) > MAX_POINTS else points
    if len(drawn) < len(points):
        st.caption(f"Showing a random {len(drawn):,} of {len(points):,} chips.")
    tooltip = ["AOI", "chip_id", *[f"{t}:Q" for t in known], "availability:N"]
    colour_field = color if color in known or color == "AOI" else "availability"
    chart = charts.embedding_scatter(drawn, colour_field, tooltip=tooltip)
    # The chart's key names the AOI and scope: a selection never carries over to another AOI's points.
    event = st.altair_chart(chart, on_select="rerun", selection_mode=[charts.POINT_SELECTION, charts.BRUSH_SELECTION],
                            key=f"exp_chart_{ctx.aoi}_{'all' if len(aois) > 1 else 'one'}", width="stretch")
    simulated = any(stores[a].meta.simulated for a in aois)
    st.caption("Drag a box (or click a point) to show those chips on the map; double-click to clear."
               + (f" The map shows {md_escape(cache.aoi_label(ctx.root, ctx.aoi))}; choose another AOI in the sidebar for its chips."
                  if len(aois) > 1 else "")
               + (" Simulated data." if simulated else ""))

    picked, selecting = charts.selection_state(event, drawn)
    if len(aois) > 1:  # joint ids are "<aoi>:<chip_id>": the map below shows the sidebar's AOI only
        prefix = f"{ctx.aoi}:"
        picked = [c[len(prefix):] for c in picked if c.startswith(prefix)]
    if selecting and not picked:
        st.info("0 selected: the box holds no chip" + (" of this AOI" if len(aois) > 1 else "")
                + ". Drag it over some points, or double-click the chart to clear it.")
    task = color if color in known else (known[0] if known else None)
    values = store.labels(task) if task else np.full(len(store), np.nan)
    scale = maps.color_scale(task or "water", title=f"{task} fraction" if task else "value")
    positions = store.positions_of(picked) if picked else np.array([], dtype=np.int64)
    st.subheader(f"Selected chips: {len(picked):,}" if selecting else "Map")
    # A raster, one pixel per chip (ui/rastermap.py): the same cost at 150 K chips as at 2 K, unlike polygons.
    marks = maps.chip_marks(cache.grid(ctx.root, ctx.aoi), positions[:MAX_MARKS], "selected")
    shown = f"the first {MAX_MARKS:,} of {len(positions):,} selected chips marked" if len(positions) > MAX_MARKS else ""
    rastermap.score_map(cache.grid(ctx.root, ctx.aoi), values, scale, units="share of the chip", key="exp_map",
                        marks=marks, height=460, note=shown)
    st.caption("Grey: no label for the chip." + (" Orange squares: the chips selected in the UMAP." if picked else ""))
    if picked:
        sel = pd.DataFrame({"aoi": ctx.aoi, "chip_id": picked[:8], "position": positions[:8], "rank": np.arange(1, min(8, len(picked)) + 1)})
        sel["score"] = np.nan
        show_gallery(sel, {ctx.aoi: store}, emb.modalities)
