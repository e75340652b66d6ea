"""Interferometric coherence pairs (one GeoTIFF per interferogram) -> a `coh` chip store, one channel per baseline.

Input: single-band VV coherence GeoTIFFs, one per interferometric pair, e.g. the GAMMA/PyRate products
`cropA_20180307-20180319_VV_8rlks_flat_eqa_cc.tif`. The two acquisition dates come from the tags
`FIRST_DATE`/`SECOND_DATE` when present, else from the first two dates in the file name; files without
two dates (e.g. `coh_mean.tif`) are skipped and the skip is reported.

Channels (as the paper's GSSIC data: median VV coherence per repeat interval, optionally per season):
- `--baselines 12 24 36 48` (days) chooses the temporal baselines; a pair's baseline is the day count
  between its dates, matched within `--tolerance` days. Each baseline becomes channel `VV_<b>d`, the
  per-pixel median (or `--combine mean`) of every pair with that baseline; pairs with other baselines
  are dropped and reported.
- `--by-season` splits each baseline by the meteorological season of the pair's mid-date (northern
  hemisphere: winter DJF, spring MAM, summer JJA, fall SON): channels `VV_<b>d_<season>`.

Nodata: coherence 0 is "not computed" in these products (GAMMA writes 0 where it has no estimate), so
the files' nodata value, or 0 when they declare none (`--nodata`), becomes NaN before combining: a
pixel is missing only where no pair of that channel has a value, and is never read as zero coherence.
Files may lie on different grids: the first file's grid (or the common area of all) is the target and
the others are warped to it (reported).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from rasterio.enums import Resampling

from data.geotiff import (
    ChipGrid,
    Grid,
    GridReader,
    IngestError,
    RasterInfo,
    bounds_to,
    fmt_bounds,
    geographic_footprint,
    inspect_raster,
    intersect_bounds,
    snapped_grid,
)
from data.modalities import get_modality
from data.readers.common import ChipBatch, IngestResult, cut_chips, finish_ingest, grid_rows, start_ingest
from data.store import StoreMeta

DEFAULT_BASELINES: tuple[int, ...] = (12, 24, 36, 48)
SEASONS: dict[int, str] = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
                           6: "summer", 7: "summer", 8: "summer", 9: "fall", 10: "fall", 11: "fall"}
COMBINE = ("median", "mean")


@dataclass(frozen=True)
class CoherencePair:
    """One interferogram's coherence file and its acquisition dates."""

    info: RasterInfo
    first: date
    second: date

    @property
    def baseline_days(self) -> int:
        """Temporal baseline in days."""
        return (self.second - self.first).days

    @property
    def season(self) -> str:
        """Meteorological (northern) season of the pair's mid-date."""
        mid = date.fromordinal((self.first.toordinal() + self.second.toordinal()) // 2)
        return SEASONS[mid.month]


def pair_dates(info: RasterInfo) -> tuple[date, date] | None:
    """The two acquisition dates of a coherence file (tags FIRST_DATE/SECOND_DATE, else the file name)."""
    tags = [info.tags.get(k) for k in ("FIRST_DATE", "SECOND_DATE")]
    found = []
    if all(tags):
        found = [str(t) for t in tags]
    else:
        found = [f"{m[0]}-{m[1]}-{m[2]}" for m in re.findall(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)", info.path.name)][:2]
    if len(found) < 2:
        return None
    try:
        a, b = sorted(date.fromisoformat(s[:10]) for s in found)
    except ValueError:
        return None
    return (a, b) if a < b else None


def find_pairs(inputs: Sequence[str | Path]) -> tuple[list[CoherencePair], list[str]]:
    """Coherence pairs among files and folders (`*.tif` directly inside), and the names of skipped files."""
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in (".tif", ".tiff"))
        elif p.exists():
            files.append(p)
        else:
            raise IngestError(f"{p}: no such file or folder")
    if not files:
        raise IngestError(f"no GeoTIFF in {[str(p) for p in inputs]}: give coherence .tif files or their folder")
    pairs, skipped = [], []
    for f in files:
        info = inspect_raster(f)
        dates = pair_dates(info)
        if dates is None:
            skipped.append(f.name)
            continue
        if info.count != 1:
            raise IngestError(f"{f}: a coherence pair file has one band, this one has {info.count}")
        pairs.append(CoherencePair(info, *dates))
    if not pairs:
        raise IngestError(
            f"none of the {len(files)} files has two acquisition dates (tags FIRST_DATE/SECOND_DATE or two "
            f"YYYYMMDD dates in the name), so no temporal baseline is known: {skipped[:5]}"
        )
    return pairs, skipped


def select_channels(
    pairs: Sequence[CoherencePair], baselines: Sequence[int], *, by_season: bool = False, tolerance: int = 0
) -> tuple[dict[str, list[CoherencePair]], list[CoherencePair]]:
    """Channel name -> its pairs (baseline order, then season), and the pairs no channel uses."""
    if not baselines or any(b <= 0 for b in baselines):
        raise IngestError(f"--baselines must be positive day counts, got {list(baselines)}")
    if tolerance < 0:
        raise IngestError(f"--tolerance must be >= 0 days, got {tolerance}")
    groups: dict[str, list[CoherencePair]] = defaultdict(list)
    used: set[int] = set()
    season_order = list(dict.fromkeys(SEASONS[m] for m in (12, 3, 6, 9)))
    for b in baselines:
        match = [p for p in pairs if abs(p.baseline_days - b) <= tolerance]
        for p in sorted(match, key=lambda p: (season_order.index(p.season), p.first)):
            groups[f"VV_{b}d_{p.season}" if by_season else f"VV_{b}d"].append(p)
            used.add(id(p))
    if not groups:
        have = sorted({p.baseline_days for p in pairs})
        raise IngestError(f"no pair has a temporal baseline in {list(baselines)} days (+-{tolerance}); the pairs have {have}")
    return dict(groups), [p for p in pairs if id(p) not in used]


def _target_grid(pairs: Sequence[CoherencePair]) -> Grid:
    """The first file's grid over the area every file covers."""
    ref = pairs[0].info
    boxes = [bounds_to(p.info.crs, ref.crs, p.info.bounds) for p in pairs]
    common = intersect_bounds(boxes)
    if common is None:
        where = "; ".join(f"{p.info.path.name}: {fmt_bounds(geographic_footprint(p.info))}" for p in pairs[:5])
        raise IngestError(f"the coherence files do not overlap: {where}")
    return snapped_grid(ref.crs, common, ref.res, (ref.transform.c, ref.transform.f))


def _combine(stack: np.ndarray, how: str) -> np.ndarray:
    """Per-pixel median/mean over pairs `[P, h, w]` ignoring NaN; NaN where no pair has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        return (np.nanmedian if how == "median" else np.nanmean)(stack, axis=0).astype(np.float32)


def _batches(chips: ChipGrid, groups: dict[str, list[CoherencePair]], aoi: str, how: str, nodata: float | None,
             acquired: str) -> Iterator[ChipBatch]:
    """One batch per row of chips: every channel combined from its pairs, cut into chips."""
    paths = {p.info.path for ps in groups.values() for p in ps}
    readers = {}
    try:
        for path in paths:
            info = next(p.info for ps in groups.values() for p in ps if p.info.path == path)
            src_nodata = info.nodata if info.nodata is not None else nodata
            readers[path] = GridReader(path, chips.grid, [1], resampling=Resampling.bilinear, src_nodata=src_nodata)
        crs = chips.grid.crs.to_string()
        xres, yres = chips.grid.res
        w = (chips.n_cols - 1) * chips.stride + chips.size
        for r in range(chips.n_rows):
            planes, n_bytes = [], 0
            for pairs in groups.values():
                stack = np.concatenate([readers[p.info.path].read(r * chips.stride, 0, chips.size, w) for p in pairs])
                if nodata is not None and not math.isnan(nodata):
                    stack[stack == nodata] = np.nan  # also for warped files, whose VRT carries the file's nodata
                n_bytes += stack.size * 4
                planes.append(_combine(stack, how))
            block = np.stack(planes)  # [C, size, w]
            lo, hi = float(np.nanmin(block, initial=0.0)), float(np.nanmax(block, initial=0.0))
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise IngestError(f"coherence outside 0-1 (range {lo:.3g}..{hi:.3g}): these files are not 0-1 coherence")
            cols = np.arange(chips.n_cols)
            lefts, tops = chips.chip_origins(np.full_like(cols, r), cols)
            rows = grid_rows([f"{aoi}-r{r:05d}c{c:05d}" for c in cols], np.full_like(cols, r), cols, crs, lefts, tops,
                             xres, yres, chips.size)
            rows["source_crs"] = crs
            rows["acquired"] = acquired
            yield ChipBatch({"coh": cut_chips(block, 1, chips.n_cols, chips.size, chips.stride)}, rows, bytes_read=n_bytes)
    finally:
        for rd in readers.values():
            rd.close()


def ingest_coherence(
    inputs: Sequence[str | Path],
    aoi: str,
    out: str | Path,
    *,
    baselines: Sequence[int] = DEFAULT_BASELINES,
    by_season: bool = False,
    tolerance: int = 0,
    combine: str = "median",
    nodata: float | None = 0.0,
    chip_size: int = 8,
    stride: int | None = None,
    max_nodata: float = 0.5,
    skip_when: str = "any",
    labels: dict[str, Sequence[str | Path]] | None = None,
    jrc_threshold: float = 90.0,
    title: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestResult:
    """Ingest coherence pair GeoTIFFs as the `coh` modality, one channel per baseline (and season); see module doc."""
    if combine not in COMBINE:
        raise IngestError(f"--combine must be one of {COMBINE}, got {combine!r}")
    stride = stride or chip_size
    pairs, skipped = find_pairs(inputs)
    groups, unused = select_channels(pairs, baselines, by_season=by_season, tolerance=tolerance)
    params = {"aoi": aoi, "baselines": list(baselines), "by_season": by_season, "tolerance": tolerance,
              "combine": combine, "nodata": nodata, "chip_size": chip_size, "stride": stride,
              "max_nodata": max_nodata, "skip_when": skip_when, "inputs": [str(p) for p in inputs]}
    command = (f"python -m data.ingest coherence {' '.join(map(str, inputs))} --aoi {aoi} --baselines "
               f"{' '.join(map(str, baselines))}{' --by-season' if by_season else ''} --chip-size {chip_size} --overwrite")
    start = start_ingest("coherence", out, [p.info.path for p in pairs], params, overwrite, labels, command=command)
    if start.done is not None:
        return start.done
    channels = list(groups)
    get_modality("coh").validate_channels(channels)
    grid = _target_grid([p for ps in groups.values() for p in ps])
    chips = ChipGrid(grid, chip_size, stride)
    used = [p for ps in groups.values() for p in ps]
    first, last = min(p.first for p in used), max(p.second for p in used)
    notes = start.warnings
    if skipped:
        notes.append(f"coh: {len(skipped)} file(s) without two acquisition dates skipped: {', '.join(skipped[:5])}")
    if unused:
        by_b = defaultdict(int)
        for p in unused:
            by_b[p.baseline_days] += 1
        notes.append(f"coh: {len(unused)} pair(s) with other baselines dropped (not in --baselines "
                     f"{list(baselines)}): " + ", ".join(f"{b}d x{n}" for b, n in sorted(by_b.items())))
    warped = sorted({p.info.path.name for p in used if p.info.crs != grid.crs or not np.allclose(p.info.res, grid.res)})
    if warped:
        notes.append(f"coh: {len(warped)} file(s) on another CRS or pixel size were warped (bilinear) to the grid of "
                     f"{used[0].info.path.name}: {', '.join(warped[:5])}")
    meta = StoreMeta(
        aoi=aoi,
        title=title or f"{aoi} (real data: InSAR coherence, {len(used)} pairs)",
        simulated=False,
        chip_size=chip_size,
        pixel_size_m=grid.pixel_size_m(),
        crs=grid.crs.to_string(),
        channels={"coh": channels},
        source=f"InSAR VV coherence pairs: {len(used)} of {len(pairs)} files, {first}..{last}",
        description=(f"{combine} VV coherence per temporal baseline{' and season' if by_season else ''} on a "
                     f"{chips.n_rows}x{chips.n_cols} chip grid of {chip_size} px; s2rgb and s1amp missing"),
        extra={
            "ingest": {
                "kind": "coherence", "fingerprint": start.fingerprint, "params": params, "command": command,
                "missing_modalities": ["s2rgb", "s1amp"], "nodata": "file nodata, else 0 (not computed) -> NaN",
                "channels": {
                    c: {"combine": combine, "pairs": [f"{p.first}/{p.second}" for p in ps],
                        "files": [p.info.path.name for p in ps]}
                    for c, ps in groups.items()
                },
            },
            "grid": {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6], "width": grid.width,
                     "height": grid.height, "chip_rows": chips.n_rows, "chip_cols": chips.n_cols},
        },
    )
    return finish_ingest(
        start, meta, _batches(chips, groups, aoi, combine, nodata, f"{first}/{last}"),
        max_nodata=max_nodata, skip_when=skip_when, total=len(chips),
        sources={"coh": f"{len(used)} coherence pairs"}, progress=progress,
    )
