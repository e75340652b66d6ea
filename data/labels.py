"""Chip-level label fractions from label rasters (ESA WorldCover, JRC Global Surface Water, GHSL built-up).

Each chip footprint (CRS, transform, size in the store's grid) receives the label raster reprojected
onto its own pixels with nearest-neighbour resampling (classes must not be blended), read window by
window from the label file: GDAL only decodes the source blocks a chip touches, so a 36000x36000
WorldCover tile is never loaded whole. A product may come as several tiles: per-chip counts are summed
over the tiles (tiles of these products do not overlap), then divided.

Products and the fractions they give (the denominator is always the chip's *valid* label pixels; a
chip with none gets NaN, never 0):

- `worldcover` (ESA WorldCover 10 m, classes 10..100, 0 = nodata): vegetation = tree cover (10),
  shrubland (20), grassland (30), herbaceous wetland (90), mangroves (95), moss and lichen (100);
  builtup = 50; cropland = 40; water = permanent water bodies (80). Bare/sparse (60) and snow/ice (70)
  are valid land in the denominator but belong to no task. Values outside the legend count as nodata.
- `jrc` (JRC GSW occurrence, 0-100 % of observations that saw water, 255 = nodata): water = pixels
  with occurrence >= `jrc_threshold` (default 90 %, i.e. permanent water).
- `ghsl` (GHS-BUILT-S, built-up surface in m^2 per cell): builtup = sum over chip pixels of
  (built m^2 / cell area) / valid pixels, with the cell area from the source grid (exact for the
  equal-area Mollweide grid of the product; from the chip's latitude for geographic grids).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from tqdm import tqdm

from data.modalities import LABEL_TASKS
from data.atomic import atomic_write_json, temp_sibling
from data.geotiff import IngestError, bounds_to, inspect_raster
from data.store import ChipStore, StoreError, file_record

LABEL_KINDS: tuple[str, ...] = ("worldcover", "jrc", "ghsl")

WORLDCOVER_LEGEND: dict[int, str] = {
    10: "tree cover", 20: "shrubland", 30: "grassland", 40: "cropland", 50: "built-up",
    60: "bare / sparse vegetation", 70: "snow and ice", 80: "permanent water bodies",
    90: "herbaceous wetland", 95: "mangroves", 100: "moss and lichen",
}
WORLDCOVER_TASK_CLASSES: dict[str, tuple[int, ...]] = {
    "vegetation": (10, 20, 30, 90, 95, 100),
    "builtup": (50,),
    "cropland": (40,),
    "water": (80,),
}
KIND_TASKS: dict[str, tuple[str, ...]] = {
    "worldcover": ("vegetation", "builtup", "cropland", "water"),
    "jrc": ("water",),
    "ghsl": ("builtup",),
}
KIND_TITLES: dict[str, str] = {
    "worldcover": "ESA WorldCover",
    "jrc": "JRC Global Surface Water occurrence",
    "ghsl": "GHSL built-up surface (GHS-BUILT-S)",
}
# When several products give the same task the later one wins: dedicated products beat WorldCover.
KIND_PRECEDENCE: tuple[str, ...] = ("worldcover", "ghsl", "jrc")
_DEFAULT_NODATA = {"worldcover": 0, "jrc": 255}
_EARTH_RADIUS_M = 6371008.8


@dataclass(frozen=True)
class ChipFootprint:
    """The pixel grid of one chip: CRS, affine transform and size."""

    crs: str
    transform: Affine
    width: int
    height: int


def worldcover_counts(classes: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-chip task pixel counts and valid-pixel counts from WorldCover classes `[n, H, W]`."""
    classes = np.asarray(classes)
    valid = np.isin(classes, list(WORLDCOVER_LEGEND)).sum(axis=(1, 2)).astype(np.float64)
    nums = {
        task: np.isin(classes, codes).sum(axis=(1, 2)).astype(np.float64)
        for task, codes in WORLDCOVER_TASK_CLASSES.items()
    }
    return nums, valid


def jrc_counts(occurrence: np.ndarray, threshold: float = 90.0, nodata: float = 255) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-chip permanent-water counts (occurrence >= threshold) and valid counts from `[n, H, W]`."""
    occ = np.asarray(occurrence).astype(np.float64)
    ok = np.isfinite(occ) & (occ != nodata) & (occ >= 0) & (occ <= 100)
    water = (ok & (occ >= threshold)).sum(axis=(1, 2)).astype(np.float64)
    return {"water": water}, ok.sum(axis=(1, 2)).astype(np.float64)


def ghsl_counts(
    built_m2: np.ndarray, cell_area_m2: np.ndarray | float, nodata: float | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-chip summed built-up fraction and valid counts from built-up m^2 per cell `[n, H, W]`."""
    v = np.asarray(built_m2).astype(np.float64)
    ok = np.isfinite(v) & (v >= 0)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        ok &= v != nodata
    area = np.broadcast_to(np.asarray(cell_area_m2, dtype=np.float64).reshape(-1, 1, 1), v.shape)
    frac = np.where(ok, np.clip(v / area, 0.0, 1.0), 0.0)
    return {"builtup": frac.sum(axis=(1, 2))}, ok.sum(axis=(1, 2)).astype(np.float64)


@dataclass
class _Tile:
    path: Path
    src: rasterio.io.DatasetReader
    nodata: float | None
    bounds: tuple[float, float, float, float]
    crs: CRS
    _bbox_cache: dict = field(default_factory=dict)


class LabelRaster:
    """One label product (one or more tiles); computes label fractions for chip footprints."""

    def __init__(self, kind: str, paths: Sequence[str | Path], *, jrc_threshold: float = 90.0) -> None:
        if kind not in LABEL_KINDS:
            raise IngestError(f"unknown label product {kind!r}; known: {list(LABEL_KINDS)}")
        if not paths:
            raise IngestError(f"no files given for label product {kind!r}")
        if not 0 < jrc_threshold <= 100:
            raise IngestError(f"the JRC permanent-water threshold must be in (0, 100] %, got {jrc_threshold}")
        self.kind, self.jrc_threshold = kind, float(jrc_threshold)
        self.tiles: list[_Tile] = []
        try:
            for p in paths:
                info = inspect_raster(p)
                if info.count != 1:
                    raise IngestError(f"{p}: a {KIND_TITLES[kind]} label raster has 1 band, this file has {info.count}")
                src = rasterio.open(info.path)
                nodata = src.nodata if src.nodata is not None else _DEFAULT_NODATA.get(kind)
                self.tiles.append(_Tile(info.path, src, nodata, info.bounds, info.crs))
        except BaseException:
            self.close()
            raise

    @property
    def tasks(self) -> tuple[str, ...]:
        """The label tasks this product gives."""
        return KIND_TASKS[self.kind]

    def describe(self) -> dict:
        """Provenance of this product for store metadata."""
        d = {"product": KIND_TITLES[self.kind], "files": [t.path.name for t in self.tiles], "tasks": list(self.tasks)}
        if self.kind == "worldcover":
            d["classes"] = {t: list(c) for t, c in WORLDCOVER_TASK_CLASSES.items()}
        if self.kind == "jrc":
            d["permanent_water_occurrence_pct"] = self.jrc_threshold
        return d

    def close(self) -> None:
        """Close the tile files."""
        for t in self.tiles:
            t.src.close()
        self.tiles = []

    def __enter__(self) -> "LabelRaster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fill(self, tile: _Tile) -> float:
        if tile.nodata is not None:
            return float(tile.nodata)
        return float(np.iinfo(tile.src.dtypes[0]).max) if np.dtype(tile.src.dtypes[0]).kind in "ui" else math.nan

    def _warp(self, tile: _Tile, fp: ChipFootprint) -> np.ndarray:
        """The tile's values on the chip's pixels (nearest), the fill value outside the tile."""
        fill = self._fill(tile)
        dtype = np.float64 if math.isnan(fill) else tile.src.dtypes[0]
        dst = np.full((fp.height, fp.width), fill, dtype=dtype)
        try:
            reproject(
                rasterio.band(tile.src, 1),
                dst,
                dst_transform=fp.transform,
                dst_crs=fp.crs,
                src_nodata=tile.nodata,
                dst_nodata=fill,
                resampling=Resampling.nearest,
                init_dest_nodata=True,
            )
        except rasterio.errors.RasterioError as e:
            raise IngestError(f"{tile.path}: reading the label raster failed ({e}); the file is truncated or corrupt") from None
        return dst

    def _overlaps(self, tile: _Tile, fp: ChipFootprint) -> bool:
        t = fp.transform
        b = (t.c, t.f + fp.height * t.e, t.c + fp.width * t.a, t.f)
        bb = bounds_to(CRS.from_user_input(fp.crs), tile.crs, b)
        return not (bb[2] <= tile.bounds[0] or bb[0] >= tile.bounds[2] or bb[3] <= tile.bounds[1] or bb[1] >= tile.bounds[3])

    def _cell_area(self, tile: _Tile, fp: ChipFootprint) -> float:
        st = tile.src.transform
        if tile.crs.is_projected:
            f = tile.crs.linear_units_factor[1] if tile.crs.linear_units_factor else 1.0
            return abs(st.a * st.e) * f * f
        # geographic source: cell area at the chip centre's latitude
        cx, cy = fp.transform @ (fp.width / 2, fp.height / 2)
        _, lat = Transformer.from_crs(CRS.from_user_input(fp.crs), tile.crs, always_xy=True).transform(cx, cy)
        dlon, dlat = math.radians(abs(st.a)), math.radians(abs(st.e))
        return _EARTH_RADIUS_M**2 * dlon * dlat * math.cos(math.radians(lat))

    def counts(self, footprints: Sequence[ChipFootprint]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Summed task numerators and valid-pixel denominators per footprint, over all tiles."""
        n = len(footprints)
        nums = {t: np.zeros(n) for t in self.tasks}
        den = np.zeros(n)
        for i, fp in enumerate(footprints):
            for tile in self.tiles:
                if not self._overlaps(tile, fp):
                    continue
                px = self._warp(tile, fp)[None]  # [1, H, W]
                if self.kind == "worldcover":
                    c_num, c_den = worldcover_counts(px)
                elif self.kind == "jrc":
                    c_num, c_den = jrc_counts(px, self.jrc_threshold, self._fill(tile))
                else:
                    # The fill written outside the tile, not just the tag: an untagged integer tile is
                    # filled with its dtype's max, which must not count as fully built.
                    c_num, c_den = ghsl_counts(px, self._cell_area(tile, fp), self._fill(tile))
                for t in self.tasks:
                    nums[t][i] += c_num[t][0]
                den[i] += c_den[0]
        return nums, den

    def fractions(self, footprints: Sequence[ChipFootprint]) -> pd.DataFrame:
        """Task fractions (NaN where no valid label pixel) and `label_valid_<kind>` per footprint."""
        nums, den = self.counts(footprints)
        n_px = np.array([fp.width * fp.height for fp in footprints], dtype=np.float64)
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            for t in self.tasks:
                out[t] = np.where(den > 0, nums[t] / np.where(den > 0, den, 1), np.nan).astype(np.float32)
            out[f"label_valid_{self.kind}"] = (den / n_px).astype(np.float32)
        return pd.DataFrame(out)


def open_label_rasters(sources: dict[str, Sequence[str | Path]], *, jrc_threshold: float = 90.0) -> list[LabelRaster]:
    """Open the given label products, in precedence order (later products overwrite shared tasks)."""
    unknown = set(sources) - set(LABEL_KINDS)
    if unknown:
        raise IngestError(f"unknown label products {sorted(unknown)}; known: {list(LABEL_KINDS)}")
    out: list[LabelRaster] = []
    try:
        for kind in KIND_PRECEDENCE:
            if sources.get(kind):
                out.append(LabelRaster(kind, sources[kind], jrc_threshold=jrc_threshold))
    except BaseException:
        for r in out:
            r.close()
        raise
    return out


def label_columns(rasters: Sequence[LabelRaster], footprints: Sequence[ChipFootprint]) -> pd.DataFrame:
    """Label columns for footprints from several products (precedence: the later product wins a task)."""
    cols = pd.DataFrame(index=range(len(footprints)))
    for r in rasters:
        fr = r.fractions(footprints)
        for c in fr.columns:
            new = fr[c].to_numpy()
            if c in r.tasks and c in cols:
                # A later product wins only where it has valid pixels: a chip its tiles do not cover
                # keeps the earlier product's fraction (and source).
                won = np.isfinite(new)
                cols[c] = np.where(won, new, cols[c].to_numpy())
                cols[f"label_source_{c}"] = np.where(won, r.kind, cols[f"label_source_{c}"].to_numpy())
            else:
                cols[c] = new
                if c in r.tasks:
                    cols[f"label_source_{c}"] = np.where(np.isfinite(new), r.kind, None)
    return cols


def footprints_from_index(index: pd.DataFrame, chip_size: int, grid_crs: str | None = None) -> list[ChipFootprint]:
    """Chip footprints from an index: the `grid_*` columns written by ingest, else from the polygons.

    Without `grid_*` columns (e.g. simulated stores), the footprint is the chip polygon's bounding box
    in `grid_crs` (the store's CRS), divided into `chip_size` pixels.
    """
    cols = ("grid_crs", "grid_left", "grid_top", "grid_xres", "grid_yres")
    if all(c in index.columns for c in cols):
        return [
            ChipFootprint(str(r.grid_crs), Affine(float(r.grid_xres), 0, float(r.grid_left), 0, -float(r.grid_yres), float(r.grid_top)), chip_size, chip_size)
            for r in index[list(cols)].itertuples(index=False)
        ]
    if grid_crs is None:
        raise IngestError("the chip index has no grid_* columns: give the CRS of the chip grid")
    geoms = gpd.GeoSeries(index.geometry, crs="EPSG:4326").to_crs(grid_crs)
    out = []
    for b in geoms.bounds.itertuples(index=False):
        xres, yres = (b.maxx - b.minx) / chip_size, (b.maxy - b.miny) / chip_size
        out.append(ChipFootprint(str(grid_crs), Affine(xres, 0, b.minx, 0, -yres, b.maxy), chip_size, chip_size))
    return out


def attach_labels(
    store_path: str | Path,
    sources: dict[str, Sequence[str | Path]],
    *,
    jrc_threshold: float = 90.0,
    progress: bool = True,
    batch: int = 256,
    warnings: list[str] | None = None,
) -> pd.DataFrame:
    """Add or overwrite label columns of an existing store from label rasters; returns the new index.

    `chips.parquet` is rewritten atomically (temp sibling, then rename), then `store.json` records the
    label provenance under `meta.extra["labels"]` (only products with a valid pixel under some chip) and
    what did not go as asked under `meta.extra["label_warnings"]`; the same lines are appended to
    `warnings`. When no product overlaps the chips, nothing is written and IngestError says "no overlap".
    """
    notes: list[str] = []
    try:
        store = ChipStore.open(Path(store_path))
    except StoreError as e:
        raise IngestError(str(e)) from None
    rasters = open_label_rasters(sources, jrc_threshold=jrc_threshold)
    if not rasters:
        raise IngestError("no label rasters given: pass --worldcover, --jrc and/or --ghsl files")
    try:
        crs = None if "grid_crs" in store.index.columns else store.meta.crs
        fps = footprints_from_index(store.index, store.meta.chip_size, crs)
        parts = []
        for s in tqdm(range(0, len(fps), batch), desc="labels", unit="batch", disable=not progress):
            parts.append(label_columns(rasters, fps[s : s + batch]))
        cols = pd.concat(parts, ignore_index=True)
        attached = [r for r in rasters if (cols[f"label_valid_{r.kind}"].to_numpy() > 0).any()]
        for r in rasters:
            if r not in attached:
                notes.append(f"{r.kind} labels ({', '.join(t.path.name for t in r.tiles)}): no overlap with the "
                             f"{len(fps)} chips of {store.meta.aoi!r} (no valid label pixel under any chip): not attached")
        provenance = {r.kind: r.describe() for r in attached}
        kinds = [r.kind for r in attached]
    finally:
        for r in rasters:
            r.close()
    if not kinds:
        raise IngestError("; ".join(notes) + ": nothing written; give rasters that cover the AOI")
    # Columns of products that do not overlap are all NaN: drop them so they do not overwrite anything.
    cols = cols[[c for c in cols.columns if not any(c == f"label_valid_{k}" for k in set(LABEL_KINDS) - set(kinds))]]
    index = store.index.copy()
    before = index.reindex(columns=list(LABEL_TASKS)).to_numpy(dtype=np.float64)
    for c in cols.columns:
        if c.startswith("label_source_"):
            continue  # moved together with its task below
        new = cols[c].to_numpy()
        src = f"label_source_{c}"
        if c in LABEL_TASKS and c in index.columns and src in cols.columns:
            # New labels win where they have valid pixels; elsewhere the store keeps what it had (nothing lost).
            won = np.isfinite(new.astype(np.float64))
            old_src = index[src].to_numpy() if src in index.columns else np.full(len(index), None, dtype=object)
            index[c] = np.where(won, new, index[c].to_numpy())
            index[src] = np.where(won, cols[src].to_numpy(), old_src)
        else:
            index[c] = new
            if src in cols.columns:
                index[src] = cols[src].to_numpy()
    for t in LABEL_TASKS:
        index[t] = index[t].astype(np.float32)
    after = index[list(LABEL_TASKS)].to_numpy(dtype=np.float64)
    if np.array_equal(before, after, equal_nan=True):
        notes.append(f"label columns unchanged: {', '.join(kinds)} give the values {store.meta.aoi!r} already has")
    write_index(store.path, index, labels=provenance, warnings=notes)
    if warnings is not None:
        warnings.extend(notes)
    return index


def write_index(store_path: Path, index: gpd.GeoDataFrame, *, labels: dict | None = None,
                warnings: Sequence[str] = ()) -> None:
    """Atomically replace a store's chips.parquet; store.json records its new checksum, label provenance and warnings."""
    store_path = Path(store_path)
    tmp = temp_sibling(store_path / "chips.parquet")
    try:
        gpd.GeoDataFrame(index, geometry="geometry", crs="EPSG:4326").to_parquet(tmp)
        os.replace(tmp, store_path / "chips.parquet")
    finally:
        if tmp.exists():
            tmp.unlink()
    spec = store_path / "store.json"
    info = json.loads(spec.read_text())
    if isinstance(info.get("integrity"), dict):  # keep `ChipStore.verify` true to the new index
        info["integrity"]["chips.parquet"] = file_record(store_path / "chips.parquet")
    extra = info["meta"].setdefault("extra", {})
    if labels is not None:
        extra.setdefault("labels", {}).update(labels)
    if warnings:
        extra.setdefault("label_warnings", []).extend(warnings)
    atomic_write_json(spec, info)


def add_label_arguments(p: argparse.ArgumentParser) -> None:
    """The label-raster options shared by the ingest subcommands."""
    g = p.add_argument_group("label rasters (chip-level fractions, nearest-neighbour per chip)")
    g.add_argument("--worldcover", nargs="+", type=Path, default=[], metavar="TIF",
                   help="ESA WorldCover tile(s): vegetation (10,20,30,90,95,100), builtup (50), cropland (40), water (80)")
    g.add_argument("--jrc", nargs="+", type=Path, default=[], metavar="TIF",
                   help="JRC GSW occurrence tile(s): water = occurrence >= --jrc-threshold (overrides WorldCover water)")
    g.add_argument("--ghsl", nargs="+", type=Path, default=[], metavar="TIF",
                   help="GHS-BUILT-S tile(s), built-up m^2 per cell: builtup fraction (overrides WorldCover builtup)")
    g.add_argument("--jrc-threshold", type=float, default=90.0, metavar="PCT",
                   help="JRC occurrence (%%) from which a pixel is permanent water (default 90)")


def label_sources(args: argparse.Namespace) -> dict[str, list[Path]]:
    """The label products given on the command line."""
    return {k: list(getattr(args, k)) for k in LABEL_KINDS if getattr(args, k, None)}

