"""Label sets: the chips an analyst labelled on one AOI, kept in the workspace between sessions.

A label set is stored at `<workspace>/labelsets/<aoi>/<name>.parquet` (`Workspace.labelsets_dir`), one
row per labelled chip, written atomically (`data.atomic`). When saved with the AOI's chip store it is a
GeoParquet file carrying each chip's polygon (EPSG:4326), so GIS tools open it directly; without a store
it is plain Parquet. Either way the set's own fields (kind, classes, description, created, updated) live
in the file's key-value metadata under `eofewshot:labelset` (JSON): one file, nothing to keep in sync.

Label columns (`LabelSet.labels`, one row per chip, ordered by when it was labelled):

- `chip_id` (str)
- `label` (str): the class name for `binary` (`"absent"` / `"present"`) and `multiclass` sets; for a
  `fraction` set it is the value written as text, so the column is one type for every kind.
- `value` (float): the training target. `binary`: 1.0 present, 0.0 absent; `multiclass`: the index of
  the class in `classes`; `fraction`: the fraction in [0, 1].
- `source` (str): where the label came from (`SOURCES`: map, gallery, suggestion, import, cli).
- `added` (str): ISO 8601 UTC time of the label.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data.atomic import atomic_write_bytes
from data.cli import KnownError
from data.store import ChipStore
from data.workspace import Workspace, WorkspaceNameError
from data.workspace import check_name as check_workspace_name

LABEL_KINDS: tuple[str, ...] = ("binary", "multiclass", "fraction")
BINARY_CLASSES: tuple[str, str] = ("absent", "present")
SOURCES: tuple[str, ...] = ("map", "gallery", "suggestion", "import", "cli")
LABEL_COLUMNS: tuple[str, ...] = ("chip_id", "label", "value", "source", "added")
METADATA_KEY = b"eofewshot:labelset"
FORMAT_VERSION = 1
# Spellings a label file may use for binary labels (case-insensitive); anything else is a class name.
_BINARY_SPELLINGS = {"present": "present", "absent": "absent", "1": "present", "0": "absent", "1.0": "present",
                     "0.0": "absent", "true": "present", "false": "absent", "yes": "present", "no": "absent"}


class LabelSetError(KnownError, ValueError):
    """A label set cannot be made, read or written: the one-line message says what to change."""


def now_utc() -> str:
    """The current UTC time as ISO 8601 with seconds (what `added`, `created`, `updated` hold)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_name(name: str, what: str = "label set name") -> str:
    """`data.workspace.check_name` (one rule for AOI and label-set names), raising a LabelSetError."""
    try:
        return check_workspace_name(name, what)
    except WorkspaceNameError as e:
        raise LabelSetError(str(e)) from None


def _is_name(name: str) -> bool:
    try:
        check_workspace_name(name)
    except WorkspaceNameError:
        return False
    return True


def _empty_labels() -> pd.DataFrame:
    return pd.DataFrame({"chip_id": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                         "value": pd.Series(dtype=np.float64), "source": pd.Series(dtype=str),
                         "added": pd.Series(dtype=str)})


@dataclass
class LabelSet:
    """The labels of one AOI under one name; `add`/`remove` return a new set (the old one is untouched)."""

    aoi: str
    name: str
    kind: str = "binary"
    classes: list[str] = field(default_factory=lambda: list(BINARY_CLASSES))
    labels: pd.DataFrame = field(default_factory=_empty_labels)
    description: str = ""
    created: str = field(default_factory=now_utc)
    updated: str = ""

    def __post_init__(self) -> None:
        check_name(self.aoi, "AOI name")
        check_name(self.name)
        if self.kind not in LABEL_KINDS:
            raise LabelSetError(f"unknown label kind {self.kind!r}: choose one of {list(LABEL_KINDS)}")
        self.classes = [str(c) for c in self.classes]
        if self.kind == "binary" and self.classes != list(BINARY_CLASSES):
            raise LabelSetError(f"a binary label set has the classes {list(BINARY_CLASSES)}, got {self.classes}: "
                                "use kind='multiclass' for other class names")
        if self.kind == "multiclass":
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) or any(not c for c in self.classes):
                raise LabelSetError(f"a multiclass label set needs >= 2 distinct non-empty class names, got {self.classes}")
        if self.kind == "fraction":
            self.classes = []
        self.labels = self._normalise(self.labels)
        self.updated = self.updated or self.created

    # ------------------------------------------------------------------ validation
    def _normalise(self, df: pd.DataFrame) -> pd.DataFrame:
        """Check a label table and bring it to the documented columns and dtypes."""
        missing = [c for c in ("chip_id", "label") if c not in df.columns]
        if missing and not (self.kind == "fraction" and "chip_id" in df.columns and "value" in df.columns):
            raise LabelSetError(f"label table lacks columns {missing}: it needs chip_id and label")
        if df["chip_id"].duplicated().any():
            dup = df.loc[df["chip_id"].duplicated(), "chip_id"].astype(str).tolist()[:5]
            raise LabelSetError(f"chip ids labelled twice: {dup}; keep one label per chip")
        out = _empty_labels()
        if len(df):
            raw = df["value"] if self.kind == "fraction" and "label" not in df.columns else df["label"]
            parsed = [self.parse_label(v) for v in raw]
            out = pd.DataFrame({
                "chip_id": df["chip_id"].astype(str).to_numpy(),
                "label": [p[0] for p in parsed],
                "value": np.array([p[1] for p in parsed], dtype=np.float64),
                "source": df["source"].astype(str).to_numpy() if "source" in df.columns else "import",
                "added": df["added"].astype(str).to_numpy() if "added" in df.columns else now_utc(),
            })
        bad = sorted(set(out["source"]) - set(SOURCES))
        if bad:
            raise LabelSetError(f"unknown label source {bad[0]!r}: use one of {list(SOURCES)}")
        return out.reset_index(drop=True)

    def parse_label(self, label: Any) -> tuple[str, float]:
        """(label text, numeric value) of one label for this set's kind, or LabelSetError saying what is allowed."""
        if self.kind == "fraction":
            try:
                v = float(label)
            except (TypeError, ValueError):
                raise LabelSetError(f"a fraction label must be a number in [0, 1], got {label!r}") from None
            if not (0.0 <= v <= 1.0) or math.isnan(v):
                raise LabelSetError(f"a fraction label must be a number in [0, 1], got {label!r}")
            return repr(v), v
        if self.kind == "binary":
            if isinstance(label, (bool, np.bool_)):
                text = "present" if label else "absent"
            else:
                text = _BINARY_SPELLINGS.get(str(label).strip().lower(), "")
            if not text:
                raise LabelSetError(f"a binary label must be 'present' or 'absent' (or 1/0, true/false), got {label!r}")
            return text, float(text == "present")
        text = str(label).strip()
        if text not in self.classes:
            raise LabelSetError(f"unknown class {label!r}: this label set's classes are {self.classes}")
        return text, float(self.classes.index(text))

    # ------------------------------------------------------------------ editing
    def add(self, chip_ids: Sequence[str], label: str | float, source: str = "map") -> "LabelSet":
        """A new set with `chip_ids` labelled `label` (re-labelling a chip replaces its old label)."""
        ids = [chip_ids] if isinstance(chip_ids, str) else [str(c) for c in chip_ids]
        if source not in SOURCES:
            raise LabelSetError(f"unknown label source {source!r}: use one of {list(SOURCES)}")
        text, value = self.parse_label(label)
        ids = list(dict.fromkeys(ids))  # one row per chip even if a caller repeats an id
        stamp = now_utc()
        new = pd.DataFrame({"chip_id": ids, "label": text, "value": value, "source": source, "added": stamp})
        kept = self.labels[~self.labels["chip_id"].isin(ids)]
        frames = [f for f in (kept, new) if len(f)]
        table = pd.concat(frames, ignore_index=True) if frames else _empty_labels()
        return replace(self, labels=table, updated=stamp)

    def remove(self, chip_ids: Sequence[str]) -> "LabelSet":
        """A new set without the labels of `chip_ids` (ids that were not labelled are ignored)."""
        ids = [chip_ids] if isinstance(chip_ids, str) else [str(c) for c in chip_ids]
        return replace(self, labels=self.labels[~self.labels["chip_id"].isin(ids)].reset_index(drop=True),
                       updated=now_utc())

    # ------------------------------------------------------------------ reading
    def counts(self) -> dict[str, int]:
        """Labels per class (every class, zeros included); for a fraction set: labelled, zero and nonzero counts."""
        if self.kind == "fraction":
            v = self.labels["value"].to_numpy()
            return {"labelled": int(len(v)), "zero": int((v == 0).sum()), "nonzero": int((v > 0).sum())}
        vc = self.labels["label"].value_counts()
        return {c: int(vc.get(c, 0)) for c in self.classes}

    def label_of(self, chip_id: str) -> str | float | None:
        """The chip's label (class name, or the fraction for a fraction set); None when it is not labelled."""
        hit = self.labels.loc[self.labels["chip_id"] == str(chip_id)]
        if hit.empty:
            return None
        return float(hit["value"].iloc[0]) if self.kind == "fraction" else str(hit["label"].iloc[0])

    @property
    def chip_ids(self) -> list[str]:
        """Labelled chip ids, in labelling order."""
        return self.labels["chip_id"].tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def metadata(self) -> dict[str, Any]:
        """The set's fields other than the labels (what the file's metadata holds)."""
        return {"format_version": FORMAT_VERSION, "aoi": self.aoi, "name": self.name, "kind": self.kind,
                "classes": list(self.classes), "description": self.description, "created": self.created,
                "updated": self.updated}


# ---------------------------------------------------------------------------------------- files
def parquet_bytes(df: pd.DataFrame | gpd.GeoDataFrame, metadata: dict[bytes, bytes] | None = None) -> bytes:
    """Parquet (GeoParquet for a GeoDataFrame) as bytes, with extra key-value metadata added to the schema."""
    buf = io.BytesIO()
    if isinstance(df, gpd.GeoDataFrame):
        df.to_parquet(buf, index=False)  # geopandas writes the GeoParquet `geo` metadata
        table = pq.read_table(io.BytesIO(buf.getvalue()))
    else:
        table = pa.Table.from_pandas(df, preserve_index=False)
    merged = {**(table.schema.metadata or {}), **(metadata or {})}
    out = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(merged), out)
    return out.getvalue()


def label_set_path(ws: Workspace, aoi: str, name: str) -> Path:
    """Where a label set is stored: `<workspace>/labelsets/<aoi>/<name>.parquet`."""
    check_name(aoi, "AOI name"), check_name(name)  # the LabelSetError of this module for a bad name
    return ws.label_set_path(aoi, name)


def list_label_sets(ws: Workspace, aoi: str) -> list[str]:
    """Names of the label sets saved for an AOI, sorted."""
    d = ws.labelsets_dir(check_name(aoi, "AOI name"))
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.parquet") if _is_name(p.stem))


def save_label_set(ws: Workspace, label_set: LabelSet, *, store: ChipStore | None = None) -> Path:
    """Write a label set atomically; with the AOI's store, as GeoParquet with chip polygons (unknown chips refused)."""
    path = label_set_path(ws, label_set.aoi, label_set.name)
    table = label_set.labels.reset_index(drop=True)
    if store is not None:
        if store.meta.aoi != label_set.aoi:
            raise LabelSetError(f"label set {label_set.name!r} belongs to AOI {label_set.aoi!r} but the store is "
                                f"{store.meta.aoi!r}: pass the store of {label_set.aoi!r}")
        index = store.index.set_index("chip_id")
        unknown = [c for c in table["chip_id"] if c not in index.index]
        if unknown:
            raise LabelSetError(f"{len(unknown)} chip id(s) not in store {store.meta.aoi!r}, e.g. {unknown[:3]}: "
                                "remove them from the label set (or label chips of this AOI)")
        geometry = index.loc[table["chip_id"], "geometry"].to_numpy()
        table = gpd.GeoDataFrame(table, geometry=geometry, crs=store.index.crs)
    data = parquet_bytes(table, {METADATA_KEY: json.dumps(label_set.metadata()).encode()})
    atomic_write_bytes(path, data)
    return path


def load_label_set(ws: Workspace, aoi: str, name: str) -> LabelSet:
    """Read a saved label set; LabelSetError (naming the fix) when it is missing or damaged."""
    path = label_set_path(ws, aoi, name)
    if not path.is_file():
        known = list_label_sets(ws, aoi)
        raise LabelSetError(f"no label set {name!r} for AOI {aoi!r} in {path.parent}; saved sets: {known or 'none'}")
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[METADATA_KEY])
        df = table.drop_columns([c for c in table.column_names if c not in LABEL_COLUMNS]).to_pandas()
        return LabelSet(aoi=meta["aoi"], name=meta["name"], kind=meta["kind"], classes=meta["classes"], labels=df,
                        description=meta.get("description", ""), created=meta["created"],
                        updated=meta.get("updated", ""))
    except LabelSetError as e:
        raise LabelSetError(f"label set file {path} is invalid ({e}); delete it or fix it") from e
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as e:
        raise LabelSetError(f"label set file {path} is damaged ({type(e).__name__}: {e}); delete it and "
                            "re-import the labels") from e


def delete_label_set(ws: Workspace, aoi: str, name: str) -> None:
    """Delete a saved label set (LabelSetError when there is none)."""
    path = label_set_path(ws, aoi, name)
    if not path.is_file():
        raise LabelSetError(f"no label set {name!r} for AOI {aoi!r} to delete")
    path.unlink()


def infer_kind(values: pd.Series) -> str:
    """The kind a column of labels reads as: binary (present/absent, 1/0, true/false), fraction (numbers in [0, 1]), else multiclass."""
    vals = values.dropna()
    if vals.empty:
        raise LabelSetError("the label column is empty: give each chip_id a label")
    if vals.map(lambda v: isinstance(v, (bool, np.bool_)) or str(v).strip().lower() in _BINARY_SPELLINGS).all():
        return "binary"
    numeric = pd.to_numeric(vals, errors="coerce")
    if numeric.notna().all() and numeric.between(0, 1).all():
        return "fraction"
    return "multiclass"


def read_label_file(path: Path, *, aoi: str, name: str, kind: str | None = None) -> LabelSet:
    """A label set from a CSV, Parquet/GeoParquet or GeoJSON file with `chip_id` and `label` columns (kind inferred when None)."""
    path = Path(path)
    if not path.is_file():
        raise LabelSetError(f"label file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, comment="#", dtype={"chip_id": str})
        elif suffix in (".parquet", ".geoparquet"):
            df = pq.read_table(path).to_pandas()
        elif suffix in (".geojson", ".json"):
            df = pd.DataFrame(gpd.read_file(path).drop(columns="geometry", errors="ignore"))
        else:
            raise LabelSetError(f"unsupported label file type {suffix!r} ({path.name}): use .csv, .parquet or .geojson")
    except LabelSetError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one clear message
        raise LabelSetError(f"cannot read label file {path} ({type(e).__name__}: {e})") from e
    target = "label" if "label" in df.columns else ("value" if "value" in df.columns else None)
    if "chip_id" not in df.columns or target is None:
        raise LabelSetError(f"label file {path.name} needs columns chip_id and label; it has {list(df.columns)}")
    df = df[df[target].notna()].copy()
    df["chip_id"] = df["chip_id"].astype(str)
    conflict = df.groupby("chip_id")[target].nunique()
    if (conflict > 1).any():
        raise LabelSetError(f"chip ids with conflicting labels in {path.name}: {conflict[conflict > 1].index[:3].tolist()}")
    df = df.drop_duplicates("chip_id")
    kind = kind or infer_kind(df[target])
    classes = list(BINARY_CLASSES) if kind == "binary" else (
        sorted(df[target].astype(str).str.strip().unique()) if kind == "multiclass" else [])
    keep = {"chip_id": df["chip_id"], "label": df[target],
            # Sources outside SOURCES (another tool's wording) become "import" rather than refusing the file.
            "source": df["source"].where(df["source"].isin(SOURCES), "import") if "source" in df.columns else "import"}
    if "added" in df.columns:
        keep["added"] = df["added"]
    return LabelSet(aoi=aoi, name=name, kind=kind, classes=classes, labels=pd.DataFrame(keep).reset_index(drop=True))
