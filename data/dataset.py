"""A torch Dataset over chip stores, yielding normalised modality tensors with channel presence masks."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.modalities import MODALITIES, get_modality
from data.store import ChipStore


def default_channels() -> dict[str, list[str]]:
    """The registry's default channel list for every modality (the model's view of the world)."""
    return {k: list(m.channels) for k, m in MODALITIES.items()}


def to_model_channels(
    x: np.ndarray, modality: str, store_channels: Sequence[str], model_channels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Map a batch `[n, C_store, H, W]` onto the model's channel list: normalised values, NaN->0, and mask `[n, C_model]`."""
    m = get_modality(modality)
    n, _, h, w = x.shape
    out = np.zeros((n, len(model_channels), h, w), dtype=np.float32)
    mask = np.zeros((n, len(model_channels)), dtype=bool)
    lookup = {c: i for i, c in enumerate(store_channels)}
    for j, c in enumerate(model_channels):
        i = lookup.get(c)
        if i is None:
            continue
        z = m.normalise(x[:, i : i + 1], [c])[:, 0]
        finite = np.isfinite(z)
        mask[:, j] = finite.any(axis=(1, 2))
        out[:, j] = np.where(finite, z, 0.0)
    return out, mask


class ChipDataset(Dataset):
    """Samples `{mod: [C,H,W], f"{mod}_mask": [C] bool, "chip_id", "position"}` from one chip store."""

    def __init__(
        self,
        store: ChipStore,
        channels: dict[str, list[str]] | None = None,
        positions: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.channels = {k: list(v) for k, v in (channels or default_channels()).items()}
        self.positions = np.arange(len(store)) if positions is None else np.asarray(positions, dtype=np.int64)
        s = store.meta.chip_size
        self._shape = (s, s)

    def __len__(self) -> int:
        return len(self.positions)

    def get_batch(self, items: Sequence[int]) -> dict:
        """A collated batch for dataset indices `items`, read from Zarr in one call per modality."""
        pos = self.positions[np.asarray(items, dtype=np.int64)]
        batch: dict = {}
        for mod, chans in self.channels.items():
            if self.store.has_modality(mod):
                x, mask = to_model_channels(self.store.read(mod, pos), mod, self.store.channels(mod), chans)
            else:
                x = np.zeros((len(pos), len(chans)) + self._shape, dtype=np.float32)
                mask = np.zeros((len(pos), len(chans)), dtype=bool)
            batch[mod] = torch.from_numpy(x)
            batch[f"{mod}_mask"] = torch.from_numpy(mask)
        batch["chip_id"] = self.store.index["chip_id"].to_numpy()[pos].tolist()
        batch["position"] = torch.from_numpy(pos)
        return batch

    def __getitem__(self, i: int) -> dict:
        b = self.get_batch([i])
        return {k: (v[0] if not isinstance(v, list) else v[0]) for k, v in b.items()}

    def __getitems__(self, items: Sequence[int]) -> list[dict]:
        # DataLoader's batched fetch: one Zarr read per modality instead of one per chip.
        b = self.get_batch(items)
        return [{k: v[i] for k, v in b.items()} for i in range(len(items))]
