"""The workspace: where stores, embeddings, indexes, projections and evaluations of each AOI live.

Default `./workspace` (git-ignored), overridden by `$EO_WORKSPACE`. `manifest.json` records what was
built, when and with which versions, so the app can show the status of each pipeline step.

This module is the one owner of the layout (nobody else joins folder names):

    stores/<aoi>/                                    chip store (store.json, chips.parquet, arrays.zarr)
    embeddings/<aoi>/<model>/<scenario>/             Workspace.embeddings_dir
    indexes/<aoi>/<model>/<key>/                     Workspace.index_dir
    projections/<aoi>/<model>/<scenario>/            Workspace.projection_dir
    representations/<aoi>/<name>/                    Workspace.representation_dir (external embeddings, #17)
    representations/<aoi>/<name>/index/              Workspace.representation_index_dir (its FAISS index)
    evaluations/<run>/, evaluations/_features/<aoi>/ Workspace.evaluation_dir, Workspace.features_cache_dir
    labelsets/<aoi>/<name>.parquet                   Workspace.label_set_path
    stories/<name>.json                              Workspace.story_path (saved app views, `data.stories`)

and of the names in it: AOI and label-set names (`check_name`, a FULL match of [A-Za-z0-9_-]+) and
embedding scenario names (`full`, `random-init`, `drop-<modality>-<ch1>+<ch2>`: `drop_scenario`,
`parse_scenario`).
"""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata as md
import inspect
import json
import os
import platform
import re
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from data.atomic import atomic_write_json, remove_orphans
from data.cli import KnownError
from data.store import ChipStore

WORKSPACE_ENV = "EO_WORKSPACE"
ARTIFACT_KINDS = ("embeddings", "indexes", "projections", "evaluations", "checkpoints", "representations")
# AOI and label-set names: letters, digits, '_' and '-' only (no dots, so no hidden or relative names).
_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Other path parts (model, scenario, key, run names) may also hold '+' (several dropped channels) and
# inner dots (a checkpoint folder such as 'run-1.5'), never a leading dot.
_SAFE_PART = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")

SCENARIO_FULL = "full"
SCENARIO_RANDOM = "random-init"
DROP_PREFIX = "drop-"
ALL_AOIS = "all-aois"
"""Projection folder of the joint UMAP of several AOIs (under projections/, beside the per-AOI folders)."""


LOCK_FILE = ".lock"
# One writer per workspace at a time: threads of this process wait on an RLock (re-entrant, so a build that
# embeds takes it again freely), other processes on an flock of <workspace>/.lock (released by the kernel
# when a process dies, so a killed run never leaves the workspace locked).
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_LOCK_DEPTH: dict[str, int] = {}


class WorkspaceNameError(KnownError, ValueError):
    """A name cannot be used inside the workspace: the message says which characters are allowed."""


def check_name(name: object, what: str = "AOI name") -> str:
    """Return `name` if it is a FULL match of [A-Za-z0-9_-]+ (no dots, path parts or newlines), else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise WorkspaceNameError(f"{what} {name!r} is not allowed: use only letters, digits, '_' and '-' "
                                 "(e.g. 'water_2026')")
    return name


def drop_scenario(modality: str, channels: "list[str] | tuple[str, ...]") -> str:
    """Embedding scenario of a modality embedded without some of its channels (`drop-s1amp-VH`)."""
    if not channels:
        raise ValueError(f"a drop scenario of {modality!r} needs at least one channel")
    return f"{DROP_PREFIX}{modality}-{'+'.join(sorted(channels))}"


def parse_scenario(scenario: str) -> dict[str, list[str]]:
    """Channels dropped by a scenario name (`drop-s1amp-VH` -> {"s1amp": ["VH"]}); {} for full/random-init."""
    if scenario in (SCENARIO_FULL, SCENARIO_RANDOM):
        return {}
    if isinstance(scenario, str) and scenario.startswith(DROP_PREFIX):
        rest = scenario[len(DROP_PREFIX):]
        if "-" in rest:
            mod, chans = rest.split("-", 1)
            channels = [c for c in chans.split("+") if c]
            if mod and channels:
                return {mod: channels}
    raise ValueError(
        f"unknown scenario {scenario!r}: use 'full', 'random-init' or 'drop-<modality>-<channel>' "
        "(e.g. drop-s1amp-VH; several channels of one modality as drop-coh-VV_12d+VV_36d)"
    )


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _folder_files(folder: Path) -> list[Path]:
    """meta.json and the other files of an artifact folder, sorted (just meta.json when the folder is absent)."""
    if not folder.is_dir():
        return [folder / "meta.json"]
    return [folder / "meta.json"] + sorted(f for f in folder.iterdir() if f.is_file() and f.name != "meta.json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose outputs the workspace stores."""
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
        if not isinstance(part, str) or not _SAFE_PART.fullmatch(part):
            raise WorkspaceNameError(f"{part!r} is not a valid name inside the workspace "
                                     "(letters, digits, '_', '-', '+', '.'; no leading '.')")
        return part

    def store_path(self, aoi: str) -> Path:
        """Path of an AOI's chip store."""
        return self.stores_dir / check_name(aoi)

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
        return self.root / "labelsets" / check_name(aoi)

    def label_set_path(self, aoi: str, name: str) -> Path:
        """File of one saved label set."""
        return self.labelsets_dir(aoi) / f"{check_name(name, 'label set name')}.parquet"

    @property
    def stories_dir(self) -> Path:
        """Folder of the saved stories (`data.stories`): one JSON file per story, shared with the workspace."""
        return self.root / "stories"

    def story_path(self, name: str) -> Path:
        """File of one saved story."""
        return self.stories_dir / f"{check_name(name, 'story name')}.json"

    def artifact_dir(self, kind: str, *parts: str) -> Path:
        """Folder for a derived artifact, e.g. `artifact_dir("embeddings", aoi, model_name)`."""
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; known: {list(ARTIFACT_KINDS)}")
        return self.root.joinpath(kind, *(self._safe(p) for p in parts))

    def embeddings_dir(self, aoi: str, model_name: str, scenario: str = SCENARIO_FULL) -> Path:
        """Folder of one AOI x model x scenario's embeddings."""
        parse_scenario(scenario)
        return self.artifact_dir("embeddings", check_name(aoi), model_name, scenario)

    def index_dir(self, aoi: str, model_name: str, key: str) -> Path:
        """Folder of one AOI x model x key FAISS index."""
        return self.artifact_dir("indexes", check_name(aoi), model_name, key)

    def projection_dir(self, aoi: str, model_name: str, scenario: str = SCENARIO_FULL) -> Path:
        """Folder of an AOI x model x scenario's projections (`aoi` may be a joint name such as 'all-aois')."""
        return self.artifact_dir("projections", check_name(aoi), model_name, scenario)

    def representation_dir(self, aoi: str, name: str) -> Path:
        """Folder of an external representation of an AOI (vectors brought by the user, see core.representations)."""
        return self.artifact_dir("representations", check_name(aoi), check_name(name, "representation name"))

    def representation_index_dir(self, aoi: str, name: str) -> Path:
        """Folder of the FAISS index of an external representation (beside its vectors)."""
        return self.representation_dir(aoi, name) / "index"

    def evaluation_dir(self, run_name: str) -> Path:
        """Folder of one evaluation run."""
        return self.artifact_dir("evaluations", run_name)

    def features_cache_dir(self, aoi: str) -> Path:
        """Folder of an AOI's cached hand-crafted baseline features (used by the evaluation)."""
        return self.artifact_dir("evaluations", "_features", check_name(aoi))

    def step_files(self, aoi: str, model_name: str) -> list[Path]:
        """The files whose modification times say when an AOI's pipeline steps last changed (see `step_stamp`)."""
        files = [self.store_path(aoi) / "store.json"]
        for s in (SCENARIO_FULL, SCENARIO_RANDOM):
            files += _folder_files(self.embeddings_dir(aoi, model_name, s))  # every file: a damaged one shows
        index_root = self.artifact_dir("indexes", check_name(aoi), model_name)
        if index_root.is_dir():
            for p in sorted(index_root.iterdir()):
                files += _folder_files(p)
        files.append(self.projection_dir(aoi, model_name) / "meta.json")
        return files

    def step_stamp(self, aois: "list[str] | tuple[str, ...]", model_name: str) -> tuple:
        """A cheap fingerprint of the step state (stat calls only): changes whenever a step is (re)built."""
        out: list = [_mtime_ns(self.manifest_path)]
        for aoi in aois:
            out += [_mtime_ns(f) for f in self.step_files(aoi, model_name)]
        return tuple(out)

    @property
    def lock_path(self) -> Path:
        """The lock file that serialises writers of this workspace."""
        return self.root / LOCK_FILE

    @contextmanager
    def lock(self, purpose: str = "build", on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold this workspace's writer lock (waiting for another writer); on first entry, clean killed runs' temps.

        Re-entrant within a thread. While blocked, `on_wait` (default: a line on stderr) gets
        "waiting for another build of this workspace (pid N: <purpose>)...". Readers never need it (writes are atomic).
        """
        key = str(self.lock_path)
        with _THREAD_LOCKS_GUARD:
            rlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
        say = on_wait or (lambda line: print(line, file=sys.stderr, flush=True))
        if not rlock.acquire(blocking=False):
            say(f"waiting for another build of this workspace (pid {os.getpid()}, another thread)...")
            rlock.acquire()
        try:
            if _LOCK_DEPTH.get(key, 0) > 0:  # this thread holds it already
                _LOCK_DEPTH[key] += 1
                try:
                    yield
                finally:
                    _LOCK_DEPTH[key] -= 1
                return
            fd = self._flock(purpose, say)
            _LOCK_DEPTH[key] = 1
            try:
                remove_orphans(self.root, started=time.time())
                yield
            finally:
                _LOCK_DEPTH[key] = 0
                os.ftruncate(fd, 0)
                os.close(fd)  # closing releases the flock
        finally:
            rlock.release()

    def _flock(self, purpose: str, say: Callable[[str], None]) -> int:
        """Take the exclusive flock of the lock file (waiting, with a message, while another process holds it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
                say(f"waiting for another build of this workspace ({holder})...")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)  # who holds it, for the waiters' message
        except BaseException:
            os.close(fd)
            raise
        return fd

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


def locked(purpose: str, arg: str = "ws", when: Callable[[], bool] | None = None) -> Callable:
    """Decorator: run the function holding the writer lock of the workspace it is given (`Workspace.lock`).

    `arg` names the parameter holding the workspace (a Workspace, a path, or None for the default one);
    `when` (checked per call) can skip the lock, e.g. in torchrun ranks that run inside rank 0's hold.
    """
    def wrap(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if when is not None and not when():
                return func(*args, **kwargs)
            given = signature.bind_partial(*args, **kwargs).arguments.get(arg)
            ws = given if isinstance(given, Workspace) else Workspace(given)
            with ws.lock(purpose):
                return func(*args, **kwargs)
        return wrapper
    return wrap
