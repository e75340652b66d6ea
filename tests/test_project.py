"""UMAP projections: shape, NaN rows for absent chips, neighbourhoods kept, workspace cache hit and refresh."""

from __future__ import annotations

import json

import numpy as np
import pytest

import core.project as project
from core.project import ProjectionError, project_aoi, projection_dir, umap_2d, umap_vectors
from data.workspace import Workspace

N, D, CLUSTERS = 300, 16, 3


def clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N unit vectors in 3 well-separated clusters, and their cluster labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, D)) * 3
    labels = rng.integers(0, CLUSTERS, N)
    v = centres[labels] + rng.normal(size=(N, D)) * 0.3
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), labels


def write_embeddings(ws: Workspace, vectors: np.ndarray, present: np.ndarray, created: str) -> None:
    """Embeddings in core.embed's workspace layout (no store: load_embeddings then skips the id check)."""
    d = ws.artifact_dir("embeddings", "aoi1", "tiny-sim", "full")
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "chip_ids.npy", np.array([f"c{i:04d}" for i in range(len(vectors))]))
    np.save(d / "fused.npy", vectors)
    np.savez(d / "present.npz", fused=present)
    (d / "meta.json").write_text(json.dumps({"keys": ["fused"], "dim": vectors.shape[1], "source_sha": "abc",
                                             "chip_ids_digest": "d1", "created": created, "scenario": "full"}))


def test_project_aoi_shape_nan_rows_cache_and_refresh(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    v, labels = clustered()
    present = np.ones(N, bool)
    present[[3, 50, 299]] = False
    write_embeddings(ws, v, present, created="t0")

    xy = project_aoi(ws, "aoi1", "tiny-sim", key="fused")
    assert xy.shape == (N, 2) and xy.dtype == np.float32
    assert np.isnan(xy[~present]).all() and np.isfinite(xy[present]).all()
    # neighbourhoods survive: the 2-D nearest neighbour of a chip is almost always in its own cluster
    p = xy[present]
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert (labels[present][d2.argmin(1)] == labels[present]).mean() > 0.95
    d = projection_dir(ws, "aoi1", "tiny-sim", "full")
    assert (d / "fused.npy").is_file() and json.loads((d / "meta.json").read_text())["fused"]["n_fitted"] == N - 3

    def no_fit(*a, **k):
        raise AssertionError("UMAP refitted although the cache is valid")

    monkeypatch.setattr(project, "umap_vectors", no_fit)
    assert np.array_equal(project_aoi(ws, "aoi1", "tiny-sim", key="fused"), xy, equal_nan=True)
    assert np.array_equal(umap_2d(ws, "aoi1", "tiny-sim", key="fused"), xy, equal_nan=True)  # the app's call form
    monkeypatch.undo()

    # re-embedded (new creation time): recomputed, and with the same seed identical to the first fit
    write_embeddings(ws, v, present, created="t1")
    xy2 = project_aoi(ws, "aoi1", "tiny-sim", key="fused")
    assert json.loads((d / "meta.json").read_text())["fused"]["fingerprint"]["embeddings_created"] == "t1"
    assert np.array_equal(xy2, xy, equal_nan=True)


def test_errors(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ProjectionError, match="core.embed"):
        project_aoi(ws, "nowhere", "tiny-sim")
    v, _ = clustered()
    with pytest.raises(ProjectionError, match="needs at least"):
        umap_vectors(v, present=np.arange(N) < 2)
    with pytest.raises(ProjectionError, match="2-D"):
        umap_vectors(v[0])
    with pytest.raises(ProjectionError, match="one flag per row"):
        umap_2d(v, present=np.ones(5, bool))
    write_embeddings(ws, v, np.ones(N, bool), created="t0")
    with pytest.raises(ProjectionError, match="keys held"):
        project_aoi(ws, "aoi1", "tiny-sim", key="s2rgb")


def test_project_representation_of_external_embeddings(tmp_path):
    """An external representation (data.external, store-less grid of 1-pixel chips) projects like any other."""
    import rasterio
    from affine import Affine

    from core.project import project_representation
    from data.external import ingest_embeddings

    ws = Workspace(tmp_path / "ws")
    v, labels = clustered()
    arr = v.T.reshape(D, 15, 20).copy()  # [C, H, W]: chip i = pixel i (row-major)
    arr[:, 0, 0] = np.nan
    path = tmp_path / "emb.tif"
    with rasterio.open(path, "w", driver="GTiff", height=15, width=20, count=D, dtype="float32", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 4100000)) as dst:
        dst.write(arr)
    ingest_embeddings(ws, "aoi1", "mine", [path], chip_size=1)
    xy = project_representation(ws, "aoi1", "tiny-sim", "mine")
    assert xy.shape == (N, 2) and np.isnan(xy[0]).all() and np.isfinite(xy[1:]).all()
    # Same-cluster neighbours stay together: the nearest point in 2-D shares the cluster for most chips.
    d = np.linalg.norm(xy[1:, None] - xy[None, 1:], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[1:][d.argmin(axis=1)] == labels[1:]).mean() > 0.9


def test_large_sets_fit_umap_on_a_seeded_sample_and_transform_the_rest(tmp_path, monkeypatch):
    """Above UMAP_FIT_SAMPLE rows: fit on a seeded sample, place the others with transform in counted batches;
    the same layout twice; the cached projection records the method and goes stale when the sample size changes."""
    x, _ = clustered()
    present = np.ones(N, dtype=bool)
    present[:10] = False
    seen: list[tuple[float, str]] = []
    a = project.umap_vectors(x, present=present, seed=0, fit_sample=100, progress_cb=lambda f, m: seen.append((f, m)))
    b = project.umap_vectors(x, present=present, seed=0, fit_sample=100)
    np.testing.assert_array_equal(a, b)
    assert np.isnan(a[:10]).all() and np.isfinite(a[10:]).all()
    assert seen[0] == (0.0, f"fitting UMAP on 100 sampled chips (of {N - 10})")
    monkeypatch.setattr(project, "TRANSFORM_BATCH", 100)
    seen.clear()
    project.umap_vectors(x, present=present, seed=0, fit_sample=100, progress_cb=lambda f, m: seen.append((f, m)))
    assert [m for _, m in seen[1:]] == [f"placed {n} of 290 chips" for n in (100, 200, 290)]
    assert [round(f, 3) for f, _ in seen[1:]] == [round(100 / 290, 3), round(200 / 290, 3), 1.0]

    ws = Workspace(tmp_path)
    write_embeddings(ws, x, present, "2026-01-01T00:00:00+00:00")
    meta = ws.artifact_dir("embeddings", "aoi1", "tiny-sim", "full") / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "n_chips": N}))  # as core.embed writes it
    assert project.project_aoi(ws, "aoi1", "tiny-sim", "fused").shape == (N, 2)   # N <= the default sample: all fitted
    assert project.projection_state(ws, "aoi1", "tiny-sim", "fused")[0] == "built"
    monkeypatch.setattr(project, "UMAP_FIT_SAMPLE", 120)
    assert project.projection_state(ws, "aoi1", "tiny-sim", "fused")[0] == "stale"      # the method changed
    project.project_aoi(ws, "aoi1", "tiny-sim", "fused")
    entry = json.loads((project.projection_dir(ws, "aoi1", "tiny-sim") / "meta.json").read_text())["fused"]
    assert entry["params"]["fit_sample"] == 120 and entry["method"] == "fit on a sample + transform"
    assert project.projection_state(ws, "aoi1", "tiny-sim", "fused")[0] == "built"
