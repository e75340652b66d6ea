"""ChipIndex: exact results vs NumPy, save/load, masks, multi-example queries, approximate recall, errors."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from benchmarks.bench_index import brute_force, clustered_unit_vectors, recall_at
from core.index import (AUTO_FLAT_MAX, AUTO_LARGE_KIND, ChipIndex, ChipIndexError, IndexLoadError,
                        choose_kind, gpu_decision, normalise_rows, query_vector, resolve_params, search_cross_modal)

faiss.omp_set_num_threads(1)  # the test machine is shared; one thread keeps timings and results stable


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids_for(n: int) -> np.ndarray:
    return np.array([f"chip-{i:05d}" for i in range(n)])


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    x = unit(rng, 600, 24)
    return x, ids_for(len(x)), unit(rng, 9, 24)


@pytest.fixture(scope="module")
def clustered():
    """20 K clustered unit vectors (the benchmark's generator) plus 100 held-out queries and exact top-10."""
    data = clustered_unit_vectors(20_100, 32, seed=1)
    x, q = data[:20_000], data[20_000:]
    _, truth = brute_force(x, q, 10)
    return x, q, truth


APPROX_PARAMS = {"hnsw": {"efSearch": 64}, "ivfpq": {"nprobe": 24}}


@pytest.fixture(scope="module")
def approx(clustered):
    """HNSW and IVF-PQ(+refine) indexes of the clustered set, built once for the module (read-only)."""
    x = clustered[0]
    return {k: ChipIndex.build(x, ids_for(len(x)), kind=k, params=p) for k, p in APPROX_PARAMS.items()}


def numpy_top(x, q, k):
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


# ----------------------------------------------------------------------------- exact search
def test_flat_matches_numpy_brute_force(small):
    x, ids, q = small
    index = ChipIndex.build(x, ids)
    assert index.kind == "flat" and index.ntotal == 600 and index.dim == 24 and not index.on_gpu
    s, p = index.search(q, 10)
    ts, tp = numpy_top(x, q, 10)
    np.testing.assert_array_equal(p, tp)
    np.testing.assert_allclose(s, ts, atol=1e-5)
    assert s.dtype == np.float32 and p.dtype == np.int64 and s.shape == p.shape == (9, 10)
    # a 1-D query is one query; unnormalised queries are normalised (cosine semantics)
    s1, p1 = index.search(q[0] * 7.5, 10)
    np.testing.assert_array_equal(p1[0], tp[0])
    np.testing.assert_allclose(s1[0], ts[0], atol=1e-5)


def test_build_normalises_and_pads_when_k_exceeds_ntotal():
    rng = np.random.default_rng(1)
    x = unit(rng, 5, 8) * np.array([[1.0], [2.0], [0.5], [3.0], [10.0]], dtype=np.float32)
    index = ChipIndex.build(x, ids_for(5))
    np.testing.assert_allclose(np.linalg.norm(index.vectors(np.arange(5)), axis=1), 1.0, atol=1e-5)
    s, p = index.search(x[0], 8)
    assert sorted(p[0, :5].tolist()) == [0, 1, 2, 3, 4] and (p[0, 5:] == -1).all() and np.isneginf(s[0, 5:]).all()
    assert p[0, 0] == 0 and s[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_search_ids_excludes_self_and_maps_ids(small):
    x, ids, _ = small
    index = ChipIndex.build(x, ids)
    s, p = index.search_ids(["chip-00003", "chip-00010"], 5)
    _, tp = numpy_top(x, x[[3, 10]], 6)
    np.testing.assert_array_equal(p, tp[:, 1:])  # the chip itself (rank 0) is dropped
    s2, p2 = index.search_ids("chip-00003", 5, exclude_self=False)
    assert p2[0, 0] == 3 and s2[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert index.chip_ids_of(p[0]).tolist() == [f"chip-{i:05d}" for i in tp[0, 1:]]
    assert index.chip_ids_of(np.array([-1, 0])).tolist() == ["", "chip-00000"]


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind,params", [("flat", None), ("hnsw", {"efSearch": 32}),
                                         ("ivfpq", {"nlist": 16, "m": 4, "nbits": 6, "nprobe": 4}),
                                         ("ivfpq", {"nlist": 16, "m": 8, "nbits": 6, "nprobe": 16, "refine": False})])
def test_save_load_round_trip(tmp_path, kind, params):
    rng = np.random.default_rng(2)
    x, q = unit(rng, 3000, 16), unit(rng, 12, 16)
    index = ChipIndex.build(x, ids_for(3000), kind=kind, params=params)
    s, p = index.search(q, 7)
    out = index.save(tmp_path / "idx")
    assert sorted(f.name for f in out.iterdir()) == ["ids.npy", "index.faiss", "meta.json"]
    assert [f.name for f in tmp_path.iterdir()] == ["idx"]  # no temp siblings left behind
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == kind and meta["dim"] == 16 and meta["ntotal"] == 3000
    assert meta["faiss_version"] == faiss.__version__ and meta["params"] == index.params
    loaded = ChipIndex.load(out, dim=16)
    assert loaded.kind == kind and loaded.params == index.params and loaded.ids.tolist() == index.ids.tolist()
    s2, p2 = loaded.search(q, 7)
    np.testing.assert_array_equal(p2, p)
    np.testing.assert_allclose(s2, s, atol=1e-6)
    np.testing.assert_array_equal(loaded.search_ids(["chip-00042"], 3)[1], index.search_ids(["chip-00042"], 3)[1])
    # saving again over it swaps the directory whole
    ChipIndex.build(x[:100], ids_for(100)).save(out)
    assert ChipIndex.load(out).ntotal == 100


def test_load_errors(tmp_path, small):
    x, ids, _ = small
    with pytest.raises(IndexLoadError, match="no index at"):
        ChipIndex.load(tmp_path / "nothing")
    path = ChipIndex.build(x, ids).save(tmp_path / "idx")
    with pytest.raises(IndexLoadError, match="expected"):
        ChipIndex.load(path, dim=128)
    np.save(path / "ids.npy", ids[:10])
    with pytest.raises(IndexLoadError, match="inconsistent sizes"):
        ChipIndex.load(path)
    np.save(path / "ids.npy", ids)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(dict(meta, dim=99)))
    with pytest.raises(IndexLoadError, match="dimension 24 != meta.json dim 99"):
        ChipIndex.load(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(IndexLoadError, match="unreadable"):
        ChipIndex.load(path)
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexLoadError, match="not a readable FAISS index"):
        ChipIndex.load(path)
    (path / "index.faiss").unlink()
    with pytest.raises(IndexLoadError, match=r"lacks \['index.faiss'\]"):
        ChipIndex.load(path)


# ----------------------------------------------------------------------------- masks
def test_mask_restricts_results_exactly(small):
    x, ids, q = small
    index = ChipIndex.build(x, ids)
    mask = np.zeros(len(x), bool)
    mask[np.random.default_rng(3).choice(len(x), 150, replace=False)] = True
    s, p = index.search(q, 10, mask=mask)
    assert mask[p].all()
    allowed = np.flatnonzero(mask)
    ts, tp = numpy_top(x[allowed], q, 10)
    np.testing.assert_array_equal(p, allowed[tp])
    np.testing.assert_allclose(s, ts, atol=1e-5)
    # fewer allowed rows than k: padding; nothing allowed: all padding
    few = np.zeros(len(x), bool)
    few[[5, 7]] = True
    s, p = index.search(q, 4, mask=few)
    assert set(p[:, :2].ravel()) <= {5, 7} and (p[:, 2:] == -1).all() and np.isneginf(s[:, 2:]).all()
    s, p = index.search(q, 3, mask=np.zeros(len(x), bool))
    assert (p == -1).all() and np.isneginf(s).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_mask_on_approximate_kinds(clustered, approx, kind):
    x, q, _ = clustered
    index = approx[kind]
    rng = np.random.default_rng(4)
    # small subset: answered exactly over the allowed rows
    small_mask = np.zeros(len(x), bool)
    small_mask[rng.choice(len(x), 500, replace=False)] = True
    s, p = index.search(q[:20], 10, mask=small_mask)
    allowed = np.flatnonzero(small_mask)
    _, tp = numpy_top(x[allowed], q[:20], 10)
    np.testing.assert_array_equal(p, allowed[tp])
    # nearly all rows (still <= EXACT_SUBSET_MAX here; the selector path has its own test below)
    big = np.ones(len(x), bool)
    _, tp_all = numpy_top(x, q[:20], 1)
    big[tp_all[:, 0]] = False  # exclude each query's true nearest neighbour
    s, p = index.search(q[:20], 10, mask=big)
    assert big[p[p >= 0]].all() and not np.isin(tp_all[:, 0], p).any()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_mask_selector_path(monkeypatch, clustered, approx, kind):
    """Force the FAISS IDSelector path (used for big masks) and check it filters and keeps recall."""
    import core.index as ci

    monkeypatch.setattr(ci, "EXACT_SUBSET_MAX", 0)
    x, q, _ = clustered
    index = approx[kind]
    mask = np.arange(len(x)) % 3 != 0
    s, p = index.search(q, 10, mask=mask)
    assert (p >= 0).all() and mask[p].all()
    allowed = np.flatnonzero(mask)
    _, tp = numpy_top(x[allowed], q, 10)
    assert recall_at(p, allowed[tp], 10) >= 0.9


# ----------------------------------------------------------------------------- multi-example queries
def _three_groups(seed: int = 5):
    """Chips near centre A (0-19), near centre B (20-39), and 300 unrelated chips."""
    rng = np.random.default_rng(seed)
    d = 32
    a, b = unit(rng, 1, d)[0], unit(rng, 1, d)[0]
    near_a = normalise_rows(a + 0.25 * rng.normal(size=(20, d)) / np.sqrt(d))
    near_b = normalise_rows(b + 0.25 * rng.normal(size=(20, d)) / np.sqrt(d))
    other = unit(rng, 300, d)
    x = np.concatenate([near_a, near_b, other])
    return x, ids_for(len(x))


def test_multi_positive_query_ranks_both_groups_above_unrelated():
    x, ids = _three_groups()
    index = ChipIndex.build(x, ids)
    q = query_vector(x[[0, 20]])
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-6)
    s, p = index.search(q, 40)
    assert set(p[0].tolist()) == set(range(40))  # every chip of both groups before any unrelated one
    # a single positive would have found only its own group first
    _, p_a = index.search(x[0], 20)
    assert set(p_a[0].tolist()) == set(range(20))


def test_negative_example_moves_similar_chip_down():
    x, ids = _three_groups()
    index = ChipIndex.build(x, ids)
    pos, target = x[[0]], 25  # chip 25 sits in group B
    q_pos = query_vector(np.concatenate([pos, x[[20]]]))
    _, p_before = index.search(q_pos, 340)
    rank_before = int(np.flatnonzero(p_before[0] == target)[0])
    q_neg = query_vector(np.concatenate([pos, x[[20]]]), negatives=x[[21, 22]], neg_weight=0.8)
    _, p_after = index.search(q_neg, 340)
    rank_after = int(np.flatnonzero(p_after[0] == target)[0])
    assert rank_before < 40 and rank_after > rank_before + 10
    assert set(p_after[0, :20].tolist()) == set(range(20))  # group A (the remaining positive) leads


def test_query_vector_math_and_errors():
    rng = np.random.default_rng(6)
    pos, neg = unit(rng, 3, 8), unit(rng, 2, 8)
    q = query_vector(pos, neg, neg_weight=0.5)
    ref = pos.mean(0) - 0.5 * neg.mean(0)
    np.testing.assert_allclose(q, ref / np.linalg.norm(ref), atol=1e-6)
    np.testing.assert_allclose(query_vector(pos[0] * 3), pos[0], atol=1e-6)
    with pytest.raises(ChipIndexError, match="cancel"):
        query_vector(pos[:1], pos[:1], neg_weight=1.0)
    with pytest.raises(ChipIndexError, match="dimension"):
        query_vector(pos, unit(rng, 1, 4))
    with pytest.raises(ChipIndexError, match="NaN"):
        query_vector(np.full((1, 8), np.nan))


def test_cross_modal_search_finds_same_chip():
    rng = np.random.default_rng(7)
    opt = unit(rng, 400, 32)
    sar = normalise_rows(opt + 0.4 * rng.normal(size=opt.shape) / np.sqrt(32))  # same chips, other modality
    ids = ids_for(400)
    sar_index = ChipIndex.build(sar, ids)
    _, p = search_cross_modal(sar_index, ids, opt, ids[:50].tolist(), 1)
    assert (p[:, 0] == np.arange(50)).mean() >= 0.95
    with pytest.raises(ChipIndexError, match="no source vector"):
        search_cross_modal(sar_index, ids, opt, ["nope"], 1)


# ----------------------------------------------------------------------------- approximate kinds
@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_recall(clustered, approx, kind):
    x, q, truth = clustered
    index = approx[kind]  # ivfpq: default nlist (4 sqrt N, capped at N/39 training points per list), m = dim/4
    if kind == "ivfpq":
        assert index.params["nlist"] == min(round(4 * np.sqrt(20_000)), 20_000 // 39) and index.params["m"] == 8
    _, p = index.search(q, 10)
    assert recall_at(p, truth, 10) >= 0.9
    # refined IVF-PQ and HNSW return exact inner products for what they find
    s, p = index.search(q[:5], 3)
    np.testing.assert_allclose(s, np.einsum("qd,qkd->qk", q[:5], x[p]), atol=1e-4)
    assert index.params == resolve_params(kind, len(x), x.shape[1], APPROX_PARAMS[kind])


def test_set_search_params(small):
    x, ids, q = small
    index = ChipIndex.build(x, ids, kind="hnsw", params={"efSearch": 8, "M": 8})
    index.set_search_params(efSearch=600)  # efSearch >= N: the graph search becomes exhaustive
    np.testing.assert_array_equal(index.search(q, 10)[1], numpy_top(x, q, 10)[1])
    with pytest.raises(ChipIndexError, match="not search parameters"):
        index.set_search_params(nprobe=3)
    with pytest.raises(ChipIndexError, match=">= 1"):
        index.set_search_params(efSearch=0)


def test_auto_kind_and_params():
    assert choose_kind(AUTO_FLAT_MAX) == "flat" and choose_kind(AUTO_FLAT_MAX + 1) == AUTO_LARGE_KIND
    assert choose_kind(10, "hnsw") == "hnsw"
    p = resolve_params("ivfpq", 1_000_000, 128)
    assert p["nlist"] == 4000 and p["m"] == 32 and p["train_size"] == 64 * 4000 and 1 <= p["nprobe"] <= 4000
    assert resolve_params("ivfpq", 1_000_000, 128, {"nlist": 1024, "nprobe": 7})["nprobe"] == 7
    assert resolve_params("hnsw", 10, 8, {"M": 16})["M"] == 16
    with pytest.raises(ChipIndexError, match="unknown parameter"):
        resolve_params("hnsw", 10, 8, {"nprobe": 3})
    with pytest.raises(ChipIndexError, match="must divide"):
        resolve_params("ivfpq", 10_000, 30, {"m": 7})
    with pytest.raises(ChipIndexError, match="unknown index kind"):
        choose_kind(10, "lsh")


def test_gpu_decision_on_cpu():
    assert gpu_decision("flat", "auto", 0) == (False, "FAISS sees no GPU")
    assert gpu_decision("flat", "auto", 2)[0] and gpu_decision("ivfpq", True, 1)[0]
    assert gpu_decision("ivfpq", False, 4) == (False, "gpu=False")
    assert not gpu_decision("hnsw", "auto", 1)[0]
    with pytest.raises(ChipIndexError, match="FAISS sees no GPU"):
        gpu_decision("flat", True, 0)
    with pytest.raises(ChipIndexError, match="gpu must be"):
        gpu_decision("flat", "yes", 1)
    if faiss.get_num_gpus() == 0:
        index = ChipIndex.build(np.eye(4, dtype=np.float32), ids_for(4), gpu="auto")
        assert not index.on_gpu and index.meta["device"] == "FAISS sees no GPU"
        with pytest.raises(ChipIndexError, match="no GPU"):
            ChipIndex.build(np.eye(4, dtype=np.float32), ids_for(4), gpu=True)


def test_overfetch_path_used_for_gpu_indexes(monkeypatch, small):
    """GPU indexes take no selectors: masks are applied by over-fetching. Run that path with the CPU
    index standing in for the GPU copy (no GPU on CI), including the fall-back past the GPU k limit."""
    import core.index as ci

    x, ids, q = small
    index = ChipIndex.build(x, ids, gpu=False)
    index._gpu_index, index.on_gpu = index._cpu, True
    mask = np.arange(len(x)) % 4 == 1
    allowed = np.flatnonzero(mask)
    ts, tp = numpy_top(x[allowed], q, 10)
    s, p = index.search(q, 10, mask=mask)
    np.testing.assert_array_equal(p, allowed[tp])
    np.testing.assert_allclose(s, ts, atol=1e-5)
    monkeypatch.setattr(ci, "GPU_MAX_K", 16)  # over-fetch would exceed it: CPU selector path instead
    s, p = index.search(q, 10, mask=mask)
    np.testing.assert_array_equal(p, allowed[tp])
    assert index.on_gpu  # restored after the CPU detour


def test_single_queries_run_serially_without_changing_thread_setting(small):
    x, ids, q = small
    index = ChipIndex.build(x, ids)
    faiss.omp_set_num_threads(2)
    try:
        index.search(q[:1], 3)
        assert faiss.omp_get_max_threads() == 2  # restored after the serial search
    finally:
        faiss.omp_set_num_threads(1)


# ----------------------------------------------------------------------------- errors
def test_clear_errors(small):
    x, ids, q = small
    index = ChipIndex.build(x, ids)
    with pytest.raises(ChipIndexError, match="query dimension 5 does not match the index dimension 24"):
        index.search(np.ones((2, 5), np.float32), 3)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ChipIndexError, match="k must be an integer"):
            index.search(q, bad_k)
    with pytest.raises(ChipIndexError, match="NaN"):
        index.search(np.full((1, 24), np.nan), 3)
    with pytest.raises(ChipIndexError, match="all-zero"):
        index.search(np.zeros(24), 3)
    with pytest.raises(ChipIndexError, match="not in this index"):
        index.search_ids(["chip-00001", "missing-chip"], 3)
    with pytest.raises(ChipIndexError, match="mask must be a bool array"):
        index.search(q, 3, mask=np.ones(10, bool))
    with pytest.raises(ChipIndexError, match="0 vectors"):
        ChipIndex.build(np.zeros((0, 24), np.float32), [])
    with pytest.raises(ChipIndexError, match="present flag"):
        ChipIndex.build(np.zeros((3, 24), np.float32), ids_for(3))
    with pytest.raises(ChipIndexError, match="unique"):
        ChipIndex.build(x[:2], ["a", "a"])
    with pytest.raises(ChipIndexError, match="one id per vector"):
        ChipIndex.build(x[:3], ["a", "b"])
    with pytest.raises(ChipIndexError, match="needs >= 256 training vectors"):
        ChipIndex.build(x[:100], ids[:100], kind="ivfpq", params={"nlist": 2})
    assert issubclass(IndexLoadError, ChipIndexError) and issubclass(ChipIndexError, ValueError)
