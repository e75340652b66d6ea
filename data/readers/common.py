"""What every ingest path shares: band naming, unit conversions, chip rows, skip rules, resumable writes.

Units stored (the registry's physical units): `s2rgb` reflectance 0-1, `s1amp` backscatter in dB,
`coh` coherence 0-1; NaN marks missing pixels.

Resumable, here, means *idempotent at store granularity*: a store is built in a hidden temp folder and
renamed into place only when complete, and it records a fingerprint of its inputs (paths, sizes,
modification times) and settings. Re-running the same command finds the finished store with the same
fingerprint and returns at once; an interrupted run left nothing at the store path, so re-running it
starts that store again from the beginning. A store built from other inputs is never silently
replaced: that needs `--overwrite`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.geotiff import IngestError, chip_polygons
from data.labels import ChipFootprint, LabelRaster, footprints_from_index, label_columns, open_label_rasters
from data.modalities import MODALITY_KEYS
from data.store import ChipStore, ChipStoreWriter, StoreError, StoreMeta

S2_L1C_BANDS: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_L1C_BANDS if b != "B10")
S2_SCALE = 10000.0
S2_BOA_OFFSET = -1000.0  # DN offset of processing baseline >= 04.00 (products from 25 January 2022 on)
SKIP_RULES = ("any", "all")

_S2_TOKEN = re.compile(r"(?i)(?:^|[^A-Za-z0-9])B0?(8A|1[0-2]|[1-9])(?=$|[^A-Za-z0-9])")
_POL_TOKEN = re.compile(r"(?i)(?:^|[^A-Za-z0-9])(VV|VH|HH|HV)(?=$|[^A-Za-z0-9])")


def s2_band_name(text: str | None) -> str | None:
    """Canonical Sentinel-2 band name in a description or file name (`..._B04.tif` -> `B4`), else None."""
    if not text:
        return None
    hits = _S2_TOKEN.findall(Path(str(text)).stem if str(text).lower().endswith((".tif", ".tiff")) else str(text))
    return f"B{hits[-1].upper()}" if hits else None


def s1_pol_name(text: str | None) -> str | None:
    """Polarisation (`VV`/`VH`/...) named in a description or file name, else None."""
    if not text:
        return None
    s = str(text)
    hits = _POL_TOKEN.findall(Path(s).stem if s.lower().endswith((".tif", ".tiff")) else s)
    return hits[-1].upper() if hits else None


def dn_to_reflectance(dn: np.ndarray, *, offset: float = 0.0, scale: float = S2_SCALE) -> np.ndarray:
    """Sentinel-2 digital numbers to reflectance: (DN + offset) / scale (NaN stays NaN)."""
    y = np.array(dn, dtype=np.float32)  # one copy, then in place (mosaic blocks can be large)
    if offset:
        y += np.float32(offset)
    y /= np.float32(scale)
    return y


def linear_to_db(x: np.ndarray) -> np.ndarray:
    """Linear backscatter power to dB; non-positive power has no dB value and becomes NaN."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, 10.0 * np.log10(np.where(x > 0, x, 1.0)), np.nan).astype(np.float32)


def detect_s1_units(values: np.ndarray) -> tuple[str, str]:
    """Decide dB vs linear power from sample values: any negative value means dB (power is never < 0)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "db", "no valid sample values; assumed dB"
    if (v < 0).any():
        return "db", f"negative values in the sample (min {v.min():.2f}): dB"
    return "linear", f"no negative values in the sample (median {np.median(v):.4g}): linear power, converted to dB"


@dataclass
class ChipBatch:
    """Chips ready for the store: arrays for every store modality, index rows, what the source had."""

    arrays: dict[str, np.ndarray]
    rows: pd.DataFrame
    provided: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> bool [b]; default: all
    bytes_read: int = 0


@dataclass
class IngestResult:
    """What an ingest run produced (or found up to date)."""

    path: Path
    aoi: str
    n_chips: int
    n_skipped: int
    up_to_date: bool
    seconds: float
    bytes_read: int
    modalities: list[str]
    missing: list[str]
    warnings: list[str] = field(default_factory=list)  # also in store.json: meta.extra["ingest"]["warnings"]

    def summary(self) -> str:
        """One line for the console."""
        if self.up_to_date:
            return f"{self.path}: up to date ({self.n_chips} chips; same inputs and settings), nothing to do"
        mb = self.bytes_read / 1e6
        return (
            f"{self.path}: {self.n_chips} chips written, {self.n_skipped} skipped for nodata, "
            f"modalities {self.modalities} (missing: {self.missing or 'none'}), {mb:.1f} MB read in {self.seconds:.1f} s"
        )


def grid_rows(
    chip_ids: Sequence[str],
    rows: Sequence[int],
    cols: Sequence[int],
    crs: str,
    lefts: np.ndarray,
    tops: np.ndarray,
    xres: float,
    yres: float,
    size: int,
) -> pd.DataFrame:
    """Index rows of chips on one grid: ids, row/col, EPSG:4326 polygons and the `grid_*` footprint columns."""
    lefts, tops = np.asarray(lefts, dtype=np.float64), np.asarray(tops, dtype=np.float64)
    return pd.DataFrame(
        {
            "chip_id": list(chip_ids),
            "row": np.asarray(rows, dtype=np.int64),
            "col": np.asarray(cols, dtype=np.int64),
            "geometry": chip_polygons(crs, lefts, tops, size * xres, size * yres),
            "grid_crs": str(crs),
            "grid_left": lefts,
            "grid_top": tops,
            "grid_xres": float(xres),
            "grid_yres": float(yres),
        }
    )


def cut_chips(block: np.ndarray, nr: int, nc: int, size: int, stride: int) -> np.ndarray:
    """Window `[C, h, w]` -> chips `[nr*nc, C, size, size]` (row-major)."""
    v = np.lib.stride_tricks.sliding_window_view(block, (size, size), axis=(1, 2))  # [C, h-s+1, w-s+1, s, s]
    v = v[:, : (nr - 1) * stride + 1 : stride, : (nc - 1) * stride + 1 : stride]  # [C, nr, nc, s, s]
    return np.ascontiguousarray(v.transpose(1, 2, 0, 3, 4).reshape(nr * nc, block.shape[0], size, size))


def fingerprint(kind: str, files: Iterable[str | Path], params: dict) -> str:
    """Hash of the input files (path, size, mtime) and settings that decide a store's content."""
    entries = []
    for f in sorted({str(Path(p).resolve()) for p in files}):
        st = Path(f).stat()
        entries.append([f, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"kind": kind, "files": entries, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def existing_store(path: Path, fp: str, overwrite: bool) -> ChipStore | None:
    """The finished store at `path` if it was built from the same inputs and settings, else None.

    Raises IngestError when another store is in the way and `overwrite` was not asked for.
    """
    path = Path(path)
    if not path.exists() or overwrite:
        return None
    try:
        store = ChipStore.open(path)
    except StoreError as e:
        raise IngestError(f"{path} exists but is not a valid store ({e}); pass --overwrite to rebuild it") from None
    if store.meta.extra.get("ingest", {}).get("fingerprint") == fp:
        return store
    raise IngestError(
        f"{path} already holds a store built from other inputs or settings; pass --overwrite to replace it, "
        "or choose another --aoi"
    )


@dataclass
class IngestStart:
    """What every reader settles before reading pixels: the fingerprint, and the store if already built."""

    out: Path
    fingerprint: str
    done: IngestResult | None
    overwrite: bool
    labels: dict[str, Sequence[str | Path]]
    jrc_threshold: float
    command: str | None = None
    warnings: list[str] = field(default_factory=list)


def start_ingest(
    kind: str,
    out: str | Path,
    files: Sequence[str | Path],
    params: dict,
    overwrite: bool,
    labels: dict[str, Sequence[str | Path]] | None = None,
    jrc_threshold: float = 90.0,
    *,
    command: str | None = None,
) -> IngestStart:
    """The shared ingest preamble: check inputs exist, fingerprint them (with the label files and settings),
    and find a finished store built from the same ones (`done`), or refuse one built from others."""
    labels = {k: list(v) for k, v in (labels or {}).items() if v}
    label_files = [Path(f) for fs in labels.values() for f in fs]
    for f in [*map(Path, files), *label_files]:
        if not f.exists():
            raise IngestError(f"{f}: no such file")
    params = {**params, "labels": {k: [str(f) for f in v] for k, v in labels.items()}, "jrc_threshold": jrc_threshold}
    fp = fingerprint(kind, [*map(Path, files), *label_files], params)
    done = existing_store(Path(out), fp, overwrite)
    return IngestStart(Path(out), fp, up_to_date_result(done) if done is not None else None, overwrite, labels,
                       jrc_threshold, command)


def finish_ingest(start: IngestStart, meta: StoreMeta, batches: Iterable[ChipBatch], **write_kw) -> IngestResult:
    """The shared ingest ending: open the label rasters, write the chips (see `write_chips`), close the rasters."""
    ingest = meta.extra.setdefault("ingest", {})
    if start.command:
        ingest.setdefault("command", start.command)
    ingest.setdefault("warnings", []).extend(w for w in start.warnings if w not in ingest["warnings"])
    rasters: list[LabelRaster] = open_label_rasters(start.labels, jrc_threshold=start.jrc_threshold)
    try:
        return write_chips(start.out, meta, batches, overwrite=start.overwrite, label_rasters=rasters, **write_kw)
    finally:
        for r in rasters:
            r.close()


def keep_mask(batch: ChipBatch, max_nodata: float, skip_when: str) -> np.ndarray:
    """Chips to keep: skipped when `any` (or `all`) provided modality has a nodata fraction > max_nodata.

    A modality the source does not have for a chip (e.g. a BigEarthNet S2 patch without an S1 twin)
    does not count; a chip with no provided modality at all is always skipped.
    """
    if skip_when not in SKIP_RULES:
        raise IngestError(f"--skip-when must be one of {SKIP_RULES}, got {skip_when!r}")
    b = len(batch.rows)
    too_bad, provided_any = [], np.zeros(b, dtype=bool)
    for mod, x in batch.arrays.items():
        prov = batch.provided.get(mod, np.ones(b, dtype=bool))
        nodata = 1.0 - np.isfinite(x).mean(axis=(1, 2, 3))
        too_bad.append(np.where(prov, nodata > max_nodata, skip_when == "all"))
        provided_any |= prov
    bad = np.stack(too_bad, axis=0)  # [M, b]
    bad = bad.any(axis=0) if skip_when == "any" else bad.all(axis=0)
    return ~bad & provided_any


def write_chips(
    path: Path,
    meta: StoreMeta,
    batches: Iterable[ChipBatch],
    *,
    overwrite: bool = False,
    max_nodata: float = 0.5,
    skip_when: str = "any",
    total: int | None = None,
    sources: dict[str, str] | None = None,
    label_rasters: Sequence[LabelRaster] = (),
    progress: bool = True,
) -> IngestResult:
    """Filter, label and append chip batches through an atomic ChipStoreWriter; returns the run summary.

    Fails (leaving nothing at `path`) when a modality has no valid pixel at all or when every chip is
    skipped.
    """
    if not 0.0 <= max_nodata <= 1.0:
        raise IngestError(f"--max-nodata is a fraction in [0, 1], got {max_nodata}")
    t0 = time.perf_counter()
    n_kept = n_skipped = n_bytes = 0
    finite = {m: 0 for m in meta.channels}
    finite_channel = {m: np.zeros(len(c), dtype=np.int64) for m, c in meta.channels.items()}
    labelled = {r.kind: 0 for r in label_rasters}  # chips with at least one valid label pixel, per product
    warnings_out: list[str] = meta.extra.setdefault("ingest", {}).setdefault("warnings", [])
    grid_crss: set[str] = set()
    provided_seen = {m: False for m in meta.channels}
    sources = sources or {}
    with ChipStoreWriter(path, meta, overwrite=overwrite) as writer:
        bar = tqdm(total=total, desc=f"ingest {meta.aoi}", unit="chip", disable=not progress)
        for batch in batches:
            b = len(batch.rows)
            n_bytes += batch.bytes_read
            for m, x in batch.arrays.items():
                prov = batch.provided.get(m, np.ones(b, dtype=bool))
                provided_seen[m] |= bool(prov.any())
                finite[m] += int(np.isfinite(x[prov]).sum())
                finite_channel[m] += np.isfinite(x[prov]).sum(axis=(0, 2, 3))
            keep = keep_mask(batch, max_nodata, skip_when)
            n_skipped += int((~keep).sum())
            bar.update(b)
            if not keep.any():
                continue
            if keep.all():  # the common case: no boolean-index copy of the arrays
                rows, arrays = batch.rows.reset_index(drop=True), batch.arrays
            else:
                rows = batch.rows.loc[keep].reset_index(drop=True)
                arrays = {m: x[keep] for m, x in batch.arrays.items()}
            if label_rasters:
                fps: list[ChipFootprint] = footprints_from_index(rows, meta.chip_size)
                cols = label_columns(label_rasters, fps)
                for c in cols.columns:
                    rows[c] = cols[c].to_numpy()
                for kind in labelled:
                    labelled[kind] += int((cols[f"label_valid_{kind}"].to_numpy() > 0).sum())
            writer.append(arrays, rows)
            if "grid_crs" in rows.columns:
                grid_crss.update(rows["grid_crs"].astype(str))
            n_kept += int(keep.sum())
        bar.close()
        empty = [m for m in meta.channels if provided_seen[m] and finite[m] == 0]
        if empty:
            names = "; ".join(f"{m} ({sources.get(m, 'input')})" for m in empty)
            raise IngestError(
                f"{names}: no valid pixel at all (every value is NaN or nodata) over the chip grid; check the file "
                "(and its nodata value), or leave that modality out"
            )
        if n_kept == 0:
            raise IngestError(
                f"every one of the {n_skipped} chips has more than {max_nodata:.0%} nodata in "
                f"{'some' if skip_when == 'any' else 'every'} modality, so none was kept: raise --max-nodata, "
                "use --skip-when all, or check the inputs' nodata values"
            )
        for m, chans in meta.channels.items():
            for c, k in zip(chans, finite_channel[m]):
                if k == 0:
                    warnings_out.append(f"{m}: band {c} is entirely empty (every value NaN or nodata in "
                                        f"{sources.get(m, 'the input')}): stored, and marked missing for every chip")
        for r in label_rasters:
            if labelled[r.kind] == 0:
                warnings_out.append(f"{r.kind} labels ({', '.join(t.path.name for t in r.tiles)}): no overlap with "
                                    f"the {n_kept} chips (no valid label pixel under any chip): not attached")
            else:
                meta.extra.setdefault("labels", {})[r.kind] = r.describe()
        # The writer serialises this same meta object when the block closes: record the final counts, and
        # the chip CRSs actually written (several UTM zones become a comma-separated list, see `grid_crs`).
        meta.extra.setdefault("ingest", {}).update({"n_chips": n_kept, "n_skipped_nodata": n_skipped})
        if grid_crss:
            meta.crs = ",".join(sorted(grid_crss))
    return IngestResult(
        path=Path(path),
        aoi=meta.aoi,
        n_chips=n_kept,
        n_skipped=n_skipped,
        up_to_date=False,
        seconds=time.perf_counter() - t0,
        bytes_read=n_bytes,
        modalities=list(meta.channels),
        missing=[m for m in MODALITY_KEYS if m not in meta.channels],
        warnings=list(warnings_out),
    )


def up_to_date_result(store: ChipStore) -> IngestResult:
    """The result of a run that found its store already built."""
    return IngestResult(
        path=store.path,
        aoi=store.meta.aoi,
        n_chips=len(store),
        n_skipped=int(store.meta.extra.get("ingest", {}).get("n_skipped_nodata", 0)),
        up_to_date=True,
        seconds=0.0,
        bytes_read=0,
        modalities=store.modalities,
        missing=[m for m in MODALITY_KEYS if m not in store.meta.channels],
        warnings=list(store.meta.extra.get("ingest", {}).get("warnings", [])),
    )

