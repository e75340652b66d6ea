"""The embeddings file format of one AOI x model x scenario: the `Embeddings` type, scenarios, loading, staleness.

Folder `<workspace>/embeddings/<aoi>/<model_name>/<scenario>/`: `chip_ids.npy`, one `<key>.npy` float32
[N, D] per key (the model's modalities and `fused`), `present.npz` (key -> bool [N]) and `meta.json`.
A modality the store lacks, or a chip without it, is a zero row with present False.

Scenarios (names owned by `data.workspace`): `full`; `random-init` (the checkpoint's architecture, `torch.manual_seed(0)`, untrained: the
probes' baseline); `drop-<mod>-<channel>` (that channel's mask forced False at inference). Dropping whole
modalities needs no re-embedding: `Embeddings.fused_without(...)`.

Embeddings are stale when the checkpoint changes (any of its files, config included), when the store holds
other chips, or when the format changes. `core.embed` computes and writes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from core.checkpoint import SHIPPED_CHECKPOINT, CheckpointError, checkpoint_digest, read_config
from core.model import ModelConfig, fuse
from data.atomic import atomic_dir
from data.cli import KnownError
from data.integrity import damage_summary, folder_manifest, folder_problems
from data.store import ChipStore
from data.workspace import SCENARIO_FULL, SCENARIO_RANDOM, Workspace, drop_scenario

FORMAT_VERSION = 1
RANDOM_INIT_SEED = 0


class EmbeddingError(KnownError):
    """Embeddings are missing, incomplete or do not match the store: the message says which command fixes it."""


# ----------------------------------------------------------------------------------------- data type
@dataclass
class Embeddings:
    """Per-modality and fused embeddings of one AOI, rows in store order."""

    chip_ids: np.ndarray
    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.chip_ids)

    @property
    def keys(self) -> list[str]:
        """Vector keys held (modalities then `fused`)."""
        return list(self.vectors)

    @property
    def modalities(self) -> list[str]:
        """Modality keys held (without `fused`)."""
        return [k for k in self.vectors if k != "fused"]

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(next(iter(self.vectors.values())).shape[1])

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [N, D], present [N]) of one key, with an error naming the keys held."""
        if key not in self.vectors:
            raise KeyError(f"no {key!r} embeddings; these hold {self.keys}")
        return self.vectors[key], self.present[key]

    def fused_without(self, dropped: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Fused vectors and presence as if the `dropped` modalities were missing at inference."""
        dropped = set(dropped)
        unknown = dropped - set(self.modalities)
        if unknown:
            raise KeyError(f"cannot drop {sorted(unknown)}: these embeddings hold modalities {self.modalities}")
        keep = [k for k in self.modalities if k not in dropped]
        if not keep:
            n = len(self)
            return np.zeros((n, self.dim), dtype=np.float32), np.zeros(n, dtype=bool)
        return fuse({k: self.vectors[k] for k in keep}, {k: self.present[k] for k in keep})


# ----------------------------------------------------------------------------------------- scenarios
def drop_scenarios(cfg: ModelConfig) -> list[str]:
    """Every single-channel dropout scenario of a model config (`drop-<mod>-<channel>`)."""
    return [drop_scenario(m, [c]) for m, chans in cfg.channels.items() for c in chans]


def validate_drop(cfg: ModelConfig, drop: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """The dropped channels as {modality: [channel]}, refusing a modality or channel the model lacks."""
    out: dict[str, list[str]] = {}
    for mod, chans in (drop or {}).items():
        if mod not in cfg.channels:
            raise ValueError(f"cannot drop channels of {mod!r}: the model has modalities {list(cfg.channels)}")
        bad = [c for c in chans if c not in cfg.channels[mod]]
        if bad:
            raise ValueError(f"cannot drop {bad} of {mod!r}: the model's {mod} channels are {cfg.channels[mod]}")
        out[mod] = list(chans)
    return out


# ----------------------------------------------------------------------------------------- provenance
def checkpoint_sha(checkpoint: str | Path) -> str:
    """SHA-256 over every file of a checkpoint (weights, config, meta, ...): any edit makes embeddings stale."""
    try:
        return checkpoint_digest(checkpoint)
    except CheckpointError as e:
        raise EmbeddingError(str(e)) from e


def source_sha(checkpoint: str | Path, scenario: str) -> str:
    """What a scenario's vectors derive from: the checkpoint's digest, or for random-init the architecture + seed."""
    if scenario == SCENARIO_RANDOM:
        arch = json.dumps(read_config(checkpoint).architecture(), sort_keys=True)
        return "random-init:" + hashlib.sha256(f"{arch}|seed={RANDOM_INIT_SEED}|torch={torch.__version__}".encode()).hexdigest()
    return checkpoint_sha(checkpoint)


def model_name_of(checkpoint: str | Path) -> str:
    """The model name used in workspace paths: the checkpoint directory's name (e.g. tiny-sim)."""
    return Path(checkpoint).resolve().name


def ids_digest(chip_ids: Sequence[str] | np.ndarray) -> str:
    """A short digest of the chip-id order, to notice a store rebuilt with other chips."""
    return hashlib.sha256("\n".join(map(str, chip_ids)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- files
def embeddings_dir(ws: Workspace, aoi: str, model_name: str = "tiny-sim", scenario: str = SCENARIO_FULL) -> Path:
    """Folder of one AOI x model x scenario's embeddings."""
    return ws.embeddings_dir(aoi, model_name, scenario)


def build_cmd(ws: Workspace, aoi: str, scenario: str) -> str:
    """The command that (re)builds one AOI x scenario's embeddings, for error messages."""
    return f"`python -m core.embed --workspace {ws.root} --aoi {aoi} --scenario {scenario}` (or `python -m core.pipeline build`)"


def embeddings_state(ws: Workspace, aoi: str, checkpoint: str | Path = SHIPPED_CHECKPOINT,
                     scenario: str = SCENARIO_FULL, store: ChipStore | None = None,
                     model_name: str | None = None) -> tuple[str, str]:
    """('built' | 'missing' | 'stale' | 'damaged', detail) of an AOI's embeddings against the checkpoint and store.

    'damaged': a file no longer has the size or checksum recorded when it was written (cheap check, see
    `data.integrity`); the detail says how to rebuild.
    """
    out = embeddings_dir(ws, aoi, model_name or model_name_of(checkpoint), scenario)
    meta_f = out / "meta.json"
    if not meta_f.is_file():
        return "missing", f"no embeddings at {out}"
    try:
        meta = json.loads(meta_f.read_text())
    except ValueError:
        return "stale", f"{meta_f} is unreadable"
    store = store or ws.open_store(aoi)
    want_sha = source_sha(checkpoint, scenario)
    if meta.get("source_sha") != want_sha:
        return "stale", "built with another checkpoint (weights, config or meta) than the one now in use"
    if meta.get("n_chips") != len(store) or meta.get("chip_ids_digest") != ids_digest(store.index["chip_id"]):
        return "stale", f"the store now holds {len(store)} chips / other chip ids than when embedded ({meta.get('n_chips')})"
    if meta.get("format_version") != FORMAT_VERSION:
        return "stale", f"format {meta.get('format_version')} != {FORMAT_VERSION}"
    if problems := embeddings_problems(out, meta):
        return "damaged", f"rebuild with {build_cmd(ws, aoi, scenario)}: {damage_summary(problems)}"
    return "built", f"{meta.get('n_chips')} chips x {meta.get('dim')}-d"


def embeddings_problems(folder: Path, meta: Mapping) -> list[str]:
    """Files of an embeddings folder that differ from the sizes/checksums in its meta.json ([] if whole or unrecorded)."""
    recorded = meta.get("integrity")
    return folder_problems(folder, recorded) if isinstance(recorded, dict) else []


def write_embeddings(out: Path, chip_ids: np.ndarray, vectors: Mapping[str, np.ndarray],
                     present: Mapping[str, np.ndarray], meta: Mapping, *, overwrite: bool = True) -> None:
    """Write one embeddings folder atomically (it appears only once complete)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        np.save(tmp / "chip_ids.npy", np.asarray(chip_ids).astype(str), allow_pickle=False)
        for k, v in vectors.items():
            np.save(tmp / f"{k}.npy", np.asarray(v).astype(np.float32), allow_pickle=False)
        np.savez(tmp / "present.npz", **{k: np.asarray(p).astype(bool) for k, p in present.items()})
        meta = {**meta, "integrity": folder_manifest(tmp)}  # what `embeddings_state` checks for damage
        (tmp / "meta.json").write_text(json.dumps(dict(meta), indent=2, sort_keys=True, default=str) + "\n")


def load_embeddings(ws: Workspace, aoi: str, model_name: str = "tiny-sim", scenario: str = SCENARIO_FULL,
                    *, check_store: bool = True) -> Embeddings:
    """Read an AOI's embeddings; EmbeddingError (with the command that builds them) if missing or mismatched."""
    d = embeddings_dir(ws, aoi, model_name, scenario)
    if not (d / "meta.json").is_file():
        raise EmbeddingError(f"no {scenario!r} embeddings of AOI {aoi!r} for model {model_name!r} at {d}: "
                             f"build them with {build_cmd(ws, aoi, scenario)}")
    try:
        meta = json.loads((d / "meta.json").read_text())
        chip_ids = np.load(d / "chip_ids.npy", allow_pickle=False)
        keys = list(meta["keys"])
        vectors = {k: np.load(d / f"{k}.npy", allow_pickle=False) for k in keys}
        with np.load(d / "present.npz", allow_pickle=False) as z:
            present = {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError) as e:
        raise EmbeddingError(f"embeddings at {d} are damaged ({e}): delete the folder and rebuild with "
                             f"{build_cmd(ws, aoi, scenario)}") from e
    n = len(chip_ids)
    for k in keys:
        if vectors[k].shape != (n, meta["dim"]) or present[k].shape != (n,):
            raise EmbeddingError(f"embeddings at {d}: {k} has shape {vectors[k].shape}, expected ({n}, {meta['dim']}); "
                                 f"delete the folder and rebuild with {build_cmd(ws, aoi, scenario)}")
    if check_store and ws.store_path(aoi).is_dir():
        store_ids = ws.open_store(aoi).index["chip_id"].to_numpy().astype(str)
        if len(store_ids) != n or not np.array_equal(store_ids, chip_ids.astype(str)):
            raise EmbeddingError(
                f"embeddings at {d} ({n} chips) do not match the chip ids of store {aoi!r} ({len(store_ids)} chips): "
                f"the store was rebuilt since; re-embed with {build_cmd(ws, aoi, scenario)}")
    return Embeddings(chip_ids.astype(str), vectors, present, meta)
