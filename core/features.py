"""Hand-crafted per-channel statistics of each chip: the non-learned baseline of the probes.

For every stored modality and channel, over the chip's finite pixels: mean, std, and the 10th, 50th
and 90th percentiles (numpy's default linear interpolation), plus one presence indicator column
(1 = the channel has at least one finite pixel). Statistics of a missing channel are filled so the
matrix has no NaN: with `standardise=True` (default) each statistic column is z-scored over the chips
where the channel is present and a missing value becomes 0 (the column mean); with
`standardise=False` the raw statistics are returned and a missing value is 0. Presence columns stay
0/1. The store is read in batches (`ChipStore.read`), and the statistics are vectorised per batch
(one sort along the pixel axis gives all quantiles, much faster than `np.nanquantile`).

More cheap baselines for the evaluation (`baseline_features` computes them all in one read of the store;
each is NaN-free, per channel a block of features plus the presence flag, z-scored like the statistics):

- `hist`: per-channel histograms, `HIST_BINS` bins, the fraction of the chip's finite pixels per bin; the
  bins split each channel's registry valid range (`data.modalities`) evenly, values outside go to the end
  bins. `hist-q`: the same with equal-mass bins, the pixel quantiles of that channel over a spread sample
  of the AOI's chips (no labels used). Neither dominates: fixed bins keep the tails (bright built-up,
  dark water) apart, equal-mass bins resolve the bulk (vegetation, cropland), so both are baselines.
- `texture`: per channel, statistics (mean, std, q10, q50, q90) of the local gradient magnitude at two
  scales (`TEXTURE_SCALES`: native pixels, and after `s` x `s` mean pooling), plus, for every pair of
  channels of a modality (B4-B3, VV-VH, VV_12d-VV_36d ...), the same statistics of the per-pixel
  difference (a joint, within-modality feature that per-channel statistics cannot express).
- `combined`: stats, hist, hist-q and texture side by side.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from data.cli import KnownError
from data.modalities import get_modality
from data.store import ChipStore

STATISTICS: tuple[str, ...] = ("mean", "std", "q10", "q50", "q90")
QUANTILES: tuple[float, ...] = (0.10, 0.50, 0.90)
HIST_BINS = 16
TEXTURE_SCALES: tuple[int, ...] = (1, 4)
BASELINES: tuple[str, ...] = ("stats", "hist", "hist-q", "texture", "combined")
_PARTS: tuple[str, ...] = ("stats", "hist", "hist-q", "texture")
EDGE_SAMPLE_CHIPS = 256


class FeatureError(KnownError, ValueError):
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


# ----------------------------------------------------------------------------------------- more baselines
def chip_histograms(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histograms of chips `[B, C, H, W]` -> `[B, C, bins]`: fraction of the finite pixels per bin; NaN if none.

    edges: `[C, bins + 1]` increasing bin edges per channel (or `[bins + 1]` for all). Values below the first
    edge count in the first bin, values above the last in the last bin.
    """
    b, c = x.shape[:2]
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim == 1:
        edges = np.broadcast_to(edges, (c, len(edges)))
    if edges.shape[0] != c or edges.shape[1] < 2:
        raise FeatureError(f"edges must be [C={c}, bins+1], got {edges.shape}")
    bins = edges.shape[1] - 1
    v = np.asarray(x, dtype=np.float32).reshape(b, c, -1)
    fin = np.isfinite(v)
    idx = np.empty(v.shape, dtype=np.int64)
    for ch in range(c):                                       # inner edges only: below/above go to the end bins
        idx[:, ch] = np.searchsorted(edges[ch, 1:-1], v[:, ch], side="right")
    idx = np.where(fin, idx, bins)                            # missing pixels go to an overflow bin, dropped below
    flat = (np.arange(b * c, dtype=np.int64).reshape(b, c, 1) * (bins + 1) + idx).ravel()
    counts = np.bincount(flat, minlength=b * c * (bins + 1)).reshape(b, c, bins + 1)[..., :bins].astype(np.float64)
    k = fin.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = counts / k[..., None]
    out[k == 0] = np.nan
    return out


def _pool(x: np.ndarray, s: int) -> np.ndarray:
    """s x s mean pooling of `[B, C, H, W]` (NaN where any pixel of the cell is missing; the remainder is cut)."""
    if s == 1:
        return x
    b, c, h, w = x.shape
    h2, w2 = h // s, w // s
    return x[:, :, :h2 * s, :w2 * s].reshape(b, c, h2, s, w2, s).mean(axis=(3, 5))


def gradient_magnitude(x: np.ndarray, scale: int = 1) -> np.ndarray:
    """Local gradient magnitude of `[B, C, H, W]` after `scale` x `scale` pooling -> `[B, C, H'-1, W'-1]` (NaN-propagating)."""
    z = _pool(np.asarray(x, dtype=np.float32), scale)
    gx = z[..., :, 1:] - z[..., :, :-1]
    gy = z[..., 1:, :] - z[..., :-1, :]
    return np.sqrt(np.square(gx[..., :-1, :]) + np.square(gy[..., :, :-1]))


def channel_pairs(channels: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs (i < j) of a modality's channels whose per-pixel differences are texture features."""
    return [(i, j) for i in range(len(channels)) for j in range(i + 1, len(channels))]


def chip_texture(x: np.ndarray) -> np.ndarray:
    """Texture features of chips `[B, C, H, W]` -> `[B, C * len(TEXTURE_SCALES) + n_pairs, 5]` (NaN where missing)."""
    parts = [chip_statistics(gradient_magnitude(x, s)) for s in TEXTURE_SCALES]     # each [B, C, 5]
    pairs = channel_pairs(range(x.shape[1]))
    if pairs:
        diff = np.stack([x[:, i] - x[:, j] for i, j in pairs], axis=1)              # [B, P, H, W]
        parts.append(chip_statistics(diff))
    return np.concatenate(parts, axis=1)


def _texture_names(mod: str, chans: Sequence[str]) -> list[str]:
    names = [f"{mod}.{c}.grad{s}" for s in TEXTURE_SCALES for c in chans]
    names += [f"{mod}.{chans[i]}-{chans[j]}" for i, j in channel_pairs(chans)]
    return names


def _finish(values: np.ndarray, present_cols: np.ndarray, *, standardise: bool) -> np.ndarray:
    """values [n, G, S] (NaN where missing), present_cols [n, G] -> [n, G * (S + 1)] NaN-free with presence flags."""
    if standardise and len(values):
        with np.errstate(all="ignore"):
            mu = np.nanmean(values, axis=0)
            sd = np.nanstd(values, axis=0)
        mu = np.nan_to_num(mu)
        sd = np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0)
        values = (values - mu) / sd
    ok = present_cols[..., None] & np.isfinite(values)
    values = np.where(ok, values, 0.0)
    return np.concatenate([values, present_cols[..., None].astype(np.float64)], axis=-1).reshape(len(values), -1)


def histogram_edges(store: ChipStore, mod: str, channels: Sequence[str], *, edges: str = "data",
                    bins: int = HIST_BINS, sample_chips: int = EDGE_SAMPLE_CHIPS) -> np.ndarray:
    """Bin edges `[C, bins + 1]` of one modality's channels: registry valid range, or equal-mass AOI quantiles."""
    c = len(channels)
    lo, hi = get_modality(mod).valid_range
    rng_edges = np.tile(np.linspace(lo, hi, bins + 1), (c, 1))
    if edges == "range":
        return rng_edges
    if edges != "data":
        raise FeatureError(f"edges must be 'range' or 'data', got {edges!r}")
    pick = np.unique(np.linspace(0, len(store) - 1, min(sample_chips, len(store))).round().astype(np.int64))
    idx = [store.channels(mod).index(ch) for ch in channels]
    x = store.read(mod, pick)[:, idx]                                  # [s, C, H, W]
    v = np.moveaxis(x, 1, 0).reshape(c, -1)
    out = rng_edges.copy()
    for ch in range(c):
        f = v[ch][np.isfinite(v[ch])]
        if f.size:
            e = np.quantile(f[:: max(1, f.size // 400_000)], np.linspace(0, 1, bins + 1))
            e = np.maximum.accumulate(e)
            if e[-1] > e[0]:
                out[ch] = e
    return out


def baseline_names(store: ChipStore, kind: str, channels: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Column names of one `baseline_features` block (`stats`, `hist`, `hist-q`, `texture` or `combined`)."""
    chans = _resolve_channels(store, channels)
    if kind == "stats":
        return feature_names(store, channels)
    if kind in ("hist", "hist-q"):
        return [f"{m}.{c}.{x}" for m, cs in chans.items() for c in cs
                for x in [f"bin{b:02d}" for b in range(HIST_BINS)] + ["present"]]
    if kind == "texture":
        return [f"{g}.{x}" for m, cs in chans.items() for g in _texture_names(m, cs) for x in (*STATISTICS, "present")]
    if kind == "combined":
        return sum((baseline_names(store, k, channels) for k in _PARTS), [])
    raise FeatureError(f"unknown baseline {kind!r}; choose from {list(BASELINES)}")


def baseline_features(store: ChipStore, kinds: Sequence[str] = BASELINES, positions: np.ndarray | Sequence[int] | None = None,
                      channels: Mapping[str, Sequence[str]] | None = None, *, standardise: bool = True, batch_size: int = 256,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """The cheap baselines of a store in one read: kind -> float32 `[N, F]`, NaN-free (see `baseline_names`)."""
    bad = [k for k in kinds if k not in BASELINES]
    if bad:
        raise FeatureError(f"unknown baselines {bad}; choose from {list(BASELINES)}")
    chans = _resolve_channels(store, channels)
    pos = np.arange(len(store), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= len(store)):
        raise FeatureError(f"positions out of range for store {store.meta.aoi!r} of {len(store)} chips")
    n = len(pos)
    need = set(kinds) | (set(_PARTS) if "combined" in kinds else set())
    blocks: dict[str, list[np.ndarray]] = {k: [] for k in _PARTS}
    bar = tqdm(total=n * len(chans), desc=f"baselines {store.meta.aoi}", unit="chip", disable=not progress, leave=False)
    for mod, cs in chans.items():
        idx = [store.channels(mod).index(c) for c in cs]
        n_tex = len(cs) * len(TEXTURE_SCALES) + len(channel_pairs(cs))
        stats = np.full((n, len(cs), len(STATISTICS)), np.nan)
        hist = {h: np.full((n, len(cs), HIST_BINS), np.nan) for h in ("hist", "hist-q") if h in need}
        tex = np.full((n, n_tex, len(STATISTICS)), np.nan)
        e = {h: histogram_edges(store, mod, cs, edges="range" if h == "hist" else "data") for h in hist}
        for a in range(0, n, batch_size):
            x = store.read(mod, pos[a:a + batch_size])[:, idx]
            if "stats" in need:
                stats[a:a + len(x)] = chip_statistics(x)
            for h in hist:
                hist[h][a:a + len(x)] = chip_histograms(x, e[h])
            if "texture" in need:
                tex[a:a + len(x)] = chip_texture(x)
            bar.update(len(x))
        if "stats" in need:
            blocks["stats"].append(_finish(stats, np.isfinite(stats[..., 0]), standardise=standardise))
        for h, v in hist.items():
            blocks[h].append(_finish(v, np.isfinite(v[..., 0]), standardise=standardise))
        if "texture" in need:
            tex_present = np.isfinite(tex).any(axis=-1)
            blocks["texture"].append(_finish(tex, tex_present, standardise=standardise))
    bar.close()
    out = {k: np.concatenate(v, axis=1).astype(np.float32) for k, v in blocks.items() if v}
    if "combined" in kinds:
        out["combined"] = np.concatenate([out[k] for k in _PARTS], axis=1)
    return {k: out[k] for k in kinds}
