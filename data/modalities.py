"""The modality registry: every sensor the system knows, its channels, units, ranges and normalisation.

This module is a leaf (it imports nothing from the project) so that `data`, `training`, `core` and
the app can all ask it (it is the lowest layer; rendering lives in `ui.render`); modality names and channel semantics are never hard-coded elsewhere.

Channel lists are configuration: a store or a model config may carry any list of channel names for
a modality (for example seasonal `VV_winter`, `VV_summer`, ...). Statistics look a
channel up by its *base name*, the part before the first underscore for SAR (`VV_winter` -> `VV`),
so new seasonal or baseline variants need no code.
"""

from __future__ import annotations

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
    """One sensor modality: its default channels, units, valid range and statistics."""

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
