"""Similarity search for the app: query state, the per-click search and the results panel.

`search_chips` is pure (numpy + FAISS, no streamlit) so that benchmarks/bench_app.py times exactly
what a click costs on the server. The rest draws the page's widgets; the query (chip id, positives,
negatives) lives in st.session_state, one per AOI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from core.embed import Embeddings
from core.index import ChipIndex, query_vector, top_k
from data.modalities import MODALITY_KEYS, get_modality
from data.store import ChipStore, StoreError
from ui import cache, export, maps
from ui.errors import UserError
from ui.gallery import show_gallery

SPACES = ("fused", *MODALITY_KEYS)
SELECTBOX_MAX = 5000
"""Up to this many chips the chip-id fallback is a selectbox; beyond, a text box (a 150 K option list is slow)."""


def space_name(space: str) -> str:
    """Human name of an embedding space (a modality or the fused one)."""
    return "fused (all present modalities)" if space == "fused" else get_modality(space).title


@dataclass(frozen=True)
class SearchRequest:
    """One search: the query chip (in `aoi`), spaces, scope, k and the refinement examples ('aoi:chip_id')."""

    aoi: str
    chip_id: str
    query_space: str = "fused"
    target_space: str = "fused"
    all_aois: bool = False
    k: int = 10
    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()


@dataclass
class SearchResult:
    """Results (rank, aoi, chip_id, position, score), every chip's similarity in the query's AOI, timings."""

    results: pd.DataFrame
    map_scores: np.ndarray
    query_position: int
    seconds: dict[str, float] = field(default_factory=dict)


def split_ref(ref: str) -> tuple[str, str]:
    """'aoi:chip_id' -> (aoi, chip_id)."""
    aoi, sep, chip = ref.partition(":")
    if not sep or not aoi or not chip:
        raise UserError(f"{ref!r} is not an 'aoi:chip_id' reference.", "Pick examples from the result list.")
    return aoi, chip


def _position(emb: Embeddings, chip_id: str, lookup: Mapping[str, int] | None = None) -> int:
    if lookup is not None:
        pos = lookup.get(chip_id)
    else:
        hits = np.flatnonzero(emb.chip_ids == chip_id)
        pos = int(hits[0]) if hits.size else None
    if pos is None:
        raise UserError(f"Chip {chip_id!r} is not in this AOI's embeddings.", "Click a chip on the map or pick one from the list.")
    return int(pos)


def _vector(emb: Embeddings, space: str, pos: int, chip_id: str) -> np.ndarray:
    if space not in emb.vectors:
        raise UserError(f"These embeddings hold no {space_name(space)} vectors.", "Choose another modality.")
    vectors, present = emb.get(space)
    if not present[pos]:
        raise UserError(
            f"Chip {chip_id} has no {space_name(space)} data (the modality is missing for it).",
            "Choose another query modality, or click another chip.",
        )
    return vectors[pos]


def search_chips(
    request: SearchRequest,
    embeddings: Mapping[str, Embeddings],
    indexes: Mapping[str, ChipIndex | None],
    lookups: Mapping[str, Mapping[str, int]] | None = None,
) -> SearchResult:
    """Run one search: the query vector (Rocchio with positives/negatives), every chip's score in the
    query's AOI for the map, and the top-k from the FAISS index of each AOI in scope, merged.

    embeddings: AOI -> Embeddings (the query's AOI and every AOI searched); indexes: AOI -> the
    ChipIndex of `target_space` for the other AOIs (None where an AOI has no such index; the query's
    own AOI is ranked from the exact map scores); lookups: optional AOI ->
    {chip_id: position} (saves a scan of the ids per click at 150 K chips).
    """
    if request.k < 1:
        raise UserError(f"The number of results must be at least 1 (got {request.k}).", "Raise it in the controls.")
    t0 = time.perf_counter()
    lookups = lookups or {}
    emb = embeddings[request.aoi]
    qpos = _position(emb, request.chip_id, lookups.get(request.aoi))
    positives = [_vector(emb, request.query_space, qpos, request.chip_id)]
    negatives = []
    for refs, out in ((request.positives, positives), (request.negatives, negatives)):
        for ref in refs:
            aoi, chip = split_ref(ref)
            if aoi not in embeddings:
                continue  # an example from an AOI outside the current scope: ignored, not an error
            e = embeddings[aoi]
            p = _position(e, chip, lookups.get(aoi))
            vectors, present = e.get(request.target_space)
            if present[p]:
                out.append(vectors[p])
    q = query_vector(np.stack(positives), np.stack(negatives) if negatives else None)  # [D]
    t1 = time.perf_counter()

    # Map colours: every chip of the query's AOI, exact inner products (one BLAS call).
    tvec, tpresent = emb.get(request.target_space)
    map_scores = np.where(tpresent, tvec @ q, np.nan).astype(np.float64)  # [N]
    t2 = time.perf_counter()

    scope = list(embeddings) if request.all_aois else [request.aoi]
    exclude_self = request.query_space == request.target_space
    extra = 1 + len(request.positives) + len(request.negatives)
    shown = {(request.aoi, request.chip_id)} if exclude_self else set()
    shown |= {split_ref(r) for r in (*request.positives, *request.negatives)}
    frames = []
    for aoi in scope:
        if aoi == request.aoi:
            # The map already holds the exact score of every chip of the query's AOI: its top-k is
            # one argpartition away (exact, and no second pass over the vectors).
            finite = np.flatnonzero(np.isfinite(map_scores))
            if finite.size == 0:
                continue  # no chip of this AOI has the searched modality
            s, cols = top_k(map_scores[finite][None, :], min(request.k + extra, finite.size))
            positions = finite[cols[0]]
            frames.append(pd.DataFrame({"aoi": aoi, "chip_id": emb.chip_ids[positions].astype(str),
                                        "position": positions.astype(np.int64), "score": s[0].astype(float)}))
            continue
        index = indexes.get(aoi)
        if index is None:
            continue
        e = embeddings[aoi]
        scores, ipos = index.search(q[None, :], request.k + extra)
        scores, ipos = scores[0], ipos[0]
        ok = ipos >= 0
        ids = index.ids[ipos[ok]].astype(str)
        lk = lookups.get(aoi)
        positions = np.array([_position(e, c, lk) for c in ids.tolist()], dtype=np.int64)
        frames.append(pd.DataFrame({"aoi": aoi, "chip_id": ids, "position": positions, "score": scores[ok].astype(float)}))
    t3 = time.perf_counter()
    if not frames:
        raise UserError(
            f"No AOI in scope has a {space_name(request.target_space)} index.",
            "Build the missing steps on the Home page, or search another modality.",
        )
    merged = pd.concat(frames, ignore_index=True)
    drop = np.array([(a, c) in shown for a, c in zip(merged["aoi"], merged["chip_id"])], dtype=bool)
    merged = merged[~drop].sort_values("score", ascending=False, kind="stable").head(request.k).reset_index(drop=True)
    merged.insert(0, "rank", np.arange(1, len(merged) + 1))
    t4 = time.perf_counter()
    return SearchResult(
        merged, map_scores, qpos,
        {"query": t1 - t0, "map_scores": t2 - t1, "top_k": t3 - t2, "merge": t4 - t3, "total": t4 - t0},
    )


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
    ids = store.index["chip_id"].astype(str)
    key = chip_key(aoi)
    current = st.session_state.get(key)
    if current and current not in set(ids.tolist()):
        # A typed or stale id: say so once, start without a query.
        st.warning(f"Chip {current!r} is not in this AOI; click a chip on the map or pick one from the list.")
        current = None
    small = len(ids) <= SELECTBOX_MAX
    # The value lives in session state (set by map clicks too); seeding it here avoids passing a
    # default to the widget, which Streamlit would report as a conflict with the Session State API.
    st.session_state[key] = current if (current or not small) else None
    if small:
        st.selectbox(
            "Query chip", ids.tolist(), key=key, placeholder="click a chip on the map, or pick its id",
            on_change=on_pick, args=(aoi,),
        )
    else:
        if st.session_state[key] is None:
            st.session_state[key] = ""
        st.text_input("Query chip id", key=key, placeholder="click a chip on the map, or type its id", on_change=on_pick, args=(aoi,))
    return st.session_state.get(key) or None


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
    if table.empty:
        st.info("No chip matched (every chip in scope lacks the searched modality).")
        return
    stores = {a: cache.store(root, a) for a in table["aoi"].unique().tolist()}
    frame = export.results_frame(table, {a: s.index for a, s in stores.items()})
    kinds = {a: ("simulated" if s.meta.simulated else "real") for a, s in stores.items()}
    shown = frame.drop(columns="geometry").assign(kind=frame["aoi"].map(kinds)).drop(columns=["simulated"])
    st.dataframe(shown, hide_index=True, width="stretch", column_config={"score": st.column_config.NumberColumn(format="%.3f")})
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
    d1.download_button("Download GeoJSON", export.to_geojson(frame), f"{stem}.geojson", "application/geo+json", key="sim_dl_geojson")
    d2.download_button("Download CSV", export.to_csv(frame), f"{stem}.csv", "text/csv", key="sim_dl_csv")
