"""Similarity search page helpers: query state, the chip picker, the results panel and the overview map.

The search itself is `core.search.search_chips` (pure NumPy + FAISS); the query (chip id,
positives, negatives) lives in st.session_state, one per AOI.
"""

from __future__ import annotations

import functools
from typing import ContextManager, Mapping, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from threadpoolctl import ThreadpoolController

from core.grid import ChipGrid
from core.search import SearchResult, split_ref
from data.modalities import LABEL_TASKS
from data.store import ChipStore, StoreError
from ui import cache, export, maps, rastermap
from ui.gallery import show_gallery

REQUEST_THREADS = 1
"""BLAS/OpenMP threads of one search: a 150 K-chip search is ~10 ms on one core, and ten sessions at once on
two cores are fastest when none of them oversubscribes (threadpoolctl caps it per request)."""


@functools.cache
def _threadpools() -> ThreadpoolController:
    # Finding the loaded BLAS/OpenMP libraries costs ~8 ms (threadpool_limits does it on every call): once per process.
    return ThreadpoolController()


def request_threads() -> ContextManager:
    """A context in which this request's BLAS/OpenMP thread pools are capped at REQUEST_THREADS."""
    return _threadpools().limit(limits=REQUEST_THREADS)


SELECTBOX_MAX = 5000
"""Up to this many chips the chip-id fallback is a selectbox; beyond, a text box (a 150 K option list is slow)."""


# ----------------------------------------------------------------------------------------- page state
def chip_key(aoi: str) -> str:
    """Session key of the query chip id of an AOI (also the chip picker's widget key)."""
    return f"sim_chip::{aoi}"


def refs_key(aoi: str, kind: str) -> str:
    """Session key of the positives or negatives of an AOI's query."""
    return f"sim_{kind}::{aoi}"


def map_key(aoi: str) -> str:
    """Widget key of the map; changes with every new query so that the old click selection is cleared."""
    return f"sim_map::{aoi}::{st.session_state.get(f'sim_map_gen::{aoi}', 0)}"


def raster_key(aoi: str) -> str:
    """Widget key of the score map (stable, so zoom and pan survive new queries)."""
    return f"sim_raster::{aoi}"


def set_query(aoi: str, chip_id: str | None) -> None:
    """Make a chip the query (or clear it); refinement examples belong to the old query and are reset."""
    if st.session_state.get(chip_key(aoi)) != chip_id:
        st.session_state[refs_key(aoi, "pos")] = []
        st.session_state[refs_key(aoi, "neg")] = []
    st.session_state[chip_key(aoi)] = chip_id
    gen = f"sim_map_gen::{aoi}"
    st.session_state[gen] = st.session_state.get(gen, 0) + 1


def on_map_click(aoi: str, key: str) -> None:
    """st.pydeck_chart on_select callback: the clicked chip becomes the query (before the page reruns)."""
    chip = maps.clicked_chip(st.session_state.get(key))
    if chip:
        set_query(aoi, chip)


def on_raster_click(aoi: str, key: str, grid: ChipGrid) -> None:
    """Score-map click callback: the chip under the click becomes the query (a click off the chips is ignored)."""
    pos = rastermap.clicked_position(grid, key)
    if pos is not None:
        set_query(aoi, str(grid.chip_ids[pos]))


def on_pick(aoi: str) -> None:
    """Chip picker callback: a new query chip resets the examples and the map's old selection."""
    chip = st.session_state.get(chip_key(aoi)) or None
    st.session_state[refs_key(aoi, "pos")] = []
    st.session_state[refs_key(aoi, "neg")] = []
    gen = f"sim_map_gen::{aoi}"
    st.session_state[gen] = st.session_state.get(gen, 0) + 1
    if chip is not None:
        st.session_state[chip_key(aoi)] = str(chip).strip()


def chip_picker(store: ChipStore, aoi: str) -> str | None:
    """The chip-id fallback to clicking the map: a selectbox (small AOIs) or a text box; returns the query."""
    key = chip_key(aoi)
    current = st.session_state.get(key)
    if current and not _known_chip(store, str(current)):
        # A typed or stale id: say so once, start without a query.
        st.warning(f"Chip {current!r} is not in this AOI; click a chip on the map or pick one from the list.")
        current = None
    small = len(store) <= SELECTBOX_MAX
    # The value lives in session state (set by map clicks too); seeding it here avoids passing a
    # default to the widget, which Streamlit would report as a conflict with the Session State API.
    st.session_state[key] = current if (current or not small) else None
    if small:
        st.selectbox(
            "Query chip", store.index["chip_id"].astype(str).tolist(), key=key, placeholder="click a chip on the map, or pick its id",
            on_change=on_pick, args=(aoi,),
        )
    else:
        if st.session_state[key] is None:
            st.session_state[key] = ""
        st.text_input("Query chip id", key=key, placeholder="click a chip on the map, or type its id", on_change=on_pick, args=(aoi,))
    return st.session_state.get(key) or None


def _known_chip(store: ChipStore, chip_id: str) -> bool:
    """Whether a chip id is in the store: a hash lookup (a set of 150 K ids per rerun cost ~30 ms)."""
    try:
        store.positions_of(chip_id)
    except KeyError:
        return False
    return True


def marks(grid: ChipGrid, result: SearchResult, aoi: str, lookup: Mapping[str, int]) -> list[dict]:
    """Marks over the score map: the query, the results in this AOI with their rank, positives and negatives."""
    here = result.results[result.results["aoi"] == aoi]
    out = maps.chip_marks(grid, here["position"].tolist(), "result", [f"#{r}" for r in here["rank"]])
    for kind, refs in (("positive", st.session_state.get(refs_key(aoi, "pos"), [])),
                       ("negative", st.session_state.get(refs_key(aoi, "neg"), []))):
        pos = [lookup[c] for a, c in map(split_ref, refs) if a == aoi and c in lookup]
        out += maps.chip_marks(grid, pos, kind)
    return out + maps.chip_marks(grid, [result.query_position], "query", ["query"])


def highlights(geometry: maps.ChipGeometry, result: SearchResult, aoi: str) -> list[dict]:
    """Outlines: the query chip in blue, the results that lie in this AOI in black with their rank."""
    here = result.results[result.results["aoi"] == aoi]
    out = maps.outline_records(geometry, [result.query_position], maps.QUERY_RGBA, ["query"])
    out += maps.outline_records(geometry, here["position"].tolist(), maps.RESULT_RGBA, [f"#{r}" for r in here["rank"]])
    return out


OVERVIEW_KEY = "sim_overview"


def show_overview(root: str, aois: Sequence[str], aoi: str, result: SearchResult) -> None:
    """An overview map of every AOI with the top results as dots coloured by score and the query marked."""
    table = result.results
    geometries = {}
    for a in aois:
        try:
            geometries[a] = cache.geometry(root, a)
        except (StoreError, OSError, ValueError):
            # An unreadable store: its results cannot be placed on the map; the table still lists them.
            continue
    points = table[table["aoi"].isin(list(geometries))].rename(columns={"score": "value"})
    scores = points["value"].to_numpy(dtype=np.float64)
    lo, hi = (float(np.nanmin(scores)), float(np.nanmax(scores))) if np.isfinite(scores).any() else (0.0, 1.0)
    scale = maps.color_scale("similarity", lo, hi if hi > lo else lo + 1e-6, title="similarity")
    deck = maps.overview_deck(geometries, points, scale, value_name="score",
                              query=(aoi, result.query_position) if aoi in geometries else None)
    st.subheader("Results across AOIs")
    st.pydeck_chart(deck, key=OVERVIEW_KEY, height=420)
    per_aoi = table["aoi"].value_counts()
    found = ", ".join(f"{a}: {int(per_aoi.get(a, 0))}" for a in geometries)
    kinds = {a: cache.store(root, a).meta.simulated for a in geometries}
    marked = " Simulated AOIs." if all(kinds.values()) else " Some AOIs are simulated." if any(kinds.values()) else ""
    st.caption(f"Every AOI's extent (grey box) with the top {len(table)} results as dots coloured by similarity "
               f"(low ← → high) and the query in blue. Results per AOI: {found}.{marked}")


def show_results(root: str, aoi: str, result: SearchResult, modalities: Sequence[str]) -> None:
    """Results table, refinement pickers, thumbnails per modality and the GeoJSON/CSV downloads."""
    table = result.results
    st.subheader("Top results")
    # The query and what it cost on the server (the browser benchmark reads this line).
    spent = [f"{what} {result.seconds[name] * 1000:.0f} ms" for name, what in (("total", "search"), ("map_image", "map"))
             if name in result.seconds]
    st.caption(f"Query chip {table.attrs.get('query', '')} · server: {', '.join(spent)}")
    if table.empty:
        st.info("No chip matched (every chip in scope lacks the searched modality).")
        return
    stores = {a: cache.store(root, a) for a in table["aoi"].unique().tolist()}
    frame = export.results_frame(table, {a: s.index for a, s in stores.items()})
    kinds = {a: ("simulated" if s.meta.simulated else "real") for a, s in stores.items()}
    shown = frame.drop(columns="geometry").assign(kind=frame["aoi"].map(kinds)).drop(columns=["simulated"])
    # A static table, not st.dataframe: at most 50 rows need no scrolling canvas grid, which is heavier for a browser
    # to redraw on every click (ten sessions clicking at once share the server's cores with their browsers here).
    fractions = [t for t in LABEL_TASKS if t in shown.columns]
    st.table(shown.style.format({"score": "{:.3f}", **{t: "{:.2f}" for t in fractions}}, na_rep="n/a"),
             hide_index=True, border="horizontal")
    if any(k == "simulated" for k in kinds.values()):
        st.caption("These chips are simulated (procedural data at real coordinates), not observations.")

    refs = [f"{a}:{c}" for a, c in zip(table["aoi"], table["chip_id"])]
    pos_key, neg_key = refs_key(aoi, "pos"), refs_key(aoi, "neg")
    pos = list(st.session_state.get(pos_key, []))
    neg = list(st.session_state.get(neg_key, []))
    c1, c2 = st.columns(2)
    c1.multiselect(
        "More like these (positives)", list(dict.fromkeys(pos + refs)), key=pos_key,
        help="Results to add to the query: the search then looks for chips like the query and these.",
    )
    c2.multiselect(
        "Less like these (negatives)", list(dict.fromkeys(neg + refs)), key=neg_key,
        help="Results to push away from: the query moves away from them (Rocchio refinement).",
    )

    # The query itself leads the gallery (rank 0), so results are compared with what was asked for.
    query = pd.DataFrame({"rank": [0], "aoi": [aoi], "chip_id": [table.attrs.get("query", "")],
                          "position": [result.query_position], "score": [np.nan]})
    if aoi not in stores:
        stores[aoi] = cache.store(root, aoi)
    show_gallery(pd.concat([query, table], ignore_index=True), stores, modalities)

    d1, d2, _ = st.columns([1, 1, 3])
    stem = f"similar-to-{aoi}-{table.attrs.get('query', 'query')}"
    # The files are built when a button is pressed (a callable), not on every click of the map.
    d1.download_button("Download GeoJSON", functools.partial(export.to_geojson, frame), f"{stem}.geojson",
                       "application/geo+json", key="sim_dl_geojson")
    d2.download_button("Download CSV", functools.partial(export.to_csv, frame), f"{stem}.csv", "text/csv", key="sim_dl_csv")
