"""Training chips: simulated AOI stores (cached) or given stores, served as deterministic global batches."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

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


class ChipSource:
    """Several chip stores seen as one indexable collection of model-ready batches."""

    def __init__(self, stores: Sequence[ChipStore], channels: dict[str, list[str]], in_memory: bool = True) -> None:
        if not stores:
            raise ValueError("no training stores: check data.paths / data.aois")
        self.datasets = [ChipDataset(s, channels) for s in stores]
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.channels = channels
        self._memory: dict[str, torch.Tensor] | None = None
        if in_memory:
            self._memory = self._load_all()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _load_all(self) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {}
        for d in self.datasets:
            for start in range(0, len(d), 512):
                b = d.get_batch(range(start, min(start + 512, len(d))))
                for mod in self.channels:
                    # float16 halves the RAM; inputs are normalised, so the precision loss is negligible.
                    parts.setdefault(mod, []).append(b[mod].to(torch.float16))
                    parts.setdefault(f"{mod}_mask", []).append(b[f"{mod}_mask"])
        return {k: torch.cat(v) for k, v in parts.items()}

    def get_batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for global chip indices (order kept)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._memory is not None:
            idx = torch.from_numpy(indices)
            return {k: (v[idx].float() if v.dtype == torch.float16 else v[idx]) for k, v in self._memory.items()}
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        out: dict[str, list[torch.Tensor]] = {}
        order = []
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            b = self.datasets[s].get_batch(indices[sel] - self.offsets[s])
            order.append(sel)
            for k in self.channels:
                out.setdefault(k, []).append(b[k])
                out.setdefault(f"{k}_mask", []).append(b[f"{k}_mask"])
        inv = torch.from_numpy(np.argsort(np.concatenate(order)))
        return {k: torch.cat(v)[inv] for k, v in out.items()}


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
