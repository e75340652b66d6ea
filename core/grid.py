"""The chip grid of one AOI: which chip lies at a coordinate, and every chip's value as a raster.

A chip store's chips sit on a regular row/col grid in the store's CRS (UTM for the simulated AOIs,
the source raster's CRS for ingested mosaics, EPSG:4326 for some). The grid's affine (origin and cell
size along each axis) is fitted from the chip footprints, so `chip_at(lon, lat)` is one coordinate
transform and an array lookup at 150 K chips, and `raster(values)` lays one value per chip into an
image with one pixel per chip (row 0 at the top). Stores whose chips are not on a regular grid in
their CRS (several CRSs, sparse patches) fall back to a point-in-polygon search of the footprints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

LONLAT = "EPSG:4326"
REGULAR_TOLERANCE = 0.02
"""A grid is regular when every chip centre lies within this fraction of a cell of the fitted affine."""


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def _grid_crs(crs: str | None) -> str:
    """The store's CRS if pyproj reads it as one CRS, else EPSG:4326 (e.g. a comma-joined list)."""
    if not crs:
        return LONLAT
    try:
        return CRS.from_user_input(crs).to_string()
    except CRSError:
        return LONLAT


@dataclass(frozen=True)
class ChipGrid:
    """The row/col grid of an AOI's chips in its CRS: cell (r, c) is centred at (x0 + c*dx, y0 + r*dy)."""

    crs: str
    x0: float  # grid CRS x of the centre of column 0 (the store's own column numbering)
    y0: float  # grid CRS y of the centre of row 0
    dx: float  # cell step along columns (grid CRS units)
    dy: float  # cell step along rows (negative when rows run southwards, as in rasters)
    row0: int  # store row of the raster's first row
    col0: int  # store column of the raster's first column
    positions: np.ndarray  # [n_rows, n_cols] int64 store position of each cell, -1 where no chip
    chip_ids: np.ndarray  # [N] str, by store position
    regular: bool  # chips lie on the fitted affine; else chip_at searches the footprints
    footprints: np.ndarray | None = field(default=None, repr=False)  # [N] EPSG:4326 polygons (irregular grids only)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the raster: the bounding box of the store's rows and cols."""
        return tuple(self.positions.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.chip_ids)

    @classmethod
    def from_index(cls, index: gpd.GeoDataFrame, crs: str | None) -> "ChipGrid":
        """Fit the grid of a store's chip index (EPSG:4326 footprints with `row`, `col`) in the store's CRS."""
        if len(index) == 0:
            raise ValueError("the chip index is empty: there is no grid")
        for col in ("row", "col", "chip_id"):
            if col not in index.columns:
                raise ValueError(f"the chip index has no {col!r} column: rebuild the store")
        rows = index["row"].to_numpy(dtype=np.int64)
        cols = index["col"].to_numpy(dtype=np.int64)
        row0, col0 = int(rows.min()), int(cols.min())
        n_rows, n_cols = int(rows.max()) - row0 + 1, int(cols.max()) - col0 + 1
        if n_rows * n_cols > 50_000_000:
            raise ValueError(f"the chip grid spans {n_rows} x {n_cols} cells: too sparse to draw as one image")
        if len(np.unique((rows - row0) * n_cols + (cols - col0))) != len(index):
            raise ValueError("two chips share a row/col cell: the store's row/col columns are not a grid")
        positions = np.full((n_rows, n_cols), -1, dtype=np.int64)
        positions[rows - row0, cols - col0] = np.arange(len(index))

        lonlat = index.geometry if index.crs is None or index.crs.to_epsg() == 4326 else index.geometry.to_crs(LONLAT)
        geoms = np.asarray(lonlat.values, dtype=object)
        grid_crs = _grid_crs(crs)
        cx, cy, width, height = _centres(geoms, grid_crs)
        # A single row or column says nothing about the step across it: take the chips' own size
        # (columns run east, rows south, as in rasters).
        x0, dx, ok_x = _fit_axis(cols, cx, float(np.median(width)))
        y0, dy, ok_y = _fit_axis(rows, cy, -float(np.median(height)))
        regular = ok_x and ok_y and dx != 0 and dy != 0
        ids = index["chip_id"].astype(str).to_numpy()
        return cls(grid_crs, x0, y0, dx, dy, row0, col0, positions, ids, bool(regular),
                   None if regular else geoms)

    # ------------------------------------------------------------------------------ coordinates
    def xy_of_lonlat(self, lon: float, lat: float) -> tuple[float, float]:
        """A lon/lat point in the grid's CRS."""
        x, y = _transformer(LONLAT, self.crs).transform(float(lon), float(lat))
        return float(x), float(y)

    def lonlat_of_xy(self, x: float, y: float) -> tuple[float, float]:
        """A grid-CRS point as lon/lat."""
        lon, lat = _transformer(self.crs, LONLAT).transform(float(x), float(y))
        return float(lon), float(lat)

    def cell_at_xy(self, x: float, y: float) -> tuple[int, int] | None:
        """(raster row, raster col) of the cell holding a grid-CRS point (cells are half-open), or None outside."""
        if not (math.isfinite(x) and math.isfinite(y)):
            return None
        # Cell c spans [centre - dx/2, centre + dx/2): floor of the shifted fraction, half-open at the far edge.
        c = math.floor((x - self.x0) / self.dx + 0.5) - self.col0
        r = math.floor((y - self.y0) / self.dy + 0.5) - self.row0
        n_rows, n_cols = self.shape
        if 0 <= r < n_rows and 0 <= c < n_cols:
            return r, c
        return None

    def position_at(self, lon: float, lat: float) -> int | None:
        """Store position of the chip under a lon/lat point, or None (outside the AOI or a cell without a chip)."""
        if not (math.isfinite(lon) and math.isfinite(lat)):
            return None
        if not self.regular:
            hits = shapely.contains_xy(self.footprints, float(lon), float(lat))
            found = np.flatnonzero(hits)
            return int(found[0]) if found.size else None
        cell = self.cell_at_xy(*self.xy_of_lonlat(lon, lat))
        if cell is None:
            return None
        pos = int(self.positions[cell])
        return pos if pos >= 0 else None

    def chip_at(self, lon: float, lat: float) -> str | None:
        """Id of the chip under a lon/lat point, or None outside the AOI (or in a gap of the grid)."""
        pos = self.position_at(lon, lat)
        return None if pos is None else str(self.chip_ids[pos])

    def position_at_fraction(self, u: float, v: float) -> int | None:
        """Store position of the chip at a point of the raster image, given as fractions (u across, v down) in [0, 1)."""
        if not (math.isfinite(u) and math.isfinite(v)):
            return None
        n_rows, n_cols = self.shape
        if not (0.0 <= u < 1.0 and 0.0 <= v < 1.0):
            return None
        if self.regular:
            # Through the grid coordinate, so the image and chip_at agree by construction.
            x = self.x0 + (self.col0 - 0.5 + u * n_cols) * self.dx
            y = self.y0 + (self.row0 - 0.5 + v * n_rows) * self.dy
            cell = self.cell_at_xy(x, y)
        else:
            cell = (min(int(v * n_rows), n_rows - 1), min(int(u * n_cols), n_cols - 1))
        if cell is None:
            return None
        pos = int(self.positions[cell])
        return pos if pos >= 0 else None

    def lonlat_at_fraction(self, u: float, v: float) -> tuple[float, float] | None:
        """Lon/lat of a point of the raster image (fractions u across, v down); None for an irregular grid."""
        if not self.regular:
            return None
        n_rows, n_cols = self.shape
        x = self.x0 + (self.col0 - 0.5 + u * n_cols) * self.dx
        y = self.y0 + (self.row0 - 0.5 + v * n_rows) * self.dy
        return self.lonlat_of_xy(x, y)

    def corners_lonlat(self) -> np.ndarray:
        """Lon/lat of the raster's outer corners [4, 2]: top-left, top-right, bottom-right, bottom-left."""
        if not self.regular:
            b = shapely.bounds(self.footprints)
            minx, miny, maxx, maxy = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
            return np.array([[minx, maxy], [maxx, maxy], [maxx, miny], [minx, miny]], dtype=np.float64)
        n_rows, n_cols = self.shape
        xs = self.x0 + (self.col0 - 0.5 + np.array([0, n_cols, n_cols, 0])) * self.dx
        ys = self.y0 + (self.row0 - 0.5 + np.array([0, 0, n_rows, n_rows])) * self.dy
        lon, lat = _transformer(self.crs, LONLAT).transform(xs, ys)
        return np.column_stack([lon, lat]).astype(np.float64)

    # ------------------------------------------------------------------------------ rasters
    def cells_of(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raster rows, raster cols) of store positions."""
        pos = np.asarray(positions, dtype=np.int64)
        flat = np.full(len(self), -1, dtype=np.int64)
        valid = self.positions >= 0
        flat[self.positions[valid]] = np.flatnonzero(valid.ravel())
        cell = flat[pos]
        return cell // self.shape[1], cell % self.shape[1]

    def raster(self, values: np.ndarray) -> np.ndarray:
        """One value per chip laid out as the grid image [rows, cols] (float64, NaN where no chip)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(self),):
            raise ValueError(f"need one value per chip ({len(self)}), got shape {values.shape}")
        out = np.full(self.shape, np.nan)
        valid = self.positions >= 0
        out[valid] = values[self.positions[valid]]
        return out


def _centres(geoms: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chip centres, widths and heights in the grid CRS; a centre is the mean of the footprint's corners,
    transformed first (exact for squares)."""
    rings = shapely.get_exterior_ring(geoms)
    counts = shapely.get_num_coordinates(rings)
    coords = shapely.get_coordinates(rings)
    x, y = _transformer(LONLAT, crs).transform(coords[:, 0], coords[:, 1])
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    # Drop each ring's closing vertex (a repeat of the first) before averaging.
    ends = np.cumsum(counts) - 1
    keep = np.ones(len(coords), dtype=bool)
    keep[ends] = False
    owner = np.repeat(np.arange(len(geoms)), counts)[keep]
    n = np.bincount(owner, minlength=len(geoms)).astype(np.float64)
    n[n == 0] = 1.0
    cx = np.bincount(owner, x[keep], len(geoms)) / n
    cy = np.bincount(owner, y[keep], len(geoms)) / n
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = np.maximum.reduceat(x, starts) - np.minimum.reduceat(x, starts)
    height = np.maximum.reduceat(y, starts) - np.minimum.reduceat(y, starts)
    return cx, cy, width, height


def _fit_axis(index: np.ndarray, coord: np.ndarray, size: float) -> tuple[float, float, bool]:
    """Least-squares coord = origin + index * step (step = `size` when index is constant); whether every
    residual is within tolerance of a step."""
    if not np.isfinite(coord).all() or not math.isfinite(size):
        return 0.0, 0.0, False
    if np.ptp(index) == 0:
        step = size
        origin = float(coord.mean()) - step * float(index[0])
    else:
        step, origin = np.polyfit(index.astype(np.float64), coord, 1)
    if step == 0:
        return float(origin), 0.0, False
    resid = np.abs(coord - (origin + step * index))
    return float(origin), float(step), bool(resid.max() <= REGULAR_TOLERANCE * abs(step))
