"""Chip thumbnails: one row per modality (S2 true colour, SAR false colour, coherence), captions with scores."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from data.modalities import MODALITY_KEYS, get_modality
from ui.render import chip_to_rgb
from data.store import ChipStore

_MISSING_GREY = 128


def missing_tile(size: int) -> np.ndarray:
    """A grey tile with a dark diagonal cross: the modality is missing for this chip."""
    tile = np.full((size, size, 3), 225, dtype=np.uint8)
    i = np.arange(size)
    tile[i, i] = tile[i, size - 1 - i] = _MISSING_GREY
    return tile


def thumbnails(store: ChipStore, positions: Sequence[int], modality: str) -> list[np.ndarray]:
    """RGB uint8 thumbnails [H, W, 3] of chips of one modality; a crossed grey tile where it is missing."""
    size = store.meta.chip_size
    positions = [int(p) for p in positions]
    if not positions:
        return []
    if not store.has_modality(modality):
        return [missing_tile(size) for _ in positions]
    mod = get_modality(modality)
    channels = store.channels(modality)
    block = store.read(modality, np.asarray(positions))  # [n, C, H, W], one batched Zarr read
    present = store.available(modality)[positions]
    return [chip_to_rgb(mod, chip, channels) if ok else missing_tile(size) for chip, ok in zip(block, present)]


def show_gallery(
    results: pd.DataFrame,
    stores: dict[str, ChipStore],
    modalities: Sequence[str] = MODALITY_KEYS,
    *,
    width: int = 104,
    caption_column: str = "score",
) -> None:
    """Draw results (columns aoi, chip_id, position, rank, score) as one thumbnail row per modality."""
    if results.empty:
        st.info("No results to show.")
        return
    for modality in modalities:
        images: list[np.ndarray] = []
        captions: list[str] = []
        for aoi, part in results.groupby("aoi", sort=False):
            images += thumbnails(stores[str(aoi)], part["position"].to_numpy(), modality)
            captions += [_caption(r, caption_column) for r in part.itertuples(index=False)]
        # Restore rank order across AOIs (groupby gathered them per AOI).
        order = np.argsort(np.concatenate([g["rank"].to_numpy() for _, g in results.groupby("aoi", sort=False)]), kind="stable")
        st.caption(f"**{get_modality(modality).title}**")
        st.image([images[i] for i in order], caption=[captions[i] for i in order], width=width, clamp=True)


def _caption(row: object, caption_column: str) -> str:
    value = getattr(row, caption_column, None)
    rank = int(getattr(row, "rank")) if hasattr(row, "rank") else None
    head = "query" if rank == 0 else (f"#{rank}" if rank is not None else "")
    score = f" · {value:.3f}" if isinstance(value, (int, float, np.floating)) and np.isfinite(value) else ""
    return f"{head}{score}\n{getattr(row, 'chip_id')}".strip()
