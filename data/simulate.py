"""Simulated multimodal Earth-observation chips: the project's offline default data.

Five AOIs named after the paper's regions sit at real coordinates on a UTM chip grid (64 px chips of
70 m = 4.48 km, like M3LEO). Land cover comes from `data.landcover` (seamless, position-deterministic),
sensors from `data.sensors`; labels are exact class fractions of each chip. Everything is marked
simulated: AOI titles, store metadata and an index column.

Entry points: `simulate_block` (chips in memory, for streaming training data), `simulate_store`
(one chip store, written band by band in bounded memory), `build_default_stores` (the five demo
stores, in parallel, idempotent) and the CLI `python -m data.simulate --help`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer
from tqdm import tqdm

from data.cli import CliError, command_line
from data.modalities import LABEL_TASKS, MODALITIES, MODALITY_KEYS
from data.landcover import (
    AOI_PROFILES,
    BARE,
    CLASS_NAMES,
    DEFAULT_AOIS,
    FOREST,
    GRASSLAND,
    LABEL_CLASSES,
    PIXEL_SIZE_M,
    AOIProfile,
    aoi_code,
    class_fractions,
    get_profile,
    landcover_block,
    layer_key,
    make_grid,
    utm_epsg,
)
from data.sensors import RENDERERS, BlockView, parse_channels
from data.store import ChipStore, ChipStoreWriter, StoreError, StoreMeta, read_store_meta, rebuild_command, verify_store
from data.workspace import Workspace, locked

SIMULATOR_VERSION = 2  # 2: lot-level urban materials and SAR double bounce, footprint mixing, acquisition effects
DEFAULT_MISSING_RATES: dict[str, float] = {"s2rgb": 0.05, "s1amp": 0.02, "coh": 0.08}
DEFAULT_CHIPS_PER_AOI = 2025
MAX_SEED_SHIFT_M = 250_000.0  # seeds other than 0 move the AOI so pretraining chips are not the demo's
_MISSING_STREAM = 0


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------


def resolve_channels(channels: Mapping[str, Sequence[str] | None] | None) -> dict[str, list[str]]:
    """Modality -> channel list (registry defaults when None); ValueError on unknown names."""
    if channels is None:
        channels = {k: None for k in MODALITY_KEYS}
    if not channels:
        raise ValueError("channels must name at least one modality, e.g. {'s1amp': ['VV', 'VH']}")
    out: dict[str, list[str]] = {}
    for mod in MODALITY_KEYS:  # registry order, whatever order the caller used
        if mod in channels:
            names = list(channels[mod]) if channels[mod] is not None else list(MODALITIES[mod].channels)
            parse_channels(mod, names)
            out[mod] = names
    unknown = sorted(set(channels) - set(MODALITY_KEYS))
    if unknown:
        raise ValueError(f"unknown modalities {unknown} in channels; known: {list(MODALITY_KEYS)}")
    return out


def resolve_missing_rates(missing_rates: Mapping[str, float] | None) -> dict[str, float]:
    """Per-modality share of chips missing that modality, defaults filled in and checked."""
    rates = dict(DEFAULT_MISSING_RATES)
    for mod, rate in (missing_rates or {}).items():
        if mod not in MODALITY_KEYS:
            raise ValueError(f"unknown modality {mod!r} in missing_rates; known: {list(MODALITY_KEYS)}")
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"missing rate of {mod} must be in [0, 1], got {rate}")
        rates[mod] = float(rate)
    return rates


# ----------------------------------------------------------------------------------------------------
# Geometry: a UTM chip grid centred on the AOI, polygons in EPSG:4326
# ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


@lru_cache(maxsize=32)
def grid_frame(aoi: AOIProfile, seed: int) -> tuple[str, float, float]:
    """(CRS, easting, northing) of the AOI grid centre; seed 0 is the named place, others shift."""
    epsg = utm_epsg(aoi.lat, aoi.lon)
    crs = f"EPSG:{epsg}"
    east, north = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(aoi.lon, aoi.lat)
    if seed != 0:
        k = layer_key(seed, aoi.name, "placement")
        u, v = (k & 0xFFFFFFFF) / 2**32, (k >> 32) / 2**32
        east += (2 * u - 1) * MAX_SEED_SHIFT_M
        north += (2 * v - 1) * MAX_SEED_SHIFT_M
    return crs, float(east), float(north)


def chip_polygons(aoi: "str | AOIProfile", rows: range, cols: range, seed: int, chip_size: int = 64) -> tuple[np.ndarray, str]:
    """Row-major EPSG:4326 polygons of a block's chips (their UTM squares, reprojected) and the grid CRS."""
    p = get_profile(aoi)
    grid = make_grid(p, rows, cols, chip_size)
    crs, east0, north0 = grid_frame(p, seed)
    s, m = grid.chip_size, PIXEL_SIZE_M
    ys = grid.y0 + s * np.arange(len(rows) + 1)  # chip corner pixel rows, southwards
    xs = grid.x0 + s * np.arange(len(cols) + 1)
    east = east0 + xs * m
    north = north0 - ys * m
    ee, nn = np.meshgrid(east, north)  # corner lattice [R+1, C+1]
    lon, lat = _to_lonlat(crs).transform(ee, nn)
    lon, lat = np.asarray(lon), np.asarray(lat)
    ring = [(0, 0), (0, 1), (1, 1), (1, 0), (0, 0)]  # NW, NE, SE, SW, NW (i = row offset, j = col offset)
    coords = np.empty((len(rows), len(cols), 5, 2))
    for k, (i, j) in enumerate(ring):
        coords[:, :, k, 0] = lon[i : i + len(rows), j : j + len(cols)]
        coords[:, :, k, 1] = lat[i : i + len(rows), j : j + len(cols)]
    return shapely.polygons(coords.reshape(-1, 5, 2)), crs


def chip_ids(aoi: str, rows: range, cols: range) -> list[str]:
    """Row-major chip ids of a block, `f"{aoi}-r{row:04d}-c{col:04d}"`."""
    return [f"{aoi}-r{r:04d}-c{c:04d}" for r in rows for c in cols]


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------


def missing_flags(aoi: "str | AOIProfile", rows: range, cols: range, seed: int,
                  missing_rates: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Per chip (row-major), whether each modality is missing; independent of the channel lists."""
    p = get_profile(aoi)
    rates = resolve_missing_rates(missing_rates)
    code = aoi_code(p.name)
    u = np.array([np.random.default_rng([_MISSING_STREAM, seed, code, r, c]).random(len(MODALITY_KEYS))
                  for r in rows for c in cols]).reshape(-1, len(MODALITY_KEYS))
    return {mod: u[:, i] < rates[mod] for i, mod in enumerate(MODALITY_KEYS)}


def simulate_block(
    aoi: "str | AOIProfile",
    rows: range,
    cols: range,
    seed: int,
    chip_size: int = 64,
    channels: Mapping[str, Sequence[str] | None] | None = None,
    missing_rates: Mapping[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], gpd.GeoDataFrame]:
    """Simulate a block of chips in memory: `{modality: float32 [n, C, H, W]}` and their index rows."""
    p = get_profile(aoi)
    seed = int(seed)
    chans = resolve_channels(channels)
    lc = landcover_block(p, rows, cols, seed, chip_size)
    view = BlockView(lc)
    missing = missing_flags(p, rows, cols, seed, missing_rates)
    arrays: dict[str, np.ndarray] = {}
    for mod, names in chans.items():
        x = RENDERERS[mod](view, parse_channels(mod, names))
        x[missing[mod]] = np.nan  # the whole modality is absent for these chips, never zeros
        arrays[mod] = x
    geometry, crs = chip_polygons(p, rows, cols, seed, chip_size)
    frac = class_fractions(view.classes)
    table = {
        "chip_id": chip_ids(p.name, rows, cols),
        "aoi": p.name,
        "simulated": True,
        "row": np.repeat(np.arange(rows.start, rows.stop), len(cols)),
        "col": np.tile(np.arange(cols.start, cols.stop), len(rows)),
    }
    for task in LABEL_TASKS:
        table[task] = frac[:, list(LABEL_CLASSES[task])].sum(axis=1).astype(np.float32)
    for cls_id, name in ((FOREST, "forest"), (GRASSLAND, "grassland"), (BARE, "bare")):
        table[f"lc_{name}"] = frac[:, cls_id].astype(np.float32)
    table["source"] = f"data.simulate seed={seed} (simulated)"
    table["source_crs"] = crs
    rows_gdf = gpd.GeoDataFrame(table, geometry=geometry, crs="EPSG:4326")
    return arrays, rows_gdf


# ----------------------------------------------------------------------------------------------------
# Stores
# ----------------------------------------------------------------------------------------------------


def grid_shape(chips: int) -> tuple[int, int]:
    """A near-square (rows, cols) grid holding at least `chips` chips."""
    if chips < 1:
        raise ValueError(f"the number of chips must be positive, got {chips}")
    n_rows = max(1, int(round(math.sqrt(chips))))
    return n_rows, math.ceil(chips / n_rows)


def _request(p: AOIProfile, rows: range, cols: range, seed: int, chip_size: int, channels: dict,
             missing_rates: dict, dtype: str) -> dict:
    """What a store was generated from: a store matching this needs no rebuild."""
    return {
        "version": SIMULATOR_VERSION,
        "seed": int(seed),
        "rows": [rows.start, rows.stop],
        "cols": [cols.start, cols.stop],
        "chip_size": int(chip_size),
        "channels": {k: list(v) for k, v in channels.items()},
        "missing_rates": {k: float(v) for k, v in missing_rates.items()},
        "dtype": str(np.dtype(dtype)),
    }


class RealDataInTheWay(StoreError, FileExistsError):
    """The simulator was asked to write where a real (ingested) store, or an unknown folder, lies."""


def refuse_real_data(path: "str | Path") -> None:
    """Raise RealDataInTheWay unless `path` is absent or holds a store that store.json marks simulated.

    A damaged store that carries a demo AOI's name may hold someone's ingested data: regenerating over it
    would destroy it, so that is left to the user, whatever `overwrite` says.
    """
    path = Path(path)
    if not path.exists():
        return
    meta = read_store_meta(path)
    if meta is not None and meta.simulated:
        return
    if meta is None and _index_says_simulated(path):  # store.json lost, but the chip index still says so
        return
    health = verify_store(path)
    state = "" if health == "ok" else f" ({health.removeprefix('damaged: ').split('; rebuild with')[0]})"
    if meta is None:
        raise RealDataInTheWay(
            f"{path} is not a store the simulator wrote (no readable store.json){state}: the simulator never writes "
            "over data it did not make; move or delete that folder yourself, then run again"
        )
    raise RealDataInTheWay(
        f"{path} holds real (ingested, simulated=false) data named {meta.aoi!r}{state}: the simulator never "
        f"writes over real data; rebuild it from its sources with `{rebuild_command(meta)}`, or move it away and "
        "run again"
    )


def _index_says_simulated(path: Path) -> bool:
    """Whether the chip index of a store folder marks every chip simulated (False when unreadable)."""
    try:
        col = pd.read_parquet(Path(path) / "chips.parquet", columns=["simulated"])["simulated"]
    except Exception:  # pyarrow raises several types for a missing or damaged file
        return False
    return len(col) > 0 and bool(col.all())


def simulate_store(
    path: "str | Path",
    aoi: "str | AOIProfile",
    n_rows: int,
    n_cols: int,
    seed: int,
    chip_size: int = 64,
    channels: Mapping[str, Sequence[str] | None] | None = None,
    missing_rates: Mapping[str, float] | None = None,
    *,
    row0: int | None = None,
    col0: int | None = None,
    dtype: str = "float16",
    block_chips: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> ChipStore:
    """Write a simulated chip store of `n_rows x n_cols` chips (centred in the AOI grid by default)."""
    p = get_profile(aoi)
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"n_rows and n_cols must be positive, got {n_rows} x {n_cols}")
    if block_chips < 1:
        raise ValueError(f"block_chips must be positive, got {block_chips}")
    row0 = (p.grid_rows - n_rows) // 2 if row0 is None else row0
    col0 = (p.grid_cols - n_cols) // 2 if col0 is None else col0
    rows, cols = range(row0, row0 + n_rows), range(col0, col0 + n_cols)
    make_grid(p, rows, cols, chip_size)  # fail early, before creating anything
    refuse_real_data(path)
    chans = resolve_channels(channels)
    rates = resolve_missing_rates(missing_rates)
    crs, east, north = grid_frame(p, int(seed))
    lon, lat = _to_lonlat(crs).transform(east, north)
    meta = StoreMeta(
        aoi=p.name,
        title=p.title,
        simulated=True,
        chip_size=int(chip_size),
        pixel_size_m=PIXEL_SIZE_M,
        crs=crs,
        channels=chans,
        source=f"data.simulate seed={int(seed)} (simulated)",
        description=p.description,
        extra={
            "request": _request(p, rows, cols, seed, chip_size, chans, rates, dtype),
            "region": p.region,
            "grid_centre_lonlat": [round(float(lon), 5), round(float(lat), 5)],
            "grid_size": [p.grid_rows, p.grid_cols],
            "land_cover_classes": list(CLASS_NAMES),
        },
    )
    # Bands of whole chip rows, split into column blocks so memory stays bounded for wide AOIs.
    step = max(1, min(n_cols, block_chips))
    blocks = [(range(r, r + 1), range(c, min(c + step, cols.stop))) for r in rows for c in range(cols.start, cols.stop, step)]
    with ChipStoreWriter(Path(path), meta, overwrite=overwrite, dtype=dtype) as writer:
        bar = tqdm(total=n_rows * n_cols, desc=f"simulate {p.name}", unit="chip", disable=not progress, leave=False)
        for brows, bcols in blocks:
            arrays, index = simulate_block(p, brows, bcols, seed, chip_size, chans, rates)
            writer.append(arrays, index.drop(columns=["aoi", "simulated"]))
            bar.update(len(index))
        bar.close()
    return ChipStore.open(Path(path))


def cached_store(path: "str | Path", aoi: str, n_rows: int, n_cols: int, seed: int, *, chip_size: int,
                 channels: Mapping[str, Sequence[str]], progress: bool = False) -> ChipStore:
    """A simulated store cached at `path` (training and held-out chips), regenerated when it was made with other
    channels, another size or an older simulator."""
    try:
        store = ChipStore.open(path)
        version = store.meta.extra.get("request", {}).get("version")
        if store.meta.channels != dict(channels) or len(store) != n_rows * n_cols or version != SIMULATOR_VERSION:
            raise StoreError("made otherwise")
        return store
    except StoreError:
        return simulate_store(path, aoi, n_rows, n_cols, seed, chip_size=chip_size, channels=channels,
                              overwrite=True, progress=progress)


def _store_status(path: Path, request: dict) -> str:
    """'absent', 'ok' (matches the request), 'outdated' (same request, older simulator), 'different' or 'broken'."""
    if not path.exists():
        return "absent"
    try:
        store = ChipStore.open(path)
    except StoreError:
        return "broken"
    if store.verify().startswith("damaged"):
        return "broken"
    built = store.meta.extra.get("request")
    if built == request:
        return "ok"
    # A simulated store of the same request made by an older simulator is regenerated, never kept stale.
    if store.meta.simulated and isinstance(built, dict) and {**built, "version": request["version"]} == request:
        return "outdated"
    return "different"


def _build_one(kwargs: dict) -> tuple[str, str]:
    """Worker: build one AOI store (a top-level function so process pools can pickle it)."""
    status = kwargs.pop("status")
    simulate_store(**kwargs)
    return kwargs["aoi"], "rebuilt" if status in ("broken", "different", "outdated") else "built"


@locked("simulate", arg="workspace")
def build_default_stores(
    workspace: "Workspace | str | Path | None" = None,
    chips_per_aoi: int = DEFAULT_CHIPS_PER_AOI,
    seed: int = 0,
    workers: int = 2,
    *,
    aois: Sequence[str] | None = None,
    n_rows: int | None = None,
    n_cols: int | None = None,
    chip_size: int = 64,
    channels: Mapping[str, Sequence[str] | None] | None = None,
    missing_rates: Mapping[str, float] | None = None,
    dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, str]:
    """Build the simulated demo stores (one process per AOI); returns AOI -> built/rebuilt/skipped."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    names = list(aois or DEFAULT_AOIS)
    for name in names:
        get_profile(name)
    if (n_rows is None) != (n_cols is None):
        raise ValueError("give both n_rows and n_cols, or neither (then chips_per_aoi sets a near-square grid)")
    if n_rows is None:
        n_rows, n_cols = grid_shape(chips_per_aoi)
    chans, rates = resolve_channels(channels), resolve_missing_rates(missing_rates)
    result: dict[str, str] = {}
    jobs = []
    for name in names:
        p = AOI_PROFILES[name]
        row0, col0 = (p.grid_rows - n_rows) // 2, (p.grid_cols - n_cols) // 2
        request = _request(p, range(row0, row0 + n_rows), range(col0, col0 + n_cols), seed, chip_size, chans, rates, dtype)
        path = ws.store_path(name)
        status = _store_status(path, request)
        if status != "absent":
            refuse_real_data(path)  # here, not in a worker process, so the CLI prints it as one line
        if status == "ok" and not overwrite:
            result[name] = "skipped"
            continue
        if status == "different" and not overwrite:
            raise FileExistsError(
                f"{path} holds a store built with other settings than requested; pass overwrite=True "
                "(CLI: --overwrite) to replace it, or choose another workspace"
            )
        jobs.append(dict(path=path, aoi=name, n_rows=n_rows, n_cols=n_cols, seed=seed, chip_size=chip_size,
                         channels=chans, missing_rates=rates, dtype=dtype, overwrite=status != "absent",
                         progress=progress and workers <= 1, status=status))
    if not jobs:
        return result
    if workers <= 1 or len(jobs) == 1:
        for job in tqdm(jobs, desc="simulated AOIs", unit="aoi", disable=not progress):
            name, status = _build_one(job)
            result[name] = status
        return result
    # spawn, not fork: callers such as the Streamlit app are multi-threaded.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = [pool.submit(_build_one, job) for job in jobs]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="simulated AOIs", unit="aoi", disable=not progress):
            name, status = fut.result()
            result[name] = status
    return {name: result[name] for name in names}


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def _parse_pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CliError(f"{what} {item!r} must look like MODALITY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@command_line(also=(ValueError, KeyError))  # the simulator's settings checks (chips, channels, rates)
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the simulated demo AOI stores into a workspace."""
    ap = argparse.ArgumentParser(
        prog="python -m data.simulate",
        description="Build SIMULATED multimodal chip stores (Sentinel-2 RGB, Sentinel-1 VV/VH, InSAR coherence) "
        "for AOIs named after the paper's regions, at real coordinates. Stores that already exist with the "
        "same settings are skipped, so running it twice is cheap.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--workspace", default=None,
                    help="workspace directory (default: $EO_WORKSPACE or ./workspace); stores go to <workspace>/stores/<aoi>")
    ap.add_argument("--aoi", nargs="+", default=list(DEFAULT_AOIS), choices=list(AOI_PROFILES), metavar="AOI",
                    help=f"which AOIs to build: {', '.join(AOI_PROFILES)}")
    ap.add_argument("--chips-per-aoi", type=int, default=DEFAULT_CHIPS_PER_AOI,
                    help="chips per AOI, laid out as a near-square grid (ignored with --rows/--cols)")
    ap.add_argument("--rows", type=int, default=None, help="chip rows per AOI (with --cols)")
    ap.add_argument("--cols", type=int, default=None, help="chip columns per AOI (with --rows)")
    ap.add_argument("--seed", type=int, default=0, help="landscape seed; 0 places AOIs at their named coordinates")
    ap.add_argument("--chip-size", type=int, default=64, help=f"pixels per chip side ({PIXEL_SIZE_M:g} m pixels)")
    ap.add_argument("--missing", nargs="*", default=[], metavar="MOD=RATE",
                    help="share of chips missing a modality, e.g. s2rgb=0.05 coh=0.08 (defaults: "
                    + ", ".join(f"{k}={v}" for k, v in DEFAULT_MISSING_RATES.items()) + ")")
    ap.add_argument("--channels", nargs="*", default=[], metavar="MOD=CH,CH",
                    help="channel list of a modality, e.g. s1amp=VV_summer,VH_summer coh=VV_12d,VV_36d "
                    "(default: the registry's channels; seasons winter/spring/summer/fall, orbits asc/des, baselines Nd)")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage precision")
    ap.add_argument("--workers", type=int, default=2, help="parallel processes (one AOI each)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild stores even if they exist")
    ap.add_argument("--list", action="store_true", help="list the simulated AOIs and exit")
    args = ap.parse_args(argv)

    if args.list:
        for p in AOI_PROFILES.values():
            print(f"{p.name:15s} {p.title}  ({p.lat:g}, {p.lon:g})  {p.description}")
        return 0
    channels = {k: [c for c in v.split(",") if c] for k, v in _parse_pairs(args.channels, "--channels").items()}
    if channels:
        channels = {**{k: None for k in MODALITY_KEYS}, **channels}
    try:
        rates = {k: float(v) for k, v in _parse_pairs(args.missing, "--missing").items()}
    except ValueError as e:
        raise CliError(f"--missing rates must be numbers ({e})") from None
    ws = Workspace(args.workspace)
    result = build_default_stores(
        ws, args.chips_per_aoi, args.seed, args.workers, aois=args.aoi, n_rows=args.rows, n_cols=args.cols,
        chip_size=args.chip_size, channels=channels or None, missing_rates=rates, dtype=args.dtype,
        overwrite=args.overwrite,
    )
    for name, status in result.items():
        store = ws.open_store(name)
        print(f"{status:8s} {ws.store_path(name)}  {store.meta.title}: {len(store)} chips, {store.modalities}")
    ws.record("simulate", aois=list(result), seed=args.seed, status=result, simulated=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
