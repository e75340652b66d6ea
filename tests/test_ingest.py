"""GeoTIFF ingest: per-band S2 files, reprojection, windowed chip grids, units, resumability, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from data.geotiff import IngestError
from data.ingest import main
from data.readers import ModalityInput, ingest_geotiffs
from data.store import ChipStore
from data.workspace import Workspace
from tests.conftest import SHARED_DATA

BEN_S2 = SHARED_DATA / "bigearthnet-mm-example" / "BigEarthNet-S2-Example"
BEN_S1 = SHARED_DATA / "bigearthnet-mm-example" / "BigEarthNet-S1-Example"
PATCH = "S2A_MSIL2A_20170613T101031_87_48"
PATCH_S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
OTHER_S1 = "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"
FLOODS = SHARED_DATA / "sen1floods11-sample"


def write_tif(
    path: Path, data: np.ndarray, transform: Affine, crs: str | None, *, nodata=None, descriptions=None, tiled: bool = False
) -> Path:
    """Write `[C, H, W]` to a GeoTIFF (creating folders); `crs=None` writes a file without CRS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                   transform=transform, nodata=nodata)
    if crs is not None:
        profile["crs"] = crs
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def assert_nothing_left(store: Path) -> None:
    """No store and no hidden temp sibling of it exist."""
    store = Path(store)
    assert not store.exists()
    if store.parent.exists():
        assert not [p.name for p in store.parent.iterdir() if p.name.startswith(f".{store.name}.")]


def _ben_band(band: str) -> Path:
    return BEN_S2 / PATCH / f"{PATCH}_{band}.tif"


def test_per_band_s2_files_one_command(tmp_path):
    ws = Workspace(tmp_path / "ws")
    files = [str(_ben_band(b)) for b in ("B02", "B03", "B04")]
    argv = ["geotiff", "--aoi", "austria", "--s2", *files, "--chip-size", "60", "--workspace", str(ws.root), "--quiet"]
    assert main(argv) == 0
    st = ws.open_store("austria")
    assert st.modalities == ["s2rgb"] and st.channels("s2rgb") == ["B4", "B3", "B2"]
    assert not st.index["has_s1amp"].any() and not st.index["has_coh"].any()
    assert st.meta.extra["ingest"]["missing_modalities"] == ["s1amp", "coh"] and not st.meta.simulated
    assert len(st) == 4 and st.meta.crs == "EPSG:32633"
    with rasterio.open(_ben_band("B04")) as src:
        red = src.read(1).astype(np.float32) / 10000
    for row in st.index.itertuples():
        np.testing.assert_array_equal(st.read("s2rgb", row.Index)[0], red[row.row * 60 : row.row * 60 + 60, row.col * 60 : row.col * 60 + 60])
    assert (st.index["acquired"] == "2017-06-13").all() and (st.index["source_crs"] == "EPSG:32633").all()
    assert "ingest:austria" in ws.manifest["steps"]
    # resumable: the same command finds the finished store; other settings need --overwrite
    before = (st.path / "store.json").stat().st_mtime_ns
    assert main(argv) == 0 and (st.path / "store.json").stat().st_mtime_ns == before
    assert main([*argv[:-3], "--chip-size", "40", "--workspace", str(ws.root), "--quiet"]) == 2
    assert main([*argv[:-3], "--chip-size", "40", "--workspace", str(ws.root), "--quiet", "--overwrite"]) == 0
    assert len(ws.open_store("austria")) == 9


def test_s2_and_s1_pair_with_offset(tmp_path):
    s1 = sorted(str(p) for p in (BEN_S1 / PATCH_S1).glob("*.tif"))
    res = ingest_geotiffs(
        "pair", tmp_path / "pair", s2=ModalityInput([_ben_band("B04"), _ben_band("B03"), _ben_band("B02")]),
        s1=ModalityInput(s1), chip_size=120, s2_offset=True, progress=False,
    )
    st = ChipStore.open(tmp_path / "pair")
    assert res.n_chips == 1 and st.modalities == ["s2rgb", "s1amp"] and st.channels("s1amp") == ["VV", "VH"]
    with rasterio.open(_ben_band("B04")) as src:
        np.testing.assert_allclose(st.read("s2rgb", 0)[0], (src.read(1).astype(np.float32) - 1000) / 10000, rtol=1e-6)
    assert "units db" in st.meta.extra["ingest"]["inputs"][1]["conversion"][0]


def test_mixed_crs_inputs_reprojected_to_reference(tmp_path):
    """S2 in EPSG:4326 and S1 warped to UTM: S1 is put back on the S2 grid and matches the original."""
    s1_path = FLOODS / "S1" / "Spain_7370579_S1Hand.tif"
    with rasterio.open(s1_path) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:32630", src.width, src.height, *src.bounds, resolution=10)
        utm = np.full((2, h, w), np.nan, np.float32)
        for b in (1, 2):
            reproject(rasterio.band(src, b), utm[b - 1], dst_transform=t, dst_crs="EPSG:32630", resampling=Resampling.bilinear)
        original = src.read()
    utm_path = write_tif(tmp_path / "s1_utm.tif", utm, t, "EPSG:32630", nodata=float("nan"), descriptions=["VV", "VH"])
    res = ingest_geotiffs(
        "mixed", tmp_path / "mixed", s2=ModalityInput([FLOODS / "S2" / "Spain_7370579_S2Hand.tif"]),
        s1=ModalityInput([utm_path]), chip_size=64, progress=False,
    )
    st = ChipStore.open(tmp_path / "mixed")
    assert st.meta.crs == "EPSG:4326" and res.n_chips >= 36
    assert st.meta.extra["ingest"]["inputs"][1]["source_crs"] == ["EPSG:32630"]
    grid = st.meta.extra["grid"]
    gt = Affine(*grid["transform"])
    with rasterio.open(FLOODS / "S2" / "Spain_7370579_S2Hand.tif") as src:
        c0, r0 = ~src.transform @ (gt.c, gt.f)  # the S2 (and original S1) pixel of the grid origin
    p = len(st) // 2
    row = st.index.iloc[p]
    got = st.read("s1amp", p)[0]
    r, c = int(round(r0)) + row.row * 64, int(round(c0)) + row.col * 64
    ref = original[0, r : r + 64, c : c + 64]
    ok = np.isfinite(got) & np.isfinite(ref)
    assert ok.mean() > 0.9
    assert abs(np.mean(got[ok]) - np.mean(ref[ok])) < 0.5
    assert np.corrcoef(got[ok], ref[ok])[0, 1] > 0.6


def test_utm_target_from_geographic_input(tmp_path):
    res = ingest_geotiffs(
        "utm", tmp_path / "utm", s1=ModalityInput([FLOODS / "S1" / "Spain_7370579_S1Hand.tif"]), crs="EPSG:32630",
        res=20.0, chip_size=32, progress=False,
    )
    st = ChipStore.open(tmp_path / "utm")
    assert st.meta.crs == "EPSG:32630" and st.meta.pixel_size_m == pytest.approx(20.0)
    with rasterio.open(FLOODS / "S1" / "Spain_7370579_S1Hand.tif") as src:
        west, south, east, north = src.bounds
        vv = src.read(1)
    # the UTM grid covers the (slightly rotated) footprint's bounding box: edge chips may reach past the
    # data by less than a chip, and keep at least half their pixels valid (--max-nodata 0.5)
    minx, miny, maxx, maxy = st.index.total_bounds
    assert west - 0.01 <= minx and maxx <= east + 0.01 and south - 0.01 <= miny and maxy <= north + 0.01
    assert (st.index["valid_s1amp"] >= 0.5).all() and (st.index["valid_s1amp"] == 1).mean() > 0.7
    assert abs(np.nanmean(st.read("s1amp", slice(None))[:, 0]) - np.nanmean(vv)) < 0.5
    assert res.n_chips == len(st) > 0


def _mosaic(tmp_path: Path, size: int = 700) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    data = rng.integers(1, 4000, (3, size, size), dtype=np.uint16)
    t = Affine(10.0, 0, 600000.0, 0, -10.0, 5000000.0)
    path = write_tif(tmp_path / "mosaic.tif", data, t, "EPSG:32632", descriptions=["B2", "B3", "B4"], tiled=True)
    return path, data


def test_windowed_blocks_and_overlapping_chips_match_direct_slices(tmp_path):
    path, data = _mosaic(tmp_path)
    small = ingest_geotiffs("w", tmp_path / "small", s2=ModalityInput([path]), chip_size=64, stride=48,
                            max_block_mb=0.2, progress=False)
    st = ChipStore.open(tmp_path / "small")
    n = (700 - 64) // 48 + 1
    assert small.n_chips == n * n == len(st)
    red = data[2].astype(np.float32) / 10000
    for p in (0, 7, n + 3, len(st) - 1):
        row = st.index.iloc[p]
        r, c = row.row * 48, row.col * 48
        np.testing.assert_array_equal(st.read("s2rgb", p)[0], red[r : r + 64, c : c + 64])
    big = ingest_geotiffs("w", tmp_path / "big", s2=ModalityInput([path]), chip_size=64, stride=48, progress=False)
    np.testing.assert_array_equal(ChipStore.open(tmp_path / "big").read("s2rgb", slice(None)), st.read("s2rgb", slice(None)))
    assert big.bytes_read == pytest.approx(small.bytes_read, rel=0.5)


def test_nodata_chips_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(1, 4000, (3, 256, 256), dtype=np.uint16)
    data[:, :64, :] = 0  # first chip row: S2 no data (DN 0)
    data[:, 64:128, :40] = 0  # 40/64 of chip (1, 0) missing -> over 0.5
    path = write_tif(tmp_path / "s2.tif", data, Affine(10, 0, 30000, 0, -10, -300000), "EPSG:32631",
                     descriptions=["B4", "B3", "B2"])
    res = ingest_geotiffs("nd", tmp_path / "nd", s2=ModalityInput([path]), chip_size=64, max_nodata=0.5, progress=False)
    st = ChipStore.open(tmp_path / "nd")
    assert res.n_skipped == 5 and res.n_chips == 11 == len(st)
    assert st.meta.extra["ingest"]["n_skipped_nodata"] == 5
    assert (st.index["row"] >= 1).all() and not ((st.index["row"] == 1) & (st.index["col"] == 0)).any()


def test_s1_linear_power_detected_and_converted(tmp_path):
    rng = np.random.default_rng(3)
    power = rng.gamma(2.0, 0.05, (2, 128, 128)).astype(np.float32)
    t = Affine(10, 0, 300000, 0, -10, 4500000)
    vv = write_tif(tmp_path / "x_VV.tif", power[:1], t, "EPSG:32633")
    vh = write_tif(tmp_path / "x_VH.tif", power[1:], t, "EPSG:32633")
    ingest_geotiffs("lin", tmp_path / "lin", s1=ModalityInput([vv, vh]), chip_size=64, progress=False)
    st = ChipStore.open(tmp_path / "lin")
    np.testing.assert_allclose(st.read("s1amp", 0), 10 * np.log10(power[:, :64, :64]), rtol=1e-5)
    assert "linear" in st.meta.extra["ingest"]["inputs"][0]["conversion"][0]


def test_coherence_percent_scaled_and_out_of_range_refused(tmp_path):
    t = Affine(10, 0, 300000, 0, -10, 4500000)
    pct = np.random.default_rng(4).integers(0, 101, (2, 64, 64), dtype=np.uint8)
    f = write_tif(tmp_path / "coh.tif", pct, t, "EPSG:32633", descriptions=["VV_12d", "VV_36d"])
    ingest_geotiffs("coh", tmp_path / "coh", coh=ModalityInput([f]), chip_size=64, progress=False)
    st = ChipStore.open(tmp_path / "coh")
    assert st.modalities == ["coh"] and st.channels("coh") == ["VV_12d", "VV_36d"]
    np.testing.assert_allclose(st.read("coh", 0), pct.astype(np.float32) / 100, rtol=1e-6)
    g = write_tif(tmp_path / "coh_f.tif", pct.astype(np.float32), t, "EPSG:32633", descriptions=["VV_12d", "VV_36d"])
    with pytest.raises(IngestError, match="--coh-scale"):
        ingest_geotiffs("cohf", tmp_path / "cohf", coh=ModalityInput([g]), chip_size=64, progress=False)
    assert_nothing_left(tmp_path / "cohf")


# --- bad inputs: each fails with a clear message and leaves nothing behind ---------------------------


def _good_s2(tmp_path: Path) -> Path:
    data = np.random.default_rng(5).integers(1, 4000, (3, 300, 300), dtype=np.uint16)
    return write_tif(tmp_path / "good.tif", data, Affine(10, 0, 400000, 0, -10, 5342400), "EPSG:32633",
                     descriptions=["B4", "B3", "B2"], tiled=True)


def _run_cli(tmp_path: Path, *args: str, capsys) -> tuple[int, str]:
    code = main(["geotiff", "--aoi", "bad", "--out", str(tmp_path / "stores" / "bad"), "--quiet", *args])
    return code, capsys.readouterr().err


def test_truncated_geotiff_fails_cleanly(tmp_path, capsys):
    good = _good_s2(tmp_path)
    raw = good.read_bytes()
    cut = tmp_path / "truncated.tif"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    code, err = _run_cli(tmp_path, "--s2", str(cut), capsys=capsys)
    assert code == 2 and "truncated or corrupt" in err and "truncated.tif" in err
    assert_nothing_left(tmp_path / "stores" / "bad")
    # a cloud-optimised GeoTIFF keeps its header first: it opens, and the pixel check catches the cut
    cog = tmp_path / "cog.tif"
    rasterio.shutil.copy(good, cog, driver="COG")
    raw = cog.read_bytes()
    cut_cog = tmp_path / "truncated_cog.tif"
    cut_cog.write_bytes(raw[: len(raw) * 2 // 3])
    code, err = _run_cli(tmp_path, "--s2", str(cut_cog), capsys=capsys)
    assert code == 2 and "reading pixels failed" in err and "truncated or corrupt" in err
    assert_nothing_left(tmp_path / "stores" / "bad")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + b"\x00" * 20)
    code, err = _run_cli(tmp_path, "--s2", str(junk), capsys=capsys)
    assert code == 2 and "cannot be opened" in err
    assert_nothing_left(tmp_path / "stores" / "bad")


def test_file_without_crs_fails_cleanly(tmp_path, capsys):
    f = write_tif(tmp_path / "nocrs.tif", np.ones((3, 64, 64), np.uint16), Affine(10, 0, 0, 0, -10, 0), None,
                  descriptions=["B4", "B3", "B2"])
    code, err = _run_cli(tmp_path, "--s2", str(f), capsys=capsys)
    assert code == 2 and "no coordinate reference system" in err and "gdal_edit.py -a_srs" in err
    assert_nothing_left(tmp_path / "stores" / "bad")


def test_inputs_that_do_not_overlap_fail_cleanly(tmp_path, capsys):
    other_s1 = sorted(str(p) for p in (BEN_S1 / OTHER_S1).glob("*.tif"))  # Ireland, the S2 patch is in Austria
    code, err = _run_cli(tmp_path, "--s2", str(_ben_band("B04")), str(_ben_band("B03")), str(_ben_band("B02")),
                         "--s1", *other_s1, capsys=capsys)
    assert code == 2 and "do not overlap" in err and "lon " in err
    assert_nothing_left(tmp_path / "stores" / "bad")


def test_all_nan_input_fails_cleanly(tmp_path, capsys):
    t = Affine(10, 0, 400000, 0, -10, 5342400)
    nan = write_tif(tmp_path / "s1_VV.tif", np.full((1, 300, 300), np.nan, np.float32), t, "EPSG:32633")
    code, err = _run_cli(tmp_path, "--s2", str(_good_s2(tmp_path)), "--s1", str(nan), "--skip-when", "all", capsys=capsys)
    assert code == 2 and "no valid pixel" in err and "s1_VV.tif" in err
    assert_nothing_left(tmp_path / "stores" / "bad")
    code, err = _run_cli(tmp_path, "--s1", str(nan), capsys=capsys)
    assert code == 2 and "no valid pixel" in err
    assert_nothing_left(tmp_path / "stores" / "bad")


def test_wrong_band_count_fails_cleanly(tmp_path, capsys):
    files = [str(_ben_band(b)) for b in ("B02", "B03", "B04")]
    code, err = _run_cli(tmp_path, "--s2", *files, "--s2-bands", "B2,B3,B4,B8", capsys=capsys)
    assert code == 2 and "declares 4 bands" in err and "have 3" in err
    assert_nothing_left(tmp_path / "stores" / "bad")
    # a 4-band stack without descriptions cannot be guessed either
    f = write_tif(tmp_path / "stack.tif", np.ones((4, 64, 64), np.uint16), Affine(10, 0, 0, 0, -10, 0), "EPSG:32633")
    code, err = _run_cli(tmp_path, "--s2", str(f), capsys=capsys)
    assert code == 2 and "cannot tell which band is which" in err and "--s2-bands" in err
    assert_nothing_left(tmp_path / "stores" / "bad")


def test_help_explains():
    with pytest.raises(SystemExit) as e:
        main(["geotiff", "--help"])
    assert e.value.code == 0


def test_acquisition_date_prefers_sensing_tags_then_name_over_the_write_date():
    from rasterio.crs import CRS

    from data.geotiff import RasterInfo, raster_date

    def info(name: str, **tags: str) -> RasterInfo:
        return RasterInfo(Path(name), CRS.from_epsg(32633), Affine.identity(), 1, 1, 1, "uint16", None, (None,), tags)

    written = {"TIFFTAG_DATETIME": "2024-03-05T10:00:00"}
    assert raster_date(info("S2A_MSIL2A_20210704T101031_B04.tif", **written)) == "2021-07-04"
    assert raster_date(info("b04.tif", ACQUISITION_DATE="2020-01-02", **written)) == "2020-01-02"
    assert raster_date(info("b04.tif", **written)) == "2024-03-05"
    assert raster_date(info("b04.tif")) is None


# ------------------------------------------------------------------------------ no quiet successes


def _block_offset(path: Path, xblock: int, yblock: int) -> tuple[int, int]:
    """Byte offset and size of one tile of band 1 (GDAL's TIFF metadata domain)."""
    with rasterio.open(path) as src:
        off = int(src.get_tag_item(f"BLOCK_OFFSET_{xblock}_{yblock}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{xblock}_{yblock}", "TIFF", bidx=1))
    return off, size


def test_damaged_inner_tile_fails_even_outside_the_chips(tmp_path, capsys):
    """Tile (1, 0) covers columns 256..299, which no 64-px chip reads, and is not the last block."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 4000, (3, 300, 300), dtype=np.uint16)
    t = Affine(10.0, 0, 600000.0, 0, -10.0, 5000000.0)
    path = write_tif(tmp_path / "tiles.tif", data, t, "EPSG:32632", descriptions=["B2", "B3", "B4"], tiled=True)
    off, size = _block_offset(path, 1, 0)
    raw = bytearray(path.read_bytes())
    raw[off : off + size] = bytes(rng.integers(0, 256, size, dtype=np.uint8))
    path.write_bytes(bytes(raw))
    code, err = _run_cli(tmp_path, "--s2", str(path), capsys=capsys)
    assert code == 2, err
    assert err.startswith(f"error: {path}: reading pixels failed in block (row 0, col 1) of band 1 (x 256..300, y 0..256: ")
    assert "truncated or corrupt: re-download or re-export it" in err
    assert_nothing_left(tmp_path / "stores" / "bad")


def test_quiet_successes_are_said_and_recorded(tmp_path, capsys):
    """An empty band, extra bands, a warped input, a partial overlap and a label raster elsewhere: all said and kept."""
    rng = np.random.default_rng(4)
    t = Affine(10.0, 0, 600000.0, 0, -10.0, 5000000.0)
    s2 = rng.uniform(0.01, 0.4, (4, 256, 256)).astype(np.float32)
    s2[0] = np.nan  # B2 entirely empty
    s2_path = write_tif(tmp_path / "s2.tif", s2, t, "EPSG:32632", nodata=float("nan"), descriptions=["B2", "B3", "B4", "B8"])
    # S1 in EPSG:4326 over only the western half of the S2 scene: warped, and the AOI shrinks to the overlap
    with rasterio.open(s2_path) as src:
        dst_t, w, h = calculate_default_transform(src.crs, "EPSG:4326", 128, 256, 600000.0, 5000000.0 - 2560, 601280.0, 5000000.0)
    s1 = rng.uniform(-20, -5, (2, h, w)).astype(np.float32)
    s1_path = write_tif(tmp_path / "s1.tif", s1, dst_t, "EPSG:4326", nodata=float("nan"), descriptions=["VV", "VH"])
    jrc = SHARED_DATA / "jrc-gsw-sample" / "occurrence-0000360000-0000480000.tif"  # Brazil: no overlap with the Alps
    out = tmp_path / "stores" / "quiet"
    code = main(["geotiff", "--aoi", "quiet", "--out", str(out), "--s2", str(s2_path), "--s1", str(s1_path),
                 "--chip-size", "32", "--jrc", str(jrc), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    said = [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: ")]
    st = ChipStore.open(out)
    assert st.meta.extra["ingest"]["warnings"] == said  # every line said is recorded in store.json
    text = "\n".join(said)
    assert "inputs only partly overlap: the AOI shrinks to their common area" in text and "of s2.tif" in text
    assert "s2rgb: extra band(s) B8 of s2.tif dropped (only B4, B3, B2 are stored)" in text
    assert "s1amp: s1.tif (EPSG:4326, " in text and "warped (bilinear) to the target grid EPSG:32632 at 10 x 10" in text
    assert "s2rgb: band B2 is entirely empty (every value NaN or nodata in s2.tif): stored, and marked missing" in text
    assert "jrc labels (occurrence-0000360000-0000480000.tif): no overlap with the" in text and "not attached" in text
    assert "jrc" not in st.meta.extra.get("labels", {})
    assert not st.index["has_s2rgb_B2"].any() and st.index["has_s2rgb_B4"].all()
    # a re-run finds the store up to date and says the recorded warnings again
    assert main(["geotiff", "--aoi", "quiet", "--out", str(out), "--s2", str(s2_path), "--s1", str(s1_path),
                 "--chip-size", "32", "--jrc", str(jrc), "--quiet"]) == 0
    again = capsys.readouterr()
    assert "up to date" in again.out and again.err.count("warning: ") == len(said)
