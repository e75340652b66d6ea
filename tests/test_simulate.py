"""The simulator: determinism, seamless tiling, exact labels, physical sanity, stores, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
from scipy.ndimage import binary_erosion
import pytest
import shapely
from pyproj import Transformer

from data.modalities import LABEL_TASKS, MODALITY_KEYS
from data.landcover import (
    AOI_PROFILES,
    BARE,
    BUILTUP,
    CLASS_NAMES,
    CROPLAND,
    FOREST,
    GRASSLAND,
    PIXEL_SIZE_M,
    PROFILES_PATH,
    WATER,
    landcover_block,
    landcover_chips,
    landcover_map,
    load_profiles,
    utm_epsg,
)
from data.sensors import SPECKLE_ENL, parse_channel
from data.simulate import (
    SIMULATOR_VERSION,
    build_default_stores,
    chip_polygons,
    missing_flags,
    simulate_block,
    simulate_store,
)
from data.store import ChipStore
from data.workspace import Workspace
from tests.conftest import REPO

NO_MISSING = {m: 0.0 for m in MODALITY_KEYS}
SMALL = dict(rows=range(190, 196), cols=range(190, 196), chip_size=32)  # 6 x 6 chips of 32 px


def _equal_with_nan(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(a, b)  # NaNs in the same places compare equal


def test_profiles_are_simulated_at_real_places():
    expected = {"conus": (42, -93.5), "south_america": (-3, -60), "china": (36, 115), "pakistan_india": (30, 75),
                "middle_east": (25, 45)}
    assert set(AOI_PROFILES) == set(expected)
    for name, (lat, lon) in expected.items():
        p = AOI_PROFILES[name]
        p.validate()
        assert "(simulated)" in p.title and abs(p.lat - lat) < 1 and abs(p.lon - lon) < 1



def test_profiles_load_from_yaml_with_the_dataclass_types():
    again = load_profiles(PROFILES_PATH)
    assert again == AOI_PROFILES and list(again) == list(AOI_PROFILES)
    for p in again.values():
        assert isinstance(p.parcel_m, tuple) and isinstance(p.green_by_season, tuple)
        assert all(isinstance(v, float) for v in (p.lat, p.lon, p.forest, *p.soil_rgb))
        hash(p)  # profiles key lru_caches


@pytest.mark.parametrize("text, match", [
    ("profiles:\n- name: x\n  title: X (simulated)\n  region: R\n  lat: 1\n  lon: 2\n  description: d\n  forrest: 0.2\n",
     "unknown keys \\['forrest'\\]"),
    ("profiles:\n- name: x\n  title: X (simulated)\n  region: R\n  lat: 1\n  lon: 2\n  description: d\n  towns: 3\n",
     "towns=3.0 must be a share"),
    ("profiles: {}\n", "'profiles:' list"),
    ("profiles: [\n", "cannot read AOI profiles"),
])
def test_bad_profiles_yaml_says_what_is_wrong(tmp_path, text, match):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_profiles(path)


def test_utm_zone_from_the_proj_database_matches_the_zone_rule():
    for lat in (-80.0, -3.0, 0.0, 42.0, 84.0):
        for lon in (-180.0, -93.5, -90.0, 0.0, 5.99, 6.0, 115.0, 179.9, 180.0):
            zone = int((lon + 180.0) // 6.0) % 60 + 1
            assert utm_epsg(lat, lon) == (32600 if lat >= 0 else 32700) + zone, (lat, lon)
    with pytest.raises(ValueError, match="latitudes -80..84"):
        utm_epsg(85.0, 10.0)

def test_deterministic_per_seed():
    a1, r1 = simulate_block("china", seed=3, **SMALL)
    a2, r2 = simulate_block("china", seed=3, **SMALL)
    for m in MODALITY_KEYS:
        assert a1[m].dtype == np.float32
        _equal_with_nan(a1[m], a2[m])
    assert r1.drop(columns="geometry").equals(r2.drop(columns="geometry"))
    assert all(g1.equals(g2) for g1, g2 in zip(r1.geometry, r2.geometry))
    away = range(50, 56)  # away from the central city, which every seed has
    assert (landcover_map("china", away, away, 4, 32) != landcover_map("china", away, away, 3, 32)).mean() > 0.2
    # Other seeds move the AOI, so pretraining chips are not the demo's chips.
    g0, _ = chip_polygons("china", range(190, 191), range(190, 191), 0, 64)
    g4, _ = chip_polygons("china", range(190, 191), range(190, 191), 4, 64)
    assert g0[0].centroid.distance(g4[0].centroid) > 0.05


def test_blocks_tile_seamlessly():
    kw = dict(seed=7, chip_size=32, missing_rates={"s2rgb": 0.3, "s1amp": 0.3, "coh": 0.3})
    big, big_rows = simulate_block("conus", range(200, 202), range(100, 102), **kw)
    k = 0
    for r in (200, 201):
        for c in (100, 101):
            one, one_rows = simulate_block("conus", range(r, r + 1), range(c, c + 1), **kw)
            for m in MODALITY_KEYS:
                _equal_with_nan(big[m][k], one[m][0])
            assert big_rows.iloc[k]["chip_id"] == one_rows.iloc[0]["chip_id"] == f"conus-r{r:04d}-c{c:04d}"
            assert big_rows.iloc[k]["water"] == one_rows.iloc[0]["water"]
            k += 1
    # The class raster of a block is the mosaic of its parts, seams included.
    whole = landcover_map("south_america", range(10, 12), range(20, 23), 1, 16)
    left = landcover_map("south_america", range(10, 12), range(20, 21), 1, 16)
    right = landcover_map("south_america", range(10, 12), range(21, 23), 1, 16)
    _equal_with_nan(whole, np.concatenate([left, right], axis=1))


def test_labels_are_exact_fractions_of_the_map():
    arrays, rows = simulate_block("pakistan_india", seed=0, **SMALL)
    classes = landcover_chips("pakistan_india", SMALL["rows"], SMALL["cols"], 0, 32)
    assert classes.shape == (36, 32, 32)
    n_px = 32 * 32
    np.testing.assert_allclose(rows["water"], (classes == WATER).sum(axis=(1, 2)) / n_px, atol=1e-6)
    np.testing.assert_allclose(rows["builtup"], (classes == BUILTUP).sum(axis=(1, 2)) / n_px, atol=1e-6)
    np.testing.assert_allclose(rows["cropland"], (classes == CROPLAND).sum(axis=(1, 2)) / n_px, atol=1e-6)
    veg = ((classes == FOREST) | (classes == GRASSLAND)).sum(axis=(1, 2)) / n_px
    np.testing.assert_allclose(rows["vegetation"], veg, atol=1e-6)
    labels = rows[list(LABEL_TASKS)].to_numpy()
    assert ((labels >= 0) & (labels <= 1)).all()
    assert (labels.sum(axis=1) <= 1 + 1e-6).all()
    bare = (classes == BARE).sum(axis=(1, 2)) / n_px
    np.testing.assert_allclose(labels.sum(axis=1) + bare, 1.0, atol=1e-5)  # bare counts in no label
    assert rows["simulated"].all() and (rows["aoi"] == "pakistan_india").all()
    assert {a.shape for a in arrays.values()} == {(36, 3, 32, 32), (36, 2, 32, 32)}


def test_landscape_mixes_fit_their_regions():
    frac = {}
    for name in AOI_PROFILES:
        c = landcover_map(name, range(185, 197), range(185, 197), 0, 64)
        frac[name] = np.bincount(c.ravel(), minlength=len(CLASS_NAMES)) / c.size
    assert frac["conus"][CROPLAND] > 0.5
    assert frac["south_america"][FOREST] > 0.6 and frac["south_america"][WATER] > 0.02
    assert frac["china"][BUILTUP] > 0.1 and frac["china"][CROPLAND] > 0.35
    assert frac["pakistan_india"][CROPLAND] > 0.5 and frac["pakistan_india"][WATER] > 0.01  # canals
    assert frac["middle_east"].argmax() == BARE and frac["middle_east"][BUILTUP] > 0.02  # the city at the centre


@pytest.fixture(scope="module")
def conus_block():
    """A moderately sized block (4 x 4 chips of 64 px) with its class map, nothing missing."""
    rows, cols = range(188, 192), range(188, 192)
    arrays, index = simulate_block("conus", rows, cols, 0, 64, missing_rates=NO_MISSING)
    classes = landcover_chips("conus", rows, cols, 0, 64)
    return arrays, classes


def test_sar_water_dark_builtup_bright(conus_block):
    arrays, classes = conus_block
    vv = arrays["s1amp"][:, 0]
    vh = arrays["s1amp"][:, 1]
    lin = 10 ** (vv / 10)
    water, built, land = classes == WATER, classes == BUILTUP, classes != WATER
    assert water.sum() > 200 and built.sum() > 200
    # Median in dB, as calibrated (docs/CALIBRATION.md: water VV -25..-15 dB, real median -17.6); the linear mean
    # is dominated by mixed pixels of thin rivers next to bright banks.
    assert np.median(vv[water]) < -15
    assert np.median(lin[water]) < np.median(lin[land]) / 3  # real: water -17.6 dB vs land -9..-12 dB
    assert lin[built].mean() > lin[classes == CROPLAND].mean()
    lin_vh = 10 ** (vh / 10)
    for c in (WATER, FOREST, GRASSLAND, CROPLAND, BUILTUP):  # cross-pol is weaker than co-pol
        assert lin_vh[classes == c].mean() < lin[classes == c].mean()
    # Forest: volume scattering gives the strongest cross-pol return outside towns.
    for c in (WATER, GRASSLAND, CROPLAND):
        assert lin_vh[classes == FOREST].mean() > lin_vh[classes == c].mean()


def test_coherence_by_class_and_baseline(conus_block):
    arrays, classes = conus_block
    c12, c36 = arrays["coh"][:, 0], arrays["coh"][:, 1]
    assert np.nanmin(arrays["coh"]) >= 0 and np.nanmax(arrays["coh"]) <= 1
    built = classes == BUILTUP
    veg = (classes == FOREST) | (classes == GRASSLAND)
    assert c12[built].mean() > c12[veg].mean() + 0.3
    assert c36[veg].mean() < c12[veg].mean() - 0.05
    assert c12[classes == WATER].mean() < 0.3


def test_vegetation_greener_than_bare_soil():
    rows, cols = range(188, 192), range(188, 192)
    arrays, _ = simulate_block("south_america", rows, cols, 0, 64, missing_rates=NO_MISSING)
    lc = landcover_block("south_america", rows, cols, 0, 64)
    classes, green = lc.grid.to_chips(lc.classes), lc.grid.to_chips(lc.greenness())
    b4, b3 = arrays["s2rgb"][:, 0], arrays["s2rgb"][:, 1]
    ok = np.isfinite(b4)
    forest = ok & (classes == FOREST)
    soil = ok & ((classes == BARE) | ((classes == CROPLAND) & (green < 0.2)))
    assert forest.sum() > 1000 and soil.sum() > 50
    ndvi_like = (b3 - b4) / (b3 + b4)  # green-red index: positive for canopy, ~0 or below for soil
    assert ndvi_like[forest].mean() > ndvi_like[soil].mean() + 0.15
    assert b4[forest].mean() < b4[soil].mean()
    water = ok & (classes == WATER)
    assert b3[water].mean() < b3[soil].mean()


def test_speckle_is_multiplicative():
    """Std/mean of linear intensity is ~1/sqrt(ENL) on a dark and on a bright homogeneous class."""
    cvs = {}
    for aoi, cls in (("middle_east", BARE), ("south_america", FOREST)):
        rows, cols = range(150, 152), range(150, 154)
        arrays, _ = simulate_block(aoi, rows, cols, 0, 64, missing_rates=NO_MISSING)
        classes = landcover_chips(aoi, rows, cols, 0, 64)
        lin = 10 ** (arrays["s1amp"][:, 0] / 10)
        # Per chip, so slow trends (incidence, moisture) barely matter.
        # Interior pixels only: the sensor footprint mixes pixels at class edges with their neighbours.
        interior = [binary_erosion(classes[i] == cls, iterations=2) for i in range(len(lin))]
        per_chip = [lin[i][m] for i, m in enumerate(interior) if m.sum() > 1500]
        assert per_chip
        cvs[aoi] = (np.mean([x.std() / x.mean() for x in per_chip]), np.mean([x.mean() for x in per_chip]))
    (cv_dark, mean_dark), (cv_bright, mean_bright) = cvs["middle_east"], cvs["south_america"]
    assert mean_bright > 5 * mean_dark  # very different brightness ...
    expected = 1 / np.sqrt(SPECKLE_ENL)
    for cv in (cv_dark, cv_bright):  # ... same relative spread: speckle scales with the signal
        assert abs(cv - expected) < 0.03, (cv, expected)


def test_missing_modalities_rates_and_arrays():
    rates = {"s2rgb": 0.3, "s1amp": 0.1, "coh": 0.0}
    flags = missing_flags("china", range(0, 40), range(0, 40), 0, rates)
    for m, r in rates.items():
        assert abs(flags[m].mean() - r) < 0.04
    arrays, rows = simulate_block("china", seed=0, missing_rates={"s2rgb": 0.5, "s1amp": 0.5, "coh": 0.5}, **SMALL)
    flags = missing_flags("china", SMALL["rows"], SMALL["cols"], 0, {"s2rgb": 0.5, "s1amp": 0.5, "coh": 0.5})
    for m in MODALITY_KEYS:
        all_nan = np.isnan(arrays[m]).all(axis=(1, 2, 3))
        np.testing.assert_array_equal(all_nan & flags[m], flags[m])  # flagged chips are entirely NaN
        if m != "s2rgb":  # SAR and coherence have no holes apart from whole missing chips
            assert np.isfinite(arrays[m][~flags[m]]).all()
        assert 0 < flags[m].sum() < len(rows)
    # Clouds: some S2 pixels masked in a cloudy AOI even where the modality is present.
    arrays, _ = simulate_block("south_america", range(180, 186), range(180, 186), 0, 32, missing_rates=NO_MISSING)
    cloudy = np.isnan(arrays["s2rgb"]).mean()
    assert 0.05 < cloudy < 0.6


def test_channels_are_configuration():
    chans = {"s1amp": ["VV_summer", "VH_summer", "VV_winter", "VH_winter"], "coh": ["VV_6d", "VV_48d"]}
    arrays, _ = simulate_block("conus", range(188, 191), range(188, 191), 0, 32, channels=chans,
                               missing_rates=NO_MISSING)
    assert set(arrays) == {"s1amp", "coh"}
    assert arrays["s1amp"].shape == (9, 4, 32, 32) and arrays["coh"].shape == (9, 2, 32, 32)
    classes = landcover_chips("conus", range(188, 191), range(188, 191), 0, 32)
    crop = classes == CROPLAND
    vh_summer, vh_winter = (10 ** (arrays["s1amp"][:, i] / 10)[crop].mean() for i in (1, 3))
    assert vh_summer > vh_winter  # green canopy in summer: more volume scattering
    assert arrays["coh"][:, 1][crop].mean() < arrays["coh"][:, 0][crop].mean()
    assert parse_channel("coh", "VV_summer_36d").baseline_days == 36
    with pytest.raises(ValueError, match="unknown coh channel 'VV_12x'"):
        simulate_block("conus", range(0, 1), range(0, 1), 0, 16, channels={"coh": ["VV_12x"]})
    with pytest.raises(ValueError, match="base must be one of"):
        simulate_block("conus", range(0, 1), range(0, 1), 0, 16, channels={"s2rgb": ["B8"]})
    with pytest.raises(ValueError, match="unknown modalities"):
        simulate_block("conus", range(0, 1), range(0, 1), 0, 16, channels={"lidar": None})
    with pytest.raises(KeyError, match="unknown simulated AOI"):
        simulate_block("atlantis", range(0, 1), range(0, 1), 0, 16)
    with pytest.raises(ValueError, match="outside the conus grid"):
        simulate_block("conus", range(386, 388), range(0, 1), 0, 16)
    with pytest.raises(ValueError, match="missing rate"):
        simulate_block("conus", range(0, 1), range(0, 1), 0, 16, missing_rates={"coh": 1.5})


def test_geometry_is_the_utm_grid():
    rows, cols = range(193, 195), range(193, 195)
    polys, crs = chip_polygons("south_america", rows, cols, 0, 64)
    assert crs == "EPSG:32721"  # southern hemisphere, zone 21 (-60..-54)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform
    side = 64 * PIXEL_SIZE_M
    for poly in polys:
        sq = shapely.transform(poly, lambda x, y: to_utm(x, y), interleaved=False)
        assert abs(sq.area - side**2) / side**2 < 1e-6
        minx, miny, maxx, maxy = sq.bounds
        assert abs(maxx - minx - side) < 1e-3 and abs(maxy - miny - side) < 1e-3
    # Neighbours share their edge; the grid centre sits at the named place.
    assert polys[0].touches(polys[1]) and polys[0].intersection(polys[1]).length > 0
    centre = polys[0].union(polys[3]).centroid
    assert abs(centre.x - -60.0) < 0.05 and abs(centre.y - -3.0) < 0.05
    _, crs_n = chip_polygons("conus", range(0, 1), range(0, 1), 0, 64)
    assert crs_n == "EPSG:32615"


def test_store_round_trip(tmp_path):
    path = tmp_path / "stores" / "china"
    store = simulate_store(path, "china", 6, 6, 0, chip_size=32, progress=False)
    assert isinstance(store, ChipStore) and len(store) == 36
    assert store.meta.simulated and "simulated" in store.meta.title
    assert store.meta.chip_size == 32 and store.meta.pixel_size_m == PIXEL_SIZE_M
    assert store.meta.crs == "EPSG:32650"
    gdf = gpd.read_parquet(path / "chips.parquet")
    assert gdf.crs.to_epsg() == 4326 and len(gdf) == 36 and gdf["simulated"].all()
    reopened = ChipStore.open(path)
    rows = range(store.index["row"].min(), store.index["row"].max() + 1)
    cols = range(store.index["col"].min(), store.index["col"].max() + 1)
    assert len(rows) == len(cols) == 6 and rows.start == (387 - 6) // 2
    arrays, index = simulate_block("china", rows, cols, 0, 32)
    for m in MODALITY_KEYS:
        # float16 storage: dB and reflectance to a few parts in a thousand
        np.testing.assert_allclose(reopened.read(m, slice(None)), arrays[m], rtol=2e-3, atol=2e-3)
        np.testing.assert_array_equal(reopened.available(m), ~np.isnan(arrays[m]).all(axis=(1, 2, 3)))
    for task in LABEL_TASKS:
        np.testing.assert_allclose(reopened.labels(task), index[task], atol=1e-6)
    assert list(reopened.index["chip_id"]) == list(index["chip_id"])
    with pytest.raises(FileExistsError, match="overwrite"):
        simulate_store(path, "china", 6, 6, 0, chip_size=32, progress=False)


def test_build_default_stores_is_idempotent(tmp_path):
    ws = Workspace(tmp_path / "ws")
    kw = dict(chips_per_aoi=4, chip_size=16, aois=["conus", "middle_east"], progress=False)
    assert build_default_stores(ws, workers=2, **kw) == {"conus": "built", "middle_east": "built"}
    assert ws.list_stores() == ["conus", "middle_east"]
    assert len(ws.open_store("middle_east")) == 4
    mtime = (ws.store_path("conus") / "store.json").stat().st_mtime_ns
    assert build_default_stores(ws, workers=2, **kw) == {"conus": "skipped", "middle_east": "skipped"}
    assert (ws.store_path("conus") / "store.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other settings"):
        build_default_stores(ws, workers=1, seed=1, **kw)
    assert build_default_stores(ws, workers=1, seed=1, overwrite=True, **kw)["conus"] == "rebuilt"
    # A damaged store is rebuilt rather than skipped.
    (ws.store_path("middle_east") / "store.json").write_text("{broken")
    assert build_default_stores(ws, workers=1, seed=1, **kw)["middle_east"] == "rebuilt"
    assert len(ws.open_store("middle_east")) == 4
    # A demo store made by an older simulator version is regenerated, not refused as "other settings".
    meta_path = ws.store_path("conus") / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["meta"]["extra"]["request"]["version"] = SIMULATOR_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    assert build_default_stores(ws, workers=1, seed=1, **kw)["conus"] == "rebuilt"
    assert ws.open_store("conus").meta.extra["request"]["version"] == SIMULATOR_VERSION


def test_cli(tmp_path):
    help_ = subprocess.run([sys.executable, "-m", "data.simulate", "--help"], cwd=REPO, capture_output=True, text=True)
    assert help_.returncode == 0 and "SIMULATED" in help_.stdout and "--overwrite" in help_.stdout
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "data.simulate", "--workspace", str(ws), "--aoi", "pakistan_india", "--rows", "2",
           "--cols", "3", "--chip-size", "16", "--workers", "1", "--missing", "coh=0.5",
           "--channels", "coh=VV_12d,VV_24d"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "built" in done.stdout and "(simulated)" in done.stdout
    store = ChipStore.open(ws / "stores" / "pakistan_india")
    assert len(store) == 6 and store.channels("coh") == ["VV_12d", "VV_24d"]
    assert json.loads((ws / "manifest.json").read_text())["steps"]["simulate"]["aois"] == ["pakistan_india"]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "skipped" in again.stdout
    bad = subprocess.run(cmd[:-1] + ["coh=VV_12x"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown coh channel" in bad.stderr
