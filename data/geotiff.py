"""GeoTIFF reading for ingest: checked opening, target grids, chip grids and windowed (re)projected reads.

Everything that touches a raster file goes through here so that every reader fails the same way on
bad input (`IngestError` naming the file and the fix) and reads in bounded memory: a `GridReader`
reads one window of a target grid at a time, straight from the file when the file is already on that
grid, otherwise through a rasterio `WarpedVRT` (GDAL reads only the source blocks a window needs).
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from data.cli import KnownError

INDEX_CRS = "EPSG:4326"
_GEOD = Geod(ellps="WGS84")


class IngestError(KnownError):
    """Input data cannot be ingested; the message says what is wrong and how to fix it."""


def _gdal_reason(e: BaseException) -> str:
    """The most specific GDAL message of a rasterio exception chain."""
    cause = e.__cause__ or e.__context__
    return str(cause) if cause is not None else str(e)


@contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster with a clear IngestError for missing, unreadable or non-raster files."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path} is a folder, expected a GeoTIFF file")
    try:
        src = rasterio.open(path)
    except RasterioError as e:
        raise IngestError(
            f"{path} cannot be opened as a raster ({_gdal_reason(e)}); the file is truncated or corrupt, or not a "
            "GeoTIFF: re-download or re-export it"
        ) from None
    try:
        yield src
    finally:
        src.close()


def read_checked(src, path: str | Path, **kwargs) -> np.ndarray:
    """`src.read(**kwargs)` turning GDAL read failures into an IngestError that names the file."""
    try:
        return src.read(**kwargs)
    except RasterioError as e:
        raise IngestError(
            f"{path}: reading pixels failed ({_gdal_reason(e)}); the file is truncated or corrupt: re-download or "
            "re-export it"
        ) from None


@dataclass(frozen=True)
class RasterInfo:
    """What ingest needs to know about one raster file."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    tags: dict

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the file's CRS."""
        return tuple(rasterio.transform.array_bounds(self.height, self.width, self.transform))

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y), positive, in CRS units."""
        return abs(self.transform.a), abs(self.transform.e)


def check_all_blocks(src, path: str | Path) -> None:
    """Decode every block of every band, so a damaged inner tile fails here, before any store is started.

    Reading only the last block catches a truncated download but not a corrupt tile in the middle (a bad
    sector, a broken copy). One block at a time keeps memory at one block; GDAL decodes each tile once.
    """
    for band in range(1, src.count + 1):
        for (row, col), win in src.block_windows(band):
            try:
                src.read(band, window=win)
            except RasterioError as e:
                raise IngestError(
                    f"{path}: reading pixels failed in block (row {row}, col {col}) of band {band} (x {win.col_off}.."
                    f"{win.col_off + win.width}, y {win.row_off}..{win.row_off + win.height}: {_gdal_reason(e)}); the "
                    "file is truncated or corrupt: re-download or re-export it"
                ) from None


def inspect_raster(path: str | Path, *, require_crs: bool = True) -> RasterInfo:
    """Open, validate (CRS, north-up, every block decodable) and describe a raster file."""
    path = Path(path)
    with open_raster(path) as src:
        if require_crs and not src.crs:
            raise IngestError(
                f"{path} has no coordinate reference system, so it cannot be placed on a map: assign one "
                f"(e.g. `gdal_edit.py -a_srs EPSG:32633 {path.name}`) and retry"
            )
        t = src.transform
        if t.b != 0 or t.d != 0 or t.e >= 0:
            raise IngestError(
                f"{path} is rotated or not north-up (transform {tuple(t)[:6]}); warp it to a north-up grid first "
                "(e.g. `gdalwarp in.tif out.tif`)"
            )
        if t == Affine.identity() and not src.gcps[0]:
            raise IngestError(f"{path} has no georeferencing (identity transform): georeference it first")
        check_all_blocks(src, path)
        return RasterInfo(
            path=path,
            crs=src.crs,
            transform=t,
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            nodata=src.nodata,
            descriptions=tuple(src.descriptions),
            tags=dict(src.tags()),
        )


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y), positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top)."""
        left, top = self.transform.c, self.transform.f
        return left, top - self.height * self.res[1], left + self.width * self.res[0], top

    def pixel_size_m(self) -> float:
        """Approximate pixel size in metres (geodesic at the grid centre for geographic CRSs)."""
        return pixel_size_m(self.crs, self.transform, self.width, self.height)


def pixel_size_m(crs: CRS, transform: Affine, width: int, height: int) -> float:
    """Pixel width in metres: CRS units times the unit factor, or geodesic east-west at the centre."""
    crs = CRS.from_user_input(crs)
    if crs.is_projected:
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        return abs(transform.a) * factor
    lon, lat = transform @ (width / 2, height / 2)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(lon, lat)
    lon1, lat1 = to_ll.transform(lon + abs(transform.a), lat)
    return float(_GEOD.inv(lon0, lat0, lon1, lat1)[2])


def bounds_to(crs_from: CRS, crs_to: CRS | str, bounds: Sequence[float]) -> tuple[float, float, float, float]:
    """Transform a bounding box between CRSs (densified edges, so curved edges are covered)."""
    return tuple(transform_bounds(crs_from, crs_to, *bounds, densify_pts=21))


def intersect_bounds(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float] | None:
    """Intersection of (left, bottom, right, top) boxes, or None when empty."""
    left = max(b[0] for b in boxes)
    bottom = max(b[1] for b in boxes)
    right = min(b[2] for b in boxes)
    top = min(b[3] for b in boxes)
    if left >= right or bottom >= top:
        return None
    return left, bottom, right, top


def snapped_grid(
    crs: CRS, bounds: Sequence[float], res: tuple[float, float], anchor: tuple[float, float] | None = None
) -> Grid:
    """The grid of `res` pixels covering `bounds`, with pixel edges on `anchor` + k*res (default 0, 0).

    Pixels only partly inside `bounds` are dropped, so every grid pixel is covered by all inputs.
    """
    ax, ay = anchor or (0.0, 0.0)
    rx, ry = res
    eps = 1e-6  # tolerate float noise when a bound already sits on a pixel edge
    left = ax + math.ceil((bounds[0] - ax) / rx - eps) * rx
    top = ay + math.floor((bounds[3] - ay) / ry + eps) * ry
    width = int(math.floor((bounds[2] - left) / rx + eps))
    height = int(math.floor((top - bounds[1]) / ry + eps))
    return Grid(CRS.from_user_input(crs), Affine(rx, 0.0, left, 0.0, -ry, top), max(width, 0), max(height, 0))


@dataclass(frozen=True)
class ChipGrid:
    """Square chips of `size` pixels every `stride` pixels over a target grid (only whole chips)."""

    grid: Grid
    size: int
    stride: int

    def __post_init__(self) -> None:
        if self.size < 4 or self.stride < 1:
            raise IngestError(f"chip size must be >= 4 and stride >= 1 (got {self.size}, {self.stride})")
        if self.grid.width < self.size or self.grid.height < self.size:
            raise IngestError(
                f"the common area of the inputs is only {self.grid.width}x{self.grid.height} pixels on the target grid, "
                f"smaller than one {self.size}-pixel chip: use a smaller --chip-size or a finer --res"
            )

    @property
    def n_rows(self) -> int:
        """Number of chip rows."""
        return (self.grid.height - self.size) // self.stride + 1

    @property
    def n_cols(self) -> int:
        """Number of chip columns."""
        return (self.grid.width - self.size) // self.stride + 1

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def chip_transform(self, row: int, col: int) -> Affine:
        """Affine transform of one chip."""
        return self.grid.transform @ Affine.translation(col * self.stride, row * self.stride)

    def chip_origins(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-left corner (x, y) of chips in the grid CRS."""
        t = self.grid.transform
        return t.c + cols * self.stride * t.a, t.f + rows * self.stride * t.e


def chip_polygons(
    crs: CRS | str, lefts: np.ndarray, tops: np.ndarray, width: float, height: float, per_edge: int = 4
) -> np.ndarray:
    """EPSG:4326 polygons of axis-aligned chips given in `crs` (edges densified, so they stay exact)."""
    lefts = np.asarray(lefts, dtype=np.float64)
    tops = np.asarray(tops, dtype=np.float64)
    t = np.arange(per_edge) / per_edge  # [k]
    ring_u = np.concatenate([t, np.ones(per_edge), 1 - t, np.zeros(per_edge)])  # x fraction along the ring
    ring_v = np.concatenate([np.zeros(per_edge), t, np.ones(per_edge), 1 - t])  # y fraction (down)
    xs = lefts[:, None] + ring_u[None, :] * width  # [n, 4k]
    ys = tops[:, None] - ring_v[None, :] * height
    to_ll = Transformer.from_crs(CRS.from_user_input(crs), INDEX_CRS, always_xy=True)
    lon, lat = to_ll.transform(xs.ravel(), ys.ravel())
    coords = np.stack([np.reshape(lon, xs.shape), np.reshape(lat, ys.shape)], axis=-1)  # [n, 4k, 2]
    coords = np.concatenate([coords, coords[:, :1]], axis=1)  # close the rings
    return shapely.polygons(coords)


def geographic_footprint(info: RasterInfo) -> tuple[float, float, float, float]:
    """A raster's bounds in EPSG:4326, for messages."""
    return bounds_to(info.crs, INDEX_CRS, info.bounds)


def fmt_bounds(b: Sequence[float]) -> str:
    """Short lon/lat bounding-box text."""
    return f"lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}"


class GridReader:
    """Read bands of one raster file on a target grid, window by window, as float32 with NaN for nodata.

    When the file already lies on the grid (same CRS and pixel size, whole-pixel offset) windows are read
    directly, so values are exact; otherwise through a WarpedVRT with `resampling`. `src_nodata` (default:
    the file's own) marks invalid source pixels; NaN in float sources is always invalid.
    """

    def __init__(
        self,
        path: str | Path,
        grid: Grid,
        bands: Sequence[int],
        *,
        resampling: Resampling = Resampling.bilinear,
        src_nodata: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.grid = grid
        self.bands = [int(b) for b in bands]
        self._cm = open_raster(self.path)
        self.src = self._cm.__enter__()
        if not self.src.crs:
            self._cm.__exit__(None, None, None)
            raise IngestError(
                f"{self.path} has no coordinate reference system, so it cannot be placed on a map: assign one "
                f"(e.g. `gdal_edit.py -a_srs EPSG:32633 {self.path.name}`) and retry"
            )
        self.nodata = src_nodata if src_nodata is not None else self.src.nodata
        self.itemsize = np.dtype(self.src.dtypes[0]).itemsize
        self.bytes_read = 0
        self._offset = self._aligned_offset()
        self.vrt = None
        if self._offset is None:
            self.vrt = WarpedVRT(
                self.src,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=resampling,
                src_nodata=self.nodata,
                nodata=np.nan,
                dtype="float32",
            )

    @property
    def direct(self) -> bool:
        """Whether windows are read straight from the file (no resampling)."""
        return self._offset is not None

    def _aligned_offset(self) -> tuple[int, int] | None:
        s, g = self.src.transform, self.grid.transform
        if self.src.crs != self.grid.crs:
            return None
        if not (math.isclose(s.a, g.a, rel_tol=1e-9) and math.isclose(s.e, g.e, rel_tol=1e-9)):
            return None
        dx, dy = (g.c - s.c) / s.a, (g.f - s.f) / s.e
        if abs(dx - round(dx)) > 1e-6 or abs(dy - round(dy)) > 1e-6:
            return None
        return int(round(dy)), int(round(dx))

    def read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """Grid window -> float32 `[C, height, width]`, NaN where the source has no valid data."""
        self.bytes_read += len(self.bands) * height * width * self.itemsize
        if self.vrt is not None:
            try:
                out = self.vrt.read(self.bands, window=Window(col_off, row_off, width, height))
            except RasterioError as e:
                raise IngestError(
                    f"{self.path}: reading pixels failed ({_gdal_reason(e)}); the file is truncated or corrupt: "
                    "re-download or re-export it"
                ) from None
            return out.astype(np.float32, copy=False)
        out = np.full((len(self.bands), height, width), np.nan, dtype=np.float32)
        r0, c0 = row_off + self._offset[0], col_off + self._offset[1]
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + height, self.src.height), min(c0 + width, self.src.width)
        if rr1 <= rr0 or cc1 <= cc0:
            return out
        raw = read_checked(self.src, self.path, indexes=self.bands, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        vals = raw.astype(np.float32)
        if self.nodata is not None and not (isinstance(self.nodata, float) and math.isnan(self.nodata)):
            vals[raw == self.nodata] = np.nan
        out[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = vals
        return out

    def close(self) -> None:
        """Release the VRT and the file."""
        if self.vrt is not None:
            self.vrt.close()
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> "GridReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_values(path: str | Path, band: int, n_windows: int = 3, size: int = 256) -> np.ndarray:
    """Finite values from a few small windows spread over a band (for unit detection, cheap on mosaics)."""
    with open_raster(path) as src:
        vals = []
        for fy in np.linspace(0, 1, n_windows):
            for fx in np.linspace(0, 1, n_windows):
                w, h = min(size, src.width), min(size, src.height)
                col = int(fx * (src.width - w))
                row = int(fy * (src.height - h))
                a = read_checked(src, path, indexes=band, window=Window(col, row, w, h)).astype(np.float64)
                if src.nodata is not None and not math.isnan(src.nodata):
                    a = a[a != src.nodata]
                vals.append(a[np.isfinite(a)].ravel())
        return np.concatenate(vals) if vals else np.empty(0)


_DATE_PATTERNS = (
    (re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})T\d{4,6}"), "%Y%m%d"),  # Sentinel names: 20170613T101031
    (re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})"), "%Y-%m-%d"),
    (re.compile(r"(?<!\d)(\d{4})/(\d{2})/(\d{2})"), "%Y/%m/%d"),
    (re.compile(r"(?<![\dA-Za-z])(\d{4})(\d{2})(\d{2})(?!\d)"), "%Y%m%d"),
)
_DATE_TAGS = ("ACQUISITION_DATE", "acquisition_date", "DATE_ACQUIRED", "SENSING_TIME")
# When the file was written, not when it was sensed: only if neither the tags above nor the file name say.
_WRITE_DATE_TAGS = ("TIFFTAG_DATETIME", "datetime")


def parse_date(*texts: str | None) -> str | None:
    """First plausible acquisition date (ISO `YYYY-MM-DD`) found in file names or tag values, else None."""
    for text in texts:
        if not text:
            continue
        for pat, _ in _DATE_PATTERNS:
            for m in pat.finditer(str(text)):
                try:
                    d = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)))
                except ValueError:
                    continue
                if 1970 <= d.year <= 2100:
                    return d.date().isoformat()
    return None


def raster_date(info: RasterInfo) -> str | None:
    """Acquisition date of a raster from its acquisition tags, else its file name, else its write-date tag."""
    tag_vals = [info.tags.get(k) for k in _DATE_TAGS]
    late = [info.tags.get(k) for k in _WRITE_DATE_TAGS]
    return parse_date(*[v for v in tag_vals if v], info.path.name, *[v for v in late if v])
