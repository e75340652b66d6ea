"""Training chips: simulated AOI stores (cached) or given stores, a `ConcatDataset` over them, and a DataLoader
whose batch sampler yields deterministic global batches (a pure function of seed and step)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, default_collate

from data.dataset import ChipDataset
from data.simulate import cached_store, grid_shape
from data.store import ChipStore
from training.config import DataConfig


def simulated_stores(cfg: DataConfig, chip_size: int, channels: dict[str, list[str]], seeds: Sequence[int],
                     chips_per_aoi: int, progress: bool = True) -> list[ChipStore]:
    """Build (or reuse) one simulated store per AOI x seed under cfg.cache_dir."""
    rows, cols = grid_shape(chips_per_aoi)
    stores = []
    for seed in seeds:
        for aoi in cfg.aois:
            path = Path(cfg.cache_dir) / f"c{chip_size}-n{chips_per_aoi}-s{seed}" / aoi
            stores.append(cached_store(path, aoi, rows, cols, seed, chip_size=chip_size, channels=channels,
                                       progress=progress))
    return stores


def model_keys(channels: Mapping[str, Sequence[str]]) -> list[str]:
    """The keys a training sample holds: each modality's chips and its channel presence mask."""
    return [k for m in channels for k in (m, f"{m}_mask")]


class InMemoryChips(Dataset):
    """One store's model inputs held in RAM (float16), served as `{mod: [C,H,W] float32, f"{mod}_mask": [C]}`."""

    def __init__(self, store: ChipStore, channels: Mapping[str, Sequence[str]], block: int = 512) -> None:
        source = ChipDataset(store, {m: list(c) for m, c in channels.items()})
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(source), block):
            b = source.get_batch(range(start, min(start + block, len(source))))
            for mod in channels:
                # float16 halves the RAM; inputs are normalised, so the precision loss is negligible.
                parts.setdefault(mod, []).append(b[mod].to(torch.float16))
                parts.setdefault(f"{mod}_mask", []).append(b[f"{mod}_mask"])
        self.tensors = {k: torch.cat(v) for k, v in parts.items()}
        self._len = len(source)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        # DataLoader's batched fetch: one gather per key instead of one per chip.
        idx = torch.as_tensor(np.asarray(items, dtype=np.int64))
        batch = {k: (v[idx].float() if v.dtype == torch.float16 else v[idx]) for k, v in self.tensors.items()}
        return [{k: v[j] for k, v in batch.items()} for j in range(len(idx))]


class TrainingChips(ConcatDataset):
    """Several chip stores as one dataset of model inputs, in RAM or streamed from Zarr.

    A plain `ConcatDataset` plus a batched `__getitems__`, so the DataLoader reads each store once per
    batch (one Zarr read per modality) instead of once per chip.
    """

    def __init__(self, stores: Sequence[ChipStore], channels: Mapping[str, Sequence[str]], in_memory: bool = True) -> None:
        if not stores:
            raise ValueError("no training stores: check data.paths / data.aois")
        chans = {m: list(c) for m, c in channels.items()}
        super().__init__([InMemoryChips(s, chans) if in_memory else ChipDataset(s, chans) for s in stores])
        self.keys = model_keys(chans)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"chip index out of range 0..{len(self) - 1}")
        which = np.searchsorted(self.cumulative_sizes, idx, side="right")
        out: list[dict[str, torch.Tensor]] = [{} for _ in idx]
        for d in np.unique(which):
            sel = np.nonzero(which == d)[0]
            offset = 0 if d == 0 else self.cumulative_sizes[d - 1]
            for j, sample in zip(sel, self.datasets[d].__getitems__((idx[sel] - offset).tolist())):
                out[j] = {k: sample[k] for k in self.keys}
        return out

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Collated model inputs for global chip indices (order kept)."""
        return default_collate(self.__getitems__(indices))


class StepBatchSampler(Sampler[list[int]]):
    """This rank's chip indices for global micro-batches `start`..`stop`-1 (`batch_indices`): a pure function of
    the seed and micro-step, so a run resumed at any step reads exactly the batches the uninterrupted run read."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int, world: int, start: int, stop: int) -> None:
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.start, self.stop = start, stop
        batch_indices(n, global_batch, start, seed, rank, world)  # fail here, not in a worker, on a bad size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for micro_step in range(self.start, self.stop):
            yield batch_indices(self.n, self.global_batch, micro_step, self.seed, self.rank, self.world).tolist()


def training_loader(dataset: TrainingChips, sampler: StepBatchSampler, *, workers: int, prefetch: int,
                    pin_memory: bool = False) -> DataLoader:
    """A DataLoader that prefetches `prefetch` batches per worker while the model trains on the current one."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      prefetch_factor=prefetch if workers > 0 else None, pin_memory=pin_memory)


def batch_indices(n: int, global_batch: int, micro_step: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's slice of global micro-batch number `micro_step`: epochs are seeded permutations, so resume is exact."""
    if global_batch > n:
        raise ValueError(f"global batch {global_batch} is larger than the {n} training chips")
    per_epoch = n // global_batch
    epoch, k = divmod(micro_step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    chunk = perm[k * global_batch : (k + 1) * global_batch]
    per_rank = global_batch // world
    return chunk[rank * per_rank : (rank + 1) * per_rank]


def augment(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random rot90 + flip per chip, identical for every modality (they are co-registered)."""
    mods = [k for k in batch if not k.endswith("_mask")]
    n = batch[mods[0]].shape[0]
    rot = torch.randint(0, 4, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    out = dict(batch)
    for m in mods:
        x = batch[m]
        y = torch.empty_like(x)
        for r in range(4):
            for f in (False, True):
                sel = (rot == r) & (flip == f)
                if sel.any():
                    z = torch.rot90(x[sel], r, dims=(-2, -1))
                    y[sel] = torch.flip(z, dims=(-1,)) if f else z
        out[m] = y
    return out
