"""Sen1Floods11 hand-labelled scenes -> chips with S1, S2 and a (flood-time) water fraction.

Layout accepted (anywhere under the given folder; the dataset ships them in `S1Hand/`, `S2Hand/`,
`LabelHand/`, the sample in `S1/`, `S2/`, `Labels/`):

    <scene>_S1Hand.tif     2 bands VV, VH, float32 dB, NaN = missing
    <scene>_S2Hand.tif     13 bands Sentinel-2 L1C B1..B12 (with B8A, B10), int16 reflectance x 1e4
    <scene>_LabelHand.tif  1 water, 0 not water, -1 no data
    Sen1Floods11_Metadata.geojson (optional): S1/S2 dates per event (matched by location and footprint)

Each scene (512 x 512 px, EPSG:4326, ~10 m) is cut into chips of `chip_size` px (128 -> 16 chips).
`s2rgb` = B4, B3, B2 / 10000 (DN 0 = no data); `s1amp` = VV, VH in dB. `water` = label==1 pixels /
labelled pixels (-1 excluded; NaN when a chip has no labelled pixel). This water is the *flood-time*
surface water the dataset was made for, not permanent water: the store says so in
`label_source_water` and in its metadata, and keeps it in `flood_water` too, so attaching a JRC
raster (`--jrc`) can put permanent water in `water` without losing it. Coherence is missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from rasterio.enums import Resampling
from shapely.geometry import box, shape

from data.geotiff import ChipGrid, Grid, GridReader, IngestError, bounds_to, inspect_raster, parse_date
from data.readers.common import (
    finish_ingest,
    start_ingest,
    S2_L1C_BANDS,
    ChipBatch,
    IngestResult,
    dn_to_reflectance,
    grid_rows,
    s2_band_name,
)
from data.modalities import MODALITY_KEYS, get_modality
from data.store import StoreMeta

WATER_LABEL = "Sen1Floods11 LabelHand: flood-time surface water (not permanent water)"
_SUFFIX = {"s1": "_S1Hand.tif", "s2": "_S2Hand.tif", "label": "_LabelHand.tif"}


@dataclass
class Scene:
    """The files of one Sen1Floods11 scene (any may be missing except one)."""

    name: str
    s1: Path | None
    s2: Path | None
    label: Path | None

    @property
    def location(self) -> str:
        """Event location, the scene name without its numeric id (`Sri-Lanka_123` -> `Sri-Lanka`)."""
        return re.sub(r"_\d+$", "", self.name)


def find_scenes(root: str | Path) -> list[Scene]:
    """Scenes under `root`, grouped by name from their `_S1Hand`/`_S2Hand`/`_LabelHand` files."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: no such folder (expected Sen1Floods11 *_S1Hand.tif/*_S2Hand.tif/*_LabelHand.tif)")
    found: dict[str, dict[str, Path]] = {}
    for kind, suf in _SUFFIX.items():
        for f in sorted(root.rglob(f"*{suf}")):
            found.setdefault(f.name[: -len(suf)], {})[kind] = f
    if not found:
        raise IngestError(f"no Sen1Floods11 scene under {root}: expected files named <scene>_S1Hand.tif, _S2Hand.tif, _LabelHand.tif")
    return [Scene(n, d.get("s1"), d.get("s2"), d.get("label")) for n, d in sorted(found.items())]


def load_event_dates(root: Path) -> list[dict]:
    """Events (location, S1/S2 dates, footprint) from Sen1Floods11_Metadata.geojson, if present."""
    files = sorted(Path(root).rglob("Sen1Floods11_Metadata.geojson"))
    if not files:
        return []
    try:
        feats = json.loads(files[0].read_text())["features"]
    except (OSError, ValueError, KeyError) as e:
        raise IngestError(f"{files[0]}: cannot read the Sen1Floods11 metadata ({e})") from None
    return [
        {
            "location": f["properties"].get("location"),
            "s1_date": parse_date(f["properties"].get("s1_date")),
            "s2_date": parse_date(f["properties"].get("s2_date")),
            "geometry": shape(f["geometry"]) if f.get("geometry") else None,
        }
        for f in feats
    ]


def _event_for(scene: Scene, grid: Grid, events: list[dict]) -> dict:
    lonlat = box(*bounds_to(grid.crs, "EPSG:4326", grid.bounds))
    for ev in events:
        if ev["location"] == scene.location and (ev["geometry"] is None or ev["geometry"].intersects(lonlat)):
            return ev
    return {}


def _s2_rgb_bands(path: Path) -> list[int]:
    info = inspect_raster(path)
    names = [s2_band_name(d) for d in info.descriptions]
    if any(n is None for n in names):
        if info.count != 13:
            raise IngestError(f"{path}: expected the 13 Sentinel-2 L1C bands of Sen1Floods11, found {info.count} bands without names")
        names = list(S2_L1C_BANDS)
    try:
        return [names.index(b) + 1 for b in get_modality("s2rgb").channels]
    except ValueError:
        raise IngestError(f"{path}: no B4/B3/B2 among its bands {names}") from None


def _batches(scenes: list[Scene], chip_size: int, events: list[dict], modalities: list[str]) -> Iterator[ChipBatch]:
    for sc in scenes:
        ref = inspect_raster(sc.s2 or sc.s1 or sc.label)
        grid = Grid(ref.crs, ref.transform, ref.width, ref.height)
        chips = ChipGrid(grid, chip_size, chip_size)
        H, W = (chips.n_rows - 1) * chip_size + chip_size, (chips.n_cols - 1) * chip_size + chip_size
        b = len(chips)
        arrays, provided, n_bytes = {}, {}, 0

        def read(path: Path, bands: list[int], nodata, resampling=Resampling.bilinear) -> np.ndarray:
            nonlocal n_bytes
            inspect_raster(path)
            with GridReader(path, grid, bands, resampling=resampling, src_nodata=nodata) as rd:
                n_bytes += rd.itemsize * len(bands) * H * W
                return rd.read(0, 0, H, W)

        def cut(x: np.ndarray) -> np.ndarray:  # [C, H, W] -> [b, C, s, s]
            c = x.shape[0]
            x = x.reshape(c, chips.n_rows, chip_size, chips.n_cols, chip_size)
            return np.ascontiguousarray(x.transpose(1, 3, 0, 2, 4).reshape(b, c, chip_size, chip_size))

        if "s2rgb" in modalities:
            if sc.s2 is not None:
                arrays["s2rgb"] = cut(dn_to_reflectance(read(sc.s2, _s2_rgb_bands(sc.s2), 0)))
            else:
                arrays["s2rgb"] = np.full((b, 3, chip_size, chip_size), np.nan, np.float32)
            provided["s2rgb"] = np.full(b, sc.s2 is not None)
        if "s1amp" in modalities:
            if sc.s1 is not None:
                arrays["s1amp"] = cut(read(sc.s1, [1, 2], None))
            else:
                arrays["s1amp"] = np.full((b, 2, chip_size, chip_size), np.nan, np.float32)
            provided["s1amp"] = np.full(b, sc.s1 is not None)
        rr, cc = np.meshgrid(np.arange(chips.n_rows), np.arange(chips.n_cols), indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        lefts, tops = chips.chip_origins(rr, cc)
        rows = grid_rows([f"{sc.name}_r{r}_c{c}" for r, c in zip(rr, cc)], rr, cc, grid.crs.to_string(), lefts, tops,
                         *grid.res, chip_size)
        if sc.label is not None:
            lab = cut(read(sc.label, [1], -1, Resampling.nearest))[:, 0]  # [b, s, s], NaN = -1 no data
            valid = np.isfinite(lab).sum(axis=(1, 2))
            water = (lab == 1).sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                flood = np.where(valid > 0, water / np.maximum(valid, 1), np.nan).astype(np.float32)
            # `water` may be overwritten by a JRC/WorldCover raster later; `flood_water` keeps the hand label.
            rows["water"] = flood
            rows["flood_water"] = flood
            rows["label_valid_sen1floods11"] = (valid / chip_size**2).astype(np.float32)
            rows["label_source_water"] = "sen1floods11 (flood-time water)"
        ev = _event_for(sc, grid, events)
        rows["scene"] = sc.name
        rows["location"] = sc.location
        rows["source_crs"] = grid.crs.to_string()
        rows["acquired"] = ev.get("s2_date") or ev.get("s1_date")
        rows["acquired_s2rgb"] = ev.get("s2_date")
        rows["acquired_s1amp"] = ev.get("s1_date")
        rows["source_s2rgb"] = sc.s2.name if sc.s2 else None
        rows["source_s1amp"] = sc.s1.name if sc.s1 else None
        yield ChipBatch(arrays, rows, provided, n_bytes)


def ingest_sen1floods11(
    root: str | Path,
    aoi: str,
    out: str | Path,
    *,
    chip_size: int = 128,
    max_nodata: float = 0.5,
    skip_when: str = "any",
    labels: dict[str, Sequence[str | Path]] | None = None,
    jrc_threshold: float = 90.0,
    title: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestResult:
    """Ingest every Sen1Floods11 hand-labelled scene under `root` into one chip store at `out`."""
    scenes = find_scenes(root)
    present = [m for m, has in (("s2rgb", any(s.s2 for s in scenes)), ("s1amp", any(s.s1 for s in scenes))) if has]
    if not present:
        raise IngestError(f"the Sen1Floods11 scenes under {root} have labels but no S1Hand or S2Hand image")
    files = [f for s in scenes for f in (s.s1, s.s2, s.label) if f] + sorted(Path(root).rglob("Sen1Floods11_Metadata.geojson"))
    params = {"aoi": aoi, "chip_size": chip_size, "max_nodata": max_nodata, "skip_when": skip_when}
    start = start_ingest("sen1floods11", out, files, params, overwrite, labels, jrc_threshold,
                         command=f"python -m data.ingest sen1floods11 {root} --aoi {aoi} --chip-size {chip_size} --overwrite")
    if start.done is not None:
        return start.done
    first = inspect_raster(scenes[0].s2 or scenes[0].s1 or scenes[0].label)
    grid0 = Grid(first.crs, first.transform, first.width, first.height)
    per_scene = len(ChipGrid(grid0, chip_size, chip_size))
    channels = {m: list(get_modality(m).channels) for m in ("s2rgb", "s1amp")}  # Sen1Floods11 holds S2 and S1
    missing = [m for m in MODALITY_KEYS if m not in present]
    meta = StoreMeta(
        aoi=aoi,
        title=title or f"{aoi} (real data: Sen1Floods11, {len(scenes)} scenes)",
        simulated=False,
        chip_size=chip_size,
        pixel_size_m=grid0.pixel_size_m(),
        crs=first.crs.to_string(),
        channels={m: channels[m] for m in present},
        source=f"Sen1Floods11 hand-labelled scenes under {Path(root).name}",
        description=f"{len(scenes)} scenes cut into {chip_size}-px chips; water = flood-time water from the hand labels",
        extra={
            "ingest": {
                "kind": "sen1floods11", "fingerprint": start.fingerprint, "params": params, "missing_modalities": missing,
                "s2": "L1C B4,B3,B2 DN/10000 (DN 0 = no data)", "s1": "VV/VH dB as shipped",
                "water_label": WATER_LABEL, "chips_per_scene": per_scene,
            }
        },
    )
    return finish_ingest(
        start, meta, _batches(scenes, chip_size, load_event_dates(Path(root)), present), max_nodata=max_nodata,
        skip_when=skip_when, total=None, sources={"s2rgb": "S2Hand B4/B3/B2", "s1amp": "S1Hand VV/VH"}, progress=progress,
    )
