"""The workspace: where stores, embeddings, indexes, projections and evaluations of each AOI live.

Default `./workspace` (git-ignored), overridden by `$EO_WORKSPACE`. `manifest.json` records what was
built, when and with which versions, so the app can show the status of each pipeline step.
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_json
from data.store import ChipStore

WORKSPACE_ENV = "EO_WORKSPACE"
ARTIFACT_KINDS = ("embeddings", "indexes", "projections", "evaluations", "checkpoints")
_SAFE_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose outputs the workspace stores."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "zarr", "faiss-cpu", "scikit-learn", "umap-learn", "geopandas", "rasterio"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class Workspace:
    """Paths and manifest of one workspace directory; every path it hands out stays inside it."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root or os.environ.get(WORKSPACE_ENV) or "workspace").resolve()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def stores_dir(self) -> Path:
        """Folder holding one chip store per AOI."""
        return self.root / "stores"

    @property
    def manifest_path(self) -> Path:
        """The JSON manifest of built steps."""
        return self.root / "manifest.json"

    def _safe(self, part: str) -> str:
        if not _SAFE_PART.match(part) or part in (".", ".."):
            raise ValueError(f"{part!r} is not a valid name inside the workspace (letters, digits, '_', '-', '.')")
        return part

    def store_path(self, aoi: str) -> Path:
        """Path of an AOI's chip store."""
        return self.stores_dir / self._safe(aoi)

    def list_stores(self) -> list[str]:
        """Names of the complete stores present (folders with a store.json), sorted."""
        if not self.stores_dir.is_dir():
            return []
        return sorted(p.name for p in self.stores_dir.iterdir() if (p / "store.json").exists() and not p.name.startswith("."))

    def open_store(self, aoi: str) -> ChipStore:
        """Open the chip store of an AOI."""
        return ChipStore.open(self.store_path(aoi))

    def labelsets_dir(self, aoi: str) -> Path:
        """Folder of an AOI's saved label sets (`data.labelsets`)."""
        return self.root / "labelsets" / self._safe(aoi)

    def artifact_dir(self, kind: str, *parts: str) -> Path:
        """Folder for a derived artifact, e.g. `artifact_dir("embeddings", aoi, model_name)`."""
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; known: {list(ARTIFACT_KINDS)}")
        return self.root.joinpath(kind, *(self._safe(p) for p in parts))

    def confine(self, path: str | Path) -> Path:
        """Resolve a user-given path and refuse it unless it lies inside the workspace."""
        p = (self.root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"{path} is outside the workspace {self.root}")
        return p

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest content ({} when none has been written yet)."""
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            # A corrupt manifest is only a cache of status: start afresh rather than fail the app.
            return {}

    def record(self, step: str, **info: Any) -> None:
        """Record that a step was built (atomic rewrite of the manifest)."""
        m = self.manifest
        m.setdefault("steps", {})[step] = {
            **info,
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
        }
        atomic_write_json(self.manifest_path, m)
