"""Real InSAR coherence (PyRate, Mexico City): channels per baseline/season, nodata masked, embedded end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio

from core.embed import embed_aoi
from core.embeddings import load_embeddings
from core.index import ChipIndex
from data.geotiff import IngestError
from data.ingest import main
from data.readers.coherence import find_pairs, ingest_coherence, select_channels
from data.store import ChipStore
from data.workspace import SCENARIO_FULL, Workspace
from tests.conftest import REPO, SHARED_DATA
from ui.render import chip_to_rgb

PYRATE = SHARED_DATA / "pyrate-coherence-sample"
CHECKPOINT = REPO / "checkpoints" / "tiny-sim"
# pairs per baseline in the sample (from the file names; 15 pairs have other baselines)
EXPECTED = {12: 4, 24: 4, 36: 4, 48: 3}


def _pairs_of(store: ChipStore, channel: str) -> list:
    return [PYRATE / f for f in store.meta.extra["ingest"]["channels"][channel]["files"]]


@pytest.fixture(scope="module")
def coh_ws(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("coh") / "ws")
    argv = ["coherence", str(PYRATE), "--aoi", "mexico_city", "--baselines", "12", "24", "36", "48",
            "--workspace", str(ws.root), "--quiet"]
    assert main(argv) == 0
    return ws


def test_channels_by_baseline_median_with_nodata_masked(coh_ws, capsys):
    st = coh_ws.open_store("mexico_city")
    assert st.modalities == ["coh"] and st.channels("coh") == ["VV_12d", "VV_24d", "VV_36d", "VV_48d"]
    assert not st.meta.simulated and st.meta.chip_size == 8 and 140 < st.meta.pixel_size_m < 160
    assert len(st) >= 80 and st.verify(deep=True) == "ok"  # 12 x 7 chips of 8 px on the 100 x 60 px crop
    chans = st.meta.extra["ingest"]["channels"]
    assert {c: len(v["pairs"]) for c, v in chans.items()} == {f"VV_{b}d": n for b, n in EXPECTED.items()}
    assert chans["VV_12d"]["pairs"][0] == "2018-03-07/2018-03-19"
    # every stored pixel is the median of that baseline's pairs, zeros (not computed) left out
    for ch in st.channels("coh"):
        stack = []
        for f in _pairs_of(st, ch):
            with rasterio.open(f) as src:
                a = src.read(1).astype(np.float32)
                assert src.nodata == 0.0
            stack.append(np.where(a == 0, np.nan, a))
        stack = np.stack(stack)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            want = np.nanmedian(stack, axis=0)
        j = st.channels("coh").index(ch)
        for p in range(0, len(st), 7):
            row = st.index.iloc[p]
            got = st.read("coh", p)[j]
            ref = want[row.row * 8 : row.row * 8 + 8, row.col * 8 : row.col * 8 + 8]
            np.testing.assert_allclose(got, ref, rtol=1e-6, equal_nan=True)
    x = st.read("coh", slice(None))
    assert np.nanmin(x) > 0.0 and np.nanmax(x) <= 1.0  # never a zero coherence from nodata
    # the sample has pixels that are 0 in some pairs only: they keep the median of the others
    with rasterio.open(_pairs_of(st, "VV_12d")[0]) as src:
        zero_in_first = src.read(1) == 0
    assert zero_in_first.any()
    assert st.meta.extra["ingest"]["warnings"] == [
        "coh: 15 pair(s) with other baselines dropped (not in --baselines [12, 24, 36, 48]): "
        "60d x4, 72d x4, 84d x2, 96d x3, 108d x1, 132d x1"
    ]
    assert (st.index["acquired"] == "2018-01-06/2018-06-23").all()


def test_by_season_and_skipped_files(tmp_path):
    files = sorted(PYRATE.glob("cropA_*.tif")) + [PYRATE / "coherence_stats" / "coh_mean.tif"]
    res = ingest_coherence(files, "mexico_season", tmp_path / "s", baselines=[12, 24], by_season=True, progress=False)
    st = ChipStore.open(tmp_path / "s")
    # 12-day pairs are all in spring; 24-day ones: 2018-01-06/01-30 in winter, three in spring
    assert st.channels("coh") == ["VV_12d_spring", "VV_24d_winter", "VV_24d_spring"]
    assert st.meta.extra["ingest"]["channels"]["VV_24d_winter"]["pairs"] == ["2018-01-06/2018-01-30"]
    assert any(w == "coh: 1 file(s) without two acquisition dates skipped: coh_mean.tif" for w in res.warnings)


def test_pair_dates_and_channel_selection_errors():
    pairs, skipped = find_pairs([PYRATE])
    assert len(pairs) == 30 and skipped == []
    assert sorted({p.baseline_days for p in pairs})[:4] == [12, 24, 36, 48]
    groups, unused = select_channels(pairs, [12, 36], tolerance=0)
    assert list(groups) == ["VV_12d", "VV_36d"] and len(unused) == 22
    with pytest.raises(IngestError, match=r"no pair has a temporal baseline in \[6\] days"):
        select_channels(pairs, [6])
    with pytest.raises(IngestError, match="none of the 1 files has two acquisition dates"):
        find_pairs([PYRATE / "coherence_stats" / "coh_mean.tif"])


def test_coherence_store_embeds_searches_and_renders(coh_ws):
    """The shipped checkpoint embeds the coherence-only store (VV_12d and VV_36d match its channels)."""
    embed_aoi(coh_ws, "mexico_city", CHECKPOINT, SCENARIO_FULL, progress=False)
    emb = load_embeddings(coh_ws, "mexico_city", "tiny-sim", SCENARIO_FULL)
    st = coh_ws.open_store("mexico_city")
    assert len(emb) == len(st) and emb.present["coh"].all() and emb.present["fused"].all()
    assert not emb.present["s2rgb"].any() and not emb.present["s1amp"].any()
    v = emb.vectors["fused"]
    assert np.isfinite(v).all() and np.linalg.matrix_rank(v) > 5  # chips differ
    index = ChipIndex.build(v, emb.chip_ids)
    ids, scores = index.search_ids(emb.chip_ids[0], 5)
    assert len(ids[0]) == 5 and emb.chip_ids[0] not in list(ids[0])
    # the thumbnail: R = 12-day, G = 48-day, B = mean coherence; a NaN baseline falls back to the mean
    x = st.read("coh", 0)
    rgb = chip_to_rgb("coh", x, st.channels("coh"))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    ok = np.isfinite(x).all(axis=0)
    np.testing.assert_allclose(rgb[..., 0][ok], np.clip(x[0][ok], 0, 1) * 255, atol=1)
    np.testing.assert_allclose(rgb[..., 1][ok], np.clip(x[-1][ok], 0, 1) * 255, atol=1)
    gap = x.copy()
    gap[0, 0, 0] = np.nan
    px = chip_to_rgb("coh", gap, st.channels("coh"))[0, 0]
    assert px[0] == px[2] != 128  # the mean of the others, not mid-grey
