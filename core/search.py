"""Similarity search over chip embeddings: pure NumPy + FAISS (no streamlit).

One click in the app is one `search_chips` call: the query vector (Rocchio with positives and
negatives), every chip's score in the query's AOI (for the map) and the top-k of each AOI in scope,
merged. benchmarks/bench_app.py times exactly this function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from core.embeddings import Embeddings
from core.index import ChipIndex, query_vector, top_k
from data.cli import KnownError
from data.modalities import MODALITY_KEYS, get_modality


class SearchError(KnownError, ValueError):
    """A search cannot run as asked: `message` says what is wrong, `fix` what to change."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message, self.fix = message, fix

    def __str__(self) -> str:
        return f"{self.message} {self.fix}".strip()


SPACES = ("fused", *MODALITY_KEYS)
def space_name(space: str) -> str:
    """Human name of an embedding space (a modality, the fused one, or an external representation's name)."""
    if space == "fused":
        return "fused (all present modalities)"
    return get_modality(space).title if space in MODALITY_KEYS else f"{space} (external embeddings)"


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
        raise SearchError(f"{ref!r} is not an 'aoi:chip_id' reference.", "Pick examples from the result list.")
    return aoi, chip


def _position(emb: Embeddings, chip_id: str, lookup: Mapping[str, int] | None = None) -> int:
    if lookup is not None:
        pos = lookup.get(chip_id)
    else:
        hits = np.flatnonzero(emb.chip_ids == chip_id)
        pos = int(hits[0]) if hits.size else None
    if pos is None:
        raise SearchError(f"Chip {chip_id!r} is not in this AOI's embeddings.", "Click a chip on the map or pick one from the list.")
    return int(pos)


def _vector(emb: Embeddings, space: str, pos: int, chip_id: str) -> np.ndarray:
    if space not in emb.vectors:
        raise SearchError(f"These embeddings hold no {space_name(space)} vectors.", "Choose another modality.")
    vectors, present = emb.get(space)
    if not present[pos]:
        raise SearchError(
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
        raise SearchError(f"The number of results must be at least 1 (got {request.k}).", "Raise it in the controls.")
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
        raise SearchError(
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
