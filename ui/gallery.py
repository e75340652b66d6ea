"""Chip thumbnails: one row per modality (S2 true colour, SAR false colour, coherence), captions with scores.

The gallery is one HTML element with the thumbnails inline (small PNG/JPEG data URLs), not one `st.image`
per row: with `st.image` every thumbnail is a media file the browser fetches and a React node it lays
out, which made the gallery the largest cost of a similarity click in the browser (33 images per click;
ten sessions clicking at once on two cores, see benchmarks/bench_browser.py).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from data.modalities import MODALITY_KEYS, get_modality
from data.store import ChipStore
from ui.render import chip_to_rgb

_MISSING_GREY = 128
PNG_MAX_SIDE = 32
"""Thumbnails up to this many pixels a side are PNG (exact pixels, drawn pixelated); larger ones JPEG (smaller)."""

_CSS = """<style>
.eo-gallery { font-size: 12px; line-height: 1.25; }
.eo-gallery .eo-row-title { font-weight: 600; margin: 6px 0 2px 0; }
.eo-gallery .eo-row { display: flex; flex-wrap: wrap; gap: 8px; }
.eo-gallery figure { margin: 0; width: var(--eo-w); }
.eo-gallery img { width: var(--eo-w); height: var(--eo-w); display: block; border-radius: 2px; }
.eo-gallery img.eo-px { image-rendering: pixelated; }
.eo-gallery figcaption { color: rgba(49, 51, 63, 0.7); overflow-wrap: anywhere; margin-top: 2px; }
</style>"""


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


def image_data_url(rgb: np.ndarray) -> str:
    """An RGB uint8 image [H, W, 3] as a data URL: PNG when small (exact pixels), else JPEG (quality 90)."""
    buf = io.BytesIO()
    if max(rgb.shape[:2]) <= PNG_MAX_SIDE:
        Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_html(rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str]]], width: int = 104) -> str:
    """The gallery as one HTML block: for each (title, images, captions) row, the thumbnails with their captions."""
    out = [_CSS, f'<div class="eo-gallery" style="--eo-w:{int(width)}px">']
    for title, images, captions in rows:
        out.append(f'<div class="eo-row-title">{html.escape(title)}</div><div class="eo-row">')
        for image, caption in zip(images, captions):
            cls = ' class="eo-px"' if max(image.shape[:2]) <= PNG_MAX_SIDE else ""
            lines = caption.split("\n")
            alt, text = html.escape(" ".join(lines)), "<br>".join(html.escape(line) for line in lines)
            out.append(f'<figure><img{cls} src="{image_data_url(image)}" alt="{alt}"/><figcaption>{text}</figcaption></figure>')
        out.append("</div>")
    out.append("</div>")
    return "".join(out)


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
    groups = list(results.groupby("aoi", sort=False))
    # Restore rank order across AOIs (groupby gathered them per AOI).
    order = np.argsort(np.concatenate([g["rank"].to_numpy() for _, g in groups]), kind="stable")
    captions: list[str] = []
    for _, part in groups:
        captions += [_caption(r, caption_column) for r in part.itertuples(index=False)]
    rows = []
    for modality in modalities:
        images: list[np.ndarray] = []
        for aoi, part in groups:
            images += thumbnails(stores[str(aoi)], part["position"].to_numpy(), modality)
        rows.append((get_modality(modality).title, [images[i] for i in order], [captions[i] for i in order]))
    st.html(gallery_html(rows, width))


def _caption(row: object, caption_column: str) -> str:
    value = getattr(row, caption_column, None)
    rank = int(getattr(row, "rank")) if hasattr(row, "rank") else None
    head = "query" if rank == 0 else (f"#{rank}" if rank is not None else "")
    score = f" · {value:.3f}" if isinstance(value, (int, float, np.floating)) and np.isfinite(value) else ""
    return f"{head}{score}\n{getattr(row, 'chip_id')}".strip()
