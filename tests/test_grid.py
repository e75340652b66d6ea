"""core.grid: the chip under a coordinate, at the AOI's edges, for stores gridded in UTM and in EPSG:4326."""

from __future__ import annotations

import numpy as np
import pandas as pd
import geopandas as gpd
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box

from core.grid import ChipGrid
from data.simulate import chip_ids, chip_polygons, grid_frame
from data.landcover import PIXEL_SIZE_M, get_profile

AOI = "conus"
ROWS, COLS = range(100, 112), range(200, 215)  # 12 x 15 chips, not at the grid's origin


@pytest.fixture(scope="module")
def utm_index() -> gpd.GeoDataFrame:
    """The footprints of a simulated block: UTM squares reprojected to EPSG:4326, as in a simulated store."""
    geoms, crs = chip_polygons(AOI, ROWS, COLS, seed=0, chip_size=16)
    frame = pd.DataFrame({"chip_id": chip_ids(AOI, ROWS, COLS),
                          "row": np.repeat(np.arange(ROWS.start, ROWS.stop), len(COLS)),
                          "col": np.tile(np.arange(COLS.start, COLS.stop), len(ROWS))})
    gdf = gpd.GeoDataFrame(frame, geometry=geoms, crs="EPSG:4326")
    gdf.attrs["crs"] = crs
    return gdf


def lonlat_index(n_rows: int = 7, n_cols: int = 9, step: float = 0.01, drop: tuple[int, ...] = ()) -> gpd.GeoDataFrame:
    """A store gridded in EPSG:4326: row 0 at the north, chips `step` degrees square."""
    recs = []
    for r in range(n_rows):
        for c in range(n_cols):
            if r * n_cols + c in drop:
                continue
            west, north = 10.0 + c * step, 50.0 - r * step
            recs.append({"chip_id": f"g-r{r}-c{c}", "row": r, "col": c, "geometry": box(west, north - step, west + step, north)})
    return gpd.GeoDataFrame(pd.DataFrame(recs), geometry="geometry", crs="EPSG:4326")


def test_utm_grid_is_regular_and_every_centre_finds_its_chip(utm_index):
    grid = ChipGrid.from_index(utm_index, utm_index.attrs["crs"])
    assert grid.regular and grid.crs == utm_index.attrs["crs"]
    assert grid.shape == (len(ROWS), len(COLS))
    assert abs(grid.dx - 16 * PIXEL_SIZE_M) < 1e-6 and abs(grid.dy + 16 * PIXEL_SIZE_M) < 1e-6  # rows run south
    centres = shapely.get_coordinates(shapely.centroid(utm_index.geometry.values))
    found = [grid.chip_at(x, y) for x, y in centres]
    assert found == utm_index["chip_id"].tolist()


def test_utm_grid_edges_inside_and_outside(utm_index):
    grid = ChipGrid.from_index(utm_index, utm_index.attrs["crs"])
    crs, east0, north0 = grid_frame(get_profile(AOI), 0)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    # The AOI's outer corners in UTM, nudged 1 m inside and 1 m outside.
    left, right = grid.x0 + (COLS.start - 0.5) * grid.dx, grid.x0 + (COLS.stop - 0.5) * grid.dx
    top, bottom = grid.y0 + (ROWS.start - 0.5) * grid.dy, grid.y0 + (ROWS.stop - 0.5) * grid.dy
    corners = {
        (left + 1, top - 1): f"{AOI}-r{ROWS.start:04d}-c{COLS.start:04d}",
        (right - 1, top - 1): f"{AOI}-r{ROWS.start:04d}-c{COLS.stop - 1:04d}",
        (right - 1, bottom + 1): f"{AOI}-r{ROWS.stop - 1:04d}-c{COLS.stop - 1:04d}",
        (left + 1, bottom + 1): f"{AOI}-r{ROWS.stop - 1:04d}-c{COLS.start:04d}",
    }
    for (x, y), chip in corners.items():
        assert grid.chip_at(*to_ll.transform(x, y)) == chip
    for x, y in [(left - 1, top - 1), (right + 1, top - 1), (left + 1, top + 1), (right - 1, bottom - 1)]:
        assert grid.chip_at(*to_ll.transform(x, y)) is None
    # A cell boundary belongs to the cell on its east side (cells are half-open).
    x_edge = grid.x0 + (COLS.start + 0.5) * grid.dx
    assert grid.chip_at(*to_ll.transform(x_edge + 0.01, top - 50)) == f"{AOI}-r{ROWS.start:04d}-c{COLS.start + 1:04d}"
    assert grid.chip_at(*to_ll.transform(x_edge - 0.01, top - 50)) == f"{AOI}-r{ROWS.start:04d}-c{COLS.start:04d}"
    assert grid.chip_at(float("nan"), 40.0) is None


def test_lonlat_grid_edges_gaps_and_outside():
    idx = lonlat_index(drop=(10,))  # row 1, col 1 has no chip
    grid = ChipGrid.from_index(idx, "EPSG:4326")
    assert grid.regular and grid.shape == (7, 9)
    assert abs(grid.dx - 0.01) < 1e-9 and abs(grid.dy + 0.01) < 1e-9
    eps = 1e-7
    assert grid.chip_at(10.0 + eps, 50.0 - eps) == "g-r0-c0"  # north-west corner
    assert grid.chip_at(10.09 - eps, 50.0 - eps) == "g-r0-c8"  # north-east
    assert grid.chip_at(10.09 - eps, 49.93 + eps) == "g-r6-c8"  # south-east
    assert grid.chip_at(10.0 + eps, 49.93 + eps) == "g-r6-c0"  # south-west
    assert grid.chip_at(10.0 - eps, 49.99) is None  # west of the AOI
    assert grid.chip_at(10.05, 50.0 + eps) is None  # north of it
    assert grid.chip_at(10.09 + eps, 49.95) is None  # east
    assert grid.chip_at(10.05, 49.93 - eps) is None  # south
    assert grid.chip_at(10.015, 49.985) is None  # the gap
    assert grid.chip_at(10.025, 49.985) == "g-r1-c2"


def test_a_store_crs_written_as_a_list_falls_back_to_lonlat():
    grid = ChipGrid.from_index(lonlat_index(), "EPSG:32633,EPSG:32634")
    assert grid.crs == "EPSG:4326" and grid.regular
    assert grid.chip_at(10.035, 49.975) == "g-r2-c3"


def test_irregular_footprints_fall_back_to_the_polygons():
    idx = lonlat_index(3, 3)
    geoms = idx.geometry.values.copy()
    geoms[4] = box(10.5, 49.5, 10.51, 49.51)  # the middle chip sits far away: not a grid
    idx = idx.set_geometry(gpd.GeoSeries(geoms, crs="EPSG:4326"))
    grid = ChipGrid.from_index(idx, "EPSG:4326")
    assert not grid.regular
    assert grid.chip_at(10.505, 49.505) == "g-r1-c1"
    assert grid.chip_at(10.005, 49.995) == "g-r0-c0"
    assert grid.chip_at(11.0, 49.0) is None
    assert grid.position_at_fraction(0.5, 0.5) == 4  # the image still lays chips out by row/col


def test_one_row_store_takes_the_step_from_the_chip_size():
    grid = ChipGrid.from_index(lonlat_index(1, 5), "EPSG:4326")
    assert grid.regular and grid.shape == (1, 5)
    assert grid.chip_at(10.045, 49.995) == "g-r0-c4"
    assert grid.chip_at(10.045, 50.0005) is None


def test_raster_and_fractions_agree_with_chip_at(utm_index):
    grid = ChipGrid.from_index(utm_index, utm_index.attrs["crs"])
    values = np.arange(len(utm_index), dtype=np.float64)
    image = grid.raster(values)
    assert image.shape == grid.shape and image[0, 0] == 0 and image[-1, -1] == len(values) - 1
    rng = np.random.default_rng(0)
    for u, v in rng.uniform(0, 1, size=(50, 2)):
        pos = grid.position_at_fraction(u, v)
        r, c = min(int(v * grid.shape[0]), grid.shape[0] - 1), min(int(u * grid.shape[1]), grid.shape[1] - 1)
        assert pos == int(image[r, c])
        assert grid.chip_at(*grid.lonlat_at_fraction(u, v)) == utm_index["chip_id"].iloc[pos]
    assert grid.position_at_fraction(1.0, 0.5) is None and grid.position_at_fraction(-0.01, 0.5) is None
    rows, cols = grid.cells_of(np.array([0, len(values) - 1]))
    assert rows.tolist() == [0, grid.shape[0] - 1] and cols.tolist() == [0, grid.shape[1] - 1]
    corners = grid.corners_lonlat()
    assert corners.shape == (4, 2) and corners[0, 1] > corners[3, 1]  # top above bottom
    with pytest.raises(ValueError, match="one value per chip"):
        grid.raster(values[:-1])


def test_bad_indexes_are_refused():
    idx = lonlat_index(2, 2)
    with pytest.raises(ValueError, match="empty"):
        ChipGrid.from_index(idx.iloc[:0], "EPSG:4326")
    dup = idx.copy()
    dup.loc[1, "col"] = 0
    with pytest.raises(ValueError, match="share a row/col cell"):
        ChipGrid.from_index(dup, "EPSG:4326")
    with pytest.raises(ValueError, match="'row'"):
        ChipGrid.from_index(idx.drop(columns="row"), "EPSG:4326")
