"""Embed an AOI's chip store with a checkpoint: per-modality and fused vectors aligned with the chip ids.

Output `<workspace>/embeddings/<aoi>/<model_name>/<scenario>/`: `chip_ids.npy`, one `<key>.npy` float32
[N, D] per key (the model's modalities and `fused`), `present.npz` (key -> bool [N]) and `meta.json`.
A modality the store lacks, or a chip without it, is a zero row with present False.

Scenarios: `full`; `random-init` (the checkpoint's architecture, `torch.manual_seed(0)`, untrained: the
probes' baseline); `drop-<mod>-<channel>` (that channel's mask forced False at inference). Dropping whole
modalities needs no re-embedding: `Embeddings.fused_without(...)`.

Runs are resumable: shards of `shard_chips` chips are written as part files to a work folder inside the
workspace and reused by the next run; the final folder appears atomically once every shard is done.
Under `torchrun` each rank embeds a contiguous slice of the shards, then rank 0 merges after a barrier
(gloo on CPU, NCCL on GPU); without torchrun it is a plain single process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from core.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint, read_config
from core.model import ModelConfig, MultiModalViT, fuse
from data.atomic import atomic_dir, atomic_write_bytes, atomic_write_json
from data.dataset import ChipDataset, to_model_channels
from data.store import ChipStore
from core.progress import ProgressCallback
from data.workspace import SCENARIO_FULL, SCENARIO_RANDOM, Workspace, drop_scenario, parse_scenario

FORMAT_VERSION = 1
DEFAULT_SHARD_CHIPS = 1024
DEFAULT_BATCH_SIZE = 256
RANDOM_INIT_SEED = 0


class EmbeddingError(Exception):
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


def _validate_drop(cfg: ModelConfig, drop: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for mod, chans in (drop or {}).items():
        if mod not in cfg.channels:
            raise ValueError(f"cannot drop channels of {mod!r}: the model has modalities {list(cfg.channels)}")
        bad = [c for c in chans if c not in cfg.channels[mod]]
        if bad:
            raise ValueError(f"cannot drop {bad} of {mod!r}: the model's {mod} channels are {cfg.channels[mod]}")
        out[mod] = list(chans)
    return out


# ----------------------------------------------------------------------------------------- embedding
def _world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def default_threads() -> int:
    """Threads per process: the machine's cores shared among torchrun ranks."""
    return max(1, (os.cpu_count() or 1) // _world()[1])


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def read_batch(store: ChipStore, channels: Mapping[str, Sequence[str]], positions: np.ndarray) -> dict:
    """A model batch like `ChipDataset.get_batch`, read as one Zarr slice when the positions are contiguous."""
    pos = np.asarray(positions, dtype=np.int64)
    contiguous = len(pos) > 1 and bool(np.all(np.diff(pos) == 1))
    if not contiguous:
        return ChipDataset(store, {m: list(c) for m, c in channels.items()}, positions=pos).get_batch(np.arange(len(pos)))
    # A slice read is ~2x faster than Zarr's orthogonal indexing of the same chips (measured on 256-chip batches).
    batch: dict = {}
    for mod, chans in channels.items():
        x, mask = to_model_channels(store.read(mod, slice(int(pos[0]), int(pos[-1]) + 1)), mod, store.channels(mod), chans)
        batch[mod], batch[f"{mod}_mask"] = torch.from_numpy(x), torch.from_numpy(mask)
    return batch


def fit_chip_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resample normalised chips [B, C, H, W] to the model's chip size (area average down, bilinear up).

    Lets a model trained on one chip size embed stores cut at another (e.g. 120 px BigEarthNet patches
    with the 64 px shipped model), as CLIP-style models resize their inputs; the ground footprint per
    patch changes, which is recorded in the embeddings' meta (`resampled_from`).
    """
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-1] > size or x.shape[-2] > size:
        return torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def embed_positions(
    store: ChipStore,
    model: MultiModalViT,
    positions: np.ndarray,
    *,
    drop_channels: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    bar: tqdm | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Embed the chips at `positions` (store order kept): ({key: [n, D]}, {key: bool [n]})."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg: ModelConfig = model.cfg
    drop = _validate_drop(cfg, drop_channels)
    # Only the modalities the store holds go through their towers; the others are zero rows, present False.
    stored = {m: c for m, c in cfg.channels.items() if store.has_modality(m)}
    keys = list(cfg.channels) + ["fused"]
    n, dim = len(positions), cfg.embed_dim
    vectors = {k: np.zeros((n, dim), dtype=np.float32) for k in keys}
    present = {k: np.zeros(n, dtype=bool) for k in keys}
    if n == 0 or not stored:
        return vectors, present
    drop_idx = {m: [stored[m].index(c) for c in chans] for m, chans in drop.items() if m in stored}
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                items = np.arange(start, min(start + batch_size, n))
                batch = read_batch(store, stored, positions[items])
                for m in stored:
                    batch[m] = fit_chip_size(batch[m], cfg.chip_size)
                for m, idx in drop_idx.items():
                    batch[f"{m}_mask"][:, idx] = False
                    batch[m][:, idx] = 0.0
                inputs = {k: v.to(device) for k, v in batch.items() if k in stored or k.removesuffix("_mask") in stored}
                out = model.encode(inputs)
                for k in keys:
                    if k in out:
                        vectors[k][items] = out[k].float().cpu().numpy()
                        present[k][items] = out[f"{k}_present"].cpu().numpy()
                if bar is not None:
                    bar.update(len(items))
    finally:
        model.train(was_training)
    return vectors, present


def embed_store(
    store: ChipStore,
    model: MultiModalViT,
    *,
    drop_channels: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    num_threads: int | None = None,
) -> Embeddings:
    """Embed every chip of a store in memory (no files): per-modality + fused vectors and presence."""
    torch.set_num_threads(num_threads or default_threads())
    bar = tqdm(total=len(store), desc=f"embed {store.meta.aoi}", unit="chip", disable=not progress)
    vectors, present = embed_positions(store, model, np.arange(len(store)), drop_channels=drop_channels,
                                       batch_size=batch_size, bar=bar)
    bar.close()
    meta = {"aoi": store.meta.aoi, "n_chips": len(store), "dim": model.cfg.embed_dim,
            "dropped": _validate_drop(model.cfg, drop_channels), "simulated": store.meta.simulated}
    return Embeddings(store.index["chip_id"].to_numpy().astype(str), vectors, present, meta)


# ----------------------------------------------------------------------------------------- files
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def checkpoint_sha(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file (cached by path, size and mtime)."""
    f = Path(checkpoint) / "model.safetensors"
    if not f.is_file():
        raise EmbeddingError(f"{f} is missing: {checkpoint} is not a complete checkpoint")
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def source_sha(checkpoint: str | Path, scenario: str) -> str:
    """What a scenario's vectors derive from: the weights' sha, or for random-init the architecture + seed."""
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


def embeddings_dir(ws: Workspace, aoi: str, model_name: str = "tiny-sim", scenario: str = SCENARIO_FULL) -> Path:
    """Folder of one AOI x model x scenario's embeddings."""
    return ws.embeddings_dir(aoi, model_name, scenario)


def load_model(checkpoint: str | Path, scenario: str = SCENARIO_FULL, device: str | torch.device = "cpu") -> MultiModalViT:
    """The model a scenario embeds with: the checkpoint's weights, or its architecture seeded untrained."""
    parse_scenario(scenario)
    if scenario == SCENARIO_RANDOM:
        cfg = read_config(checkpoint)
        torch.manual_seed(RANDOM_INIT_SEED)
        return MultiModalViT(cfg).to(device).eval()
    model, _ = load_checkpoint(checkpoint, device=device)
    return model


def _build_cmd(ws: Workspace, aoi: str, scenario: str) -> str:
    return f"`python -m core.embed --workspace {ws.root} --aoi {aoi} --scenario {scenario}` (or `python -m core.pipeline build`)"


def embeddings_state(ws: Workspace, aoi: str, checkpoint: str | Path = SHIPPED_CHECKPOINT,
                     scenario: str = SCENARIO_FULL, store: ChipStore | None = None,
                     model_name: str | None = None) -> tuple[str, str]:
    """('built' | 'missing' | 'stale', detail) of an AOI's embeddings against the checkpoint and store."""
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
        return "stale", "built with other weights than the checkpoint now in use"
    if meta.get("n_chips") != len(store) or meta.get("chip_ids_digest") != ids_digest(store.index["chip_id"]):
        return "stale", f"the store now holds {len(store)} chips / other chip ids than when embedded ({meta.get('n_chips')})"
    if meta.get("format_version") != FORMAT_VERSION:
        return "stale", f"format {meta.get('format_version')} != {FORMAT_VERSION}"
    return "built", f"{meta.get('n_chips')} chips x {meta.get('dim')}-d"


def _shards(n: int, shard_chips: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_chips, n)) for s in range(0, n, shard_chips)]


def _part_path(work: Path, start: int, stop: int) -> Path:
    return work / f"part-{start:09d}-{stop:09d}.npz"


def _write_part(path: Path, vectors: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{f"v_{k}": v for k, v in vectors.items()}, **{f"p_{k}": p for k, p in present.items()})
    atomic_write_bytes(path, buf.getvalue())


def _read_part(path: Path, keys: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """A part file's arrays, or None when it is unreadable (then that shard is embedded again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[f"v_{k}"] for k in keys}, {k: z[f"p_{k}"] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _prepare_work(work: Path, work_meta: dict) -> None:
    """Reuse a work folder only when it was started for the same weights, store and sharding."""
    f = work / "work.json"
    if work.is_dir():
        try:
            if json.loads(f.read_text()) == work_meta:
                return
        except (OSError, ValueError):
            pass  # an unreadable work.json: the partial shards cannot be trusted, start over below
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(f, work_meta)


def _dist_setup(device: str) -> tuple[int, int, bool]:
    """Join torchrun's process group when launched by it; returns (rank, world, created_here)."""
    rank, world = _world()
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        return "cpu"
    return device


def embed_aoi(
    ws: Workspace,
    aoi: str,
    checkpoint: str | Path = SHIPPED_CHECKPOINT,
    scenario: str = SCENARIO_FULL,
    *,
    model_name: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_chips: int = DEFAULT_SHARD_CHIPS,
    device: str = "auto",
    num_threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    progress_cb: ProgressCallback | None = None,
    store: ChipStore | None = None,
) -> Path:
    """Embed an AOI store into the workspace (resumable, torchrun-shardable); skips up-to-date output."""
    drop = parse_scenario(scenario)
    if shard_chips < 1:
        raise ValueError(f"shard_chips must be >= 1, got {shard_chips}")
    checkpoint = Path(checkpoint)
    model_name = model_name or model_name_of(checkpoint)
    store = store or ws.open_store(aoi)  # the pipeline passes the store it already opened
    out = embeddings_dir(ws, aoi, model_name, scenario)
    state, _ = embeddings_state(ws, aoi, checkpoint, scenario, store, model_name=model_name)
    if state == "built" and not overwrite:
        if progress_cb:
            progress_cb(1.0, f"{aoi} {scenario}: up to date")
        return out
    device = _resolve_device(device)
    rank, world, created = _dist_setup(device)
    try:
        torch.set_num_threads(num_threads or default_threads())
        model = load_model(checkpoint, scenario, device)
        _validate_drop(model.cfg, drop)
        chip_ids = store.index["chip_id"].to_numpy().astype(str)
        n = len(store)
        sha = source_sha(checkpoint, scenario)
        keys = list(model.cfg.channels) + ["fused"]
        work = out.parent / f".work-{scenario}"
        work_meta = {"source_sha": sha, "n_chips": n, "chip_ids_digest": ids_digest(chip_ids),
                     "shard_chips": shard_chips, "batch_size": batch_size, "keys": keys, "format_version": FORMAT_VERSION}
        if rank == 0:
            _prepare_work(work, work_meta)
        _barrier(world)
        shards = _shards(n, shard_chips)
        # Contiguous slices of shards per rank: rank r takes shards [r*S/W, (r+1)*S/W).
        mine = shards[rank * len(shards) // world:(rank + 1) * len(shards) // world]
        todo = [s for s in mine if _read_part(_part_path(work, *s), keys) is None]
        bar = tqdm(total=sum(b - a for a, b in mine), initial=sum(b - a for a, b in mine) - sum(b - a for a, b in todo),
                   desc=f"embed {aoi} {scenario}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
                   unit="chip", disable=not progress, position=rank, leave=world == 1)
        done = len(mine) - len(todo)
        for a, b in todo:
            vectors, present = embed_positions(store, model, np.arange(a, b), drop_channels=drop,
                                               batch_size=batch_size, bar=bar)
            _write_part(_part_path(work, a, b), vectors, present)
            done += 1
            if progress_cb:
                progress_cb(done / max(1, len(mine)), f"{aoi} {scenario}: {b}/{n} chips")
        bar.close()
        _barrier(world)
        if rank == 0:
            _merge(work, out, shards, keys, chip_ids, overwrite=True, meta={
                "aoi": aoi, "model_name": model_name, "checkpoint": str(checkpoint), "source_sha": sha,
                "scenario": scenario, "dropped": drop, "dim": model.cfg.embed_dim, "n_chips": n,
                "chip_ids_digest": ids_digest(chip_ids), "keys": keys, "format_version": FORMAT_VERSION,
                "store_title": store.meta.title, "simulated": store.meta.simulated, "world_size": world,
                "resampled_from": store.meta.chip_size if store.meta.chip_size != model.cfg.chip_size else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
        _barrier(world)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return out


def _merge(work: Path, out: Path, shards: list[tuple[int, int]], keys: list[str], chip_ids: np.ndarray,
           *, overwrite: bool, meta: dict) -> None:
    """Concatenate the part files in store order into the final folder (atomic), then drop the work folder."""
    vectors: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    present: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for a, b in shards:
        part = _read_part(_part_path(work, a, b), keys)
        if part is None:
            raise EmbeddingError(f"shard {a}-{b} is missing from {work} after all ranks finished; rerun the command")
        for k in keys:
            vectors[k].append(part[0][k])
            present[k].append(part[1][k])
    with atomic_dir(out, overwrite=overwrite) as tmp:
        np.save(tmp / "chip_ids.npy", chip_ids.astype(str), allow_pickle=False)
        for k in keys:
            np.save(tmp / f"{k}.npy", np.concatenate(vectors[k]).astype(np.float32), allow_pickle=False)
        np.savez(tmp / "present.npz", **{k: np.concatenate(present[k]).astype(bool) for k in keys})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)


def load_embeddings(ws: Workspace, aoi: str, model_name: str = "tiny-sim", scenario: str = SCENARIO_FULL,
                    *, check_store: bool = True) -> Embeddings:
    """Read an AOI's embeddings; EmbeddingError (with the command that builds them) if missing or mismatched."""
    d = embeddings_dir(ws, aoi, model_name, scenario)
    if not (d / "meta.json").is_file():
        raise EmbeddingError(f"no {scenario!r} embeddings of AOI {aoi!r} for model {model_name!r} at {d}: "
                             f"build them with {_build_cmd(ws, aoi, scenario)}")
    try:
        meta = json.loads((d / "meta.json").read_text())
        chip_ids = np.load(d / "chip_ids.npy", allow_pickle=False)
        keys = list(meta["keys"])
        vectors = {k: np.load(d / f"{k}.npy", allow_pickle=False) for k in keys}
        with np.load(d / "present.npz", allow_pickle=False) as z:
            present = {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError) as e:
        raise EmbeddingError(f"embeddings at {d} are damaged ({e}): delete the folder and rebuild with "
                             f"{_build_cmd(ws, aoi, scenario)}") from e
    n = len(chip_ids)
    for k in keys:
        if vectors[k].shape != (n, meta["dim"]) or present[k].shape != (n,):
            raise EmbeddingError(f"embeddings at {d}: {k} has shape {vectors[k].shape}, expected ({n}, {meta['dim']}); "
                                 f"delete the folder and rebuild with {_build_cmd(ws, aoi, scenario)}")
    if check_store and ws.store_path(aoi).is_dir():
        store_ids = ws.open_store(aoi).index["chip_id"].to_numpy().astype(str)
        if len(store_ids) != n or not np.array_equal(store_ids, chip_ids.astype(str)):
            raise EmbeddingError(
                f"embeddings at {d} ({n} chips) do not match the chip ids of store {aoi!r} ({len(store_ids)} chips): "
                f"the store was rebuilt since; re-embed with {_build_cmd(ws, aoi, scenario)}")
    return Embeddings(chip_ids.astype(str), vectors, present, meta)


# ----------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: embed AOI stores of a workspace with a checkpoint."""
    ap = argparse.ArgumentParser(
        prog="python -m core.embed",
        description="Embed AOI chip stores with a checkpoint: per-modality (s2rgb, s1amp, coh) and fused vectors "
        "into <workspace>/embeddings/<aoi>/<model>/<scenario>/. Resumable (rerun continues an interrupted run; "
        "up-to-date output is skipped). Shard across processes with "
        "`torchrun --nproc_per_node N -m core.embed ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--workspace", default=None, help="workspace directory (default: $EO_WORKSPACE or ./workspace)")
    ap.add_argument("--aoi", nargs="+", default=None, help="AOIs to embed (default: every store in the workspace)")
    ap.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="checkpoint directory")
    ap.add_argument("--scenario", nargs="+", default=[SCENARIO_FULL],
                    help="full | random-init | drop-<mod>-<channel> (e.g. drop-s1amp-VH) | all-drops (every channel)")
    ap.add_argument("--model-name", default=None, help="name under embeddings/<aoi>/ (default: checkpoint folder name)")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--shard-chips", type=int, default=DEFAULT_SHARD_CHIPS, help="chips per resumable part file")
    ap.add_argument("--device", default="auto", help="auto (GPU when available) | cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / ranks)")
    ap.add_argument("--overwrite", action="store_true", help="re-embed even when up to date")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    ws = Workspace(args.workspace)
    aois = args.aoi or ws.list_stores()
    if not aois:
        print(f"error: no chip stores in {ws.stores_dir}; build them with `python -m core.pipeline build` "
              "or `python -m data.simulate`", file=sys.stderr)
        return 2
    scenarios: list[str] = []
    for s in args.scenario:
        scenarios += drop_scenarios(read_config(args.checkpoint)) if s == "all-drops" else [s]
    for s in scenarios:
        try:
            parse_scenario(s)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    rank, world, created = _dist_setup(_resolve_device(args.device))  # one process group for every AOI
    try:
        _embed_all(ws, aois, scenarios, args, rank)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _embed_all(ws: Workspace, aois: list[str], scenarios: list[str], args: argparse.Namespace, rank: int) -> None:
    for aoi in aois:
        for scenario in scenarios:
            t0 = time.perf_counter()
            path = embed_aoi(ws, aoi, args.checkpoint, scenario, model_name=args.model_name,
                             batch_size=args.batch_size, shard_chips=args.shard_chips, device=args.device,
                             num_threads=args.threads, overwrite=args.overwrite, progress=not args.quiet)
            if rank == 0:
                print(f"{aoi} {scenario}: {path} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
