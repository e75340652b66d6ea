"""External embeddings (#17): synthetic per-pixel rasters pooled onto a chip grid, then used downstream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject
from streamlit.testing.v1 import AppTest

from core import pipeline
from core.checkpoint import save_checkpoint
from core.evaluate import aoi_series, evaluate_aoi, parse_representations
from core.model import ModelConfig, MultiModalViT
from core.probes import fit_probe, probe_split
from core.representations import (
    RepresentationError,
    as_embeddings,
    external_index,
    is_external,
    list_representations,
    load_representation,
    source_of,
)
from core.search import SearchRequest, search_chips
from data import ingest
from data.external import RESERVED_NAMES, ExternalError, ingest_embeddings, read_external, store_grid
from data.simulate import simulate_store
from data.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
AOI, MODEL = "conus", "ext-tiny"
PX = 8  # raster pixels per chip side (32 store pixels of 70 m = 2,240 m; raster pixels of 280 m)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """A 10 x 10-chip simulated AOI (32 px chips) with an untrained tiny model's embeddings and indexes."""
    torch.set_num_threads(1)
    w = Workspace(tmp_path_factory.mktemp("extws"))
    simulate_store(w.store_path(AOI), AOI, 10, 10, 1, chip_size=32, progress=False)
    cfg = ModelConfig(name=MODEL, chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=32)
    torch.manual_seed(0)
    ckpt = w.root / "checkpoints" / MODEL
    save_checkpoint(ckpt, MultiModalViT(cfg), cfg, meta={"step": 0})
    pipeline.build(w, [AOI], ["embeddings", "index"], checkpoint=ckpt, progress=False)
    return w


def _frame(w: Workspace):
    """(crs, transform, height, width) of a raster whose pixels tile the AOI's chips exactly, PX per chip."""
    grid = store_grid(w, AOI)
    west, north = grid.bounds[:, 0].min(), grid.bounds[:, 3].max()
    side = grid.bounds[0, 2] - grid.bounds[0, 0]
    n_rows, n_cols = int(grid.rows.max() - grid.rows.min() + 1), int(grid.cols.max() - grid.cols.min() + 1)
    return grid, Affine(side / PX, 0, west, 0, -side / PX, north), n_rows * PX, n_cols * PX


def _direct_pool(arr: np.ndarray, valid: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the valid pixels per chip block and L2 norm, with plain numpy ([C, H, W] arr, [H, W] valid)."""
    out = np.full((len(grid.chip_ids), arr.shape[0]), np.nan)
    ok = np.zeros(len(grid.chip_ids), bool)
    r0, c0 = grid.rows.min(), grid.cols.min()
    for i, (r, c) in enumerate(zip(grid.rows - r0, grid.cols - c0)):
        block = arr[:, r * PX:(r + 1) * PX, c * PX:(c + 1) * PX].reshape(arr.shape[0], -1)
        m = valid[r * PX:(r + 1) * PX, c * PX:(c + 1) * PX].ravel()
        if m.any():
            v = block[:, m].mean(axis=1)
            out[i], ok[i] = v / np.linalg.norm(v), True
    return out, ok


def _write_tif(path: Path, arr: np.ndarray, crs, transform, nodata=None, descriptions=None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(arr)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


def _alphaearth(w: Workspace, tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 64-band float GeoTIFF over the AOI: unit vectors, a NaN patch, an all-zero chip and a chip half masked."""
    grid, tr, h, wd = _frame(w)
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(64, h, wd)).astype(np.float32)
    arr /= np.linalg.norm(arr, axis=0, keepdims=True)
    arr[:, 0:PX, 0:PX] = 0.0                     # chip (0, 0): all-zero AlphaEarth pixels -> missing
    arr[:, PX:PX + 3, 0:PX] = np.nan             # chip (1, 0): 3 of 8 pixel rows NaN -> partial
    arr[:, 2 * PX + 1, 2 * PX + 1] = -9999.0     # one nodata pixel in chip (2, 2)
    valid = np.isfinite(arr).all(axis=0) & ~(arr == 0).all(axis=0) & ~(arr == -9999.0).any(axis=0)
    path = _write_tif(tmp / "alphaearth_2024_tile.tif", arr, grid.crs, tr, nodata=-9999.0,
                      descriptions=[f"A{i:02d}" for i in range(64)])
    return path, arr, valid


def test_alphaearth_geotiff_pooling_matches_numpy(ws, tmp_path, capsys):
    path, arr, valid = _alphaearth(ws, tmp_path)
    res = ingest_embeddings(ws, AOI, "alphaearth", [path], product="alphaearth")
    grid = store_grid(ws, AOI)
    expected, ok = _direct_pool(arr, valid, grid)
    ext = read_external(ws, AOI, "alphaearth")
    assert np.array_equal(ext.chip_ids, grid.chip_ids) and np.array_equal(ext.valid, ok)
    np.testing.assert_allclose(ext.X[ok], expected[ok], rtol=1e-5, atol=1e-6)
    assert np.isnan(ext.X[~ok]).all() and res.n_missing == 1 and res.n_partial == 2
    first = (grid.rows == grid.rows.min()) & (grid.cols == grid.cols.min())
    partial = (grid.rows == grid.rows.min() + 1) & (grid.cols == grid.cols.min())
    assert not ext.valid[first][0] and ext.valid_fraction[partial][0] == pytest.approx(5 / 8)
    assert ext.meta["product"] == "alphaearth" and ext.meta["year"] == 2024 and ext.meta["grid"]["kind"] == "store"
    assert ext.meta["sources"][0]["path"].endswith("alphaearth_2024_tile.tif") and "mean" in ext.meta["pooling"]
    # The registry serves it under its name: missing chips are zero vectors with valid False.
    assert "alphaearth" in list_representations(ws, AOI, MODEL) and is_external("alphaearth")
    rep = load_representation(ws, AOI, MODEL, "alphaearth")
    assert rep.X.shape == (100, 64) and not rep.valid[first][0] and (rep.X[~rep.valid] == 0).all()


def test_tessera_int8_with_scales_is_dequantised(ws, tmp_path):
    grid, tr, h, wd = _frame(ws)
    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, size=(h, wd, 128), dtype=np.int8)
    scales = rng.uniform(0.01, 0.05, size=(h, wd)).astype(np.float32)
    scales[PX:2 * PX, PX:2 * PX] = 0.0   # chip (1, 1): no data
    scales[0, 0:4] = 0.0                 # 4 pixels of chip (0, 0)
    np.save(tmp_path / "grid_tile.npy", q)
    np.save(tmp_path / "grid_tile_scales.npy", scales)
    (tmp_path / "grid_tile.json").write_text(json.dumps({"crs": grid.crs.to_string(), "transform": list(tr)[:6]}))
    res = ingest_embeddings(ws, AOI, "tessera", [tmp_path / "grid_tile.npy"], product="tessera")
    deq = np.moveaxis(q.astype(np.float32) * scales[..., None], -1, 0)
    expected, ok = _direct_pool(deq, scales > 0, grid)
    ext = read_external(ws, AOI, "tessera")
    assert np.array_equal(ext.valid, ok) and res.n_missing == 1 and ext.X.shape == (100, 128)
    np.testing.assert_allclose(ext.X[ok], expected[ok], rtol=1e-4, atol=1e-6)


def test_tiles_in_two_utm_zones_are_warped_with_a_note(ws, tmp_path, capsys):
    path, arr, _ = _alphaearth(ws, tmp_path)
    grid, tr, h, wd = _frame(ws)
    half = wd // 2
    left = _write_tif(tmp_path / "left.tif", arr[:, :, :half], grid.crs, tr, nodata=-9999.0)
    # The right half in the neighbouring UTM zone, as a tile of another zone would arrive.
    zone = int(grid.crs.to_epsg())
    other = f"EPSG:{zone + 1}"
    rtr = tr * Affine.translation(half, 0)
    dtr, dw, dh = calculate_default_transform(grid.crs, other, wd - half, h, *rasterio.transform.array_bounds(h, wd - half, rtr))
    right = np.full((64, dh, dw), np.nan, np.float32)
    reproject(np.ascontiguousarray(arr[:, :, half:]), right, src_transform=rtr, src_crs=grid.crs, dst_transform=dtr,
              dst_crs=other, resampling=Resampling.nearest, src_nodata=np.nan, dst_nodata=np.nan)
    right_path = _write_tif(tmp_path / "right.tif", right, other, dtr)
    res = ingest_embeddings(ws, AOI, "two-zones", [left, right_path], product="alphaearth")
    assert any("warped from" in n and other in n for n in res.notes) and "warped from" in capsys.readouterr().out
    assert read_external(ws, AOI, "two-zones").meta["notes"] == res.notes
    ingest_embeddings(ws, AOI, "one-tile", [path], product="alphaearth")
    one = read_external(ws, AOI, "one-tile")
    ext = read_external(ws, AOI, "two-zones")
    assert ext.valid.sum() >= 97  # every chip but the all-zero one (edge chips may lose warped pixels)
    both = ext.valid & one.valid
    cos = (ext.X[both] * one.X[both]).sum(axis=1)
    assert np.median(cos) > 0.95  # nearest-neighbour warping keeps each chip's pooled vector


def test_external_through_index_search_probe_and_evaluation(ws, tmp_path):
    path, _, _ = _alphaearth(ws, tmp_path)
    ingest_embeddings(ws, AOI, "alphaearth", [path], product="alphaearth")
    rep = load_representation(ws, AOI, MODEL, "alphaearth")
    index = external_index(ws, AOI, "alphaearth", rep)
    assert index.ntotal == int(rep.valid.sum())
    assert external_index(ws, AOI, "alphaearth").ntotal == index.ntotal  # loaded from disk, current
    q = int(np.flatnonzero(rep.valid)[3])
    _, pos = index.search(rep.X[q][None], 1)
    assert index.ids[pos[0, 0]] == rep.chip_ids[q]
    emb = as_embeddings(rep, "alphaearth")
    res = search_chips(SearchRequest(AOI, str(rep.chip_ids[q]), "alphaearth", "alphaearth", k=5), {AOI: emb}, {AOI: None})
    assert len(res.results) == 5 and np.isnan(res.map_scores[~rep.valid]).all()
    # UMAP of an external representation: tests/test_project.py (numba's first compile is too slow for this file).
    store = ws.open_store(AOI)
    y = store.labels("vegetation").astype(float)
    pool, test, _ = probe_split(store.index["row"].to_numpy(), store.index["col"].to_numpy(), np.isfinite(y) & rep.valid,
                                seed=0)
    r = fit_probe(rep.X, y, task="vegetation", budget=20, repeats=2, pool=pool, test=test, valid=rep.valid)
    assert np.isfinite(r.metrics["r2"][0])
    assert parse_representations(["fused", "alphaearth", "stats"]) == ("fused", "alphaearth", "stats")
    table = evaluate_aoi(ws, AOI, checkpoint=ws.root / "checkpoints" / MODEL, budgets=[10, None], repeats=1,
                         estimator="ridge", tasks=["vegetation"], split_seeds=[0],
                         representations=["fused", "alphaearth", "stats"])
    assert set(table.series) == {"pretrained fused", "external alphaearth", "stats"}
    ext_rows = table[table.series == "external alphaearth"]
    assert set(ext_rows.model) == {"external"} and ext_rows.n_test.max() <= table.n_test_split.max()
    # The same split for every representation: the test set size comes from the labels, not the representation.
    assert table.groupby("budget").n_test_split.nunique().max() == 1


def test_evaluation_refuses_an_unknown_external_name(ws):
    with pytest.raises(RepresentationError, match="data.ingest embeddings"):
        aoi_series(ws, AOI, checkpoints=[], representations=["nosuchthing"])


def test_reserved_names_cover_the_builtin_representations():
    from core.features import BASELINES
    from core.representations import EMBEDDING_KEYS, HAND_CRAFTED, RANDOM_INIT
    assert {*EMBEDDING_KEYS, RANDOM_INIT, HAND_CRAFTED, *BASELINES} <= RESERVED_NAMES
    assert not is_external("fused") and not is_external("random-init:s2rgb") and source_of("tessera")


def test_store_less_aoi_gets_a_new_grid(tmp_path):
    w = Workspace(tmp_path / "ws")
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(5, 40, 60)).astype(np.float32)
    tr = Affine(10, 0, 500000, 0, -10, 4100000)
    path = _write_tif(tmp_path / "mine.tif", arr, "EPSG:32633", tr)
    with pytest.raises(ExternalError, match="--chip-size"):
        ingest_embeddings(w, "newsite", "mine", [path])
    res = ingest_embeddings(w, "newsite", "mine", [path], chip_size=20)
    assert res.n_chips == 6 and res.n_valid == 6 and res.dim == 5
    ext = read_external(w, "newsite", "mine")
    expected = arr[:, :20, 20:40].reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(ext.X[1], expected / np.linalg.norm(expected), rtol=1e-5)
    import geopandas as gpd
    g = gpd.read_parquet(w.representation_dir("newsite", "mine") / "grid.parquet")
    assert list(g.chip_id) == list(ext.chip_ids) and g.crs.to_epsg() == 4326


# ----------------------------------------------------------------------------------------- bad inputs (CLI, exit 2)
def _cli(ws: Workspace, *args) -> int:
    return ingest.main(["embeddings", "--workspace", str(ws.root), "--aoi", AOI, "--quiet", *map(str, args)])


def test_bad_inputs_exit_2_with_one_line(ws, tmp_path, capsys):
    grid, tr, h, wd = _frame(ws)
    rng = np.random.default_rng(3)
    cases = {}
    cases["wrong band count"] = (_write_tif(tmp_path / "b32.tif", rng.normal(size=(32, h, wd)).astype(np.float32),
                                            grid.crs, tr), "has 32 bands but alphaearth embeddings have 64")
    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", height=h, width=wd, count=64, dtype="float32") as d:
        d.write(rng.normal(size=(64, h, wd)).astype(np.float32))
    cases["no CRS"] = (tmp_path / "nocrs.tif", "has no CRS")
    far = Affine(tr.a, 0, tr.c + 1e6, 0, tr.e, tr.f)
    cases["no overlap"] = (_write_tif(tmp_path / "far.tif", rng.normal(size=(64, h, wd)).astype(np.float32), grid.crs,
                                      far), "no input overlaps the AOI")
    cases["all NaN"] = (_write_tif(tmp_path / "nan.tif", np.full((64, h, wd), np.nan, np.float32), grid.crs, tr),
                        "every pixel over the AOI is masked")
    for what, (path, message) in cases.items():
        assert _cli(ws, "--name", "bad", "--product", "alphaearth", path) == 2, what
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (what, err)
    np.save(tmp_path / "t.npy", rng.integers(-5, 5, size=(h, wd, 128), dtype=np.int8))
    assert _cli(ws, "--name", "bad", "--product", "tessera", "--crs", grid.crs.to_string(), "--transform",
                *list(tr)[:6], tmp_path / "t.npy") == 2
    assert "no scales for the Tessera tile t.npy" in capsys.readouterr().err
    np.save(tmp_path / "nogeo.npy", rng.normal(size=(h, wd, 64)).astype(np.float32))
    assert _cli(ws, "--name", "bad", "--product", "alphaearth", tmp_path / "nogeo.npy") == 2
    assert "has no CRS" in capsys.readouterr().err
    assert _cli(ws, "--name", "fused", "--product", "generic", tmp_path / "b32.tif") == 2
    assert "built-in representation" in capsys.readouterr().err
    assert not ws.representation_dir(AOI, "bad").exists()  # nothing half-written


# ----------------------------------------------------------------------------------------- app
def _open_with_alphaearth(ws, tmp_path, monkeypatch, page: str) -> AppTest:
    """Ingest an AlphaEarth tile into the workspace, then open the app on `page` like a browser session."""
    path, _, _ = _alphaearth(ws, tmp_path)
    ingest_embeddings(ws, AOI, "alphaearth", [path], product="alphaearth")
    monkeypatch.setenv("EO_WORKSPACE", str(ws.root))
    monkeypatch.setenv("EO_CHECKPOINT", MODEL)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(page)
    at.run()
    return at


def test_similarity_page_searches_an_external_representation(ws, tmp_path, monkeypatch):
    at = _open_with_alphaearth(ws, tmp_path, monkeypatch, "pages/similarity.py")
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="sim_query_space").select("alphaearth").run()
    chip = str(read_external(ws, AOI, "alphaearth").chip_ids[5])
    at.selectbox(key="sim_chip::" + AOI).select(chip).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    results = next(t.value for t in at.table if "score" in t.value.columns)
    assert len(results) == 10
    rep = load_representation(ws, AOI, MODEL, "alphaearth")
    q = rep.X[list(rep.chip_ids).index(chip)]
    scores = rep.X @ q
    scores[~rep.valid] = -np.inf
    scores[list(rep.chip_ids).index(chip)] = -np.inf
    assert results["chip_id"].iloc[0] == rep.chip_ids[int(np.argmax(scores))]
    shown = " ".join(str(c.value) for c in at.caption)
    assert "alphaearth" in shown and "external" in shown


def test_probes_and_mapping_pages_use_an_external_representation(ws, tmp_path, monkeypatch):
    at = _open_with_alphaearth(ws, tmp_path, monkeypatch, "pages/probes.py")
    at.selectbox(key="probe_rep").select("alphaearth").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any("alphaearth (external embeddings)" in str(c.value) for c in at.caption)
    assert not any("Inputs present" in str(m.value) for m in at.markdown)  # no modality to drop in it
    at.switch_page("pages/mapping.py")
    at.run()
    at.text_input(key="map_new_name").input("wet").run()
    at.button(key="map_create").click().run()
    at.selectbox(key="map_rep").select("alphaearth").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any("Representation in use: alphaearth" in str(c.value) for c in at.caption)


def test_pipeline_index_step_indexes_external_representations(ws, tmp_path):
    path, _, _ = _alphaearth(ws, tmp_path)
    ingest_embeddings(ws, AOI, "alphaearth", [path], product="alphaearth")  # a fresh ingest: no index yet
    assert not (ws.representation_index_dir(AOI, "alphaearth") / "meta.json").exists()
    actions = pipeline.build(ws, [AOI], ["index"], checkpoint=ws.root / "checkpoints" / MODEL, progress=False)
    assert ("index:alphaearth", "built") in set(zip(actions.step, actions.action))
    again = pipeline.build(ws, [AOI], ["index"], checkpoint=ws.root / "checkpoints" / MODEL, progress=False)
    assert "index:alphaearth" not in set(again.step)  # idempotent
