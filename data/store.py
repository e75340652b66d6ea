"""The chip store of one AOI: a GeoParquet chip index plus one Zarr array per modality.

Layout of a store directory::

    store.json      format version, StoreMeta, chip count (written last: its presence marks a whole store)
    chips.parquet   GeoParquet, one row per chip (EPSG:4326 polygons, availability, labels, provenance)
    arrays.zarr/    one array per stored modality, [N, C, H, W], one chip per chunk, physical units, NaN = missing

A store is built in a hidden temp sibling and renamed into place when complete, so an interrupted
write leaves nothing that `ChipStore.open` would accept.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely.geometry
import zarr

from data.cli import KnownError
from data.modalities import LABEL_TASKS, MODALITY_KEYS, get_modality
from data.atomic import atomic_write_json, replace_dir, temp_sibling

STORE_FORMAT_VERSION = 1
INDEX_CRS = "EPSG:4326"
REQUIRED_ROW_COLUMNS = ("chip_id", "row", "col", "geometry")
_AOI_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_REBUILD_HINT = (
    "rebuild it with `python -m data.simulate` (simulated AOIs) or `python -m data.ingest` (your own data)"
)
# The small files whose size and checksum `verify` always compares (the Zarr chunks are checked for
# presence and size only, unless deep).
_SMALL_FILES = ("chips.parquet",)
# zstd frame checksums make a flipped byte inside a chunk fail at read time instead of decoding to garbage.
_CHUNK_COMPRESSOR = zarr.codecs.ZstdCodec(level=0, checksum=True)


class StoreError(KnownError):
    """A chip store is missing, partial, corrupt or incompatible; the message says how to fix it."""


@dataclass
class StoreMeta:
    """What a store holds: AOI name, grid geometry, stored modalities/channels and provenance."""

    aoi: str
    title: str
    simulated: bool
    chip_size: int
    pixel_size_m: float
    crs: str
    channels: dict[str, list[str]]
    source: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError with a clear message if the metadata is inconsistent."""
        if not _AOI_NAME.match(self.aoi or ""):
            raise ValueError(f"AOI name {self.aoi!r} must match [A-Za-z0-9_-]+ (it becomes a folder name)")
        if self.chip_size < 4:
            raise ValueError(f"chip_size must be at least 4 pixels, got {self.chip_size}")
        if not self.pixel_size_m > 0:
            raise ValueError(f"pixel_size_m must be positive, got {self.pixel_size_m}")
        if not self.channels:
            raise ValueError("a store needs at least one modality in `channels`")
        for mod, chans in self.channels.items():
            if mod not in MODALITY_KEYS:
                raise ValueError(f"unknown modality {mod!r}; known: {list(MODALITY_KEYS)}")
            get_modality(mod).validate_channels(chans)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreMeta":
        """Rebuild from the `meta` block of store.json, ignoring unknown keys."""
        names = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in names}
        chans = kw["channels"]
        # JSON sorts keys; keep the registry's modality order so every reader sees the same order.
        kw["channels"] = {m: list(chans[m]) for m in sorted(chans, key=_modality_order)}
        return cls(**kw)


def _modality_order(key: str) -> int:
    return MODALITY_KEYS.index(key) if key in MODALITY_KEYS else len(MODALITY_KEYS)


def availability_columns(modality: str, channels: Sequence[str]) -> list[str]:
    """Names of the per-channel availability columns of a modality."""
    return [f"has_{modality}_{c}" for c in channels]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_record(path: Path) -> list:
    """`[size, sha256]` of one file, as `file_manifest` records it."""
    return [Path(path).stat().st_size, _sha256(Path(path))]


def file_manifest(root: Path) -> dict[str, list]:
    """`{relative path: [size, sha256]}` of every file of a store folder except store.json."""
    root = Path(root)
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name != "store.json":
            out[f.relative_to(root).as_posix()] = file_record(f)
    return out


def rebuild_command(meta: StoreMeta) -> str:
    """The command that rebuilds a store from its sources (recorded at ingest, or derived from its kind)."""
    if meta.simulated:
        return f"python -m data.simulate --aoi {shlex.quote(meta.aoi)} --overwrite"
    ingest = meta.extra.get("ingest", {})
    if ingest.get("command"):
        return str(ingest["command"])
    kind = ingest.get("kind", "<source>")
    return f"python -m data.ingest {kind} <the same inputs> --aoi {shlex.quote(meta.aoi)} --overwrite"


class ChipStoreWriter:
    """Write a chip store in batches, in bounded memory; atomic on close (context manager)."""

    def __init__(
        self,
        path: Path,
        meta: StoreMeta,
        *,
        overwrite: bool = False,
        dtype: str = "float32",
        shard_chips: int = 64,
    ) -> None:
        meta.validate()
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists (use overwrite=True / --overwrite to replace it)")
        if np.dtype(dtype).kind != "f":
            raise ValueError(f"store dtype must be a float type (NaN marks missing data), got {dtype}")
        self.meta, self.overwrite, self.dtype, self.shard_chips = meta, overwrite, np.dtype(dtype), shard_chips
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_sibling(self.path)
        self.tmp.mkdir()
        self._group = zarr.open_group(self.tmp / "arrays.zarr", mode="w")
        s = meta.chip_size
        self._arrays = {}
        for mod, chans in meta.channels.items():
            m = get_modality(mod)
            mean, std = m.channel_stats(chans)
            a = self._group.create_array(
                mod,
                shape=(0, len(chans), s, s),
                chunks=(1, len(chans), s, s),
                shards=(shard_chips, len(chans), s, s),
                dtype=self.dtype,
                fill_value=np.nan,
                compressors=_CHUNK_COMPRESSOR,
            )
            a.attrs.update(
                {"channels": list(chans), "units": m.units, "norm_mean": mean.tolist(), "norm_std": std.tolist()}
            )
            self._arrays[mod] = a
        self._pending: dict[str, list[np.ndarray]] = {m: [] for m in meta.channels}
        self._n_pending = 0
        self._rows: list[pd.DataFrame] = []
        self._n = 0
        self._closed = False

    def __enter__(self) -> "ChipStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def append(self, arrays: dict[str, np.ndarray], rows: pd.DataFrame) -> None:
        """Add a batch of chips: modality arrays [b, C, H, W] (NaN = missing) and their index rows."""
        if self._closed:
            raise RuntimeError("this writer is closed")
        b = len(rows)
        missing = [c for c in REQUIRED_ROW_COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(f"index rows lack required columns {missing}")
        if set(arrays) != set(self.meta.channels):
            raise ValueError(
                f"arrays given for {sorted(arrays)} but the store declares {sorted(self.meta.channels)}; "
                "pass an all-NaN array for a modality a batch lacks"
            )
        s = self.meta.chip_size
        rows = pd.DataFrame(rows).reset_index(drop=True).copy()
        for mod, x in arrays.items():
            chans = self.meta.channels[mod]
            if x.shape != (b, len(chans), s, s):
                raise ValueError(f"{mod}: expected shape {(b, len(chans), s, s)}, got {tuple(x.shape)}")
            finite = np.isfinite(x)
            per_channel = finite.any(axis=(2, 3))  # [b, C]
            for j, col in enumerate(availability_columns(mod, chans)):
                rows[col] = per_channel[:, j]
            rows[f"has_{mod}"] = per_channel.any(axis=1)
            rows[f"valid_{mod}"] = finite.mean(axis=(1, 2, 3)).astype(np.float32)
            self._pending[mod].append(np.asarray(x, dtype=self.dtype))
        self._rows.append(rows)
        self._n_pending += b
        self._n += b
        if self._n_pending >= self.shard_chips:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write whole shards (or everything, when final) of the pending chips to Zarr."""
        if self._n_pending == 0:
            return
        n_write = self._n_pending if final else (self._n_pending // self.shard_chips) * self.shard_chips
        for mod, parts in self._pending.items():
            block = np.concatenate(parts, axis=0)
            a = self._arrays[mod]
            start = a.shape[0]
            a.resize((start + n_write,) + a.shape[1:])
            a[start : start + n_write] = block[:n_write]
            self._pending[mod] = [block[n_write:]] if n_write < len(block) else []
        self._n_pending -= n_write

    def close(self) -> None:
        """Finish the store: write the index and store.json, then move it into place."""
        if self._closed:
            return
        try:
            self._flush(final=True)
            if self._n == 0:
                raise StoreError("no chips were written: refusing to create an empty store")
            index = pd.concat(self._rows, ignore_index=True)
            dup = index["chip_id"][index["chip_id"].duplicated()]
            if len(dup):
                raise StoreError(f"duplicate chip ids, e.g. {dup.iloc[0]!r}")
            index.insert(0, "aoi", self.meta.aoi)
            index["simulated"] = bool(self.meta.simulated)
            for task in LABEL_TASKS:
                if task not in index.columns:
                    index[task] = np.nan
                index[task] = index[task].astype(np.float32)
            for mod in MODALITY_KEYS:
                if f"has_{mod}" not in index.columns:
                    index[f"has_{mod}"] = False
            gdf = gpd.GeoDataFrame(index, geometry="geometry", crs=INDEX_CRS)
            gdf.to_parquet(self.tmp / "chips.parquet")
            atomic_write_json(
                self.tmp / "store.json",
                {
                    "format_version": STORE_FORMAT_VERSION,
                    "n_chips": self._n,
                    "dtype": str(self.dtype),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "meta": asdict(self.meta),
                    # written last, over every other file of the store: what `ChipStore.verify` compares
                    "integrity": file_manifest(self.tmp),
                },
            )
            replace_dir(self.tmp, self.path, self.overwrite)
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._closed = True
        shutil.rmtree(self.tmp, ignore_errors=True)


class ChipStore:
    """A read-only view of a finished chip store."""

    def __init__(self, path: Path, meta: StoreMeta, index: gpd.GeoDataFrame, arrays: dict[str, Any], info: dict):
        self.path, self.meta, self.index, self._arrays, self.info = path, meta, index, arrays, info
        self._pos = pd.Series(np.arange(len(index)), index=index["chip_id"].to_numpy())
        self._recorded: dict[str, np.ndarray] = {}  # modality -> has_<modality>_<channel> [N, C], read lazily

    @classmethod
    def open(cls, path: Path) -> "ChipStore":
        """Open and validate a store; raise StoreError explaining what is wrong and how to fix it."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"no chip store at {path}: {_REBUILD_HINT}")
        spec = path / "store.json"
        if not spec.exists():
            raise StoreError(
                f"{path} is not a complete chip store (store.json is missing; a write was probably interrupted): "
                f"delete the folder and {_REBUILD_HINT}"
            )
        try:
            info = json.loads(spec.read_text())
            meta = StoreMeta.from_dict(info["meta"])
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{spec} is corrupt ({e}): delete the folder and {_REBUILD_HINT}") from None
        version = info.get("format_version")
        if version != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{path} has store format {version}, this code reads format {STORE_FORMAT_VERSION}: {_REBUILD_HINT}"
            )
        try:
            meta.validate()
        except (ValueError, KeyError) as e:
            raise StoreError(f"{spec} describes an incompatible store: {e}") from None
        try:
            index = gpd.read_parquet(path / "chips.parquet")
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise StoreError(f"cannot read the chip index {path / 'chips.parquet'} ({e}): {_REBUILD_HINT}") from None
        n = int(info.get("n_chips", -1))
        if len(index) != n:
            raise StoreError(f"{path}: chip index has {len(index)} rows but store.json says {n}: {_REBUILD_HINT}")
        if index.crs is None or index.crs.to_string() != INDEX_CRS:
            raise StoreError(f"{path}: chip index CRS is {index.crs}, expected {INDEX_CRS}: {_REBUILD_HINT}")
        s = meta.chip_size
        arrays = {}
        try:
            group = zarr.open_group(path / "arrays.zarr", mode="r")
            for mod, chans in meta.channels.items():
                a = group[mod]
                expected = (n, len(chans), s, s)
                if tuple(a.shape) != expected:
                    raise StoreError(f"{path}: array {mod} has shape {tuple(a.shape)}, expected {expected}")
                arrays[mod] = a
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"cannot read the arrays of {path} ({e}): {_REBUILD_HINT}") from None
        return cls(path, meta, index, arrays, info)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        kind = "simulated" if self.meta.simulated else "real"
        return f"ChipStore({self.meta.aoi!r}, {len(self)} chips, {kind}, modalities={self.modalities})"

    @property
    def modalities(self) -> list[str]:
        """Modalities stored here (others are missing for every chip)."""
        return list(self.meta.channels)

    def has_modality(self, modality: str) -> bool:
        """Whether this store holds arrays for `modality`."""
        return modality in self.meta.channels

    def channels(self, modality: str) -> list[str]:
        """Channel names of a stored modality."""
        self._check_modality(modality)
        return list(self.meta.channels[modality])

    def _check_modality(self, modality: str) -> None:
        get_modality(modality)
        if modality not in self._arrays:
            raise KeyError(f"store {self.meta.aoi!r} has no {modality!r} data (it holds {self.modalities})")

    def read(self, modality: str, positions: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """Chips of one modality as float32 `[n, C, H, W]` (or `[C, H, W]` for an int position)."""
        self._check_modality(modality)
        a = self._arrays[modality]
        if isinstance(positions, (int, np.integer)):
            p = int(positions)
            p = p + len(self) if p < 0 else p
            if not 0 <= p < len(self):
                raise IndexError(f"position {positions} out of range for a store of {len(self)} chips")
            return self._read_checked(modality, np.array([p]), lambda: a[p][None])[0]
        if isinstance(positions, slice):
            return self._read_checked(modality, np.arange(len(self))[positions], lambda: a[positions])
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size == 0:
            return np.empty((0,) + tuple(a.shape[1:]), dtype=np.float32)
        if pos.min() < 0 or pos.max() >= len(self):
            raise IndexError(f"positions out of range for a store of {len(self)} chips")
        # Zarr reads sorted unique positions fastest; restore the caller's order afterwards.
        uniq, inverse = np.unique(pos, return_inverse=True)
        block = self._read_checked(modality, uniq, lambda: a.oindex[uniq] if len(uniq) > 1 else a[int(uniq[0])][None])
        return block[inverse]

    def _read_checked(self, modality: str, pos: np.ndarray, read) -> np.ndarray:
        """Run a Zarr read of chips `pos` and check it against the recorded per-channel availability.

        A deleted chunk reads as the fill value (NaN), which would look like "modality missing"; a damaged
        one fails to decode (zstd/crc32c checksums). Both become a StoreError naming the chip and the fix.
        """
        try:
            block = np.asarray(read(), dtype=np.float32)
        except Exception as e:  # zarr/numcodecs raise ValueError, RuntimeError, ... for damaged bytes
            raise StoreError(
                f"store {self.meta.aoi!r}: the {modality} data of chip(s) {self._chip_names(pos)} cannot be read "
                f"({type(e).__name__}: {e}); the Zarr chunk is damaged: rebuild with `{rebuild_command(self.meta)}`"
            ) from None
        if modality not in self._recorded:
            self._recorded[modality] = self.channel_available(modality)
        present = np.isfinite(block).any(axis=(2, 3))  # [n, C]
        bad = np.nonzero((present != self._recorded[modality][pos]).any(axis=1))[0]
        if len(bad):
            lost = bool((~present[bad] & self._recorded[modality][pos[bad]]).any())
            what = ("is recorded present but reads as missing (its Zarr chunk was deleted or emptied)" if lost
                    else "does not match the recorded availability (its Zarr chunk was replaced)")
            raise StoreError(
                f"store {self.meta.aoi!r}: the {modality} data of chip(s) {self._chip_names(pos[bad])} {what}: "
                f"rebuild with `{rebuild_command(self.meta)}`"
            )
        return block

    def _chip_names(self, pos: np.ndarray, limit: int = 3) -> str:
        ids = self.index["chip_id"].iloc[np.asarray(pos[:limit], dtype=np.int64)].tolist()
        more = f" and {len(pos) - limit} more" if len(pos) > limit else ""
        return ", ".join(map(str, ids)) + more

    def verify(self, deep: bool = False) -> str:
        """Check the store against the sizes and checksums recorded at write time.

        Cheap (default): every recorded file is present with its size, the small files (chip index, Zarr
        metadata) match their checksums, and no unrecorded chunk appeared. `deep` also checksums every Zarr
        chunk. Returns "ok" or "damaged: <what>; rebuild with `<command>`".
        """
        recorded = self.info.get("integrity")
        if not isinstance(recorded, dict):
            return "ok (no checksums recorded: written before they were; only the index and array shapes were checked)"
        problems = []
        for rel, (size, digest) in recorded.items():
            f = self.path / rel
            if not f.is_file():
                problems.append(f"{rel} is missing{self._chunk_note(rel)}")
            elif f.stat().st_size != size:
                problems.append(f"{rel} has {f.stat().st_size} bytes, {size} were written{self._chunk_note(rel)}")
            elif (deep or _is_small(rel)) and _sha256(f) != digest:
                problems.append(f"{rel} does not match its checksum{self._chunk_note(rel)}")
        zroot = self.path / "arrays.zarr"
        extra = [f.relative_to(self.path).as_posix() for f in zroot.rglob("*") if f.is_file()] if zroot.is_dir() else []
        problems += [f"{rel} was not written with the store" for rel in extra if rel not in recorded]
        if not problems:
            return "ok"
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return f"damaged: {'; '.join(problems[:3])}{more}; rebuild with `{rebuild_command(self.meta)}`"

    def _chunk_note(self, rel: str) -> str:
        """`: chips <first>..<last> of <modality>` for a Zarr shard path (empty for other files)."""
        parts = rel.split("/")
        if len(parts) < 4 or parts[0] != "arrays.zarr" or parts[2] != "c" or parts[1] not in self._arrays:
            return ""
        a = self._arrays[parts[1]]
        per = (a.shards or a.chunks)[0]
        first = int(parts[3]) * per
        last = min(first + per, len(self)) - 1
        if first >= len(self):
            return ""
        ids = self.index["chip_id"]
        return f" (the {parts[1]} data of chips {ids.iloc[first]}..{ids.iloc[last]})"

    def positions_of(self, chip_ids: str | Sequence[str]) -> np.ndarray:
        """Store positions of chip ids (KeyError naming the unknown ones)."""
        ids = [chip_ids] if isinstance(chip_ids, str) else list(chip_ids)
        unknown = [c for c in ids if c not in self._pos.index]
        if unknown:
            raise KeyError(f"unknown chip ids in store {self.meta.aoi!r}: {unknown[:5]}")
        return self._pos.loc[ids].to_numpy()

    def read_chip(self, chip_id: str) -> dict[str, np.ndarray]:
        """All stored modalities of one chip, `{modality: [C, H, W]}`."""
        p = int(self.positions_of(chip_id)[0])
        return {m: self.read(m, p) for m in self.modalities}

    def query_bbox(self, minx: float, miny: float, maxx: float, maxy: float) -> gpd.GeoDataFrame:
        """Chips intersecting a lon/lat bounding box, with their store `position` column."""
        if not (minx <= maxx and miny <= maxy):
            raise ValueError(f"empty bounding box ({minx}, {miny}, {maxx}, {maxy}): need minx<=maxx and miny<=maxy")
        hits = self.index.sindex.query(_box(minx, miny, maxx, maxy), predicate="intersects")
        hits = np.sort(hits)
        out = self.index.iloc[hits].copy()
        out.insert(0, "position", hits)
        return out

    def labels(self, task: str) -> np.ndarray:
        """Label fractions of a task for every chip (float32, NaN where unknown)."""
        if task not in LABEL_TASKS:
            raise KeyError(f"unknown task {task!r}; known tasks: {list(LABEL_TASKS)}")
        return self.index[task].to_numpy(dtype=np.float32)

    def available(self, modality: str) -> np.ndarray:
        """Per-chip presence of a modality (bool [N]); all False when the store lacks it."""
        col = f"has_{modality}"
        if col not in self.index.columns:
            return np.zeros(len(self), dtype=bool)
        return self.index[col].to_numpy(dtype=bool)

    def channel_available(self, modality: str) -> np.ndarray:
        """Per-chip, per-channel presence `[N, C]` of a stored modality."""
        cols = availability_columns(modality, self.channels(modality))
        return self.index[cols].to_numpy(dtype=bool)


def _is_small(rel: str) -> bool:
    """Files checksummed even by a cheap verify: the chip index and the Zarr metadata."""
    return rel in _SMALL_FILES or rel.endswith("zarr.json")


def read_store_meta(path: Path) -> StoreMeta | None:
    """The StoreMeta in a folder's store.json, or None when it is missing or unreadable (never raises)."""
    try:
        return StoreMeta.from_dict(json.loads((Path(path) / "store.json").read_text())["meta"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_store(path: Path, deep: bool = False) -> str:
    """`ChipStore.verify` of the store at `path`, or "damaged: <why it does not open>" (never raises)."""
    try:
        return ChipStore.open(path).verify(deep=deep)
    except StoreError as e:
        return f"damaged: {e}"


def _box(minx: float, miny: float, maxx: float, maxy: float):
    return shapely.geometry.box(minx, miny, maxx, maxy)
