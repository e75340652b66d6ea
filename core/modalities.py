"""The modality registry: every sensor the system knows, its channels, units, ranges and rendering.

This module is a leaf (it imports nothing from the project) so that `data`, `training`, `core` and
the app can all ask it; modality names and channel semantics are never hard-coded elsewhere.

Channel lists are configuration: a store or a model config may carry any list of channel names for
a modality (for example seasonal `VV_winter`, `VV_summer`, ...). Statistics and rendering look a
channel up by its *base name*, the part before the first underscore for SAR (`VV_winter` -> `VV`),
so new seasonal or baseline variants need no code.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

LABEL_TASKS: tuple[str, ...] = ("vegetation", "builtup", "cropland", "water")
"""Chip-level label fractions in [0, 1] (NaN where unknown), the downstream tasks of the paper."""

LABEL_DESCRIPTIONS: dict[str, str] = {
    "vegetation": "fraction of the chip under trees, shrubs or grassland",
    "builtup": "fraction of the chip that is built-up surface",
    "cropland": "fraction of the chip that is cropland",
    "water": "fraction of the chip that is permanent water",
}


@dataclass(frozen=True)
class ChannelStats:
    """Normalisation statistics of one channel kind, in the modality's physical units."""

    mean: float
    std: float


@dataclass(frozen=True)
class Modality:
    """One sensor modality: its default channels, units, valid range and how to show it."""

    key: str
    title: str
    channels: tuple[str, ...]
    units: str
    valid_range: tuple[float, float]
    stats: dict[str, ChannelStats] = field(hash=False)
    description: str = ""

    def base_channel(self, channel: str) -> str:
        """The statistics key of a channel name (`VV_winter` -> `VV`, `VV_36d` -> `coh`)."""
        if self.key == "coh":
            return "coh"
        base = channel.split("_", 1)[0]
        if base not in self.stats:
            raise KeyError(
                f"unknown channel {channel!r} for modality {self.key!r}; known base channels: "
                f"{sorted(self.stats)} (optionally with a suffix such as '_summer')"
            )
        return base

    def channel_stats(self, channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std arrays (float32) for a channel list."""
        st = [self.stats[self.base_channel(c)] for c in channels]
        return (
            np.array([s.mean for s in st], dtype=np.float32),
            np.array([s.std for s in st], dtype=np.float32),
        )

    def normalise(self, x: np.ndarray, channels: Sequence[str] | None = None) -> np.ndarray:
        """Standardise `[..., C, H, W]` values per channel; NaN stays NaN."""
        channels = tuple(channels or self.channels)
        if x.shape[-3] != len(channels):
            raise ValueError(
                f"{self.key}: array has {x.shape[-3]} channels but {len(channels)} channel names were given"
            )
        mean, std = self.channel_stats(channels)
        return ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32, copy=False)

    def validate_channels(self, channels: Sequence[str]) -> None:
        """Raise a clear error if a channel name is not understood by this modality."""
        if len(channels) == 0:
            raise ValueError(f"{self.key}: a channel list cannot be empty")
        if len(set(channels)) != len(channels):
            raise ValueError(f"{self.key}: duplicate channel names in {list(channels)}")
        for c in channels:
            self.base_channel(c)

    def to_rgb(self, x: np.ndarray, channels: Sequence[str] | None = None) -> np.ndarray:
        """Render one chip `[C, H, W]` in physical units to an RGB thumbnail `[H, W, 3]` uint8.

        Optical is true colour with a reflectance stretch; SAR is the usual false colour (R=VV, G=VH,
        B=VV-VH in dB); coherence maps its first/last baselines to R/G and their mean to B. NaN
        pixels (clouds, nodata) are drawn mid-grey so missing data is visible, not black.
        """
        channels = list(channels or self.channels)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] != len(channels):
            raise ValueError(f"{self.key}: expected [C={len(channels)}, H, W], got {x.shape}")
        bases = [self.base_channel(c) for c in channels]

        def first(base: str) -> np.ndarray | None:
            return x[bases.index(base)] if base in bases else None

        if self.key == "s2rgb":
            planes = [first(b) for b in ("B4", "B3", "B2")]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN pixel (cloud mask) stays NaN
                fill = np.nanmean([p for p in planes if p is not None], axis=0)
            rgb = np.stack([p if p is not None else fill for p in planes], axis=-1)
            rgb = np.clip(rgb / 0.3, 0, 1) ** (1 / 1.6)
        elif self.key == "s1amp":
            vv, vh = first("VV"), first("VH")
            vv = vv if vv is not None else vh + 7.0
            vh = vh if vh is not None else vv - 7.0
            r = (vv + 25.0) / 25.0
            g = (vh + 32.0) / 27.0
            b = (vv - vh) / 15.0
            rgb = np.clip(np.stack([r, g, b], axis=-1), 0, 1)
        else:
            lo, hi = x[0], x[-1]
            rgb = np.clip(np.stack([lo, hi, x.mean(axis=0)], axis=-1), 0, 1)
        out = np.nan_to_num(rgb * 255.0, nan=128.0)
        return out.astype(np.uint8)


MODALITIES: dict[str, Modality] = {
    "s2rgb": Modality(
        key="s2rgb",
        title="Sentinel-2 RGB",
        channels=("B4", "B3", "B2"),
        units="reflectance (0-1)",
        valid_range=(0.0, 1.5),
        stats={
            "B4": ChannelStats(0.10, 0.08),
            "B3": ChannelStats(0.10, 0.07),
            "B2": ChannelStats(0.09, 0.07),
        },
        description="optical true colour; cloud and haze make chips partly or wholly missing",
    ),
    "s1amp": Modality(
        key="s1amp",
        title="Sentinel-1 SAR amplitude",
        channels=("VV", "VH"),
        units="backscatter (dB)",
        valid_range=(-50.0, 25.0),
        stats={"VV": ChannelStats(-11.0, 5.0), "VH": ChannelStats(-18.0, 5.0)},
        description="C-band backscatter; speckled; water dark, built-up bright",
    ),
    "coh": Modality(
        key="coh",
        title="Sentinel-1 InSAR coherence",
        channels=("VV_12d", "VV_36d"),
        units="coherence (0-1)",
        valid_range=(0.0, 1.0),
        stats={"coh": ChannelStats(0.35, 0.22)},
        description="VV interferometric coherence per temporal baseline; built-up high, water and vegetation low",
    ),
}

MODALITY_KEYS: tuple[str, ...] = tuple(MODALITIES)


def get_modality(key: str) -> Modality:
    """Look a modality up by key, with an error that lists the known keys."""
    try:
        return MODALITIES[key]
    except KeyError:
        raise KeyError(f"unknown modality {key!r}; known modalities: {list(MODALITY_KEYS)}") from None
