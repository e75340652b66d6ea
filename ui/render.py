"""RGB rendering of chips for thumbnails and galleries (display only; the registry owns semantics)."""

from __future__ import annotations

import warnings

from typing import Sequence

import numpy as np

from data.modalities import Modality, get_modality


def chip_to_rgb(modality: Modality | str, x: np.ndarray, channels: Sequence[str] | None = None) -> np.ndarray:
    """Render one chip of a modality `[C, H, W]` in physical units to an RGB thumbnail `[H, W, 3]` uint8.

    Optical is true colour with a reflectance stretch; SAR is the usual false colour (R=VV, G=VH,
    B=VV-VH in dB); coherence maps its first/last baselines to R/G and their mean to B. NaN
    pixels (clouds, nodata) are drawn mid-grey so missing data is visible, not black.
    """
    mod = get_modality(modality) if isinstance(modality, str) else modality
    channels = list(channels or mod.channels)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != len(channels):
        raise ValueError(f"{mod.key}: expected [C={len(channels)}, H, W], got {x.shape}")
    bases = [mod.base_channel(c) for c in channels]

    def first(base: str) -> np.ndarray | None:
        return x[bases.index(base)] if base in bases else None

    if mod.key == "s2rgb":
        planes = [first(b) for b in ("B4", "B3", "B2")]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN pixel (cloud mask) stays NaN
            fill = np.nanmean([p for p in planes if p is not None], axis=0)
        rgb = np.stack([p if p is not None else fill for p in planes], axis=-1)
        rgb = np.clip(rgb / 0.3, 0, 1) ** (1 / 1.6)
    elif mod.key == "s1amp":
        vv, vh = first("VV"), first("VH")
        vv = vv if vv is not None else vh + 7.0
        vh = vh if vh is not None else vv - 7.0
        r = (vv + 25.0) / 25.0
        g = (vh + 32.0) / 27.0
        b = (vv - vh) / 15.0
        rgb = np.clip(np.stack([r, g, b], axis=-1), 0, 1)
    else:
        # R = first (shortest) baseline, G = last (longest), B = mean; a baseline missing at a pixel (nodata
        # masked to NaN) falls back to the mean of those present, so one gap does not grey out the pixel.
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=0)
        lo, hi = np.where(np.isfinite(x[0]), x[0], mean), np.where(np.isfinite(x[-1]), x[-1], mean)
        rgb = np.clip(np.stack([lo, hi, mean], axis=-1), 0, 1)
    out = np.nan_to_num(rgb * 255.0, nan=128.0)
    return out.astype(np.uint8)

