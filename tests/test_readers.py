"""Public dataset layouts on the real samples: BigEarthNet-MM pairs, a Sen1Floods11 scene, an M3LEO-style tree."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds

from data.geotiff import IngestError
from data.ingest import main
from data.readers import ingest_bigearthnet, ingest_m3leo, ingest_sen1floods11
from data.readers.bigearthnet import CORINE_TASKS, find_patches
from data.readers.m3leo import S1GRD_BANDS
from data.store import ChipStore
from data.workspace import Workspace
from tests.conftest import SHARED_DATA
from tests.test_ingest import assert_nothing_left, write_tif

BEN = SHARED_DATA / "bigearthnet-mm-example"
FLOODS = SHARED_DATA / "sen1floods11-sample"


@pytest.fixture(scope="module")
def ben_store(tmp_path_factory) -> ChipStore:
    out = tmp_path_factory.mktemp("ben") / "ben"
    ingest_bigearthnet(BEN, "ben", out, progress=False)
    return ChipStore.open(out)


def test_bigearthnet_pairs_one_store(ben_store):
    st = ben_store
    assert len(st) == 6 and not st.meta.simulated
    assert st.modalities == ["s2rgb", "s1amp"] and not st.has_modality("coh")
    idx = st.index
    assert idx["has_s2rgb"].all() and idx["has_s1amp"].all() and not idx["has_coh"].any()
    assert st.meta.extra["ingest"]["missing_modalities"] == ["coh"]
    assert st.meta.chip_size == 120 and st.meta.pixel_size_m == pytest.approx(10.0)
    # three UTM zones: the grid CRS is per chip
    assert set(idx["grid_crs"]) == {"EPSG:32629", "EPSG:32633", "EPSG:32635"}
    for p, row in zip(find_patches(BEN), idx.itertuples()):
        assert row.chip_id == p.s2_dir.name and row.source_s1amp == p.s1_dir.name
        with rasterio.open(p.s2_dir / f"{p.s2_dir.name}_B04.tif") as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
            red = src.read(1).astype(np.float32) / 10000
        c = row.geometry.centroid
        assert c.x == pytest.approx((west + east) / 2, abs=2e-5) and c.y == pytest.approx((south + north) / 2, abs=2e-5)
        # the polygon maps back onto the patch bounds in its UTM zone (to the millimetre)
        back = gpd.GeoSeries([row.geometry], crs=4326).to_crs(row.grid_crs).total_bounds
        np.testing.assert_allclose(back, list(src.bounds), atol=1e-3)
        chip = st.read_chip(row.chip_id)
        np.testing.assert_array_equal(chip["s2rgb"][0], red)
        with rasterio.open(p.s1_dir / f"{p.s1_dir.name}_VV.tif") as src:
            np.testing.assert_array_equal(chip["s1amp"][0], src.read(1))
        assert row.acquired == p.s2_meta["acquisition_date"][:10]


def test_bigearthnet_corine_flags_not_fractions(ben_store):
    idx = ben_store.index
    for task in ("vegetation", "builtup", "cropland", "water"):
        assert idx[task].isna().all(), "CORINE multi-labels give no fractions: they stay unknown"
    finland = idx[idx["corine_labels"].str.contains("Water bodies")]
    assert len(finland) == 1 and finland["corine_water"].all()
    pasture_only = idx[idx["corine_labels"] == "Pastures"].iloc[0]
    assert pasture_only["corine_vegetation"] and not pasture_only["corine_cropland"] and not pasture_only["corine_water"]
    assert set(CORINE_TASKS) >= set("; ".join(idx["corine_labels"]).split("; "))
    assert (idx["corine_unknown"] == "").all()


def test_bigearthnet_s2_without_twin_keeps_s1_missing(tmp_path):
    # copy two S2 patch folders only: their chips have s2rgb and lack s1amp, which is then not stored
    import shutil

    for d in sorted((BEN / "BigEarthNet-S2-Example").iterdir())[:2]:
        shutil.copytree(d, tmp_path / "src" / d.name)
    res = ingest_bigearthnet(tmp_path / "src", "s2only", tmp_path / "s2only", progress=False)
    st = ChipStore.open(tmp_path / "s2only")
    assert res.n_chips == 2 and st.modalities == ["s2rgb"] and res.missing == ["s1amp", "coh"]


def test_sen1floods11_sixteen_chips_with_exact_water(tmp_path):
    res = ingest_sen1floods11(FLOODS, "flood", tmp_path / "flood", progress=False)
    st = ChipStore.open(tmp_path / "flood")
    assert res.n_chips == 16 and len(st) == 16 and st.meta.chip_size == 128
    assert st.modalities == ["s2rgb", "s1amp"] and not st.index["has_coh"].any()
    with rasterio.open(FLOODS / "Labels" / "Spain_7370579_LabelHand.tif") as src:
        label = src.read(1)
    with rasterio.open(FLOODS / "S2" / "Spain_7370579_S2Hand.tif") as src:
        red = src.read(4).astype(np.float32) / 10000
    for row in st.index.itertuples():
        win = label[row.row * 128 : (row.row + 1) * 128, row.col * 128 : (row.col + 1) * 128]
        expected = (win == 1).sum() / (win != -1).sum()
        assert row.water == pytest.approx(expected, abs=1e-6)
        assert row.flood_water == pytest.approx(expected, abs=1e-6)
        np.testing.assert_array_equal(
            st.read("s2rgb", row.Index)[0], red[row.row * 128 : (row.row + 1) * 128, row.col * 128 : (row.col + 1) * 128]
        )
    assert st.index["label_source_water"].str.contains("flood-time").all()
    assert "flood-time" in st.meta.extra["ingest"]["water_label"]
    assert (st.index["acquired"] == "2019-09-18").all() and (st.index["acquired_s1amp"] == "2019-09-17").all()


def _write_m3leo(root, n_chips: int = 3, size: int = 32) -> dict:
    """A tiny M3LEO tree: s2rgbm (12 bands uint8), s1grd (16 int16 dB, no descriptions), gssic (coarser, percent),
    esawc (classes), plus an ignored datakind; chip 2 has no gssic."""
    part = root / "conus" / "conus_partitions_aschips_ab12cd"
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(n_chips):
        cid = f"chip_{i:03d}"
        t = Affine(10.0, 0, 500000 + i * size * 10, 0, -10.0, 4000000)
        rgb_names = [f"{s}_{c}" for s in ("winter", "spring", "summer", "fall") for c in ("red", "green", "blue")]
        rgb = rng.integers(1, 255, (12, size, size), dtype=np.uint8)
        write_tif(part / "s2rgbm" / f"{cid}.tif", rgb, t, "EPSG:32614", descriptions=rgb_names)
        s1 = rng.integers(-25, -3, (16, size, size)).astype(np.int16)
        write_tif(part / "s1grd" / f"{cid}.tif", s1, t, "EPSG:32614")
        if i != 2:
            coh = rng.integers(0, 100, (16, size // 4, size // 4), dtype=np.uint8)
            names = [f"{s}_vv_COH{d}" for s in ("winter", "spring", "summer", "fall") for d in (12, 24, 36, 48)]
            write_tif(part / "gssic" / f"{cid}.tif", coh, t @ Affine.scale(4), "EPSG:32614", descriptions=names)
        wc = rng.choice(np.array([10, 30, 40, 50, 80], np.uint8), (1, size, size))
        write_tif(part / "esawc" / f"{cid}.tif", wc, t, "EPSG:32614", nodata=0)
        write_tif(part / "modisveg" / f"{cid}.tif", rng.integers(0, 100, (1, 4, 4), dtype=np.uint8), t @ Affine.scale(8), "EPSG:32614")
        truth[cid] = {"rgb": rgb, "s1": s1, "wc": wc[0]}
    return truth


def test_m3leo_folder_ingests(tmp_path):
    truth = _write_m3leo(tmp_path / "m3leo")
    ws = Workspace(tmp_path / "ws")
    assert main(["m3leo", str(tmp_path / "m3leo"), "--aoi", "conus_m3leo", "--workspace", str(ws.root), "--quiet"]) == 0
    st = ws.open_store("conus_m3leo")
    assert len(st) == 3 and not st.meta.simulated and st.meta.chip_size == 32
    assert st.channels("s2rgb")[:3] == ["B4_winter", "B3_winter", "B2_winter"] and len(st.channels("s2rgb")) == 12
    assert st.channels("s1amp")[:4] == ["VV_winter_asc", "VV_winter_des", "VH_winter_asc", "VH_winter_des"]
    assert len(st.channels("coh")) == 16 and st.channels("coh")[2] == "VV_winter_36d"
    assert st.index["has_coh"].tolist() == [True, True, False]
    assert st.meta.extra["ingest"]["ignored_datakinds"] == ["modisveg"]
    for row in st.index.itertuples():
        t = truth[row.chip_id]
        chip = st.read_chip(row.chip_id)
        np.testing.assert_allclose(chip["s2rgb"], t["rgb"].astype(np.float32) / 255, rtol=1e-6)
        np.testing.assert_array_equal(chip["s1amp"], t["s1"].astype(np.float32))
        if row.has_coh:
            assert np.nanmin(chip["coh"]) >= 0 and np.nanmax(chip["coh"]) <= 1
        counts = np.bincount(t["wc"].ravel(), minlength=101)
        n = counts.sum()
        assert row.builtup == pytest.approx(counts[50] / n, abs=1e-6)
        assert row.cropland == pytest.approx(counts[40] / n, abs=1e-6)
        assert row.water == pytest.approx(counts[80] / n, abs=1e-6)
        assert row.vegetation == pytest.approx((counts[10] + counts[30]) / n, abs=1e-6)
        assert row.label_source_water == "esawc"
    # the M3LEO band order without descriptions maps onto the channel names
    assert S1GRD_BANDS[2] == "winter_vhasc"


def test_m3leo_bad_layout_leaves_nothing(tmp_path):
    (tmp_path / "m3leo" / "conus" / "conus_partitions_aschips_x" / "esawc").mkdir(parents=True)
    with pytest.raises(IngestError, match="no s2rgbm, s1grd or gssic"):
        ingest_m3leo(tmp_path / "m3leo", "x", tmp_path / "out" / "x", progress=False)
    assert_nothing_left(tmp_path / "out" / "x")
