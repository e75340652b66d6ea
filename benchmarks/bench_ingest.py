"""Ingest throughput: chips/s and MB/s read, on the real samples and on a larger synthetic mosaic.

The mosaic (default 4096 x 4096 x 3 bands uint16, tiled and compressed like a real product, written to
a temp dir) is ingested three ways in the same run:

- baseline: read the whole raster at once (`src.read()`), cut chips, write the store;
- windowed: `ingest_geotiffs` reading one block of chip rows at a time (default 256 MB budget, and a
  tight 8 MB budget to show memory stays bounded);
- windowed + reprojection: the same through a WarpedVRT (target `--crs` differs from the file's).

Peak memory is what tracemalloc sees (numpy buffers; GDAL's own block cache is not counted).
MB/s counts decoded source pixels read. Run: `python -m benchmarks.bench_ingest [--size 4096]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from affine import Affine

from data.geotiff import chip_polygons
from data.readers import ModalityInput, ingest_bigearthnet, ingest_geotiffs, ingest_sen1floods11
from data.samples import shared_data_dir
from data.store import ChipStoreWriter, StoreMeta

SHARED = shared_data_dir()
BEN = SHARED / "bigearthnet-mm-example"
FLOODS = SHARED / "sen1floods11-sample"


def write_mosaic(path: Path, size: int, seed: int = 0) -> Path:
    """A tiled, deflate-compressed uint16 3-band 'S2' mosaic in UTM, written block row by block row."""
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint16", crs="EPSG:32633",
                   transform=Affine(10.0, 0, 400000.0, 0, -10.0, 5400000.0), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        for i, d in enumerate(("B4", "B3", "B2"), start=1):
            dst.set_band_description(i, d)
        for r in range(0, size, 512):
            h = min(512, size - r)
            # smooth-ish fields plus noise, so compression behaves like real imagery
            base = (np.sin(np.arange(size)[None, :] / 97.0) + np.cos((np.arange(h)[:, None] + r) / 61.0)) * 600 + 1500
            block = (base[None] + rng.normal(0, 80, (3, h, size))).clip(1, 10000).astype(np.uint16)
            dst.write(block, window=rasterio.windows.Window(0, r, size, h))
    return path


def baseline_whole_read(src_path: Path, out: Path, chip: int) -> tuple[int, int]:
    """Read the whole raster at once, cut chips, write a store: the simple approach ingest replaces."""
    with rasterio.open(src_path) as src:
        data = src.read().astype(np.float32) / 10000  # [3, H, W] in memory at once
        t, crs = src.transform, src.crs.to_string()
        n_bytes = src.count * src.width * src.height * np.dtype(src.dtypes[0]).itemsize
    nr, nc = data.shape[1] // chip, data.shape[2] // chip
    meta = StoreMeta(aoi="baseline", title="baseline (benchmark)", simulated=False, chip_size=chip, pixel_size_m=10.0,
                     crs=crs, channels={"s2rgb": ["B4", "B3", "B2"]}, source="benchmark baseline")
    with ChipStoreWriter(out, meta, overwrite=True) as w:
        for r in range(nr):
            chips = data[:, r * chip : (r + 1) * chip, : nc * chip].reshape(3, chip, nc, chip).transpose(2, 0, 1, 3)
            cols = np.arange(nc)
            lefts, tops = t.c + cols * chip * t.a, np.full(nc, t.f + r * chip * t.e)
            rows = pd.DataFrame({"chip_id": [f"b-{r}-{c}" for c in cols], "row": r, "col": cols,
                                 "geometry": chip_polygons(crs, lefts, tops, chip * t.a, chip * -t.e)})
            w.append({"s2rgb": np.ascontiguousarray(chips)}, rows)
    return nr * nc, n_bytes


def timed(fn, repeat: int = 1) -> tuple[float, float, object]:
    """Best wall time over `repeat` runs, peak traced memory (MB) of the last run, and its result."""
    best, result, peak = float("inf"), None, 0.0
    for _ in range(repeat):
        tracemalloc.start()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return best, peak, result


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="synthetic mosaic side in pixels (default 4096)")
    ap.add_argument("--chip", type=int, default=64, help="chip size for the mosaic (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats for the small sample runs (best time kept)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp = Path(tmp)

        def add(name: str, seconds: float, peak: float, n_chips: int, n_bytes: int) -> None:
            rows.append({"case": name, "chips": n_chips, "seconds": seconds, "chips/s": n_chips / seconds,
                         "MB read": n_bytes / 1e6, "MB/s": n_bytes / 1e6 / seconds, "peak MB (numpy)": peak})

        s, pk, r = timed(lambda: ingest_bigearthnet(BEN, "ben", tmp / "ben", overwrite=True, progress=False), args.repeat)
        add("BigEarthNet-MM 6 pairs (S1+S2, 120 px)", s, pk, r.n_chips, r.bytes_read)
        s, pk, r = timed(lambda: ingest_sen1floods11(FLOODS, "fl", tmp / "fl", overwrite=True, progress=False), args.repeat)
        add("Sen1Floods11 scene -> 16 x 128 px", s, pk, r.n_chips, r.bytes_read)
        patch = BEN / "BigEarthNet-S2-Example" / "S2A_MSIL2A_20170613T101031_87_48"
        files = sorted(patch.glob("*_B0[234].tif"))
        s, pk, r = timed(lambda: ingest_geotiffs("pb", tmp / "pb", s2=ModalityInput(files), chip_size=60,
                                                 overwrite=True, progress=False), args.repeat)
        add("GeoTIFF per-band S2 (3 files) -> 4 x 60 px", s, pk, r.n_chips, r.bytes_read)

        mosaic = write_mosaic(tmp / "mosaic.tif", args.size)
        mb_file = mosaic.stat().st_size / 1e6
        s, pk, (n, nb) = timed(lambda: baseline_whole_read(mosaic, tmp / "base", args.chip))
        add(f"mosaic {args.size}^2x3 baseline: whole raster at once", s, pk, n, nb)
        s, pk, r = timed(lambda: ingest_geotiffs("m", tmp / "m1", s2=ModalityInput([mosaic]), chip_size=args.chip,
                                                 overwrite=True, progress=False))
        add(f"mosaic windowed (256 MB blocks)", s, pk, r.n_chips, r.bytes_read)
        s, pk, r = timed(lambda: ingest_geotiffs("m", tmp / "m2", s2=ModalityInput([mosaic]), chip_size=args.chip,
                                                 max_block_mb=8, overwrite=True, progress=False))
        add(f"mosaic windowed (8 MB blocks)", s, pk, r.n_chips, r.bytes_read)
        s, pk, r = timed(lambda: ingest_geotiffs("m", tmp / "m3", s2=ModalityInput([mosaic]), chip_size=args.chip,
                                                 crs="EPSG:32632", max_block_mb=64, overwrite=True, progress=False))
        add(f"mosaic windowed + reprojection to EPSG:32632 (64 MB)", s, pk, r.n_chips, r.bytes_read)

    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"\ningest throughput (mosaic file {mb_file:.0f} MB compressed; MB = decoded source pixels read)\n")
    print(df.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))


if __name__ == "__main__":
    main()
