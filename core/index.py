"""FAISS similarity index over chip embeddings: inner product on L2-normalised vectors (= cosine).

Kinds (`ChipIndex.build(kind=...)`):

- ``flat``: exact `IndexFlatIP`. ``auto`` picks it up to `AUTO_FLAT_MAX` (200 K) vectors.
- ``hnsw``: `IndexHNSWFlat` (graph, M=32, raw vectors kept, so re-scored scores are exact).
- ``ivfpq``: `IndexIVFPQ` (nlist ~ 4 sqrt(N), PQ m = dim/4 x 8 bit) trained on a sample, wrapped
  in `IndexRefineFlat` so the short list is re-ranked with exact inner products.

``auto`` beyond 200 K uses `AUTO_LARGE_KIND` (ivfpq): `benchmarks/bench_index.py` measured it at
recall@10 0.991, 0.74 ms per single query on 2 cores for 10^6 x 128 (target: >= 0.95 at < 5 ms).
Every parameter can be overridden with `params=`; search-time ones (efSearch, nprobe, k_factor) also
with `set_search_params`.

Positions (row numbers 0..ntotal-1) are FAISS labels; `ids` maps them to chip ids. A GPU copy is
made when FAISS sees a GPU (`gpu="auto"`); the CPU index is always kept (saving, selectors).
Searching from several threads is safe: search-time parameters travel with each call
(`faiss.SearchParameters*`), the index itself is never modified after build.

Latency: a call with at most `SERIAL_MAX_QUERIES` queries runs FAISS on the calling thread only. On
cores shared with other busy processes, OpenMP threads otherwise wait for a scheduler slice: measured
here, one IVF-PQ+refine query at 10^5 took 23 ms with 2 threads and 0.26 ms with 1. OpenMP's thread
count is per calling thread, so this does not affect searches running in other threads.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import faiss
import numpy as np

from data.atomic import atomic_dir
from data.cli import KnownError
from data.integrity import folder_manifest

KINDS = ("auto", "flat", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 200_000
# Chosen from benchmarks/bench_index.py at 10^6 x 128 on 2 cores: refined IVF-PQ (nprobe 62) reached
# recall@10 0.991 at 0.74 ms median per single query and built in 129 s; HNSW (efSearch 128) reached
# 0.994 at 0.82 ms but took 660 s to build, and FAISS has no GPU HNSW. kind="hnsw" stays available.
AUTO_LARGE_KIND = "ivfpq"
# A masked search allowing at most this many rows is answered exactly over those rows (a matrix
# product); graph/IVF traversal with a very selective filter loses recall and is no faster.
EXACT_SUBSET_MAX = 32_768
GPU_MAX_K = 2048  # FAISS GPU k / nprobe limit
SERIAL_MAX_QUERIES = 4  # up to this many queries per call: one OpenMP thread (see module docstring)
FORMAT_VERSION = 1
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.npy", "meta.json"

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {},
    # efSearch 128: recall@10 0.994 at 10^6 in bench_index (64: 0.985); M=32 suits 64-256-d embeddings.
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 128},
    # nlist/m/nprobe/train_size None = derived from N and dim in `resolve_params`.
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": None, "k_factor": 8, "refine": True,
              "train_size": None, "seed": 0},
}
SEARCH_PARAMS = {"hnsw": ("efSearch",), "ivfpq": ("nprobe", "k_factor")}


class ChipIndexError(KnownError, ValueError):
    """Bad input to the index (shape, dimension, k, unknown chip id, NaN): the message says the fix."""


class IndexLoadError(ChipIndexError):
    """A saved index directory is missing, incomplete or inconsistent."""


# ----------------------------------------------------------------------------------------- helpers
def normalise_rows(x: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Validate a [N, D] array (finite, non-zero rows) and return it L2-normalised as float32."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ChipIndexError(f"{what} must be a 2-D array [N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ChipIndexError(f"{what} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ChipIndexError(f"{what}: {int(bad.sum())} row(s) contain NaN/inf (first row {int(np.flatnonzero(bad)[0])}); "
                             "drop them or embed those chips again")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] < 1e-12
    if zero.any():
        raise ChipIndexError(f"{what}: {int(zero.sum())} all-zero row(s) (first row {int(np.flatnonzero(zero)[0])}); "
                             "zero vectors mark an absent modality - select rows with the embeddings' present flag")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def query_vector(positives: np.ndarray, negatives: np.ndarray | None = None, *, neg_weight: float = 0.5) -> np.ndarray:
    """Rocchio query: mean of the normalised positives minus neg_weight x mean of the negatives, normalised [D]."""
    pos = normalise_rows(positives, "positives")
    if len(pos) == 0:
        raise ChipIndexError("query_vector needs at least one positive example")
    q = pos.mean(axis=0)
    if negatives is not None and np.asarray(negatives).size:
        neg = normalise_rows(negatives, "negatives")
        if neg.shape[1] != pos.shape[1]:
            raise ChipIndexError(f"negatives have dimension {neg.shape[1]} but positives {pos.shape[1]}")
        if not (np.isfinite(neg_weight) and neg_weight >= 0):
            raise ChipIndexError(f"neg_weight must be a finite number >= 0, got {neg_weight}")
        q = q - neg_weight * neg.mean(axis=0)
    n = float(np.linalg.norm(q))
    if n < 1e-6:
        raise ChipIndexError("the negatives cancel the positives (query vector is zero); use a smaller neg_weight "
                             "or different examples")
    return (q / n).astype(np.float32)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k along axis 1 of a [Q, N] score matrix: (scores [Q,k], columns [Q,k]), best first."""
    n = scores.shape[1]
    kk = min(k, n)
    if kk < n:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n), (scores.shape[0], n))
    s = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(part, order, axis=1)


def _pad(scores: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad/trim results to k columns with -inf / -1; FAISS's own -1 labels get -inf scores."""
    q = scores.shape[0]
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    out_p = np.full((q, k), -1, dtype=np.int64)
    w = min(k, scores.shape[1])
    out_s[:, :w], out_p[:, :w] = scores[:, :w], pos[:, :w]
    out_s[out_p < 0] = -np.inf
    return out_s, out_p


def resolve_params(kind: str, n: int, dim: int, params: dict | None = None) -> dict[str, Any]:
    """Defaults for `kind` filled in from N and dim, overridden by `params` (unknown keys are an error)."""
    if kind not in DEFAULT_PARAMS:
        raise ChipIndexError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    out = dict(DEFAULT_PARAMS[kind])
    params = dict(params or {})
    unknown = set(params) - set(out) - {"kind"}
    if unknown:
        raise ChipIndexError(f"unknown parameter(s) {sorted(unknown)} for a {kind!r} index; valid: {sorted(out)}")
    out.update({k: v for k, v in params.items() if k != "kind"})
    if kind == "ivfpq":
        if out["nlist"] is None:
            # ~4 sqrt(N), but at least ~39 training points per list must exist
            out["nlist"] = int(max(1, min(round(4 * math.sqrt(n)), n // 39)))
        if out["m"] is None:
            # largest divisor of dim not above dim/4 (4 dims per sub-quantizer)
            out["m"] = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
        if dim % int(out["m"]) != 0:
            raise ChipIndexError(f"PQ m={out['m']} must divide the dimension {dim}")
        if out["nprobe"] is None:
            out["nprobe"] = int(min(out["nlist"], max(8, round(out["nlist"] / 64))))
        if out["train_size"] is None:
            out["train_size"] = int(min(n, max(64 * out["nlist"], 256 * 40)))
        for key in ("nlist", "m", "nbits", "nprobe", "train_size"):
            out[key] = int(out[key])
        if out["nlist"] < 1 or out["nprobe"] < 1:
            raise ChipIndexError(f"nlist and nprobe must be >= 1, got {out['nlist']}, {out['nprobe']}")
    if kind == "hnsw":
        for key in ("M", "efConstruction", "efSearch"):
            out[key] = int(out[key])
            if out[key] < 1:
                raise ChipIndexError(f"HNSW {key} must be >= 1, got {out[key]}")
    return out


def choose_kind(n: int, kind: str = "auto") -> str:
    """The concrete kind for N vectors: `flat` up to AUTO_FLAT_MAX, else AUTO_LARGE_KIND (unless given)."""
    if kind not in KINDS:
        raise ChipIndexError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    if kind != "auto":
        return kind
    return "flat" if n <= AUTO_FLAT_MAX else AUTO_LARGE_KIND


def num_gpus() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def gpu_decision(kind: str, gpu: bool | str, n_gpus: int) -> tuple[bool, str]:
    """Whether to put a `kind` index on GPU given the `gpu` setting and FAISS's GPU count, with the reason."""
    if gpu not in ("auto", True, False):
        raise ChipIndexError(f"gpu must be 'auto', True or False, got {gpu!r}")
    if gpu is False:
        return False, "gpu=False"
    if n_gpus <= 0:
        if gpu is True:
            raise ChipIndexError("gpu=True but FAISS sees no GPU: install faiss-gpu (requirements-gpu.txt) on a CUDA "
                                 "machine, or pass gpu='auto'/False")
        return False, "FAISS sees no GPU"
    if kind == "hnsw":
        # FAISS has no GPU HNSW (CAGRA is a different graph); the CPU graph is already sub-millisecond.
        if gpu is True:
            warnings.warn("FAISS has no GPU HNSW index; the hnsw index stays on CPU", stacklevel=3)
        return False, "hnsw has no GPU implementation"
    return True, f"{n_gpus} GPU(s) visible"


# ------------------------------------------------------------------------------------------- index
class ChipIndex:
    """A FAISS index of unit vectors with chip ids; `search` returns (scores, positions) best first."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, kind: str, params: dict[str, Any],
                 meta: dict[str, Any] | None = None, gpu: bool | str = "auto") -> None:
        self._cpu = index
        self.ids = np.asarray(ids)
        self.kind = kind
        self.params = dict(params)
        self.meta = dict(meta or {})
        self._id_pos: dict[str, int] | None = None
        self._keep: list[Any] = []  # python references to sub-objects FAISS does not own
        self._gpu_index: faiss.Index | None = None
        self.on_gpu = False
        if kind == "ivfpq" and not isinstance(faiss.downcast_index(index), faiss.IndexRefine):
            # reconstruct() on IVF needs the id -> list map; built here so searches never modify the index
            faiss.downcast_index(index).make_direct_map()
        self._to_gpu(gpu)

    # ----- construction
    @classmethod
    def build(cls, vectors: np.ndarray, ids: Sequence[str] | np.ndarray, *, kind: str = "auto",
              params: dict | None = None, gpu: bool | str = "auto") -> "ChipIndex":
        """Index vectors [N, D] (normalised here) under chip ids [N]; kind/params as in the module docstring."""
        x = normalise_rows(vectors, "vectors")
        n, dim = x.shape
        if n == 0:
            raise ChipIndexError("cannot build an index from 0 vectors (is the AOI empty or the modality absent?)")
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != n:
            raise ChipIndexError(f"ids must be 1-D with one id per vector: got {ids.shape} ids for {n} vectors")
        ids = ids.astype(str)
        if len(np.unique(ids)) != n:
            raise ChipIndexError("chip ids must be unique (duplicates found)")
        kind = choose_kind(n, kind)
        p = resolve_params(kind, n, dim, params)
        t0 = time.perf_counter()
        keep: list[Any] = []
        if kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(dim)
            index.add(x)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = p["efConstruction"]
            index.add(x)
        else:
            index, keep = _build_ivfpq(x, p)
        meta = {"kind": kind, "params": p, "dim": dim, "ntotal": n, "metric": "inner_product",
                "faiss_version": faiss.__version__, "format_version": FORMAT_VERSION,
                "build_seconds": round(time.perf_counter() - t0, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        out = cls(index, ids, kind, p, meta, gpu=gpu)
        out._keep.extend(keep)
        return out

    def _to_gpu(self, gpu: bool | str) -> None:
        """Clone the CPU index to all GPUs when the decision says so; keep the CPU one for save/selectors."""
        use, reason = gpu_decision(self.kind, gpu, num_gpus())
        self.meta["device"] = reason
        if not use:
            return
        try:
            co = faiss.GpuMultipleClonerOptions()
            co.useFloat16LookupTables = True  # needed for large PQ m on GPU shared memory
            if self.kind == "ivfpq" and self.params.get("refine", True):
                refine = faiss.downcast_index(self._cpu)
                base_gpu = faiss.index_cpu_to_all_gpus(faiss.downcast_index(refine.base_index), co=co)
                faiss.GpuParameterSpace().set_index_parameter(base_gpu, "nprobe", self.params["nprobe"])
                # exact re-ranking stays on CPU over the kept raw vectors
                wrapped = faiss.IndexRefine(base_gpu, refine.refine_index)
                wrapped.k_factor = float(self.params["k_factor"])
                self._keep.extend([base_gpu, refine])
                self._gpu_index = wrapped
            else:
                g = faiss.index_cpu_to_all_gpus(self._cpu, co=co)
                if self.kind == "ivfpq":
                    faiss.GpuParameterSpace().set_index_parameter(g, "nprobe", self.params["nprobe"])
                self._gpu_index = g
            self.on_gpu = True
            self.meta["device"] = f"gpu ({reason})"
        except (RuntimeError, AttributeError) as e:  # unsupported config on this GPU build: stay correct on CPU
            warnings.warn(f"could not move the {self.kind} index to GPU ({e}); searching on CPU", stacklevel=3)
            self._gpu_index, self.on_gpu = None, False
            self.meta["device"] = f"cpu (GPU clone failed: {e})"

    # ----- properties
    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self._cpu.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._cpu.d)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"ChipIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim}, gpu={self.on_gpu})"

    def set_search_params(self, **kw: Any) -> None:
        """Change search-time parameters (hnsw: efSearch; ivfpq: nprobe, k_factor)."""
        allowed = SEARCH_PARAMS.get(self.kind, ())
        bad = set(kw) - set(allowed)
        if bad:
            raise ChipIndexError(f"{sorted(bad)} are not search parameters of a {self.kind!r} index (valid: {list(allowed)})")
        for key, v in kw.items():
            if not (isinstance(v, (int, float)) and v >= 1):
                raise ChipIndexError(f"{key} must be a number >= 1, got {v!r}")
            self.params[key] = int(v) if key != "k_factor" else float(v)
        self.meta["params"] = self.params
        if self.on_gpu and self.kind == "ivfpq":
            target = faiss.downcast_index(self._gpu_index.base_index) if self.params.get("refine", True) else self._gpu_index
            faiss.GpuParameterSpace().set_index_parameter(target, "nprobe", self.params["nprobe"])
            if self.params.get("refine", True):
                self._gpu_index.k_factor = float(self.params["k_factor"])

    # ----- vectors and ids
    def position_of(self, chip_ids: str | Iterable[str]) -> np.ndarray:
        """Positions of chip ids (ChipIndexError naming the unknown ones)."""
        if self._id_pos is None:
            self._id_pos = {c: i for i, c in enumerate(self.ids.tolist())}
        single = isinstance(chip_ids, str)
        wanted = [chip_ids] if single else [str(c) for c in chip_ids]
        missing = [c for c in wanted if c not in self._id_pos]
        if missing:
            raise ChipIndexError(f"{len(missing)} chip id(s) not in this index, e.g. {missing[:5]}; "
                                 f"check the AOI/modality (index holds {self.ntotal} chips, e.g. {self.ids[:2].tolist()})")
        return np.array([self._id_pos[c] for c in wanted], dtype=np.int64)

    def vectors(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """Stored vectors at positions [n, D] (exact for flat/hnsw/refined ivfpq, PQ-decoded otherwise)."""
        pos = np.asarray(positions, dtype=np.int64).ravel()
        if pos.size and (pos.min() < 0 or pos.max() >= self.ntotal):
            raise ChipIndexError(f"positions must be in [0, {self.ntotal}), got range [{pos.min()}, {pos.max()}]")
        src = self._cpu
        if self.kind == "ivfpq":
            src = faiss.downcast_index(self._cpu)
            if isinstance(src, faiss.IndexRefine):
                src = faiss.downcast_index(src.refine_index)  # the exact vectors kept for re-ranking
        return src.reconstruct_batch(pos) if pos.size else np.zeros((0, self.dim), np.float32)

    # ----- search
    def _check_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ChipIndexError(f"k must be an integer >= 1, got {k!r}")
        if self.ntotal == 0:
            raise ChipIndexError("the index is empty; build it from at least one vector")
        q = np.asarray(queries)
        if q.ndim not in (1, 2):
            raise ChipIndexError(f"queries must be [D] or [Q, D], got shape {q.shape}")
        if q.shape[-1] != self.dim:
            raise ChipIndexError(f"query dimension {q.shape[-1]} does not match the index dimension {self.dim} "
                                 "(embeddings from another model?)")
        return normalise_rows(q, "queries")

    def _search_params(self, k: int, sel: Any | None) -> Any | None:
        """Per-call FAISS search parameters (thread-safe: the index itself is not modified)."""
        if self.kind == "flat":
            return faiss.SearchParameters(sel=sel) if sel is not None else None
        if self.kind == "hnsw":
            ps = faiss.SearchParametersHNSW(efSearch=max(self.params["efSearch"], k))
            if sel is not None:
                ps.sel = sel
            return ps
        ivf = faiss.SearchParametersIVF(nprobe=self.params["nprobe"])
        if sel is not None:
            ivf.sel = sel
        if not self.params.get("refine", True):
            return ivf
        ps = faiss.IndexRefineSearchParameters(k_factor=float(self.params["k_factor"]))
        ps.base_index_params = ivf  # the selector filters the candidate list; the refine step re-ranks
        ps._ivf = ivf  # keep the python object alive as long as ps
        return ps

    def _gpu_fetch_factor(self) -> int:
        """How many candidates per result the GPU index is asked for: a refined IVF-PQ asks its base for k * k_factor."""
        if self.kind == "ivfpq" and self.params.get("refine", True):
            return max(1, math.ceil(float(self.params.get("k_factor", 1))))
        return 1

    def _raw_search(self, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One FAISS search of k results (k <= ntotal), optionally through a bitmap selector."""
        if self.on_gpu and mask is None and k * self._gpu_fetch_factor() <= GPU_MAX_K:
            return self._gpu_index.search(q, k)
        sel = bitmap = None
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")  # bit i of byte i>>3 = row i allowed
            sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        params = self._search_params(k, sel)
        serial = len(q) <= SERIAL_MAX_QUERIES
        if serial:  # thread-local OpenMP setting: a parallel region for 1 query only adds waiting
            prev = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
        try:
            d, i = self._cpu.search(q, k, params=params) if params is not None else self._cpu.search(q, k)
        finally:
            if serial:
                faiss.omp_set_num_threads(prev)
        del bitmap, sel  # alive until here on purpose: FAISS reads them during the search
        return d, i

    def search(self, queries: np.ndarray, k: int, *, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores [Q,k] float32, positions [Q,k] int64), padded with -inf / -1.

        mask: optional bool [ntotal], True = row may be returned (an AOI subset, excluding the query...).
        """
        q = self._check_queries(queries, k)
        kk = min(int(k), self.ntotal)
        if mask is None:
            s, p = self._raw_search(q, kk)
            return _pad(s, p, int(k))
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (self.ntotal,):
            raise ChipIndexError(f"mask must be a bool array of shape ({self.ntotal},), got {mask.dtype} {mask.shape}")
        allowed = np.flatnonzero(mask)
        if allowed.size == 0:
            return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), int(k))
        kk = min(kk, allowed.size)
        if self.kind != "flat" and allowed.size <= EXACT_SUBSET_MAX:
            s, cols = top_k(q @ self.vectors(allowed).T, kk)  # exact over the few allowed rows
            return _pad(s.astype(np.float32), allowed[cols], int(k))
        if self.on_gpu:
            s, p = self._overfetch(q, kk, mask, allowed.size)
        else:
            s, p = self._raw_search(q, kk, mask)
        return _pad(s, p, int(k))

    def _overfetch(self, q: np.ndarray, k: int, mask: np.ndarray, n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
        """GPU indexes take no selectors: fetch more than k, drop disallowed rows, grow until k remain."""
        fetch = min(self.ntotal, max(2 * k, math.ceil(1.5 * k * self.ntotal / n_allowed)))
        while True:
            if fetch * self._gpu_fetch_factor() > GPU_MAX_K:  # beyond the GPU limit: the CPU index with a selector
                return self._raw_search_cpu_selector(q, k, mask)
            s, p = self._gpu_index.search(q, fetch)
            ok = (p >= 0) & mask[np.clip(p, 0, None)]
            if ok.sum(axis=1).min() >= k or fetch >= self.ntotal:
                order = np.argsort(~ok, axis=1, kind="stable")  # allowed first, rank order kept
                s, p = np.take_along_axis(s, order, 1)[:, :k], np.take_along_axis(p, order, 1)[:, :k]
                p = np.where(np.take_along_axis(ok, order, 1)[:, :k], p, -1)
                return s, p
            fetch = min(self.ntotal, fetch * 2)

    def _raw_search_cpu_selector(self, q: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        on_gpu, self.on_gpu = self.on_gpu, False
        try:
            return self._raw_search(q, k, mask)
        finally:
            self.on_gpu = on_gpu

    def search_ids(self, chip_ids: str | Sequence[str], k: int, *, exclude_self: bool = True,
                   mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Search with the stored vectors of chip ids; exclude_self drops each query chip from its own results."""
        pos = self.position_of(chip_ids)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ChipIndexError(f"k must be an integer >= 1, got {k!r}")
        q = self.vectors(pos)
        if not exclude_self:
            return self.search(q, k, mask=mask)
        s, p = self.search(q, int(k) + 1, mask=mask)
        keep = p != pos[:, None]
        # keep the first k entries that are not the query chip itself (rank order preserved)
        order = np.argsort(~keep, axis=1, kind="stable")[:, : int(k)]
        return np.take_along_axis(s, order, 1), np.take_along_axis(p, order, 1)

    def chip_ids_of(self, positions: np.ndarray) -> np.ndarray:
        """Chip ids for result positions ('' where the position is -1 padding)."""
        positions = np.asarray(positions)
        out = np.where(positions >= 0, self.ids[np.clip(positions, 0, None)], "")
        return out

    # ----- persistence
    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write index.faiss, ids.npy and meta.json into directory `path`, atomically (temp dir + rename)."""
        path = Path(path)
        meta = dict(self.meta, kind=self.kind, params=self.params, dim=self.dim, ntotal=self.ntotal,
                    faiss_version=faiss.__version__, format_version=FORMAT_VERSION, metric="inner_product")
        meta.pop("device", None)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            faiss.write_index(self._cpu, str(tmp / INDEX_FILE))
            np.save(tmp / IDS_FILE, self.ids.astype(str), allow_pickle=False)
            meta["integrity"] = folder_manifest(tmp, exclude=(META_FILE,))  # checked by `core.pipeline.status`
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, *, dim: int | None = None, gpu: bool | str = "auto") -> "ChipIndex":
        """Load a saved index directory and check it is whole and consistent (IndexLoadError otherwise)."""
        path = Path(path)
        if not path.is_dir():
            raise IndexLoadError(f"no index at {path}: build one with ChipIndex.build(...).save(path)")
        missing = [f for f in (INDEX_FILE, IDS_FILE, META_FILE) if not (path / f).is_file()]
        if missing:
            raise IndexLoadError(f"index directory {path} lacks {missing}; rebuild it")
        try:
            meta = json.loads((path / META_FILE).read_text())
            kind, params, mdim, mn = meta["kind"], meta["params"], int(meta["dim"]), int(meta["ntotal"])
        except (ValueError, KeyError, TypeError) as e:
            raise IndexLoadError(f"{path / META_FILE} is unreadable or incomplete ({e}); rebuild the index") from e
        if kind not in DEFAULT_PARAMS:
            raise IndexLoadError(f"{path / META_FILE} names unknown kind {kind!r}")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise IndexLoadError(f"{path} was written by a newer version (format {meta['format_version']}); update the code")
        try:
            ids = np.load(path / IDS_FILE, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise IndexLoadError(f"{path / IDS_FILE} is unreadable ({e}); rebuild the index") from e
        if ids.ndim != 1:
            raise IndexLoadError(f"{path / IDS_FILE} must hold a 1-D array of chip ids, got shape {ids.shape}")
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as e:
            raise IndexLoadError(f"{path / INDEX_FILE} is not a readable FAISS index ({str(e).splitlines()[0]}); "
                                 "rebuild the index") from e
        if index.d != mdim:
            raise IndexLoadError(f"{path}: index dimension {index.d} != meta.json dim {mdim}; rebuild the index")
        if dim is not None and index.d != int(dim):
            raise IndexLoadError(f"{path} holds {index.d}-d vectors but {dim}-d were expected (another model?)")
        if not (index.ntotal == mn == len(ids)):
            raise IndexLoadError(f"{path}: inconsistent sizes (index {index.ntotal}, ids {len(ids)}, meta {mn}); "
                                 "the directory was modified or partially copied - rebuild the index")
        if meta.get("faiss_version") != faiss.__version__:
            meta["loaded_with_faiss"] = faiss.__version__  # FAISS files are forward-compatible; just record it
        return cls(index, ids, kind, params, meta, gpu=gpu)


def _build_ivfpq(x: np.ndarray, p: dict[str, Any]) -> tuple[faiss.Index, list[Any]]:
    """IVF-PQ trained on a random sample (train_size rows), optionally wrapped in IndexRefineFlat."""
    n, dim = x.shape
    if p["nlist"] > n:
        raise ChipIndexError(f"nlist={p['nlist']} exceeds the number of vectors {n}; use a smaller nlist or kind='flat'")
    quantizer = faiss.IndexFlatIP(dim)
    base = faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT)
    base.cp.spherical = True  # centroids on the unit sphere suit inner-product search of unit vectors
    base.cp.seed = int(p["seed"])
    base.pq.cp.seed = int(p["seed"])
    rng = np.random.default_rng(int(p["seed"]))
    sample = x if p["train_size"] >= n else x[np.sort(rng.choice(n, p["train_size"], replace=False))]
    if len(sample) < 2 ** p["nbits"]:
        raise ChipIndexError(f"IVF-PQ with nbits={p['nbits']} needs >= {2 ** p['nbits']} training vectors, got "
                             f"{len(sample)}; use kind='flat' for small sets")
    base.train(sample)
    if not p.get("refine", True):
        base.add(x)
        return base, [quantizer]
    index = faiss.IndexRefineFlat(base)
    index.k_factor = float(p["k_factor"])
    index.add(x)  # adds PQ codes to the base and raw vectors to the refine store
    return index, [quantizer, base]


def search_cross_modal(index: ChipIndex, source_ids: np.ndarray, source_vectors: np.ndarray,
                       chip_ids: str | Sequence[str], k: int, *, mask: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Query `index` (modality B) with chips' modality-A vectors (same shared space): look up, then search."""
    source_ids = np.asarray(source_ids).astype(str)
    source_vectors = np.asarray(source_vectors)
    if source_vectors.ndim != 2 or len(source_ids) != len(source_vectors):
        raise ChipIndexError(f"source_ids {source_ids.shape} and source_vectors {source_vectors.shape} must align [N], [N, D]")
    lookup = {c: i for i, c in enumerate(source_ids.tolist())}
    wanted = [chip_ids] if isinstance(chip_ids, str) else list(chip_ids)
    missing = [c for c in wanted if c not in lookup]
    if missing:
        raise ChipIndexError(f"{len(missing)} chip id(s) have no source vector, e.g. {missing[:5]}")
    return index.search(source_vectors[[lookup[c] for c in wanted]], k, mask=mask)
