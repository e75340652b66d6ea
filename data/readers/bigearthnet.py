"""BigEarthNet-MM: Sentinel-1/Sentinel-2 patch pairs -> one chip per pair.

Layout accepted (anywhere under the given folder, e.g. `BigEarthNet-S1-Example/` beside
`BigEarthNet-S2-Example/`):

    <S2 patch>/<S2 patch>_B02.tif ... _B12.tif, <S2 patch>_labels_metadata.json   (L2A, uint16 DN, UTM)
    <S1 patch>/<S1 patch>_VV.tif, _VH.tif, <S1 patch>_labels_metadata.json         (float32 dB, same grid)

The S1 json names its S2 twin (`corresponding_s2_patch`); each pair is one chip of the patch size
(120 px at 10 m). `s2rgb` = B04, B03, B02 as reflectance (DN/10000, `s2_offset` applies the -1000 DN
offset of processing baseline >= 04.00); `s1amp` = VV, VH in dB. A patch without its twin keeps the
other modality missing for that chip. Coherence does not exist in BigEarthNet: `coh` is missing.

Labels: BigEarthNet carries CORINE Land Cover multi-labels (the 43-class nomenclature), which say
which classes occur in a patch, not how much of it they cover. So the task *fractions* stay NaN
(unknown), and the store gets presence flags `corine_<task>` (True when a CORINE class of that task
is in the patch, see `CORINE_TASKS`) and the label list itself as provenance (`corine_labels`).
Attach real fractions from WorldCover/JRC/GHSL rasters with `--worldcover ...` or the `labels` step.
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

from data.geotiff import Grid, GridReader, IngestError, inspect_raster, parse_date
from data.readers.common import (
    finish_ingest,
    start_ingest,
    S2_BOA_OFFSET,
    ChipBatch,
    IngestResult,
    dn_to_reflectance,
    grid_rows,
)
from data.modalities import MODALITY_KEYS, get_modality
from data.store import StoreMeta

# CORINE classes (BigEarthNet's 43-class names) that show each label task is present in a patch.
# builtup: urban fabric, industrial/transport/port/airport and construction (artificial sealed surface);
# cropland: arable and permanent crops plus mixed agriculture; vegetation: the WorldCover vegetation
# classes' CORINE counterparts (forest, shrub, grassland/pasture, wetland vegetation, green urban);
# water: permanent inland and marine water. Mixed classes count for both of their parts.
CORINE_TASKS: dict[str, tuple[str, ...]] = {
    "Continuous urban fabric": ("builtup",),
    "Discontinuous urban fabric": ("builtup",),
    "Industrial or commercial units": ("builtup",),
    "Road and rail networks and associated land": ("builtup",),
    "Port areas": ("builtup",),
    "Airports": ("builtup",),
    "Mineral extraction sites": (),
    "Dump sites": (),
    "Construction sites": ("builtup",),
    "Green urban areas": ("vegetation",),
    "Sport and leisure facilities": ("vegetation",),
    "Non-irrigated arable land": ("cropland",),
    "Permanently irrigated land": ("cropland",),
    "Rice fields": ("cropland",),
    "Vineyards": ("cropland",),
    "Fruit trees and berry plantations": ("cropland",),
    "Olive groves": ("cropland",),
    "Pastures": ("vegetation",),
    "Annual crops associated with permanent crops": ("cropland",),
    "Complex cultivation patterns": ("cropland",),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": ("cropland", "vegetation"),
    "Agro-forestry areas": ("cropland", "vegetation"),
    "Broad-leaved forest": ("vegetation",),
    "Coniferous forest": ("vegetation",),
    "Mixed forest": ("vegetation",),
    "Natural grassland": ("vegetation",),
    "Moors and heathland": ("vegetation",),
    "Sclerophyllous vegetation": ("vegetation",),
    "Transitional woodland/shrub": ("vegetation",),
    "Beaches, dunes, sands": (),
    "Bare rock": (),
    "Sparsely vegetated areas": (),
    "Burnt areas": (),
    "Inland marshes": ("vegetation",),
    "Peatbogs": ("vegetation",),
    "Salt marshes": ("vegetation",),
    "Salines": (),
    "Intertidal flats": (),
    "Water courses": ("water",),
    "Water bodies": ("water",),
    "Coastal lagoons": ("water",),
    "Estuaries": ("water",),
    "Sea and ocean": ("water",),
}
_S2_BANDS = {"B4": "B04", "B3": "B03", "B2": "B02"}
_S1_BANDS = tuple(get_modality("s1amp").channels)
_ROWCOL = re.compile(r"_(\d+)_(\d+)$")


@dataclass
class Patch:
    """One BigEarthNet chip: its S2 and/or S1 patch folder and metadata."""

    s2_dir: Path | None
    s1_dir: Path | None
    s2_meta: dict
    s1_meta: dict

    @property
    def name(self) -> str:
        """Chip id: the S2 patch name (the S1 one when there is no S2 twin)."""
        return (self.s2_dir or self.s1_dir).name


def _load_meta(d: Path) -> dict:
    f = d / f"{d.name}_labels_metadata.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise IngestError(f"{f}: cannot read the BigEarthNet patch metadata ({e})") from None


def find_patches(root: str | Path) -> list[Patch]:
    """All BigEarthNet patches under `root`, S1 paired with its S2 twin by the S1 json, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: no such folder (expected BigEarthNet-MM patch folders under it)")
    s2_dirs: dict[str, Path] = {}
    s1_dirs: list[Path] = []
    for meta in sorted(root.rglob("*_labels_metadata.json")):
        d = meta.parent
        if meta.name != f"{d.name}_labels_metadata.json":
            continue
        if (d / f"{d.name}_VV.tif").exists() or (d / f"{d.name}_VH.tif").exists():
            s1_dirs.append(d)
        elif (d / f"{d.name}_B04.tif").exists():
            s2_dirs[d.name] = d
    if not s2_dirs and not s1_dirs:
        raise IngestError(
            f"no BigEarthNet patch under {root}: expected folders <patch>/<patch>_B04.tif (S2) or <patch>_VV.tif (S1), "
            "each with <patch>_labels_metadata.json"
        )
    patches, used = [], set()
    for d in s1_dirs:
        m1 = _load_meta(d)
        twin = m1.get("corresponding_s2_patch")
        s2 = s2_dirs.get(twin) if twin else None
        if s2 is not None:
            used.add(s2.name)
        patches.append(Patch(s2, d, _load_meta(s2) if s2 else {}, m1))
    for name, d in s2_dirs.items():
        if name not in used:
            patches.append(Patch(d, None, _load_meta(d), {}))
    return sorted(patches, key=lambda p: p.name)


def corine_columns(labels: Sequence[str]) -> dict:
    """Provenance and presence-flag columns from a patch's CORINE labels (fractions stay unknown)."""
    out = {"corine_labels": "; ".join(labels)}
    for task in ("vegetation", "builtup", "cropland", "water"):
        out[f"corine_{task}"] = any(task in CORINE_TASKS.get(lab, ()) for lab in labels)
    out["corine_unknown"] = "; ".join(lab for lab in labels if lab not in CORINE_TASKS)
    return out


def _patch_grid(p: Patch) -> Grid:
    ref = p.s2_dir / f"{p.s2_dir.name}_B04.tif" if p.s2_dir else p.s1_dir / f"{p.s1_dir.name}_VV.tif"
    if not ref.exists() and p.s1_dir is not None:
        ref = p.s1_dir / f"{p.s1_dir.name}_VH.tif"
    info = inspect_raster(ref)
    return Grid(info.crs, info.transform, info.width, info.height)


def _read(files: list[Path], grid: Grid, nodata: float | None) -> tuple[np.ndarray, int]:
    """Single-band files on the patch grid -> `[C, H, W]` float32 (NaN nodata) and bytes read."""
    planes, n = [], 0
    for f in files:
        with GridReader(f, grid, [1], resampling=Resampling.bilinear, src_nodata=nodata) as rd:
            planes.append(rd.read(0, 0, grid.height, grid.width)[0])
            n += rd.itemsize * grid.height * grid.width
    return np.stack(planes), n


def _batches(
    patches: list[Patch], grids: list[Grid], modalities: list[str], size: int, s2_offset: bool, batch: int
) -> Iterator[ChipBatch]:
    off = S2_BOA_OFFSET if s2_offset else 0.0
    for s in range(0, len(patches), batch):
        part, part_grids = patches[s : s + batch], grids[s : s + batch]
        s2 = np.full((len(part), 3, size, size), np.nan, dtype=np.float32)
        s1 = np.full((len(part), 2, size, size), np.nan, dtype=np.float32)
        has2, has1 = np.zeros(len(part), bool), np.zeros(len(part), bool)
        frames, n_bytes = [], 0
        for k, (p, grid) in enumerate(zip(part, part_grids)):
            if p.s2_dir is not None:
                files = [p.s2_dir / f"{p.s2_dir.name}_{_S2_BANDS[b]}.tif" for b in get_modality("s2rgb").channels]
                dn, nb = _read(files, grid, 0)  # DN 0 = no data in Sentinel-2 products
                s2[k], has2[k] = dn_to_reflectance(dn, offset=off), True
                n_bytes += nb
            if p.s1_dir is not None:
                files = [p.s1_dir / f"{p.s1_dir.name}_{b}.tif" for b in _S1_BANDS]
                s1[k], nb = _read(files, grid, None)
                has1[k] = True
                n_bytes += nb
            m = _ROWCOL.search(p.name)
            left, top = grid.transform.c, grid.transform.f
            row = grid_rows([p.name], [int(m.group(1)) if m else k], [int(m.group(2)) if m else 0],
                            grid.crs.to_string(), [left], [top], *grid.res, size)
            d2 = parse_date(p.s2_meta.get("acquisition_date")) if p.s2_dir else None
            d1 = parse_date(p.s1_meta.get("acquisition_time")) if p.s1_dir else None
            labels = p.s2_meta.get("labels") or p.s1_meta.get("labels") or []
            extra = {
                "source_crs": grid.crs.to_string(),
                "acquired": d2 or d1,
                "acquired_s2rgb": d2,
                "acquired_s1amp": d1,
                "source_s2rgb": p.s2_dir.name if p.s2_dir else None,
                "source_s1amp": p.s1_dir.name if p.s1_dir else None,
                "s2_tile_source": p.s2_meta.get("tile_source"),
                "s1_scene_source": p.s1_meta.get("scene_source"),
                **corine_columns(labels),
            }
            for c, v in extra.items():
                row[c] = v
            frames.append(row)
        arrays, provided = {"s2rgb": s2, "s1amp": s1}, {"s2rgb": has2, "s1amp": has1}
        yield ChipBatch({m: arrays[m] for m in modalities}, pd.concat(frames, ignore_index=True),
                        provided={m: provided[m] for m in modalities}, bytes_read=n_bytes)


def ingest_bigearthnet(
    root: str | Path,
    aoi: str,
    out: str | Path,
    *,
    s2_offset: bool = False,
    max_nodata: float = 0.5,
    skip_when: str = "any",
    labels: dict[str, Sequence[str | Path]] | None = None,
    jrc_threshold: float = 90.0,
    title: str | None = None,
    overwrite: bool = False,
    batch: int = 64,
    progress: bool = True,
) -> IngestResult:
    """Ingest every BigEarthNet-MM patch (pair) under `root` into one chip store at `out`."""
    patches = find_patches(root)
    files = []
    for p in patches:
        for d in (p.s2_dir, p.s1_dir):
            if d is not None:
                files += sorted(d.glob("*_B0[234].tif")) + sorted(d.glob("*_V[VH].tif")) + sorted(d.glob("*.json"))
    params = {"aoi": aoi, "s2_offset": s2_offset, "max_nodata": max_nodata, "skip_when": skip_when}
    start = start_ingest("bigearthnet", out, files, params, overwrite, labels, jrc_threshold,
                         command=f"python -m data.ingest bigearthnet {root} --aoi {aoi} --overwrite")
    if start.done is not None:
        return start.done
    grids = [_patch_grid(p) for p in patches]
    size = grids[0].width
    for p, g in zip(patches, grids):
        if (g.width, g.height) != (size, size):
            raise IngestError(f"{p.name}: patch is {g.width}x{g.height} px, {patches[0].name} is {size}x{size}: one store holds one chip size")
    crss = sorted({g.crs.to_string() for g in grids})
    n_pairs = sum(1 for p in patches if p.s2_dir and p.s1_dir)
    channels = {m: list(get_modality(m).channels) for m in ("s2rgb", "s1amp")}  # BigEarthNet-MM holds S2 and S1
    present = [m for m, has in (("s2rgb", any(p.s2_dir for p in patches)), ("s1amp", any(p.s1_dir for p in patches))) if has]
    missing = [m for m in MODALITY_KEYS if m not in present]
    meta = StoreMeta(
        aoi=aoi,
        title=title or f"{aoi} (real data: BigEarthNet-MM, {len(patches)} patches)",
        simulated=False,
        chip_size=size,
        pixel_size_m=grids[0].pixel_size_m(),
        crs=crss[0] if len(crss) == 1 else ",".join(crss),
        channels={m: channels[m] for m in present},
        source=f"BigEarthNet-MM patches under {Path(root).name}",
        description=(
            f"{len(patches)} BigEarthNet patches ({n_pairs} S1+S2 pairs), one chip each; missing: {missing}; "
            "CORINE labels give presence flags (corine_<task>), not fractions"
        ),
        extra={
            "ingest": {
                "kind": "bigearthnet", "fingerprint": start.fingerprint, "params": params, "missing_modalities": missing,
                "s2": "L2A DN/10000" + (" with -1000 offset" if s2_offset else ""), "s1": "VV/VH dB as shipped",
                "grid_crs_per_chip": len(crss) > 1,
                "labels_note": "label fractions unknown from CORINE multi-labels (NaN); presence flags corine_<task>",
                "corine_tasks": {k: list(v) for k, v in CORINE_TASKS.items()},
            }
        },
    )
    return finish_ingest(
        start, meta, _batches(patches, grids, present, size, s2_offset, batch), max_nodata=max_nodata,
        skip_when=skip_when, total=len(patches), sources={"s2rgb": "BigEarthNet S2 B04/B03/B02", "s1amp": "BigEarthNet S1 VV/VH"},
        progress=progress,
    )
