"""Label fractions from the real WorldCover and JRC tiles equal direct counts; GHSL, tiles, attaching to a store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from data.geotiff import IngestError
from data.ingest import main
from data.labels import (
    ChipFootprint,
    LabelRaster,
    footprints_from_index,
    ghsl_counts,
    label_columns,
    worldcover_counts,
)
from data.readers import ModalityInput, ingest_geotiffs
from data.store import ChipStore
from tests.conftest import SHARED_DATA
from tests.test_ingest import write_tif

WORLDCOVER = SHARED_DATA / "worldcover-sample" / "ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"
JRC_CROP = SHARED_DATA / "jrc-gsw-sample" / "occurrence-0000360000-0000480000.tif"
JRC_TILE = SHARED_DATA / "jrc-gsw-sample" / "occurrence_0E_40Nv1_3_2020.tif"
# Sao Tome city: trees, grass, built-up, crops and sea in one 512 x 512 window of the 36000 x 36000 tile
WC_ROW, WC_COL, WC_N = 32200, 8600, 512


def _grid_footprints(path, row0: int, col0: int, n: int, size: int) -> list[ChipFootprint]:
    """Chips of `size` px on the raster's own grid, n x n of them from pixel (row0, col0)."""
    with rasterio.open(path) as src:
        t, crs = src.transform, src.crs.to_string()
    return [
        ChipFootprint(crs, t @ Affine.translation(col0 + c * size, row0 + r * size), size, size)
        for r in range(n)
        for c in range(n)
    ]


def test_worldcover_fractions_equal_bincount():
    with rasterio.open(WORLDCOVER) as src:
        window = src.read(1, window=Window(WC_COL, WC_ROW, WC_N, WC_N))
    fps = _grid_footprints(WORLDCOVER, WC_ROW, WC_COL, 4, WC_N // 4)
    with LabelRaster("worldcover", [WORLDCOVER]) as lr:
        got = lr.fractions(fps)
    k = WC_N // 4
    for i, (r, c) in enumerate((r, c) for r in range(4) for c in range(4)):
        counts = np.bincount(window[r * k : (r + 1) * k, c * k : (c + 1) * k].ravel(), minlength=256)
        valid = counts.sum() - counts[0]
        assert got.loc[i, "vegetation"] == pytest.approx(counts[[10, 20, 30, 90, 95, 100]].sum() / valid, abs=1e-6)
        assert got.loc[i, "builtup"] == pytest.approx(counts[50] / valid, abs=1e-6)
        assert got.loc[i, "cropland"] == pytest.approx(counts[40] / valid, abs=1e-6)
        assert got.loc[i, "water"] == pytest.approx(counts[80] / valid, abs=1e-6)
        assert got.loc[i, "label_valid_worldcover"] == pytest.approx(valid / k**2)
    assert got["water"].max() > 0.3 and got["builtup"].max() > 0.05  # the window really mixes classes


def test_worldcover_nodata_excluded_and_all_nodata_is_nan(tmp_path):
    classes = np.full((1, 8, 8), 0, np.uint8)
    classes[0, :4, :4] = 10
    classes[0, :4, 4:] = 50
    f = write_tif(tmp_path / "wc.tif", classes, Affine(1e-4, 0, 6, 0, -1e-4, 1), "EPSG:4326", nodata=0)
    fps = _grid_footprints(f, 0, 0, 2, 4)
    with LabelRaster("worldcover", [f]) as lr:
        got = lr.fractions(fps)
    assert got.loc[0, "vegetation"] == 1.0 and got.loc[1, "builtup"] == 1.0
    assert got.loc[2:].isna()[["vegetation", "builtup", "cropland", "water"]].all().all()
    assert (got.loc[2:, "label_valid_worldcover"] == 0).all()
    nums, den = worldcover_counts(classes)
    assert den[0] == 32 and nums["builtup"][0] == 16


def test_jrc_permanent_water_equals_direct_count():
    with rasterio.open(JRC_CROP) as src:
        occ = src.read(1)
    fps = _grid_footprints(JRC_CROP, 0, 0, 4, 32)
    for threshold in (90.0, 50.0):
        with LabelRaster("jrc", [JRC_CROP], jrc_threshold=threshold) as lr:
            got = lr.fractions(fps)
        for i, (r, c) in enumerate((r, c) for r in range(4) for c in range(4)):
            w = occ[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32]
            ok = w != 255
            assert got.loc[i, "water"] == pytest.approx(((w >= threshold) & ok).sum() / ok.sum(), abs=1e-6)
    assert got["water"].max() > 0.5


def test_jrc_nodata_tile_gives_nan_where_all_nodata():
    with rasterio.open(JRC_TILE) as src:
        occ = src.read(1)
    fps = _grid_footprints(JRC_TILE, 0, 0, 8, 128)
    with LabelRaster("jrc", [JRC_TILE]) as lr:
        got = lr.fractions(fps)
    for i, (r, c) in enumerate((r, c) for r in range(8) for c in range(8)):
        w = occ[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128]
        ok = w != 255
        if ok.sum() == 0:
            assert np.isnan(got.loc[i, "water"])
        else:
            assert got.loc[i, "water"] == pytest.approx(((w >= 90) & ok).sum() / ok.sum(), abs=1e-6)
    assert got["water"].isna().any() and got["water"].notna().any()


def test_reprojected_chips_agree_with_native_count():
    """UTM chips over Sao Tome: nearest-neighbour fractions match a count on the native window they cover."""
    with rasterio.open(WORLDCOVER) as src:
        t = src.transform
        west, north = t @ (WC_COL, WC_ROW)
        window = src.read(1, window=Window(WC_COL, WC_ROW, WC_N, WC_N))
    from pyproj import Transformer

    x0, y0 = Transformer.from_crs(4326, 32632, always_xy=True).transform(west, north)
    # one UTM chip of 10 m pixels covering ~ the window (512 * 8.33e-5 deg ~ 4.75 km)
    fp = ChipFootprint("EPSG:32632", Affine(10, 0, x0, 0, -10, y0), 470, 470)
    with LabelRaster("worldcover", [WORLDCOVER]) as lr:
        got = lr.fractions([fp]).iloc[0]
    counts = np.bincount(window.ravel(), minlength=256)
    valid = counts.sum() - counts[0]
    assert got["water"] == pytest.approx(counts[80] / valid, abs=0.03)
    assert got["vegetation"] == pytest.approx(counts[[10, 20, 30, 90, 95, 100]].sum() / valid, abs=0.03)


def test_tiles_sum_to_the_single_raster(tmp_path):
    with rasterio.open(WORLDCOVER) as src:
        window = src.read(1, window=Window(WC_COL, WC_ROW, WC_N, WC_N))[None]
        t = src.transform @ Affine.translation(WC_COL, WC_ROW)
    whole = write_tif(tmp_path / "whole.tif", window, t, "EPSG:4326", nodata=0)
    west = write_tif(tmp_path / "west.tif", window[:, :, :200], t, "EPSG:4326", nodata=0)
    east = write_tif(tmp_path / "east.tif", window[:, :, 200:], t @ Affine.translation(200, 0), "EPSG:4326", nodata=0)
    fps = _grid_footprints(whole, 0, 0, 4, 128)
    with LabelRaster("worldcover", [whole]) as a, LabelRaster("worldcover", [west, east]) as b:
        np.testing.assert_allclose(a.fractions(fps).to_numpy(), b.fractions(fps).to_numpy(), rtol=1e-6)


def test_ghsl_builtup_fraction(tmp_path):
    # 100 m Mollweide cells holding built-up m^2; a chip of 4 x 4 cells at 25 m pixels
    built = np.array([[[10000, 5000, 0, 2500], [0, 0, 0, 0], [10000, 10000, 10000, 10000], [65535, 65535, 0, 0]]], np.uint16)
    f = write_tif(tmp_path / "ghsl.tif", built, Affine(100, 0, 1_000_000, 0, -100, 5_000_000), "ESRI:54009", nodata=65535)
    fp = ChipFootprint("ESRI:54009", Affine(25, 0, 1_000_000, 0, -25, 5_000_000), 16, 16)
    with LabelRaster("ghsl", [f]) as lr:
        got = lr.fractions([fp]).iloc[0]
    expected = (1 + 0.5 + 0.25 + 4) / 14  # two nodata cells excluded
    assert got["builtup"] == pytest.approx(expected, abs=1e-6)
    nums, den = ghsl_counts(built.astype(np.float64), 10000.0, 65535)
    assert nums["builtup"][0] / den[0] == pytest.approx(expected)


def test_ghsl_tile_without_nodata_tag_counts_nothing_outside_it(tmp_path):
    built = np.zeros((1, 4, 4), np.uint16)  # no built-up at all, and no nodata tag
    f = write_tif(tmp_path / "ghsl.tif", built, Affine(100, 0, 1_000_000, 0, -100, 5_000_000), "ESRI:54009")
    # A chip half outside the tile: the outside is filled, never counted as built-up.
    fp = ChipFootprint("ESRI:54009", Affine(25, 0, 1_000_000 + 200, 0, -25, 5_000_000), 16, 16)
    with LabelRaster("ghsl", [f]) as lr:
        got = lr.fractions([fp]).iloc[0]
    assert got["builtup"] == 0.0 and got["label_valid_ghsl"] == pytest.approx(0.5)


def test_a_later_product_does_not_erase_labels_where_it_has_none(tmp_path):
    wc = np.full((1, 8, 8), 80, np.uint8)  # all water in WorldCover
    t = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    f_wc = write_tif(tmp_path / "wc.tif", wc, t, "EPSG:32633", nodata=0)
    far = Affine(10, 0, 900_000, 0, -10, 5_000_000)  # a JRC tile somewhere else
    f_jrc = write_tif(tmp_path / "jrc.tif", np.full((1, 8, 8), 100, np.uint8), far, "EPSG:32633", nodata=255)
    fp = ChipFootprint("EPSG:32633", t, 8, 8)
    with LabelRaster("worldcover", [f_wc]) as a, LabelRaster("jrc", [f_jrc]) as b:
        cols = label_columns([a, b], [fp])
    assert cols["water"].iloc[0] == 1.0 and cols["label_source_water"].iloc[0] == "worldcover"


def test_bad_label_inputs():
    with pytest.raises(IngestError, match="unknown label product"):
        LabelRaster("corine", [WORLDCOVER])
    with pytest.raises(IngestError, match="threshold"):
        LabelRaster("jrc", [JRC_CROP], jrc_threshold=150)


def test_labels_attached_at_ingest_and_afterwards(tmp_path, capsys):
    """A real-grid store over Sao Tome gets WorldCover fractions; the `labels` step adds JRC water later."""
    with rasterio.open(WORLDCOVER) as src:
        t = src.transform @ Affine.translation(WC_COL, WC_ROW)
        classes = src.read(1, window=Window(WC_COL, WC_ROW, 256, 256))
    coh = np.random.default_rng(0).uniform(0, 1, (1, 256, 256)).astype(np.float32)
    f = write_tif(tmp_path / "coh.tif", coh, t, "EPSG:4326", descriptions=["VV_12d"])
    ingest_geotiffs("stome", tmp_path / "stome", coh=ModalityInput([f]), chip_size=64,
                    labels={"worldcover": [WORLDCOVER]}, progress=False)
    st = ChipStore.open(tmp_path / "stome")
    assert st.meta.extra["labels"]["worldcover"]["files"] == [WORLDCOVER.name]
    for row in st.index.itertuples():
        counts = np.bincount(classes[row.row * 64 : row.row * 64 + 64, row.col * 64 : row.col * 64 + 64].ravel(), minlength=256)
        assert row.builtup == pytest.approx(counts[50] / (counts.sum() - counts[0]), abs=1e-6)
    assert (st.index["label_source_water"] == "worldcover").all()
    # the labels subcommand with JRC water: that crop is in Brazil, so it says "no overlap", exits 2 and
    # writes nothing (before, it printed success and recorded JRC as attached)
    before = (st.path / "chips.parquet").read_bytes()
    assert main(["labels", "--aoi", "stome", "--out", str(st.path), "--jrc", str(JRC_CROP), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: jrc labels (occurrence-") and "no overlap with the 16 chips of 'stome'" in err
    assert (st.path / "chips.parquet").read_bytes() == before
    # with WorldCover again (overlaps) it is attached, JRC is not, and both facts are said and recorded
    assert main(["labels", "--aoi", "stome", "--out", str(st.path), "--worldcover", str(WORLDCOVER), "--jrc",
                 str(JRC_CROP), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: jrc labels (occurrence-" in err and "not attached" in err
    assert "warning: label columns unchanged: worldcover give the values 'stome' already has" in err
    again = ChipStore.open(tmp_path / "stome")
    assert again.verify() == "ok"  # the rewritten index's checksum was recorded
    np.testing.assert_array_equal(again.labels("water"), st.labels("water"))
    assert (again.index["label_source_water"] == "worldcover").all()
    np.testing.assert_array_equal(again.labels("builtup"), st.labels("builtup"))
    info = json.loads((st.path / "store.json").read_text())
    assert set(info["meta"]["extra"]["labels"]) == {"worldcover"}
    assert any("no overlap" in w for w in info["meta"]["extra"]["label_warnings"])
    assert any("label columns unchanged" in w for w in info["meta"]["extra"]["label_warnings"])
    # footprints come back from the index exactly
    fp = footprints_from_index(again.index, 64)[0]
    assert fp.transform == t and fp.crs == "EPSG:4326"
