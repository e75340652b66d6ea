"""Hand-crafted per-channel statistics of each chip: the non-learned baseline of the probes.

For every stored modality and channel, over the chip's finite pixels: mean, std, and the 10th, 50th
and 90th percentiles (numpy's default linear interpolation), plus one presence indicator column
(1 = the channel has at least one finite pixel). Statistics of a missing channel are filled so the
matrix has no NaN: with `standardise=True` (default) each statistic column is z-scored over the chips
where the channel is present and a missing value becomes 0 (the column mean); with
`standardise=False` the raw statistics are returned and a missing value is 0. Presence columns stay
0/1. The store is read in batches (`ChipStore.read`), and the statistics are vectorised per batch
(one sort along the pixel axis gives all quantiles, much faster than `np.nanquantile`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from data.store import ChipStore

STATISTICS: tuple[str, ...] = ("mean", "std", "q10", "q50", "q90")
QUANTILES: tuple[float, ...] = (0.10, 0.50, 0.90)


class FeatureError(ValueError):
    """Bad request for hand-crafted features (unknown modality/channel, bad positions)."""


def _resolve_channels(store: ChipStore, channels: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """The modality -> channel list to compute (default: everything the store holds), validated against the store."""
    if channels is None:
        return {m: store.channels(m) for m in store.modalities}
    out: dict[str, list[str]] = {}
    for mod, chans in channels.items():
        if not store.has_modality(mod):
            raise FeatureError(f"store {store.meta.aoi!r} has no {mod!r} data (it holds {store.modalities})")
        stored = store.channels(mod)
        chans = list(stored if chans is None else chans)
        unknown = [c for c in chans if c not in stored]
        if unknown:
            raise FeatureError(f"store {store.meta.aoi!r} has no {mod} channels {unknown} (it holds {stored})")
        if not chans:
            raise FeatureError(f"no channels requested for {mod!r}; omit the modality or name some of {stored}")
        out[mod] = chans
    if not out:
        raise FeatureError("no modalities requested; pass None for every stored modality")
    return out


def feature_names(store: ChipStore, channels: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Column names of `handcrafted_features`, e.g. `s2rgb.B4.mean`, ..., `s2rgb.B4.present`."""
    names = []
    for mod, chans in _resolve_channels(store, channels).items():
        for c in chans:
            names += [f"{mod}.{c}.{s}" for s in STATISTICS] + [f"{mod}.{c}.present"]
    return names


def chip_statistics(x: np.ndarray) -> np.ndarray:
    """Statistics of chips `[B, C, H, W]` over finite pixels -> `[B, C, 5]` (mean, std, q10, q50, q90); NaN if none."""
    b, c = x.shape[:2]
    v = np.asarray(x, dtype=np.float32).reshape(b, c, -1)     # [B,C,P]; sorting float32 is ~5x faster than float64
    fin = np.isfinite(v)
    k = fin.sum(axis=-1)                                       # [B,C] finite pixels
    kk = np.maximum(k, 1)
    mean = np.where(fin, v, 0.0).sum(axis=-1, dtype=np.float64) / kk   # [B,C], float64 accumulation
    dev = np.where(fin, v - mean[..., None].astype(np.float32), 0.0)
    var = np.square(dev).sum(axis=-1, dtype=np.float64) / kk
    # Non-finite pixels sort to the end as +inf, so the first k sorted values are the finite ones.
    srt = np.sort(np.where(fin, v, np.inf), axis=-1)           # [B,C,P]
    qs = []
    for q in QUANTILES:
        pos = (kk - 1) * q                                     # numpy 'linear' method: index (k-1)q
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, kk - 1)
        frac = pos - lo
        vlo = np.take_along_axis(srt, lo[..., None], axis=-1)[..., 0].astype(np.float64)
        vhi = np.take_along_axis(srt, hi[..., None], axis=-1)[..., 0].astype(np.float64)
        with np.errstate(invalid="ignore"):                    # inf - inf on all-missing channels; set NaN below
            qs.append(vlo + (vhi - vlo) * frac)
    out = np.stack([mean, np.sqrt(var), *qs], axis=-1)         # [B,C,5]
    out[k == 0] = np.nan
    return out


def handcrafted_features(store: ChipStore, positions: np.ndarray | Sequence[int] | None = None,
                         channels: Mapping[str, Sequence[str]] | None = None, *, standardise: bool = True,
                         batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Per-chip channel statistics and presence flags, float32 `[N, F]`, NaN-free (see `feature_names`)."""
    chans = _resolve_channels(store, channels)
    n_store = len(store)
    if positions is None:
        pos = np.arange(n_store, dtype=np.int64)
    else:
        pos = np.asarray(positions)
        if pos.ndim != 1 or (pos.size and not np.issubdtype(pos.dtype, np.integer)):
            raise FeatureError(f"positions must be a 1-D array of integer store positions, got {pos.dtype} {pos.shape}")
        pos = pos.astype(np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= n_store):
            raise FeatureError(f"positions out of range for store {store.meta.aoi!r} of {n_store} chips")
    if batch_size < 1:
        raise FeatureError(f"batch_size must be >= 1, got {batch_size}")
    n = len(pos)
    n_stat = len(STATISTICS)
    blocks = []
    bar = tqdm(total=n * len(chans), desc=f"features {store.meta.aoi}", unit="chip", disable=not progress, leave=False)
    for mod, cs in chans.items():
        idx = [store.channels(mod).index(c) for c in cs]
        stats = np.full((n, len(cs), n_stat), np.nan)
        for a in range(0, n, batch_size):
            x = store.read(mod, pos[a:a + batch_size])[:, idx]     # [b,C,H,W]
            stats[a:a + batch_size] = chip_statistics(x)
            bar.update(len(x))
        present = np.isfinite(stats[..., 0])                       # [n,C]
        if standardise and n:
            with np.errstate(all="ignore"):
                mu = np.nanmean(stats, axis=0)                     # [C,5]
                sd = np.nanstd(stats, axis=0)
            mu = np.nan_to_num(mu)
            sd = np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0)  # constant columns stay 0 after centring
            stats = (stats - mu) / sd
        stats = np.where(present[..., None], stats, 0.0)
        blocks.append(np.concatenate([stats, present[..., None].astype(np.float64)], axis=-1).reshape(n, -1))
    bar.close()
    return np.concatenate(blocks, axis=1).astype(np.float32)
