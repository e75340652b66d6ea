"""Shared fixtures: tiny hand-made chip stores in tmp_path, and the path to the real samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box
from streamlit.runtime.media_file_manager import MediaFileManager

from data.samples import shared_data_dir
from data.store import ChipStore, ChipStoreWriter, StoreMeta

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()


@pytest.fixture
def deferred(monkeypatch) -> dict:
    """file_id -> the callable a deferred st.download_button registered (what a click on it would run)."""
    found: dict = {}
    original = MediaFileManager.add_deferred

    def record(self, data_callable, *args, **kwargs):
        file_id = original(self, data_callable, *args, **kwargs)
        found[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    return found


def make_meta(aoi: str = "tiny", chip_size: int = 8, channels: dict | None = None) -> StoreMeta:
    """Metadata of a small test store."""
    return StoreMeta(
        aoi=aoi,
        title=f"{aoi} (test)",
        simulated=True,
        chip_size=chip_size,
        pixel_size_m=10.0,
        crs="EPSG:32633",
        channels=channels or {"s2rgb": ["B4", "B3", "B2"], "s1amp": ["VV", "VH"]},
        source="tests",
    )


def make_batch(meta: StoreMeta, start: int, n: int, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Deterministic arrays and index rows for chips start..start+n on a 1-row-per-10-chips grid."""
    rng = np.random.default_rng(seed + start)
    s = meta.chip_size
    arrays = {m: rng.normal(size=(n, len(c), s, s)).astype(np.float32) for m, c in meta.channels.items()}
    idx = np.arange(start, start + n)
    rows = pd.DataFrame(
        {
            "chip_id": [f"{meta.aoi}-{i:05d}" for i in idx],
            "row": idx // 10,
            "col": idx % 10,
            "geometry": [box(15 + (i % 10) * 0.01, 47 + (i // 10) * 0.01, 15.01 + (i % 10) * 0.01, 47.01 + (i // 10) * 0.01) for i in idx],
            "water": rng.uniform(size=n),
        }
    )
    return arrays, rows


@pytest.fixture
def tiny_store(tmp_path) -> ChipStore:
    """A 50-chip store with s2rgb and s1amp; chip 3 lacks s1amp, chip 4 lacks channel VH."""
    meta = make_meta()
    with ChipStoreWriter(tmp_path / "tiny", meta, shard_chips=16) as w:
        for start in range(0, 50, 20):
            arrays, rows = make_batch(meta, start, min(20, 50 - start))
            if start == 0:
                arrays["s1amp"][3] = np.nan
                arrays["s1amp"][4, 1] = np.nan
            w.append(arrays, rows)
    return ChipStore.open(tmp_path / "tiny")
