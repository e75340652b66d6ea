"""M3LEO-style chip folders -> one chip store.

Layout accepted (the authors' M3LEO data release; `root` may be the dataset root, the AOI folder or
the partition folder itself):

    <root>/<aoi>/<aoi>_partitions_aschips_<hash>/<datakind>/<chip_id>.tif

One GeoTIFF per chip and data kind; the chip id (file stem) ties the kinds together. Data kinds read:

| datakind | becomes | bands accepted | units |
|---|---|---|---|
| `s2rgbm` | `s2rgb` | descriptions `<period>_red/green/blue` (M3LEO: `01_red` .. `12_blue`), `red_<period>` or `B4_<period>`; without descriptions 3 (RGB), 12 (4 seasons x RGB, winter..fall) or 36 (12 months x RGB) bands | uint8 display RGB; `value * s2rgbm_scale` (default 1/255, as M3LEO's own loader), a reflectance-like 0-1 value |
| `s1grd` | `s1amp` | descriptions `<season>_<pol><dir>` (M3LEO: `winter_vvasc` ..) or `VV`/`VH`; without descriptions 16 bands in M3LEO's order (season x {vv,vh} x {asc,des}) or 2 (VV, VH) | dB (linear power converted, decided from the values) |
| `gssic` | `coh` | descriptions naming a season and a repeat interval (`winter_vv_COH12`, `coherence_winter_12`, `winter_12d`); without descriptions 16 bands (4 seasons x 12/24/36/48 days, season-major) | integer = percent (x0.01), float as is; must end in 0-1 |
| `esawc` | labels | 1 band, WorldCover classes | vegetation/builtup/cropland/water fractions (see data.labels) |
| `ghsbuilts` | labels | 1 band, GHS-BUILT-S m^2 per cell | builtup fraction |

Channel names keep the season/period as a suffix (`B4_winter`, `VV_winter_asc`, `VV_winter_12d`);
the registry resolves them by base name. Other data kinds are listed in the store metadata as
ignored. GSSIC as netCDF (`.nc`) is not read: convert it to GeoTIFF first (`gdal_translate`).

Every kind is resampled onto the chip's grid: the footprint of its first available file among
s2rgbm, s1grd, gssic, esawc, ghsbuilts, divided into `chip_size` pixels (default: that file's width);
bilinear for images, nearest for label classes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from data.geotiff import Grid, GridReader, IngestError, RasterInfo, inspect_raster, sample_values
from data.labels import ChipFootprint, LabelRaster, label_columns
from data.readers.common import (
    finish_ingest,
    start_ingest,
    ChipBatch,
    IngestResult,
    detect_s1_units,
    grid_rows,
    linear_to_db,
)
from data.modalities import MODALITY_KEYS, get_modality
from data.store import StoreMeta

IMAGE_KINDS = {"s2rgbm": "s2rgb", "s1grd": "s1amp", "gssic": "coh"}
LABEL_KINDS = {"esawc": "worldcover", "ghsbuilts": "ghsl"}
REFERENCE_ORDER = ("s2rgbm", "s1grd", "gssic", "esawc", "ghsbuilts")
SEASONS = ("winter", "spring", "summer", "fall")
S1GRD_BANDS = tuple(f"{s}_{p}{d}" for s in SEASONS for p in ("vv", "vh") for d in ("asc", "des"))
GSSIC_DAYS = (12, 24, 36, 48)
_RGB = {"red": "B4", "green": "B3", "blue": "B2", "r": "B4", "g": "B3", "b": "B2", "b4": "B4", "b3": "B3", "b2": "B2"}
_PARTITION = re.compile(r"_partitions_aschips_")


def find_partition(root: str | Path, source_aoi: str | None = None) -> Path:
    """The `<aoi>_partitions_aschips_<hash>` folder under `root` (which may already be it)."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: no such folder (expected an M3LEO <aoi>/<aoi>_partitions_aschips_<hash>/<datakind>/ tree)")
    if _PARTITION.search(root.name) or any((root / k).is_dir() for k in REFERENCE_ORDER):
        return root
    cands = sorted(p for p in root.glob("*_partitions_aschips_*") if p.is_dir())
    if not cands:
        aois = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*_partitions_aschips_*")))
        if source_aoi:
            aois = [p for p in aois if p.name == source_aoi]
        if len(aois) != 1:
            names = [p.name for p in sorted(root.iterdir()) if p.is_dir()]
            raise IngestError(
                f"{root}: expected one M3LEO AOI folder holding <aoi>_partitions_aschips_<hash>/, found {len(aois)} "
                f"(folders: {names[:10]}); pass the AOI folder itself or --source-aoi NAME"
            )
        cands = sorted(p for p in aois[0].glob("*_partitions_aschips_*") if p.is_dir())
    if len(cands) != 1:
        raise IngestError(f"{root}: found {len(cands)} partition folders {[c.name for c in cands]}; pass the one to ingest")
    return cands[0]


def list_chips(partition: Path) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """`{datakind: {chip_id: file}}` for the kinds read here, and the names of the kinds ignored."""
    kinds: dict[str, dict[str, Path]] = {}
    ignored = []
    for d in sorted(p for p in partition.iterdir() if p.is_dir()):
        if d.name not in REFERENCE_ORDER:
            ignored.append(d.name)
            continue
        tifs = {f.stem: f for f in sorted(d.glob("*.tif")) + sorted(d.glob("*.tiff"))}
        if not tifs and any(d.glob("*.nc")):
            raise IngestError(f"{d}: holds netCDF (.nc) chips, which are not read here; convert them with gdal_translate to GeoTIFF")
        if tifs:
            kinds[d.name] = tifs
    if not any(k in kinds for k in IMAGE_KINDS):
        raise IngestError(f"{partition}: no s2rgbm, s1grd or gssic chips (.tif) found; folders: {sorted(kinds) + ignored}")
    return kinds, ignored


def _season(text: str) -> str | None:
    t = text.lower()
    for s in SEASONS + ("autumn",):
        if s in t:
            return "fall" if s == "autumn" else s
    return None


def s2rgbm_channels(info: RasterInfo) -> list[str]:
    """Channel names (`B4_<period>` ...) of an s2rgbm chip file."""
    descs = [d or "" for d in info.descriptions]
    out = []
    for d in descs:
        parts = [p for p in re.split(r"[_\-\s]+", d.strip().lower()) if p]
        colour = next((p for p in parts if p in _RGB), None)
        rest = [p for p in parts if p != colour]
        if colour is None:
            out = []
            break
        out.append(_RGB[colour] + (f"_{'_'.join(rest)}" if rest else ""))
    if out:
        return out
    periods = {3: [""], 12: [f"_{s}" for s in SEASONS], 36: [f"_{m:02d}" for m in range(1, 13)]}.get(info.count)
    if periods is None:
        raise IngestError(f"{info.path}: {info.count} s2rgbm bands without red/green/blue descriptions; expected 3, 12 or 36")
    return [f"{b}{p}" for p in periods for b in get_modality("s2rgb").channels]


def s1grd_channels(info: RasterInfo) -> list[str]:
    """Channel names (`VV_<season>_<dir>` ...) of an s1grd chip file."""
    descs = [(d or "").strip().lower() for d in info.descriptions]
    out = []
    for d in descs:
        m = re.search(r"(vv|vh)(asc|des)?", d)
        if not m:
            out = []
            break
        season = _season(d)
        out.append("_".join(x for x in (m.group(1).upper(), season, m.group(2)) if x))
    if out:
        return out
    if info.count == 16:
        return [f"{b.split('_')[1][:2].upper()}_{b.split('_')[0]}_{b.split('_')[1][2:]}" for b in S1GRD_BANDS]
    if info.count == 2:
        return list(get_modality("s1amp").channels)
    raise IngestError(f"{info.path}: {info.count} s1grd bands without descriptions; expected 16 (M3LEO order) or 2 (VV, VH)")


def gssic_channels(info: RasterInfo) -> list[str]:
    """Channel names (`VV_<season>_<days>d`) of a gssic coherence chip file."""
    out = []
    for d in (x or "" for x in info.descriptions):
        season, days = _season(d), re.findall(r"(\d+)", d)
        if not season or not days:
            out = []
            break
        out.append(f"VV_{season}_{int(days[-1])}d")
    if out:
        return out
    if info.count == 16:
        return [f"VV_{s}_{d}d" for s in SEASONS for d in GSSIC_DAYS]
    raise IngestError(
        f"{info.path}: {info.count} gssic bands without season/interval descriptions; expected 16 (4 seasons x 12/24/36/48 days)"
    )


_CHANNELS = {"s2rgbm": s2rgbm_channels, "s1grd": s1grd_channels, "gssic": gssic_channels}


def _chip_grid(info: RasterInfo, chip_size: int) -> Grid:
    left, bottom, right, top = info.bounds
    t = Affine((right - left) / chip_size, 0, left, 0, -(top - bottom) / chip_size, top)
    return Grid(info.crs, t, chip_size, chip_size)


def _batches(
    ids: list[str], kinds: dict[str, dict[str, Path]], channels: dict[str, list[str]], chip_size: int,
    converts: dict, batch: int,
) -> Iterator[ChipBatch]:
    for s in range(0, len(ids), batch):
        part = ids[s : s + batch]
        arrays = {IMAGE_KINDS[k]: np.full((len(part), len(c), chip_size, chip_size), np.nan, np.float32) for k, c in channels.items()}
        provided = {IMAGE_KINDS[k]: np.zeros(len(part), bool) for k in channels}
        frames, n_bytes = [], 0
        for j, cid in enumerate(part):
            ref = next(kinds[k][cid] for k in REFERENCE_ORDER if k in kinds and cid in kinds[k])
            ref_info = inspect_raster(ref)
            grid = _chip_grid(ref_info, chip_size)
            for kind, chans in channels.items():
                f = kinds[kind].get(cid)
                if f is None:
                    continue
                info = inspect_raster(f)
                got = _CHANNELS[kind](info)
                if got != chans:
                    raise IngestError(f"{f}: bands {got} differ from the other {kind} chips' {chans}; one store holds one channel list")
                with GridReader(f, grid, list(range(1, info.count + 1)), resampling=Resampling.bilinear) as rd:
                    x = rd.read(0, 0, chip_size, chip_size)
                    n_bytes += rd.itemsize * info.count * chip_size * chip_size
                arrays[IMAGE_KINDS[kind]][j] = converts[kind](x, info)
                provided[IMAGE_KINDS[kind]][j] = True
            row = grid_rows([cid], [s + j], [0], grid.crs.to_string(), [grid.transform.c], [grid.transform.f],
                            *grid.res, chip_size)
            fp = [ChipFootprint(grid.crs.to_string(), grid.transform, chip_size, chip_size)]
            for kind, label_kind in LABEL_KINDS.items():
                f = kinds.get(kind, {}).get(cid)
                if f is None:
                    continue
                with LabelRaster(label_kind, [f]) as lr:
                    cols = label_columns([lr], fp)
                for c in cols.columns:
                    row[c] = cols[c].to_numpy()
                for t in lr.tasks:
                    row[f"label_source_{t}"] = kind
            row["source_crs"] = ref_info.crs.to_string()
            row["m3leo_kinds"] = ",".join(k for k in REFERENCE_ORDER if cid in kinds.get(k, {}))
            frames.append(row)
        yield ChipBatch(arrays, pd.concat(frames, ignore_index=True), provided, n_bytes)


def _converters(kinds: dict[str, dict[str, Path]], channels: dict[str, list[str]], s2rgbm_scale: float, s1_units: str) -> tuple[dict, dict]:
    conv, notes = {}, {}
    if "s2rgbm" in channels:
        conv["s2rgbm"] = lambda x, info: (x * np.float32(s2rgbm_scale)).astype(np.float32)
        notes["s2rgbm"] = f"display RGB x {s2rgbm_scale:.6g}"
    if "s1grd" in channels:
        units, reason = s1_units, "as declared"
        if units == "auto":
            first = next(iter(kinds["s1grd"].values()))
            units, reason = detect_s1_units(sample_values(first, 1))
        if units not in ("db", "linear"):
            raise IngestError(f"--s1-units must be auto, db or linear, got {s1_units!r}")
        conv["s1grd"] = (lambda x, info: x.astype(np.float32)) if units == "db" else (lambda x, info: linear_to_db(x))
        notes["s1grd"] = f"units {units} ({reason})"
    if "gssic" in channels:
        def coh(x: np.ndarray, info: RasterInfo) -> np.ndarray:
            scale = 0.01 if np.dtype(info.dtype).kind in "ui" else 1.0
            y = (x * np.float32(scale)).astype(np.float32)
            if np.isfinite(y).any() and (np.nanmin(y) < -1e-3 or np.nanmax(y) > 1 + 1e-3):
                raise IngestError(f"{info.path}: coherence outside 0-1 after scaling by {scale:g} (range {np.nanmin(y):.3g}..{np.nanmax(y):.3g})")
            return y
        conv["gssic"] = coh
        notes["gssic"] = "integer percent x0.01, float as is"
    return conv, notes


def ingest_m3leo(
    root: str | Path,
    aoi: str,
    out: str | Path,
    *,
    source_aoi: str | None = None,
    chip_size: int | None = None,
    s2rgbm_scale: float = 1 / 255,
    s1_units: str = "auto",
    max_nodata: float = 0.5,
    skip_when: str = "any",
    labels: dict[str, Sequence[str | Path]] | None = None,
    jrc_threshold: float = 90.0,
    title: str | None = None,
    overwrite: bool = False,
    batch: int = 64,
    progress: bool = True,
) -> IngestResult:
    """Ingest an M3LEO-style partition folder into one chip store at `out` (see module doc)."""
    partition = find_partition(root, source_aoi)
    kinds, ignored = list_chips(partition)
    ids = sorted({cid for k in IMAGE_KINDS if k in kinds for cid in kinds[k]})
    files = [f for k in kinds.values() for f in k.values()]
    params = {"aoi": aoi, "chip_size": chip_size, "s2rgbm_scale": s2rgbm_scale, "s1_units": s1_units,
              "max_nodata": max_nodata, "skip_when": skip_when}
    start = start_ingest("m3leo", out, files, params, overwrite, labels, jrc_threshold,
                         command=f"python -m data.ingest m3leo {root} --aoi {aoi} --overwrite")
    if start.done is not None:
        return start.done
    channels = {k: _CHANNELS[k](inspect_raster(next(iter(kinds[k].values())))) for k in IMAGE_KINDS if k in kinds}
    first_ref = inspect_raster(next(kinds[k][ids[0]] for k in REFERENCE_ORDER if k in kinds and ids[0] in kinds[k]))
    size = int(chip_size or first_ref.width)
    converts, notes = _converters(kinds, channels, s2rgbm_scale, s1_units)
    grid0 = _chip_grid(first_ref, size)
    present = [IMAGE_KINDS[k] for k in channels]
    missing = [m for m in MODALITY_KEYS if m not in present]
    meta = StoreMeta(
        aoi=aoi,
        title=title or f"{aoi} (real data: M3LEO {partition.parent.name})",
        simulated=False,
        chip_size=size,
        pixel_size_m=grid0.pixel_size_m(),
        crs=first_ref.crs.to_string(),
        channels={IMAGE_KINDS[k]: c for k, c in channels.items()},
        source=f"M3LEO-style chips in {partition.name}",
        description=f"{len(ids)} M3LEO chips from {sorted(kinds)}; missing modalities: {missing or 'none'}",
        extra={
            "ingest": {
                "kind": "m3leo", "fingerprint": start.fingerprint, "params": params, "partition": str(partition),
                "datakinds": sorted(kinds), "ignored_datakinds": ignored, "conversion": notes,
                "missing_modalities": missing,
            }
        },
    )
    if ignored:
        start.warnings.append(f"data kinds {', '.join(map(str, ignored))} in {partition.name} are not read (no modality or label maps to them)")
    return finish_ingest(
        start, meta, _batches(ids, kinds, channels, size, converts, batch), max_nodata=max_nodata,
        skip_when=skip_when, total=len(ids), sources={IMAGE_KINDS[k]: k for k in channels}, progress=progress,
    )
