"""Similarity search: click a chip on the map (or pick its id) to find the most similar chips."""

from __future__ import annotations

import functools
import time

import streamlit as st

from core.representations import RepresentationError, external_names
from core.search import SPACES, SearchRequest, search_chips, space_name
from data.modalities import LABEL_TASKS
from ui import cache, labelling, maps, rastermap, search, state
from ui.errors import UserError, page_guard

state.require_entrypoint("pages/similarity.py")
ctx = state.context()
st.title("Similarity search")

with page_guard("similarity search"):
    if ctx.aoi is None:
        raise UserError("This workspace holds no AOI yet.", "Build the simulated AOIs on the Home page.", "info")
    model = cache.model_name(ctx.checkpoint)
    store = cache.store(ctx.root, ctx.aoi)
    grid = cache.grid(ctx.root, ctx.aoi)
    emb = cache.embeddings(ctx.root, ctx.aoi, model)
    spaces = [s for s in SPACES if s in emb.vectors]
    externals = external_names(ctx.workspace, ctx.aoi)  # embeddings brought by the user (#17)

    c1, c2, c3, c4 = st.columns([3, 3, 2, 2])
    query_space = c1.selectbox("Query modality", spaces + externals, format_func=space_name, key="sim_query_space",
                               help="Which embedding of the clicked chip is the query: the model's (a modality or "
                                    "fused) or an external representation ingested with `python -m data.ingest embeddings`.")
    external = query_space in externals
    target_space = c2.selectbox(
        "Searched modality", [query_space] if external else spaces, format_func=space_name, key="sim_target_space",
        help="Pick another modality than the query's for cross-modal search (e.g. a SAR query finding optical chips); "
             "an external representation searches itself.",
    )
    scope = c3.radio("Search in", ["this AOI", "all AOIs"], key="sim_scope", horizontal=True)
    k = c4.slider("Results (top-k)", min_value=1, max_value=50, value=10, key="sim_k")

    state.from_url("chip", search.chip_key(ctx.aoi))  # a reload restores the query (the picker checks the id)
    chip_id = search.chip_picker(store, ctx.aoi)
    state.to_url(aoi=ctx.aoi, chip=chip_id)
    colour_task = st.selectbox("Map colour before a query", list(LABEL_TASKS), key="sim_colour_task",
                               help="Label fraction that colours the chips until a query colours them by similarity.")

    result = None
    if chip_id:
        aois = ctx.aois if scope == "all AOIs" else [ctx.aoi]
        embs, indexes, lookups = {}, {}, {}
        for a in aois:
            try:
                if external:
                    embs[a] = cache.representation_embeddings(ctx.root, a, model, query_space)
                else:
                    embs[a] = emb if a == ctx.aoi else cache.embeddings(ctx.root, a, model)
            except (UserError, RepresentationError):
                if a == ctx.aoi:
                    raise
                continue  # another AOI without embeddings yet: search the others, say so below
            # The query's own AOI is ranked from the exact map scores; the others through their index.
            if a == ctx.aoi:
                indexes[a] = None
            elif external:
                indexes[a] = cache.representation_index(ctx.root, a, model, query_space)
            else:
                indexes[a] = cache.chip_index(ctx.root, a, model, target_space)
            lookups[a] = cache.chip_lookup(ctx.root, a, model)
        skipped = sorted(a for a in aois if a != ctx.aoi and indexes.get(a) is None)
        request = SearchRequest(
            aoi=ctx.aoi, chip_id=chip_id, query_space=query_space, target_space=target_space,
            all_aois=scope == "all AOIs", k=int(k),
            positives=tuple(st.session_state.get(search.refs_key(ctx.aoi, "pos"), [])),
            negatives=tuple(st.session_state.get(search.refs_key(ctx.aoi, "neg"), [])),
        )
        # One BLAS/OpenMP thread per request: concurrent sessions share the cores instead of fighting.
        with search.request_threads():
            result = search_chips(request, embs, indexes, lookups)
        result.results.attrs["query"] = chip_id
        if skipped:
            st.caption(f"Not searched (no {space_name(target_space)} index yet): {', '.join(skipped)}.")

    if result is None:
        png = cache.label_map_png(ctx.root, ctx.aoi, colour_task)
        scale, units, marks = maps.color_scale(colour_task), "fraction of the chip, 0-1", []
    else:
        t0 = time.perf_counter()
        scale = maps.color_scale("similarity", *maps.robust_range(result.map_scores), title="similarity")
        png, units = maps.score_png(grid, result.map_scores, scale), "cosine, query · chip"
        marks = search.marks(grid, result, ctx.aoi, cache.chip_lookup(ctx.root, ctx.aoi, model))
        result.seconds["map_image"] = time.perf_counter() - t0
    key = search.raster_key(ctx.aoi)
    note = "simulated AOI" if store.meta.simulated else ""
    rastermap.raster_map(grid, maps.png_data_url(png), maps.legend_spec(scale, units), marks, key=key,
                         aspect=maps.cell_aspect(grid), height=520, note=note, view_id=ctx.aoi,
                         on_click=functools.partial(search.on_raster_click, ctx.aoi, key, grid))
    st.caption(f"One pixel per chip ({len(grid):,} chips); scroll to zoom, drag to pan, click a chip to search "
               "from it." + (" Simulated AOI." if store.meta.simulated else ""))
    if result is None:
        # Below the map, so that the map does not move when the first result replaces this line.
        st.info("Click a chip on the map, or pick a chip id above, to find similar chips.")
    st.caption(f"Representation in use: {space_name(query_space)}"
               + (f" → {space_name(target_space)}" if target_space != query_space else "") + ".")

    if result is not None and scope == "all AOIs" and not result.results.empty:
        search.show_overview(ctx.root, ctx.aois, ctx.aoi, result)
    if result is not None:
        search.show_results(ctx.root, ctx.aoi, result, [m for m in spaces if m != "fused"])
        labelling.results_review(ctx.root, ctx.aoi, store, result.results)
