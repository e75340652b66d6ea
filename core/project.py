"""2-D UMAP projections of an AOI's embeddings, cached in the workspace.

`umap_vectors` projects a matrix; rows not present (a chip without that modality) are left out of the
fit and get NaN coordinates. `project_aoi` caches the result at
`<workspace>/projections/<aoi>/<model>/<scenario>/<key>.npy` with a `meta.json` beside it (one entry
per key: the fingerprint of the embeddings it came from and the UMAP settings). The cache is reused
while the embeddings' source sha, chip ids, creation time and the settings match; otherwise it is
recomputed. Writes are atomic (the array first, then its meta entry), so a crash never leaves a meta
entry pointing at a half-written array.

UMAP compiles with numba on its first call in a process (tens of seconds); later calls are fast.
With a `seed` UMAP runs single-threaded and is reproducible. Above `UMAP_FIT_SAMPLE` rows, UMAP is fitted
on a seeded sample of that many rows and the others are placed with `transform`, in batches that a
progress callback counts (the method and sample size are part of the cached projection's settings).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from data.atomic import atomic_write_bytes, atomic_write_json
from core.embeddings import EmbeddingError, Embeddings, load_embeddings
from core.progress import ProgressCallback
from core.representations import load_representation
from data.cli import KnownError
from data.workspace import ALL_AOIS, SCENARIO_FULL, Workspace

FORMAT_VERSION = 1
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
MIN_POINTS = 4
"""UMAP needs a handful of points to build a neighbour graph; fewer is an error, not a silent layout."""
UMAP_FIT_SAMPLE = 20_000
"""Rows UMAP is fitted on at most (a seeded sample); the others are placed with `transform`. A full fit of
150 K chips per AOI (750 K for five) takes far too long on 2 cores; the sample keeps the layout's shape."""
TRANSFORM_BATCH = 10_000
"""Rows placed per `transform` call: one progress step each."""


class ProjectionError(KnownError, ValueError):
    """A projection cannot be made (too few present rows, bad vectors, missing embeddings): the message says why."""


def umap_vectors(vectors: np.ndarray, *, present: np.ndarray | None = None, seed: int | None = 0,
                 n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "euclidean",
                 fit_sample: int | None = None, progress_cb: ProgressCallback | None = None) -> np.ndarray:
    """UMAP of `vectors [N, D]` -> float32 `[N, 2]`; rows with present False or non-finite values are NaN.

    fit_sample: fit on a seeded sample of at most this many rows and `transform` the others (None: fit all).
    progress_cb(fraction, message): called at each stage, counting the chips placed.
    """
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[1] < 1:
        raise ProjectionError(f"vectors must be a 2-D array [N, D], got shape {v.shape}")
    keep = np.isfinite(v).all(axis=1)
    if present is not None:
        present = np.asarray(present, dtype=bool)
        if present.shape != (len(v),):
            raise ProjectionError(f"present has shape {present.shape}, expected ({len(v)},) (one flag per row)")
        keep &= present
    n_fit = int(keep.sum())
    if n_fit < MIN_POINTS:
        raise ProjectionError(f"only {n_fit} of {len(v)} rows are present with finite vectors; UMAP needs at least "
                              f"{MIN_POINTS} (embed the AOI with the modality present, or pick another key)")
    if fit_sample is not None and int(fit_sample) < MIN_POINTS:
        raise ProjectionError(f"fit_sample must be at least {MIN_POINTS} rows, got {fit_sample}")
    report = progress_cb or (lambda fraction, message: None)
    import umap  # heavy import (numba): only when a projection is actually made

    rows = np.flatnonzero(keep)
    sampled = fit_sample is not None and n_fit > int(fit_sample)
    fit_rows = np.sort(np.random.default_rng(seed).choice(rows, size=int(fit_sample), replace=False)) if sampled else rows
    # On L2-normalised embeddings Euclidean neighbours are cosine neighbours, and Euclidean is faster in numba.
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(int(n_neighbors), len(fit_rows) - 1)),
                        min_dist=float(min_dist), metric=metric, random_state=seed,
                        n_jobs=1 if seed is not None else -1)
    xy = np.full((len(v), 2), np.nan, dtype=np.float32)
    report(0.0, f"fitting UMAP on {len(fit_rows):,} " + (f"sampled chips (of {n_fit:,})" if sampled else "chips"))
    xy[fit_rows] = reducer.fit_transform(v[fit_rows].astype(np.float32)).astype(np.float32)
    rest = np.setdiff1d(rows, fit_rows, assume_unique=True)
    placed = len(fit_rows)
    for a in range(0, len(rest), TRANSFORM_BATCH):
        report(placed / n_fit, f"placed {placed:,} of {n_fit:,} chips")
        batch = rest[a:a + TRANSFORM_BATCH]
        xy[batch] = reducer.transform(v[batch].astype(np.float32)).astype(np.float32)
        placed += len(batch)
    report(1.0, f"placed {n_fit:,} of {n_fit:,} chips")
    return xy


def _array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _load_source(ws: Workspace, aoi: str, model_name: str, key: str, scenario: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vectors, present, fingerprint) of one embeddings key from the workspace (core.embed)."""
    try:
        emb = load_embeddings(ws, aoi, model_name, scenario)
    except EmbeddingError as e:
        raise ProjectionError(str(e)) from e
    return _from_embeddings(emb, aoi, model_name, key, scenario)


def _embeddings_fingerprint(m: dict) -> dict:
    """What a projection was made from, read from the embeddings' meta.json alone (no vectors loaded)."""
    return {"source": "embeddings", "source_sha": m.get("source_sha"), "chip_ids_digest": m.get("chip_ids_digest"),
            "embeddings_created": m.get("created"), "n": int(m.get("n_chips", -1)), "dim": int(m.get("dim", -1))}


def _from_embeddings(emb: Embeddings, aoi: str, model_name: str, key: str, scenario: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if key not in emb.vectors:
        raise ProjectionError(f"no {key!r} embeddings for AOI {aoi!r} ({model_name}, {scenario}); keys held: {emb.keys}")
    vectors, present = emb.get(key)
    return vectors, present, _embeddings_fingerprint({**emb.meta, "n_chips": len(vectors), "dim": vectors.shape[1]})


def projection_dir(ws: Workspace, aoi: str, model_name: str, scenario: str = SCENARIO_FULL) -> Path:
    """Folder of an AOI x model x scenario's projections (`Workspace.projection_dir`)."""
    return ws.projection_dir(aoi, model_name, scenario)


def _read_meta(d: Path) -> dict:
    try:
        return json.loads((d / "meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}  # no or corrupt meta: the cache is simply rebuilt


def fit_sample_for(n_rows: int) -> int | None:
    """The sample UMAP is fitted on for `n_rows` rows: None (all of them) up to `UMAP_FIT_SAMPLE`."""
    return UMAP_FIT_SAMPLE if n_rows > UMAP_FIT_SAMPLE else None


def _params(seed: int | None, n_neighbors: int, min_dist: float, n_rows: int = 0) -> dict:
    params = {"seed": seed, "n_neighbors": int(n_neighbors), "min_dist": float(min_dist), "metric": "euclidean",
              "format_version": FORMAT_VERSION}
    sample = fit_sample_for(n_rows)
    if sample is not None:  # only then: projections of smaller AOIs made before sampling existed stay current
        params.update(method="fit on a sample + transform", fit_sample=sample)
    return params


def projection_state(ws: Workspace, aoi: str, model_name: str, key: str = "fused", scenario: str = SCENARIO_FULL) -> tuple[str, str]:
    """(built / missing / stale, detail) of the cached default UMAP of one embeddings key, as project_aoi would judge it."""
    d = projection_dir(ws, aoi, model_name, scenario)
    entry = _read_meta(d).get(key)
    if not entry or not (d / f"{key}.npy").is_file():
        return "missing", f"no UMAP of the {key} embeddings yet"
    try:
        emb_meta = json.loads((ws.embeddings_dir(aoi, model_name, scenario) / "meta.json").read_text())
    except (OSError, ValueError):
        return "missing", "needs the embeddings first"
    if key not in emb_meta.get("keys", []):
        return "missing", f"the embeddings hold no {key!r} vectors"
    if entry.get("fingerprint") != _embeddings_fingerprint(emb_meta) or entry.get("params") != _params(0, 15, 0.1, int(emb_meta.get("n_chips", 0))):
        return "stale", "the UMAP predates the current embeddings"
    return "built", f"UMAP of {entry.get('n_fitted', '?')} {key} embeddings"


def project_joint(ws: Workspace, embeddings: "Mapping[str, Embeddings]", model_name: str, key: str = "fused",
                  **kwargs: Any) -> np.ndarray:
    """One UMAP of several AOIs' embeddings `[sum N, 2]`: rows AOI by AOI (in the mapping's order), each in store
    order; stored under the joint projection folder (`ALL_AOIS`) and cached by content, so a rebuilt AOI recomputes it."""
    embs = list(embeddings.values())
    vectors = np.concatenate([e.get(key)[0] for e in embs])
    present = np.concatenate([e.get(key)[1] for e in embs])
    ids = np.concatenate([[f"{a}:{c}" for c in e.chip_ids] for a, e in embeddings.items()])
    return project_aoi(ws, ALL_AOIS, model_name, key, vectors=vectors, present=present, chip_ids=ids, **kwargs)


def project_representation(ws: Workspace, aoi: str, model_name: str, name: str, **kwargs: Any) -> np.ndarray:
    """Cached UMAP `[N, 2]` of any named representation (`core.representations`), e.g. an external one;
    NaN rows where a chip has no vector. Stored beside the model's projections, fingerprinted by content."""
    rep = load_representation(ws, aoi, model_name, name)
    return project_aoi(ws, aoi, model_name, name, vectors=rep.X, present=rep.valid, chip_ids=rep.chip_ids, **kwargs)


def project_aoi(ws: Workspace, aoi: str, model_name: str, key: str = "fused", scenario: str = SCENARIO_FULL, *,
                vectors: np.ndarray | None = None, present: np.ndarray | None = None,
                chip_ids: np.ndarray | None = None, embeddings: Embeddings | None = None, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                recompute: bool = False, progress_cb: ProgressCallback | None = None) -> np.ndarray:
    """Cached UMAP `[N, 2]` of one AOI's embeddings key (NaN rows where absent); recomputed when the source changed.

    By default the vectors come from `core.embed.load_embeddings`; pass `vectors` (and optionally
    `present`, `chip_ids`) to project a matrix directly, fingerprinted by its content; pass `embeddings`
    (already loaded) to skip reading them again. Above `UMAP_FIT_SAMPLE` rows UMAP is fitted on a sample and
    the rest transformed (`umap_vectors`); `progress_cb(fraction, message)` follows it.
    """
    if embeddings is not None:
        vectors, present, fp = _from_embeddings(embeddings, aoi, model_name, key, scenario)
    elif vectors is None:
        vectors, present, fp = _load_source(ws, aoi, model_name, key, scenario)
    else:
        vectors = np.asarray(vectors)
        fp = {"source": "vectors", "vectors_digest": _array_digest(vectors),
              "present_digest": None if present is None else _array_digest(np.asarray(present, dtype=bool)),
              "chip_ids_digest": None if chip_ids is None else hashlib.sha256(
                  "\n".join(map(str, np.asarray(chip_ids))).encode()).hexdigest()[:16],
              "n": int(len(vectors)), "dim": int(vectors.shape[1]) if vectors.ndim == 2 else None}
        if chip_ids is not None and len(chip_ids) != len(vectors):
            raise ProjectionError(f"{len(chip_ids)} chip ids for {len(vectors)} vectors: pass one id per row")
    params = _params(seed, n_neighbors, min_dist, len(vectors))
    d = projection_dir(ws, aoi, model_name, scenario)
    if not _SAFE_KEY.match(key) or key in (".", ".."):
        raise ProjectionError(f"bad embeddings key {key!r}: use letters, digits, _ . - (e.g. fused, s2rgb)")
    f = d / f"{key}.npy"
    entry = _read_meta(d).get(key)
    if not recompute and entry and entry.get("fingerprint") == fp and entry.get("params") == params and f.is_file():
        try:
            xy = np.load(f, allow_pickle=False)
            if xy.shape == (fp["n"], 2):
                return xy
        except (OSError, ValueError):
            pass  # damaged cache file: recompute below
    xy = umap_vectors(vectors, present=present, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist,
                      fit_sample=fit_sample_for(len(vectors)), progress_cb=progress_cb)
    buf = io.BytesIO()
    np.save(buf, xy, allow_pickle=False)
    atomic_write_bytes(f, buf.getvalue())
    meta = _read_meta(d)  # re-read: another key may have been written meanwhile
    meta[key] = {"fingerprint": fp, "params": params, "method": params.get("method", "fit on every chip"), "aoi": aoi, "model_name": model_name, "scenario": scenario,
                 "n_fitted": int(np.isfinite(xy[:, 0]).sum()), "umap_version": _umap_version(),
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(d / "meta.json", meta)
    return xy


def _umap_version() -> str:
    return version("umap-learn")


def umap_2d(source: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    """2-D UMAP: `umap_2d(vectors, seed=0, ...)` projects a matrix; `umap_2d(ws, aoi, model_name, key=...)` is cached.

    The two call forms keep the contract's cached call (used by the app) and the plain matrix call.
    """
    if isinstance(source, Workspace):
        return project_aoi(source, *args, **kwargs)
    if args:
        raise TypeError("umap_2d(vectors, ...) takes keyword options only (seed, n_neighbors, min_dist, present)")
    return umap_vectors(source, **kwargs)
