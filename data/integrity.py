"""Sizes and checksums of a written folder (embeddings, an index), recorded at write time and checked cheaply later.

Chip stores record theirs in store.json (`ChipStore.verify`); embeddings and FAISS indexes record them under
"integrity" in their meta.json. A cheap check compares every file's size and the checksums of the files up
to `SMALL_FILE_BYTES` (all of a demo AOI's); `deep` checksums every file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from data.store import file_record

# Checksummed even by a cheap check: hashing 32 MiB takes ~20 ms; a 150k-chip AOI's vectors (~80 MB a key)
# are only size-checked unless `deep`.
SMALL_FILE_BYTES = 32 * 2**20


def folder_manifest(root: Path, exclude: Sequence[str] = ("meta.json",)) -> dict[str, list]:
    """`{relative path: [size, sha256]}` of every file under `root` but `exclude` (the file that records it)."""
    root = Path(root)
    return {f.relative_to(root).as_posix(): file_record(f)
            for f in sorted(root.rglob("*")) if f.is_file() and f.relative_to(root).as_posix() not in exclude}


def folder_problems(root: Path, recorded: Mapping[str, Sequence], deep: bool = False) -> list[str]:
    """What no longer matches the recorded manifest: missing files, other sizes, other checksums ([] when whole)."""
    root = Path(root)
    problems = []
    for rel, (size, digest) in recorded.items():
        f = root / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif (now := f.stat().st_size) != size:
            problems.append(f"{rel} has {now} bytes, {size} were written")
        elif (deep or size <= SMALL_FILE_BYTES) and file_record(f)[1] != digest:
            problems.append(f"{rel} does not match its checksum")
    return problems


def damage_summary(problems: Sequence[str], limit: int = 3) -> str:
    """The first few problems on one line ('; '-joined, with how many more)."""
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more
