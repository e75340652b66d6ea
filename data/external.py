"""External embeddings (issue #17): per-pixel embedding rasters pooled onto an AOI's chip grid.

Inputs (one product per call, any number of tiles):

- GeoTIFFs (`.tif`/`.tiff`): one band per embedding dimension; CRS and transform from the file.
- NumPy `.npy` or Zarr arrays, band-last `[H, W, C]` as Tessera and most Python code write them (band-first
  `[C, H, W]` is recognised when only the first axis matches the product's band count, or with
  `"band_first": true`). Georeferencing comes from a sidecar JSON beside the array (`<stem>.json`:
  `{"crs": "EPSG:32615", "transform": [a, b, c, d, e, f], "nodata": ..., "band_first": ...}`, the affine in
  rasterio/GDAL order a=pixel width, c=x of the left edge, e=-pixel height, f=y of the top edge), from a Zarr
  array's attributes (same keys), or from the `--crs`/`--transform` flags (sidecar and attributes win).
- Tessera: int8 embeddings with a per-pixel scale array beside each tile (`<stem>_scales.npy`, `.tif` or
  `.zarr`, shape `[H, W]` or `[H, W, C]`): values are dequantised as `value * scale`.

Products: `alphaearth` = 64 bands (A00..A63), `tessera` = 128 int8 bands plus scales, `generic` = any count.
Masked pixels: declared nodata (any band), NaN, all-zero AlphaEarth pixels (its no-data), Tessera scale 0.

Grid: the AOI's chip grid when its store exists (chip polygons taken back to the store's CRS: one chip = the
pixels whose centres fall in its square); otherwise a new grid of `chip_size` source pixels in the first
tile's CRS. The store-less case writes its own `grid.parquet` (chip_id, row, col, EPSG:4326 polygon) beside
the vectors: a chip store is defined by its imagery modalities (`StoreMeta` needs at least one), and an
embedding-only AOI has none, so a fake store would mislead every reader of stores.

Tiles in another CRS than the grid's are warped to it (nearest neighbour, rasterio `WarpedVRT` for files,
`reproject` for arrays) and a note says so (printed and kept in the provenance).

Pooling: per chip, the mean of its valid pixels' vectors, then L2-normalised; `valid_fraction` = valid pixels /
pixels of the chip; a chip with no valid pixel is missing (NaN vector, valid False).

Written to `Workspace.representation_dir(aoi, name)` atomically: `vectors.npy` [N, D] float32,
`valid.npy`, `valid_fraction.npy`, `chip_ids.npy`, `meta.json` (provenance), and `grid.parquet` when
store-less. `core.representations` serves it under its name to search, UMAP, probes, mapping and evaluation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import zarr
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window
from tqdm import tqdm

from data.atomic import atomic_dir
from data.geotiff import IngestError
from data.modalities import MODALITY_KEYS
from data.store import INDEX_CRS, StoreError
from data.workspace import Workspace, WorkspaceNameError, check_name

PRODUCTS: dict[str, int | None] = {"alphaearth": 64, "tessera": 128, "generic": None}
ALPHAEARTH_BANDS = tuple(f"A{i:02d}" for i in range(64))
POOLING = "mean of valid pixels, L2-normalised per chip"
FORMAT_VERSION = 1
# Names the built-in representations use (core.representations): an external one may not shadow them.
# core's test (tests/test_external_embeddings.py) checks this list covers every built-in name.
RESERVED_NAMES = frozenset({"fused", *MODALITY_KEYS, "random-init", "hand-crafted",
                            "stats", "hist", "hist-q", "texture", "combined"})
FILES = ("vectors.npy", "valid.npy", "valid_fraction.npy", "chip_ids.npy", "meta.json")
_YEAR = re.compile(r"(?<!\d)(19[89]\d|20\d\d)(?!\d)")


class ExternalError(IngestError):
    """External embeddings cannot be ingested or read: the message says what is wrong and the fix."""


# ----------------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """One input tile on the grid's CRS: size, transform and a reader of masked float32 windows [C, h, w]."""

    path: Path
    crs: CRS
    transform: Affine
    height: int
    width: int
    count: int
    read: Callable[[int, int, int, int], np.ndarray]
    """(row0, row1, col0, col1) -> float32 [C, h, w], NaN on every band where a pixel is masked."""
    note: str = ""
    close: Callable[[], None] = lambda: None
    band_names: tuple[str, ...] = ()


def _mask_pixels(x: np.ndarray, product: str, nodata: float | None, scales: np.ndarray | None) -> np.ndarray:
    """Dequantise (Tessera) and set every band of a masked pixel to NaN: x [C, h, w] -> float32."""
    x = x.astype(np.float32, copy=True)
    bad = np.zeros(x.shape[1:], dtype=bool)
    if nodata is not None and np.isfinite(nodata):
        bad |= (x == np.float32(nodata)).any(axis=0)
    if scales is not None:
        s = scales.astype(np.float32)
        bad |= ~np.isfinite(s).all(axis=0) | (s == 0).any(axis=0)  # Tessera: scale 0 marks no data
        x = x * s
    bad |= ~np.isfinite(x).all(axis=0)
    if product == "alphaearth":
        bad |= (x == 0).all(axis=0)  # AlphaEarth writes all-zero vectors where it has no data
    x[:, bad] = np.nan
    return x


def _check_count(path: Path, count: int, product: str) -> None:
    want = PRODUCTS[product]
    if want is not None and count != want:
        extra = " int8 bands plus a scale array" if product == "tessera" else f" bands ({ALPHAEARTH_BANDS[0]}..{ALPHAEARTH_BANDS[-1]})"
        raise ExternalError(f"{path.name} has {count} bands but {product} embeddings have {want}{extra}: "
                            f"check the file, or declare --product generic")


def _scales_path(path: Path) -> Path | None:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for ext in (".npy", ".tif", ".tiff", ".zarr"):
        p = path.with_name(f"{stem}_scales{ext}")
        if p.exists():
            return p
    return None


def _sidecar(path: Path) -> dict[str, Any]:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    f = path.with_name(f"{stem}.json")
    if not f.is_file():
        return {}
    try:
        d = json.loads(f.read_text())
    except ValueError as e:
        raise ExternalError(f"{f.name} is not valid JSON ({e}): write {{\"crs\": ..., \"transform\": [a, b, c, d, e, f]}}") from None
    if not isinstance(d, dict):
        raise ExternalError(f"{f.name} must hold a JSON object with 'crs' and 'transform'")
    return d


def _load_array(path: Path) -> tuple[Any, dict[str, Any]]:
    """(array-like, attributes) of a .npy (memory-mapped) or Zarr array."""
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), {}
        arr = zarr.open(str(path), mode="r")
    except (OSError, ValueError) as e:
        raise ExternalError(f"cannot read {path.name}: {e}") from None
    if not hasattr(arr, "shape"):
        raise ExternalError(f"{path.name} is a Zarr group, not an array: give the array's folder (e.g. {path.name}/embeddings)")
    return arr, dict(arr.attrs)


def _array_layout(path: Path, shape: tuple[int, ...], product: str, band_first: bool | None) -> bool:
    """True when an array is band-first [C, H, W]; checks the band count of the product."""
    if len(shape) != 3:
        raise ExternalError(f"{path.name} has shape {shape}: an embedding array must be 3-D, [H, W, C] (or [C, H, W])")
    want = PRODUCTS[product]
    if band_first is None:
        band_first = want is not None and shape[0] == want and shape[-1] != want
    count = shape[0] if band_first else shape[-1]
    _check_count(path, count, product)
    return bool(band_first)


def _open_scales_array(path: Path, shape_hw: tuple[int, int]) -> Callable[[int, int, int, int], np.ndarray]:
    if path.suffix in (".tif", ".tiff"):
        ds = rasterio.open(path)
        if (ds.height, ds.width) != shape_hw:
            raise ExternalError(f"{path.name} is {ds.height} x {ds.width} but its embeddings are {shape_hw[0]} x {shape_hw[1]}")
        return lambda r0, r1, c0, c1: ds.read(window=Window(c0, r0, c1 - c0, r1 - r0))
    arr, _ = _load_array(path)
    if tuple(arr.shape[:2]) != shape_hw or arr.ndim not in (2, 3):
        raise ExternalError(f"{path.name} has shape {tuple(arr.shape)}: Tessera scales are [H, W] or [H, W, C] "
                            f"with H x W = {shape_hw[0]} x {shape_hw[1]}")
    if arr.ndim == 2:
        return lambda r0, r1, c0, c1: np.asarray(arr[r0:r1, c0:c1])[None]
    return lambda r0, r1, c0, c1: np.moveaxis(np.asarray(arr[r0:r1, c0:c1, :]), -1, 0)


def _need_scales(path: Path, product: str, scales: Path | None) -> Path | None:
    if product != "tessera":
        return None
    if scales is None:
        stem = path.name[: -len(path.suffix)]
        raise ExternalError(f"no scales for the Tessera tile {path.name}: Tessera embeddings are int8 and need their "
                            f"per-pixel scales; put {stem}_scales.npy (or .tif) beside it")
    return scales


def open_source(path: Path, product: str, grid_crs: CRS | None, *, crs: str | None = None,
                transform: Sequence[float] | None = None, nodata: float | None = None) -> Source:
    """One input tile as a Source on `grid_crs` (warped with a note when its CRS differs; None = keep its own)."""
    path = Path(path)
    if not path.exists():
        raise ExternalError(f"{path} does not exist")
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_geotiff(path, product, grid_crs, nodata)
    if path.suffix.lower() in (".npy", ".zarr") or path.is_dir():
        return _open_array(path, product, grid_crs, crs=crs, transform=transform, nodata=nodata)
    raise ExternalError(f"{path.name}: unknown input type; give GeoTIFFs (.tif), NumPy (.npy) or Zarr (.zarr) arrays")


def _open_geotiff(path: Path, product: str, grid_crs: CRS | None, nodata: float | None) -> Source:
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise ExternalError(f"cannot read {path.name} as a GeoTIFF: {e}") from None
    if ds.crs is None:
        ds.close()
        raise ExternalError(f"{path.name} has no CRS: set one (e.g. `gdal_edit.py -a_srs EPSG:32615 {path.name}`)")
    _check_count(path, ds.count, product)
    if product == "tessera" and ds.dtypes[0] != "int8":
        ds.close()
        raise ExternalError(f"{path.name} is {ds.dtypes[0]}, but Tessera embeddings are int8: declare --product generic "
                            "for already dequantised floats")
    nd = ds.nodata if nodata is None else nodata
    scales_path = _need_scales(path, product, _scales_path(path))
    names = tuple(d or "" for d in ds.descriptions)
    src_crs = CRS.from_user_input(ds.crs)
    note = ""
    view, scales_view = ds, None
    opened = [ds]
    if scales_path is not None:
        scales_ds = rasterio.open(scales_path) if scales_path.suffix in (".tif", ".tiff") else None
        if scales_ds is None:
            raise ExternalError(f"{scales_path.name}: the scales of a GeoTIFF tile must be a GeoTIFF too")
        opened.append(scales_ds)
        scales_view = scales_ds
    if grid_crs is not None and src_crs != grid_crs:
        # Nearest neighbour keeps each embedding vector intact (no blend of two pixels' vectors);
        # the alpha band marks the area outside the source, whatever its dtype.
        view = WarpedVRT(ds, crs=grid_crs, resampling=Resampling.nearest, add_alpha=True)
        opened.insert(0, view)
        if scales_view is not None:
            scales_view = WarpedVRT(scales_view, crs=grid_crs, resampling=Resampling.nearest,
                                    transform=view.transform, width=view.width, height=view.height)
            opened.insert(0, scales_view)
        note = f"{path.name}: warped from {src_crs.to_string()} to the grid's {grid_crs.to_string()} (nearest neighbour)"
    count = ds.count
    warped = view is not ds

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        win = Window(c0, r0, c1 - c0, r1 - r0)
        x = view.read(window=win)
        s = scales_view.read(window=win) if scales_view is not None else None
        out = _mask_pixels(x[:count], product, nd, s)
        if warped:
            out[:, x[count] == 0] = np.nan  # outside the source tile
        return out

    return Source(path, grid_crs if warped else src_crs, view.transform, view.height, view.width, count, read, note,
                  lambda: [o.close() for o in opened], names)


def _open_array(path: Path, product: str, grid_crs: CRS | None, *, crs: str | None,
                transform: Sequence[float] | None, nodata: float | None) -> Source:
    arr, attrs = _load_array(path)
    side = {**attrs, **_sidecar(path)}
    crs_text = side.get("crs") or crs
    tr = side.get("transform") or transform
    if not crs_text:
        raise ExternalError(f"{path.name} has no CRS: put a sidecar {path.stem}.json beside it with "
                            '{"crs": "EPSG:...", "transform": [a, b, c, d, e, f]}, or pass --crs and --transform')
    if tr is None or len(tr) < 6:
        raise ExternalError(f"{path.name} has no transform: give 6 affine numbers [a, b, c, d, e, f] in its sidecar "
                            f"{path.stem}.json or with --transform")
    try:
        src_crs = CRS.from_user_input(crs_text)
    except Exception as e:  # pyproj raises several types for a bad CRS string
        raise ExternalError(f"{path.name}: CRS {crs_text!r} is not understood ({e})") from None
    band_first = _array_layout(path, tuple(arr.shape), product, side.get("band_first"))
    if product == "tessera" and np.dtype(arr.dtype) != np.int8:
        raise ExternalError(f"{path.name} is {arr.dtype}, but Tessera embeddings are int8: declare --product generic "
                            "for already dequantised floats")
    h, w = (arr.shape[1], arr.shape[2]) if band_first else (arr.shape[0], arr.shape[1])
    count = arr.shape[0] if band_first else arr.shape[2]
    affine = Affine(*[float(v) for v in tr[:6]])
    nd = side.get("nodata", nodata)
    scales_path = _need_scales(path, product, _scales_path(path))
    read_scales = _open_scales_array(scales_path, (h, w)) if scales_path is not None else None

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        x = np.asarray(arr[:, r0:r1, c0:c1]) if band_first else np.moveaxis(np.asarray(arr[r0:r1, c0:c1, :]), -1, 0)
        return _mask_pixels(x, product, nd, read_scales(r0, r1, c0, c1) if read_scales else None)

    if grid_crs is None or src_crs == grid_crs:
        return Source(path, src_crs, affine, h, w, count, read)
    # Arrays have no VRT: dequantise and mask first, then warp the float array (NaN = masked) whole.
    full = read(0, h, 0, w)
    dst_tr, dw, dh = calculate_default_transform(src_crs, grid_crs, w, h, *rasterio.transform.array_bounds(h, w, affine))
    out = np.full((count, dh, dw), np.nan, dtype=np.float32)
    reproject(full, out, src_transform=affine, src_crs=src_crs, dst_transform=dst_tr, dst_crs=grid_crs,
              resampling=Resampling.nearest, src_nodata=np.nan, dst_nodata=np.nan)
    note = f"{path.name}: warped from {src_crs.to_string()} to the grid's {grid_crs.to_string()} (nearest neighbour)"
    return Source(path, grid_crs, dst_tr, dh, dw, count, lambda r0, r1, c0, c1: out[:, r0:r1, c0:c1], note)


# ----------------------------------------------------------------------------------------- grid
@dataclass
class ChipGrid:
    """The chips to pool onto: ids, row/col, bounds [N, 4] in `crs`, and where it came from."""

    chip_ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    bounds: np.ndarray
    crs: CRS
    kind: str  # "store" or "new"
    info: dict[str, Any] = field(default_factory=dict)


def store_grid(ws: Workspace, aoi: str) -> ChipGrid:
    """The chip grid of an AOI's store: its chip squares in the store's CRS (rows in store order)."""
    store = ws.open_store(aoi)
    index = store.index
    crs = CRS.from_user_input(store.meta.crs)
    b = np.asarray(gpd.GeoSeries(index.geometry, crs=INDEX_CRS).to_crs(crs).bounds.to_numpy(), dtype=np.float64)
    b = np.round(b, 4)  # the EPSG:4326 round trip adds sub-millimetre noise to the squares' edges
    return ChipGrid(index["chip_id"].to_numpy().astype(str), index["row"].to_numpy(), index["col"].to_numpy(), b, crs,
                    "store", {"store_crs": crs.to_string(), "chip_size": store.meta.chip_size,
                              "pixel_size_m": store.meta.pixel_size_m})


def new_grid(aoi: str, sources: Sequence[Source], chip_size: int) -> ChipGrid:
    """A new grid of `chip_size` pixels of the first tile over the union of the tiles (in the first tile's CRS)."""
    if chip_size < 1:
        raise ExternalError(f"--chip-size must be at least 1 pixel, got {chip_size}")
    ref = sources[0]
    if ref.transform.b or ref.transform.d:
        raise ExternalError(f"{ref.path.name} is rotated: warp it to a north-up grid first (gdalwarp)")
    px, py = abs(ref.transform.a), abs(ref.transform.e)
    bounds = np.array([rasterio.transform.array_bounds(s.height, s.width, s.transform) for s in sources])
    west, north = bounds[:, 0].min(), bounds[:, 3].max()
    east, south = bounds[:, 2].max(), bounds[:, 1].min()
    # Snap the origin to the first tile's pixel lattice, so a chip is whole source pixels.
    west = ref.transform.c + math.floor((west - ref.transform.c) / px + 1e-9) * px
    north = ref.transform.f + math.ceil((north - ref.transform.f) / py - 1e-9) * py
    side_x, side_y = chip_size * px, chip_size * py
    n_cols, n_rows = max(1, math.ceil((east - west) / side_x - 1e-9)), max(1, math.ceil((north - south) / side_y - 1e-9))
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    b = np.stack([west + cc * side_x, north - (rr + 1) * side_y, west + (cc + 1) * side_x, north - rr * side_y], axis=1)
    ids = np.array([f"{aoi}-r{r:04d}-c{c:04d}" for r, c in zip(rr, cc)])
    return ChipGrid(ids, rr, cc, b, ref.crs, "new", {"chip_size": chip_size, "pixel_size": [px, py],
                                                     "origin": [west, north], "shape": [n_rows, n_cols]})


def _grid_polygons(grid: ChipGrid) -> np.ndarray:
    """EPSG:4326 polygons of a grid's chips (corners transformed, so the squares stay exact in their CRS)."""
    to_ll = Transformer.from_crs(grid.crs, INDEX_CRS, always_xy=True)
    x0, y0, x1, y1 = grid.bounds.T
    xs = np.stack([x0, x1, x1, x0, x0], axis=1)
    ys = np.stack([y1, y1, y0, y0, y1], axis=1)
    lon, lat = to_ll.transform(xs, ys)
    return shapely.polygons(np.stack([lon, lat], axis=-1))


# ----------------------------------------------------------------------------------------- pooling
def _pixel_range(lo: float, hi: float, origin: float, step: float) -> tuple[int, int]:
    """[start, stop) of the pixels whose centres lie in [lo, hi) along one axis (step may be negative)."""
    first, second = (lo, hi) if step > 0 else (hi, lo)
    a = math.ceil((first - origin) / step - 0.5 - 1e-9)
    b = math.ceil((second - origin) / step - 0.5 - 1e-9)
    return a, b


@dataclass
class Pooled:
    """Per-chip pooled vectors: X [N, D] (NaN where missing), valid [N], valid_fraction [N], valid pixels [N]."""

    X: np.ndarray
    valid: np.ndarray
    valid_fraction: np.ndarray
    n_pixels: np.ndarray


def pool(grid: ChipGrid, sources: Sequence[Source], *, progress: bool = False) -> Pooled:
    """Mean of the valid pixels of every chip over all tiles, L2-normalised; chips without any are NaN + invalid."""
    n, dim = len(grid.chip_ids), sources[0].count
    total = np.zeros((n, dim), dtype=np.float64)
    count = np.zeros(n, dtype=np.int64)
    expected = np.zeros(n, dtype=np.int64)
    ref = sources[0].transform
    for i, (x0, y0, x1, y1) in enumerate(grid.bounds):
        c0, c1 = _pixel_range(x0, x1, ref.c, ref.a)
        r0, r1 = _pixel_range(y0, y1, ref.f, ref.e)
        expected[i] = max(0, c1 - c0) * max(0, r1 - r0)
    for src in sources:
        t = src.transform
        if t.b or t.d:
            raise ExternalError(f"{src.path.name} is rotated: warp it to a north-up grid first (gdalwarp)")
        sb = rasterio.transform.array_bounds(src.height, src.width, t)  # (west, south, east, north)
        hit = np.flatnonzero((grid.bounds[:, 0] < sb[2]) & (grid.bounds[:, 2] > sb[0]) &
                             (grid.bounds[:, 1] < sb[3]) & (grid.bounds[:, 3] > sb[1]))
        for i in tqdm(hit, desc=f"pooling {src.path.name}", unit="chip", disable=not progress):
            x0, y0, x1, y1 = grid.bounds[i]
            c0, c1 = _pixel_range(x0, x1, t.c, t.a)
            r0, r1 = _pixel_range(y0, y1, t.f, t.e)
            c0, c1, r0, r1 = max(c0, 0), min(c1, src.width), max(r0, 0), min(r1, src.height)
            if c1 <= c0 or r1 <= r0:
                continue
            block = src.read(r0, r1, c0, c1).reshape(dim, -1)  # [C, h*w]
            ok = np.isfinite(block).all(axis=0)
            if ok.any():
                total[i] += block[:, ok].sum(axis=1, dtype=np.float64)
                count[i] += int(ok.sum())
    valid = count > 0
    X = np.full((n, dim), np.nan, dtype=np.float32)
    mean = total[valid] / count[valid, None]
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    zero = norm[:, 0] < 1e-12  # valid pixels whose mean is the zero vector carry no direction: missing
    keep = np.flatnonzero(valid)[~zero]
    X[keep] = (mean[~zero] / norm[~zero]).astype(np.float32)
    valid[np.flatnonzero(valid)[zero]] = False
    frac = np.where(expected > 0, np.minimum(count / np.maximum(expected, 1), 1.0), 0.0)
    frac[~valid] = 0.0
    return Pooled(X, valid, frac.astype(np.float32), count)


# ----------------------------------------------------------------------------------------- ingest
@dataclass
class ExternalResult:
    """What an ingest wrote: where, counts and notes."""

    path: Path
    name: str
    n_chips: int
    n_valid: int
    n_partial: int
    n_missing: int
    dim: int
    notes: list[str]

    def summary(self) -> str:
        """One paragraph for the CLI."""
        lines = [f"{self.path}: {self.name}, {self.dim}-d vectors for {self.n_valid} of {self.n_chips} chips "
                 f"({self.n_partial} partial, {self.n_missing} missing: NaN, valid=False)"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def parse_year(paths: Sequence[Path]) -> int | None:
    """The year in the file names when they all agree on one (AlphaEarth and Tessera name tiles by year)."""
    years = {int(m.group(1)) for p in paths for m in [_YEAR.search(p.name)] if m}
    return years.pop() if len(years) == 1 else None


def ingest_embeddings(ws: Workspace, aoi: str, name: str, files: Sequence[Path], *, product: str = "generic",
                      chip_size: int | None = None, year: int | None = None, crs: str | None = None,
                      transform: Sequence[float] | None = None, nodata: float | None = None, overwrite: bool = True,
                      progress: bool = False) -> ExternalResult:
    """Pool per-pixel embedding rasters onto an AOI's chip grid and store them as the representation `name`."""
    try:
        check_name(aoi)
        check_name(name, "representation name")
    except WorkspaceNameError as e:
        raise ExternalError(str(e)) from None
    if name in RESERVED_NAMES or name.startswith("random-init"):
        raise ExternalError(f"{name!r} is the name of a built-in representation: choose another (e.g. alphaearth)")
    if product not in PRODUCTS:
        raise ExternalError(f"unknown product {product!r}: use one of {list(PRODUCTS)}")
    files = [Path(f) for f in files]
    if not files:
        raise ExternalError("give at least one embedding file")
    has_store = (ws.store_path(aoi) / "store.json").is_file()
    if has_store:
        if chip_size is not None:
            raise ExternalError(f"{aoi} has a chip store: its grid is used, so --chip-size does not apply (drop it)")
        try:
            grid: ChipGrid | None = store_grid(ws, aoi)
        except StoreError as e:
            raise ExternalError(str(e)) from None
        grid_crs = grid.crs
    else:
        if chip_size is None:
            raise ExternalError(f"{aoi} has no chip store: give --chip-size N (chip side in source pixels) for a new grid, "
                                "or ingest the imagery first (python -m data.ingest geotiff ...)")
        grid, grid_crs = None, None
    sources: list[Source] = []
    try:
        for f in files:
            src = open_source(f, product, grid_crs, crs=crs, transform=transform, nodata=nodata)
            if grid_crs is None:
                grid_crs = src.crs  # a new grid lives in the first tile's CRS; later tiles are warped to it
            sources.append(src)
        dims = {s.count for s in sources}
        if len(dims) > 1:
            raise ExternalError(f"the tiles have different band counts {sorted(dims)}: give tiles of one product")
        if grid is None:
            grid = new_grid(aoi, sources, int(chip_size))
        notes = [s.note for s in sources if s.note]
        if product == "alphaearth":
            named = [s for s in sources if any(s.band_names)]
            if any(s.band_names != ALPHAEARTH_BANDS for s in named):
                notes.append("band descriptions differ from A00..A63: bands were taken in file order")
        for note in notes:
            print(f"note: {note}")
        overlap = _overlapping(grid, sources)
        if not overlap:
            gb = grid.bounds
            raise ExternalError(f"no input overlaps the AOI {aoi} (grid extent {gb[:, 0].min():.0f}, {gb[:, 1].min():.0f}, "
                                f"{gb[:, 2].max():.0f}, {gb[:, 3].max():.0f} in {grid.crs.to_string()}): check the "
                                "files' area and CRS")
        pooled = pool(grid, sources, progress=progress)
    finally:
        for s in sources:
            s.close()
    if not pooled.valid.any():
        raise ExternalError("every pixel over the AOI is masked (NaN, nodata, all-zero or scale 0): nothing to pool; "
                            "check the files' nodata value and the area they cover")
    year = year if year is not None else parse_year(files)
    n_valid = int(pooled.valid.sum())
    n_partial = int((pooled.valid & (pooled.valid_fraction < 1.0)).sum())
    n_missing = int((~pooled.valid).sum())
    meta = {
        "format_version": FORMAT_VERSION, "name": name, "aoi": aoi, "product": product, "year": year,
        "dim": int(pooled.X.shape[1]), "pooling": POOLING,
        "masking": "declared nodata (any band), NaN" + (", all-zero pixels" if product == "alphaearth" else "")
                   + (", scale 0 (values dequantised as value * scale)" if product == "tessera" else ""),
        "grid": {"kind": grid.kind, "crs": grid.crs.to_string(), **grid.info},
        "sources": [{"path": str(s.path.resolve()), "size": _size(s.path), "crs": s.crs.to_string(),
                     "shape": [s.height, s.width, s.count]} for s in sources],
        "notes": notes, "n_chips": len(grid.chip_ids), "n_valid": n_valid, "n_partial": n_partial,
        "n_missing": n_missing, "pixels_per_chip_mean": float(pooled.n_pixels[pooled.valid].mean()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = ws.representation_dir(aoi, name)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        np.save(tmp / "vectors.npy", pooled.X, allow_pickle=False)
        np.save(tmp / "valid.npy", pooled.valid, allow_pickle=False)
        np.save(tmp / "valid_fraction.npy", pooled.valid_fraction, allow_pickle=False)
        np.save(tmp / "chip_ids.npy", grid.chip_ids.astype(str), allow_pickle=False)
        if grid.kind == "new":
            gpd.GeoDataFrame({"chip_id": grid.chip_ids, "row": grid.rows, "col": grid.cols},
                             geometry=_grid_polygons(grid), crs=INDEX_CRS).to_parquet(tmp / "grid.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    ws.record(f"representations/{aoi}/{name}", product=product, n_valid=n_valid, n_missing=n_missing,
              sources=[str(f) for f in files])
    return ExternalResult(out, name, len(grid.chip_ids), n_valid, n_partial, n_missing, int(pooled.X.shape[1]), notes)


def _overlapping(grid: ChipGrid, sources: Sequence[Source]) -> bool:
    gb = grid.bounds
    for s in sources:
        w, so, e, n = rasterio.transform.array_bounds(s.height, s.width, s.transform)
        if ((gb[:, 0] < e) & (gb[:, 2] > w) & (gb[:, 1] < n) & (gb[:, 3] > so)).any():
            return True
    return False


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ----------------------------------------------------------------------------------------- reading
@dataclass
class ExternalVectors:
    """A stored external representation: ids, X [N, D] (NaN where missing), valid, valid_fraction, provenance."""

    chip_ids: np.ndarray
    X: np.ndarray
    valid: np.ndarray
    valid_fraction: np.ndarray
    meta: dict[str, Any]


def list_external(ws: Workspace, aoi: str) -> list[str]:
    """Names of the complete external representations of an AOI (folders with a meta.json), sorted."""
    try:
        root = ws.artifact_dir("representations", check_name(aoi))
    except ValueError:
        return []
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if not p.name.startswith(".") and (p / "meta.json").is_file() and p.name not in RESERVED_NAMES)


def read_external(ws: Workspace, aoi: str, name: str) -> ExternalVectors:
    """Read one external representation (ExternalError with the command that makes it when missing or damaged)."""
    d = ws.representation_dir(aoi, name)
    if not (d / "meta.json").is_file():
        known = list_external(ws, aoi)
        raise ExternalError(f"no external representation {name!r} for AOI {aoi!r}"
                            + (f" (it has {known})" if known else "")
                            + f": ingest it with `python -m data.ingest embeddings --aoi {aoi} --name {name} FILES...`")
    try:
        meta = json.loads((d / "meta.json").read_text())
        arrays = [np.load(d / f, allow_pickle=False) for f in FILES[:4]]
    except (OSError, ValueError) as e:
        raise ExternalError(f"the external representation {name!r} of {aoi} is damaged ({e}): ingest it again") from None
    X, valid, frac, ids = arrays
    if not (len(X) == len(valid) == len(frac) == len(ids)):
        raise ExternalError(f"the external representation {name!r} of {aoi} is inconsistent: ingest it again")
    return ExternalVectors(ids.astype(str), X.astype(np.float32, copy=False), valid.astype(bool), frac, meta)
