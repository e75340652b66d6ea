"""core.search.search_chips on seeded synthetic embeddings: exact against brute force, cross-modal, Rocchio,
several AOIs merged through their FAISS indexes, and the errors a click can meet."""

from __future__ import annotations

import numpy as np
import pytest

from core.embeddings import Embeddings
from core.index import ChipIndex
from core.search import SearchError, SearchRequest, search_chips, split_ref


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_embeddings(aoi: str, n: int = 60, dim: int = 8, seed: int = 0) -> Embeddings:
    """Unit vectors per modality; fused = normalised mean; chip 0 lacks s1amp, chip 1 lacks s2rgb."""
    rng = np.random.default_rng(seed)
    s2, s1 = _unit(rng.normal(size=(n, dim))), _unit(rng.normal(size=(n, dim)))
    p2, p1 = np.ones(n, bool), np.ones(n, bool)
    p1[0], p2[1] = False, False
    fused = _unit(np.where(p2[:, None], s2, 0) + np.where(p1[:, None], s1, 0))
    ids = np.array([f"{aoi}-{i:03d}" for i in range(n)])
    return Embeddings(ids, {"s2rgb": s2, "s1amp": s1, "fused": fused},
                      {"s2rgb": p2, "s1amp": p1, "fused": p1 | p2})


def _index(emb: Embeddings, key: str) -> ChipIndex:
    vectors, present = emb.get(key)
    return ChipIndex.build(vectors[present], emb.chip_ids[present], gpu=False)


def test_same_space_search_is_exact_and_excludes_the_query():
    emb = make_embeddings("a")
    res = search_chips(SearchRequest("a", "a-005", k=7), {"a": emb}, {"a": None})
    fused, present = emb.get("fused")
    brute = np.where(present, fused @ fused[5], -np.inf)
    brute[5] = -np.inf
    best = np.argsort(-brute, kind="stable")[:7]
    assert res.results["position"].tolist() == best.tolist()
    assert res.results["rank"].tolist() == list(range(1, 8)) and res.query_position == 5
    np.testing.assert_allclose(res.results["score"], brute[best], rtol=1e-5)
    assert set(res.seconds) >= {"query", "map_scores", "top_k", "merge", "total"}


def test_cross_modal_keeps_the_query_chip_and_maps_nan_where_absent():
    emb = make_embeddings("a")
    res = search_chips(SearchRequest("a", "a-004", "s1amp", "s2rgb", k=5), {"a": emb}, {})
    s2, p2 = emb.get("s2rgb")
    brute = np.where(p2, s2 @ emb.vectors["s1amp"][4], -np.inf)
    assert res.results["position"].tolist() == np.argsort(-brute, kind="stable")[:5].tolist()
    assert np.isnan(res.map_scores[1]) and np.isfinite(res.map_scores[~np.isnan(res.map_scores)]).all()


def test_negatives_move_the_query_and_are_not_returned():
    emb = make_embeddings("a")
    plain = search_chips(SearchRequest("a", "a-010", k=5), {"a": emb}, {})
    neg = f"a:{plain.results['chip_id'].iloc[0]}"
    refined = search_chips(SearchRequest("a", "a-010", k=5, negatives=(neg,)), {"a": emb}, {})
    assert neg.split(":")[1] not in set(refined.results["chip_id"])
    assert not np.allclose(refined.map_scores, plain.map_scores, equal_nan=True)


def test_all_aois_merges_the_index_results_by_score():
    a, b = make_embeddings("a", seed=0), make_embeddings("b", n=40, seed=1)
    res = search_chips(SearchRequest("a", "a-003", all_aois=True, k=20), {"a": a, "b": b},
                       {"a": None, "b": _index(b, "fused")})
    q = a.vectors["fused"][3]
    scores = {("a", c): float(v @ q) for c, v, p in zip(a.chip_ids, a.vectors["fused"], a.present["fused"]) if p}
    scores |= {("b", c): float(v @ q) for c, v, p in zip(b.chip_ids, b.vectors["fused"], b.present["fused"]) if p}
    del scores[("a", "a-003")]
    want = sorted(scores, key=scores.get, reverse=True)[:20]
    assert list(zip(res.results["aoi"], res.results["chip_id"])) == want
    assert res.results["score"].is_monotonic_decreasing
    # An AOI in scope without an index is skipped, not an error.
    only_a = search_chips(SearchRequest("a", "a-003", all_aois=True, k=5), {"a": a, "b": b}, {"b": None})
    assert set(only_a.results["aoi"]) == {"a"}


def test_errors_say_what_to_change():
    emb = make_embeddings("a")
    with pytest.raises(SearchError, match="not in this AOI"):
        search_chips(SearchRequest("a", "no-such-chip"), {"a": emb}, {})
    with pytest.raises(SearchError, match="has no .* data"):
        search_chips(SearchRequest("a", "a-000", "s1amp", "s1amp"), {"a": emb}, {})
    with pytest.raises(SearchError, match="at least 1"):
        search_chips(SearchRequest("a", "a-002", k=0), {"a": emb}, {})
    with pytest.raises(SearchError, match="hold no .*coherence"):
        search_chips(SearchRequest("a", "a-002", "coh", "fused"), {"a": emb}, {})
    with pytest.raises(SearchError, match="aoi:chip_id"):
        split_ref("no-colon")
    assert split_ref("a:a-001") == ("a", "a-001")
