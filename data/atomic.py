"""Atomic writes: build next to the target, then rename, so a crash never leaves a half-written file."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# `.<name>.<tag>-<pid>-<8 hex>`: the writer's pid says whether a leftover's writer is still alive.
_TEMP_NAME = re.compile(r"\..+\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")
# Written before the pid was part of the name: removed only once surely abandoned.
_LEGACY_TEMP_NAME = re.compile(r"\..+\.(?:tmp|old)-[0-9a-f]{8}")
LEGACY_TEMP_AGE_S = 24 * 3600
# Orphans sit beside their target; targets lie at most this deep in a workspace (embeddings/<aoi>/<model>/<scenario>/<file>).
_ORPHAN_SCAN_DEPTH = 6


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden path in the same directory as `path` (same filesystem, so rename is atomic), naming our pid."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def is_orphan(path: Path, started: float) -> bool:
    """A temp sibling left by a killed writer: older than `started` (epoch s) and its writer's pid is gone."""
    name = Path(path).name
    try:
        mtime = Path(path).lstat().st_mtime
    except OSError:
        return False
    if m := _TEMP_NAME.fullmatch(name):
        return mtime < started and not pid_alive(int(m["pid"]))
    if _LEGACY_TEMP_NAME.fullmatch(name):
        return mtime < min(started, time.time() - LEGACY_TEMP_AGE_S)
    return False


def remove_orphans(root: Path, started: float, max_depth: int = _ORPHAN_SCAN_DEPTH) -> list[Path]:
    """Delete the temp siblings (files and folders) that killed runs left under `root`; returns what was removed.

    Call it holding the workspace lock (`Workspace.lock`), so no other locked writer is mid-write; a temp of a
    live process (e.g. the app saving a label set) is kept. Zarr arrays and hidden folders are not descended.
    """
    removed: list[Path] = []
    todo = [(Path(root), 0)]
    while todo:
        folder, depth = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            p = Path(e.path)
            if e.name.startswith("."):
                if is_orphan(p, started):
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    removed.append(p)
            elif depth + 1 < max_depth and e.is_dir(follow_symlinks=False) and not e.name.endswith(".zarr"):
                todo.append((p, depth + 1))
    return sorted(removed)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write an object as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished temp directory into place; with `overwrite`, swap out the old one safely."""
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists (pass overwrite=True / --overwrite to replace it)")
        trash = temp_sibling(final, "old")
        os.replace(final, trash)  # the old dir stays whole until the new one is in place
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp sibling directory; on success rename it to `path`, on error delete it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
