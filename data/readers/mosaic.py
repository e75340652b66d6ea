"""User GeoTIFFs (any subset of S2, S1, coherence; any CRSs and resolutions) -> one chip store.

Band names come, in this order, from a declaration (`--s2-bands B2,B3,B4,B8`, covering the files'
bands in order), the files' band descriptions, a band token in a single-band file's name
(`..._B04.tif`, `..._VV.tif`), or a standard full stack (13 bands = Sentinel-2 L1C order B1..B12 with
B8A after B8 and B10; 12 bands = L2A order without B10; 2 S1 bands = VV, VH). Anything else must be
declared: a wrong guess would silently swap channels.

Units (stored in the registry's physical units):
- S2: integer DN -> reflectance = (DN + offset) / 10000, offset 0 or -1000 with `--s2-offset`
  (processing baseline >= 04.00, products from 25 January 2022). DN 0 is nodata when the file
  declares none. Float files are taken as reflectance unless their values exceed 2 (then DN).
- S1: dB kept, linear power -> 10 log10. `--s1-units auto` decides from sample windows of the first
  file: any negative value means dB (power is never negative), otherwise linear power.
- Coherence: 0-1 floats kept; integer files are read as percent (x 0.01, the GSSIC byte encoding)
  unless `--coh-scale` says otherwise; values outside 0-1 after scaling stop the ingest.

The target grid is the reference input's (the first of S2, S1, coh given, or `--reference`), or
`--crs`/`--res`; it covers the area where *all* inputs overlap, so every chip has every given
modality. Inputs already on that grid are read directly (exact values); the others through a
WarpedVRT (`--resampling`, default bilinear). The chip grid is read one block of chip rows/columns
at a time, within `--max-block-mb` per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform

from data.modalities import MODALITY_KEYS, get_modality
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
    raster_date,
    sample_values,
    snapped_grid,
)
from data.readers.common import (
    S2_BOA_OFFSET,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    ChipBatch,
    IngestResult,
    cut_chips,
    dn_to_reflectance,
    detect_s1_units,
    finish_ingest,
    grid_rows,
    linear_to_db,
    s1_pol_name,
    s2_band_name,
    start_ingest,
)
from data.store import StoreMeta

MOSAIC_MODALITIES = MODALITY_KEYS
_FLAG = {"s2rgb": "--s2", "s1amp": "--s1", "coh": "--coh"}
_EXAMPLES = {"s2rgb": "B4,B3,B2", "s1amp": "VV,VH", "coh": "VV_12d,VV_36d"}


@dataclass
class ModalityInput:
    """The files of one modality and how to read them."""

    files: Sequence[str | Path]
    bands: Sequence[str] | None = None  # declared band names, in file order, over all files
    units: str = "auto"  # s2: auto|dn|reflectance; s1: auto|db|linear; coh: ignored (see scale)
    scale: float | None = None  # coherence scale (None: 0.01 for integer files, 1 for float)


@dataclass
class _Resolved:
    modality: str
    channels: list[str]
    picks: list[tuple[RasterInfo, int]]  # (file, 1-based band) per channel
    convert: Callable[[np.ndarray], np.ndarray]
    src_nodata: dict[Path, float | None]
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # named input bands that are not stored

    @property
    def infos(self) -> list[RasterInfo]:
        seen: dict[Path, RasterInfo] = {}
        for info, _ in self.picks:
            seen.setdefault(info.path, info)
        return list(seen.values())


def _band_names(
    modality: str, infos: list[RasterInfo], declared: Sequence[str] | None, parse: Callable[[str | None], str | None]
) -> list[list[str | None]]:
    """Band names of every file (outer list per file), from declaration, descriptions, file name or standard order."""
    flag = f"{_FLAG[modality]}-bands"
    total = sum(i.count for i in infos)
    if declared:
        declared = [d.strip() for d in declared if d.strip()]
        if len(declared) != total:
            detail = ", ".join(f"{i.path.name}: {i.count}" for i in infos)
            raise IngestError(
                f"{flag} declares {len(declared)} bands ({','.join(declared)}) but the {modality} files have {total} "
                f"({detail}): declare exactly one name per band, in file order"
            )
        out, k = [], 0
        for i in infos:
            out.append(list(declared[k : k + i.count]))
            k += i.count
        return out
    out = []
    for info in infos:
        names = [parse(d) if d else None for d in info.descriptions]
        if info.count == 1 and names[0] is None:
            names = [parse(info.path.name)]
        if any(n is None for n in names):
            std = _standard_order(modality, info.count)
            if std is None:
                raise IngestError(
                    f"cannot tell which band is which in {info.path} ({info.count} bands, no usable band descriptions or "
                    f"band name in the file name): declare one name per band in file order, e.g. {flag} "
                    f"{_EXAMPLES[modality]}"
                )
            names = list(std)
        out.append(names)
    return out


def _standard_order(modality: str, count: int) -> tuple[str, ...] | None:
    if modality == "s2rgb":
        return {13: S2_L1C_BANDS, 12: S2_L2A_BANDS}.get(count)
    if modality == "s1amp":
        return tuple(get_modality("s1amp").channels) if count == 2 else None
    chans = get_modality("coh").channels
    return tuple(chans) if count == len(chans) else None


def _pick(modality: str, infos: list[RasterInfo], names: list[list[str | None]], wanted: Sequence[str] | None) -> list[tuple[str, RasterInfo, int]]:
    """(channel, file, band) for the wanted channels (all named bands when `wanted` is None)."""
    where: dict[str, tuple[RasterInfo, int]] = {}
    for info, file_names in zip(infos, names):
        for b, n in enumerate(file_names, start=1):
            if n is None:
                continue
            if n in where:
                raise IngestError(f"band {n} appears twice in the {modality} inputs ({where[n][0].path.name} and {info.path.name})")
            where[n] = (info, b)
    order = list(wanted) if wanted is not None else list(where)
    return [(c, *where[c]) for c in order if c in where]


def _dropped(names: list[list[str | None]], picks: list[tuple[str, RasterInfo, int]]) -> list[str]:
    """Named input bands no channel uses, in file order (unnamed bands are counted as `band <i>`)."""
    used = {c for c, _, _ in picks}
    out = []
    for file_names in names:
        for k, n in enumerate(file_names, start=1):
            if n not in used:
                out.append(n or f"band {k}")
    return out


def resolve_s2(inp: ModalityInput, offset: bool) -> _Resolved:
    """Find B4, B3, B2 among the S2 inputs and build the DN -> reflectance conversion."""
    infos = [inspect_raster(f) for f in inp.files]
    names = _band_names("s2rgb", infos, inp.bands, s2_band_name)
    names = [[s2_band_name(n) if n else None for n in file_names] for file_names in names]
    picks = _pick("s2rgb", infos, names, get_modality("s2rgb").channels)
    if not picks:
        found = sorted({n for fn in names for n in fn if n})
        raise IngestError(f"the S2 inputs have no red/green/blue band (B4, B3, B2); found bands {found}")
    first = picks[0][1]
    units = inp.units
    if units == "auto":
        if np.dtype(first.dtype).kind in "ui":
            units = "dn"
        else:
            v = sample_values(first.path, picks[0][2])
            units = "dn" if v.size and np.nanmax(v) > 2.0 else "reflectance"
    if units not in ("dn", "reflectance"):
        raise IngestError(f"--s2-units must be auto, dn or reflectance, got {inp.units!r}")
    off = S2_BOA_OFFSET if offset else 0.0
    conv = (lambda x: dn_to_reflectance(x, offset=off)) if units == "dn" else (lambda x: x.astype(np.float32))
    # DN 0 is the Sentinel-2 no-data value when the file does not declare its own.
    nodata = {i.path: (i.nodata if i.nodata is not None else (0 if units == "dn" else None)) for i in infos}
    note = f"DN -> reflectance (DN{off:+.0f})/10000" if units == "dn" else "reflectance as stored"
    return _Resolved("s2rgb", [c for c, _, _ in picks], [(i, b) for _, i, b in picks], conv, nodata, [note],
                     _dropped(names, picks))


def resolve_s1(inp: ModalityInput) -> _Resolved:
    """Find VV and VH among the S1 inputs and decide dB vs linear power."""
    infos = [inspect_raster(f) for f in inp.files]
    names = _band_names("s1amp", infos, inp.bands, s1_pol_name)
    names = [[s1_pol_name(n) if n else None for n in file_names] for file_names in names]
    picks = _pick("s1amp", infos, names, get_modality("s1amp").channels)
    if not picks:
        found = sorted({n for fn in names for n in fn if n})
        raise IngestError(f"the S1 inputs have no VV or VH band (found {found}); only VV/VH backscatter is supported")
    units, reason = inp.units, "as declared"
    if units == "auto":
        units, reason = detect_s1_units(sample_values(picks[0][1].path, picks[0][2]))
    if units not in ("db", "linear"):
        raise IngestError(f"--s1-units must be auto, db or linear, got {inp.units!r}")
    conv = (lambda x: x.astype(np.float32)) if units == "db" else linear_to_db
    nodata = {i.path: i.nodata for i in infos}
    return _Resolved("s1amp", [c for c, _, _ in picks], [(i, b) for _, i, b in picks], conv, nodata,
                     [f"units {units} ({reason})"], _dropped(names, picks))


def resolve_coh(inp: ModalityInput) -> _Resolved:
    """Name the coherence bands and choose the scale to 0-1."""
    infos = [inspect_raster(f) for f in inp.files]
    names = _band_names("coh", infos, inp.bands, lambda d: d.strip() if d and d.strip() else None)
    picks = _pick("coh", infos, names, None)
    get_modality("coh").validate_channels([c for c, _, _ in picks])
    scale = inp.scale
    if scale is None:
        scale = 0.01 if np.dtype(picks[0][1].dtype).kind in "ui" else 1.0
    path_of = {c: i.path for c, i, _ in picks}

    def conv(x: np.ndarray) -> np.ndarray:
        y = x.astype(np.float32) * np.float32(scale)
        if np.isfinite(y).any():
            lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise IngestError(
                    f"coherence outside 0-1 after scaling by {scale:g} (range {lo:.3g}..{hi:.3g}) in "
                    f"{sorted({p.name for p in path_of.values()})}: pass the right --coh-scale (0.01 for percent)"
                )
        return y

    nodata = {i.path: i.nodata for i in infos}
    return _Resolved("coh", [c for c, _, _ in picks], [(i, b) for _, i, b in picks], conv, nodata, [f"scale x{scale:g}"])


def plan_grid(
    resolved: list[_Resolved], *, reference: str | None = None, crs: str | None = None, res: float | None = None,
    notes: list[str] | None = None,
) -> tuple[Grid, RasterInfo]:
    """The target grid: reference CRS/resolution (or the given ones) over the inputs' common area.

    When the inputs only partly overlap, `notes` gets how much of each input the common area keeps.
    """
    by_mod = {r.modality: r for r in resolved}
    if reference is not None and reference not in by_mod:
        raise IngestError(f"--reference {reference} was not given as an input (inputs: {list(by_mod)})")
    ref_info = by_mod[reference or resolved[0].modality].infos[0]
    target = CRS.from_user_input(crs) if crs else ref_info.crs
    if res is not None:
        if res <= 0:
            raise IngestError(f"--res must be positive, got {res}")
        rxy = (float(res), float(res))
    elif target == ref_info.crs:
        rxy = ref_info.res
    else:
        t, _, _ = calculate_default_transform(ref_info.crs, target, ref_info.width, ref_info.height, *ref_info.bounds)
        r = min(abs(t.a), abs(t.e))
        rxy = (r, r)
    all_infos = [i for r in resolved for i in r.infos]
    boxes = [bounds_to(i.crs, target, i.bounds) for i in all_infos]
    common = intersect_bounds(boxes)
    if common is None:
        where = "; ".join(f"{i.path.name}: {fmt_bounds(geographic_footprint(i))}" for i in all_infos)
        raise IngestError(f"the inputs do not overlap, so no chip can hold them all: {where}")
    kept = [_area(common) / _area(b) if _area(b) > 0 else 1.0 for b in boxes]
    if notes is not None and min(kept) < 0.99:
        notes.append(
            "inputs only partly overlap: the AOI shrinks to their common area (" + fmt_bounds(bounds_to(target, "EPSG:4326", common))
            + "), keeping " + ", ".join(f"{k:.0%} of {i.path.name}" for k, i in zip(kept, all_infos))
        )
    same = target == ref_info.crs and np.allclose(rxy, ref_info.res, rtol=1e-9)
    anchor = (ref_info.transform.c, ref_info.transform.f) if same else None
    return snapped_grid(target, common, rxy, anchor), ref_info


def _area(b: Sequence[float]) -> float:
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def _block_plan(chips: ChipGrid, n_bands: int, max_block_mb: float) -> tuple[int, int]:
    """Chip rows and columns per read block so one block stays within the memory budget."""
    s, st = chips.size, chips.stride
    # float32 copies alive at once per block: the file windows, the stacked block, the cut chips and the
    # store writer's pending buffer and its concatenation
    copies = 5
    per_col = n_bands * s * st * 4 * copies
    nc = int(max(1, min(chips.n_cols, max_block_mb * 1e6 // per_col)))
    if nc < chips.n_cols:
        return 1, nc
    row_bytes = n_bands * (s * (chips.n_cols * st + s)) * 4 * copies
    nr = int(max(1, min(chips.n_rows, max_block_mb * 1e6 // row_bytes, 64)))
    return nr, nc


def _batches(
    chips: ChipGrid, resolved: list[_Resolved], aoi: str, resampling: Resampling, max_block_mb: float, provenance: dict
) -> Iterator[ChipBatch]:
    """Read the chip grid block by block and yield chip batches (all modalities, rows, bytes read)."""
    readers: list[tuple[_Resolved, list[tuple[Path, int]], dict[Path, GridReader]]] = []
    try:
        for r in resolved:
            per_file: dict[Path, list[int]] = {}
            order: list[tuple[Path, int]] = []
            for info, band in r.picks:
                per_file.setdefault(info.path, []).append(band)
                order.append((info.path, len(per_file[info.path]) - 1))
            file_readers = {
                p: GridReader(p, chips.grid, bands, resampling=resampling, src_nodata=r.src_nodata[p])
                for p, bands in per_file.items()
            }
            readers.append((r, order, file_readers))
        n_bands = sum(len(r.channels) for r in resolved)
        nr_blk, nc_blk = _block_plan(chips, n_bands, max_block_mb)
        crs = chips.grid.crs.to_string()
        xres, yres = chips.grid.res
        for r0 in range(0, chips.n_rows, nr_blk):
            r1 = min(r0 + nr_blk, chips.n_rows)
            for c0 in range(0, chips.n_cols, nc_blk):
                c1 = min(c0 + nc_blk, chips.n_cols)
                h = (r1 - 1 - r0) * chips.stride + chips.size
                w = (c1 - 1 - c0) * chips.stride + chips.size
                arrays, n_bytes = {}, 0
                for r, order, file_readers in readers:
                    parts = {p: rd.read(r0 * chips.stride, c0 * chips.stride, h, w) for p, rd in file_readers.items()}
                    n_bytes += sum(rd.itemsize * len(rd.bands) * h * w for rd in file_readers.values())
                    block = np.stack([parts[p][i] for p, i in order], axis=0)  # [C, h, w] in channel order
                    arrays[r.modality] = cut_chips(r.convert(block), r1 - r0, c1 - c0, chips.size, chips.stride)
                rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
                rr, cc = rr.ravel(), cc.ravel()
                lefts, tops = chips.chip_origins(rr, cc)
                rows = grid_rows(
                    [f"{aoi}-r{a:05d}c{b:05d}" for a, b in zip(rr, cc)], rr, cc, crs, lefts, tops, xres, yres, chips.size
                )
                for k, v in provenance.items():
                    rows[k] = v
                yield ChipBatch(arrays, rows, bytes_read=n_bytes)
    finally:
        for _, _, file_readers in readers:
            for rd in file_readers.values():
                rd.close()


def ingest_geotiffs(
    aoi: str,
    out: str | Path,
    *,
    s2: ModalityInput | None = None,
    s1: ModalityInput | None = None,
    coh: ModalityInput | None = None,
    chip_size: int = 64,
    stride: int | None = None,
    max_nodata: float = 0.5,
    skip_when: str = "any",
    crs: str | None = None,
    res: float | None = None,
    reference: str | None = None,
    resampling: str = "bilinear",
    s2_offset: bool = False,
    labels: dict[str, Sequence[str | Path]] | None = None,
    jrc_threshold: float = 90.0,
    title: str | None = None,
    overwrite: bool = False,
    max_block_mb: float = 256.0,
    progress: bool = True,
) -> IngestResult:
    """Ingest user GeoTIFFs of any modality subset into the chip store at `out` (see module doc)."""
    inputs = {"s2rgb": s2, "s1amp": s1, "coh": coh}
    given = {m: i for m, i in inputs.items() if i is not None and i.files}
    if not given:
        raise IngestError("no input given: pass at least one of --s2, --s1, --coh")
    try:
        resample = Resampling[resampling]
    except KeyError:
        raise IngestError(f"unknown --resampling {resampling!r}; use one of nearest, bilinear, cubic, average") from None
    stride = stride or chip_size
    params = {
        "aoi": aoi, "chip_size": chip_size, "stride": stride, "max_nodata": max_nodata, "skip_when": skip_when,
        "crs": crs, "res": res, "reference": reference, "resampling": resampling, "s2_offset": s2_offset,
        "jrc_threshold": jrc_threshold, "inputs": {m: [str(f) for f in i.files] for m, i in given.items()},
        "bands": {m: list(i.bands or []) for m, i in given.items()},
        "units": {m: i.units for m, i in given.items()}, "coh_scale": coh.scale if coh else None,
    }
    start = start_ingest("geotiff", out, [Path(f) for i in given.values() for f in i.files], params, overwrite, labels,
                         jrc_threshold, command=_command(aoi, given, chip_size, stride))
    if start.done is not None:
        return start.done
    resolvers = {"s2rgb": lambda i: resolve_s2(i, s2_offset), "s1amp": resolve_s1, "coh": resolve_coh}
    resolved = [resolvers[m](i) for m, i in given.items()]
    grid, ref_info = plan_grid(resolved, reference=reference, crs=crs, res=res, notes=start.warnings)
    chips = ChipGrid(grid, chip_size, stride)
    for r in resolved:
        if r.dropped:
            start.warnings.append(f"{r.modality}: extra band(s) {', '.join(r.dropped)} of "
                                  f"{', '.join(i.path.name for i in r.infos)} dropped (only {', '.join(r.channels)} are stored)")
        off = [i for i in r.infos if not on_grid(i, grid)]
        if off:
            start.warnings.append(
                f"{r.modality}: {', '.join(f'{i.path.name} ({i.crs.to_string()}, {i.res[0]:g} x {i.res[1]:g})' for i in off)} "
                f"warped ({resampling}) to the target grid {grid.crs.to_string()} at {grid.res[0]:g} x {grid.res[1]:g}")
    dates = {r.modality: raster_date(r.infos[0]) for r in resolved}
    provenance = {
        "source_crs": ";".join(sorted({i.crs.to_string() for r in resolved for i in r.infos})),
        "acquired": ",".join(sorted({d for d in dates.values() if d})) or None,
    }
    for r in resolved:
        provenance[f"source_{r.modality}"] = ",".join(i.path.name for i in r.infos)
        provenance[f"acquired_{r.modality}"] = dates[r.modality]
    missing = [m for m in MOSAIC_MODALITIES if m not in given]
    meta = StoreMeta(
        aoi=aoi,
        title=title or f"{aoi} (real data: GeoTIFF {', '.join(r.modality for r in resolved)})",
        simulated=False,
        chip_size=chip_size,
        pixel_size_m=grid.pixel_size_m(),
        crs=grid.crs.to_string(),
        channels={r.modality: r.channels for r in resolved},
        source="data.ingest geotiff: " + "; ".join(f"{r.modality}={provenance[f'source_{r.modality}']}" for r in resolved),
        description=f"user GeoTIFFs on a {chips.n_rows}x{chips.n_cols} chip grid; missing modalities: {missing or 'none'}",
        extra={
            "ingest": {
                "kind": "geotiff",
                "fingerprint": start.fingerprint,
                "params": params,
                "stride": stride,
                "missing_modalities": missing,
                "inputs": [
                    {
                        "modality": r.modality,
                        "files": [i.path.name for i in r.infos],
                        "channels": r.channels,
                        "source_crs": sorted({i.crs.to_string() for i in r.infos}),
                        "source_res": [list(i.res) for i in r.infos],
                        "dtype": r.infos[0].dtype,
                        "conversion": r.notes,
                        "acquired": dates[r.modality],
                    }
                    for r in resolved
                ],
            },
            "grid": {
                "crs": grid.crs.to_string(), "transform": list(grid.transform)[:6], "width": grid.width,
                "height": grid.height, "reference": ref_info.path.name, "chip_rows": chips.n_rows, "chip_cols": chips.n_cols,
            },
        },
    )
    return finish_ingest(
        start,
        meta,
        _batches(chips, resolved, aoi, resample, max_block_mb, provenance),
        max_nodata=max_nodata,
        skip_when=skip_when,
        total=len(chips),
        sources={r.modality: provenance[f"source_{r.modality}"] for r in resolved},
        progress=progress,
    )


def _command(aoi: str, given: dict[str, ModalityInput], chip_size: int, stride: int) -> str:
    """The `python -m data.ingest geotiff` command that rebuilds this store (for `ChipStore.verify`)."""
    flags = {"s2rgb": "--s2", "s1amp": "--s1", "coh": "--coh"}
    parts = ["python -m data.ingest geotiff", f"--aoi {aoi}"]
    for m, i in given.items():
        parts.append(f"{flags[m]} {' '.join(str(f) for f in i.files)}")
        if i.bands:
            parts.append(f"{flags[m]}-bands {','.join(i.bands)}")
    parts.append(f"--chip-size {chip_size}" + (f" --stride {stride}" if stride != chip_size else "") + " --overwrite")
    return " ".join(parts)


def on_grid(info: RasterInfo, grid: Grid) -> bool:
    """Whether a file lies on the target grid (same CRS and pixel size, whole-pixel offset): read without warping."""
    s, g = info.transform, grid.transform
    if info.crs != grid.crs or not (np.isclose(s.a, g.a, rtol=1e-9) and np.isclose(s.e, g.e, rtol=1e-9)):
        return False
    dx, dy = (g.c - s.c) / s.a, (g.f - s.f) / s.e
    return abs(dx - round(dx)) <= 1e-6 and abs(dy - round(dy)) <= 1e-6
