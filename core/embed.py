"""Compute embeddings of an AOI's chip store with a checkpoint, resumably and torchrun-sharded; and the CLI.

The file format, scenarios, staleness and loading live in `core.embeddings`; this module runs the model.
Runs are resumable: shards of `shard_chips` chips are written as part files to a work folder inside the
workspace and reused by the next run; the final folder appears atomically once every shard is done.
Under `torchrun` each rank embeds a contiguous slice of the shards, then rank 0 merges after a barrier
(`core.distributed`: gloo on CPU, NCCL on GPU); without torchrun it is a plain single process.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from core import distributed
from core.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint, read_config
from core.embeddings import (
    FORMAT_VERSION,
    RANDOM_INIT_SEED,
    EmbeddingError,
    Embeddings,
    drop_scenarios,
    embeddings_dir,
    embeddings_state,
    ids_digest,
    model_name_of,
    source_sha,
    validate_drop,
    write_embeddings,
)
from core.model import ModelConfig, MultiModalViT
from core.progress import ProgressCallback
from data.atomic import atomic_write_bytes, atomic_write_json
from data.cli import CliError, command_line
from data.dataset import ChipDataset, to_model_channels
from data.store import ChipStore
from data.workspace import SCENARIO_FULL, SCENARIO_RANDOM, Workspace, locked, parse_scenario

DEFAULT_SHARD_CHIPS = 1024
DEFAULT_BATCH_SIZE = 256


# ----------------------------------------------------------------------------------------- embedding
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
    drop = validate_drop(cfg, drop_channels)
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
    torch.set_num_threads(num_threads or distributed.default_threads())
    bar = tqdm(total=len(store), desc=f"embed {store.meta.aoi}", unit="chip", disable=not progress)
    vectors, present = embed_positions(store, model, np.arange(len(store)), drop_channels=drop_channels,
                                       batch_size=batch_size, bar=bar)
    bar.close()
    meta = {"aoi": store.meta.aoi, "n_chips": len(store), "dim": model.cfg.embed_dim,
            "dropped": validate_drop(model.cfg, drop_channels), "simulated": store.meta.simulated}
    return Embeddings(store.index["chip_id"].to_numpy().astype(str), vectors, present, meta)


# ----------------------------------------------------------------------------------------- resumable runs
def load_model(checkpoint: str | Path, scenario: str = SCENARIO_FULL, device: str | torch.device = "cpu") -> MultiModalViT:
    """The model a scenario embeds with: the checkpoint's weights, or its architecture seeded untrained."""
    parse_scenario(scenario)
    if scenario == SCENARIO_RANDOM:
        cfg = read_config(checkpoint)
        torch.manual_seed(RANDOM_INIT_SEED)
        return MultiModalViT(cfg).to(device).eval()
    model, _ = load_checkpoint(checkpoint, device=device)
    return model


def _shards(n: int, shard_chips: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_chips, n)) for s in range(0, n, shard_chips)]


def _part_path(work: Path, start: int, stop: int) -> Path:
    return work / f"part-{start:09d}-{stop:09d}.npz"


def _write_part(path: Path, vectors: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> None:
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


# Under torchrun only rank 0 takes the workspace lock: the other ranks run inside its hold (taking it too
# would deadlock them against rank 0 at the first barrier).
@locked("embed", when=lambda: distributed.env_rank_world()[0] == 0)
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
    ctx = distributed.setup(device)
    rank, world = ctx.rank, ctx.world
    try:
        torch.set_num_threads(num_threads or distributed.default_threads())
        model = load_model(checkpoint, scenario, ctx.device)
        validate_drop(model.cfg, drop)
        chip_ids = store.index["chip_id"].to_numpy().astype(str)
        n = len(store)
        sha = source_sha(checkpoint, scenario)
        keys = list(model.cfg.channels) + ["fused"]
        work = out.parent / f".work-{scenario}"
        work_meta = {"source_sha": sha, "n_chips": n, "chip_ids_digest": ids_digest(chip_ids),
                     "shard_chips": shard_chips, "batch_size": batch_size, "keys": keys, "format_version": FORMAT_VERSION}
        if rank == 0:
            _prepare_work(work, work_meta)
        distributed.barrier(ctx)
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
        distributed.barrier(ctx)
        if rank == 0:
            _merge(work, out, shards, keys, chip_ids, overwrite=True, meta={
                "aoi": aoi, "model_name": model_name, "checkpoint": str(checkpoint), "source_sha": sha,
                "scenario": scenario, "dropped": drop, "dim": model.cfg.embed_dim, "n_chips": n,
                "chip_ids_digest": ids_digest(chip_ids), "keys": keys, "format_version": FORMAT_VERSION,
                "store_title": store.meta.title, "simulated": store.meta.simulated, "world_size": world,
                "resampled_from": store.meta.chip_size if store.meta.chip_size != model.cfg.chip_size else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
        distributed.barrier(ctx)
    finally:
        distributed.teardown(ctx)
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
    write_embeddings(out, chip_ids, {k: np.concatenate(vectors[k]) for k in keys},
                     {k: np.concatenate(present[k]) for k in keys}, meta, overwrite=overwrite)
    shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------- CLI
@command_line
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
        raise CliError(f"no chip stores in {ws.stores_dir}; build them with `python -m core.pipeline build` "
                       "or `python -m data.simulate`")
    scenarios: list[str] = []
    for s in args.scenario:
        scenarios += drop_scenarios(read_config(args.checkpoint)) if s == "all-drops" else [s]
    for s in scenarios:
        try:
            parse_scenario(s)
        except ValueError as e:
            raise CliError(str(e)) from None
    with distributed.distributed(args.device) as ctx:  # one process group for every AOI
        _embed_all(ws, aois, scenarios, args, ctx.rank)
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
