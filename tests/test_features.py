"""Hand-crafted channel statistics: layout, NaN-free output with missing modalities/channels, exact values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from core.features import (BASELINES, HIST_BINS, STATISTICS, TEXTURE_SCALES, FeatureError, baseline_features,
                           baseline_names, chip_histograms, chip_statistics, chip_texture, feature_names,
                           handcrafted_features)

PER_CHANNEL = len(STATISTICS) + 1  # statistics + presence flag


def direct(chip: np.ndarray) -> np.ndarray:
    """Reference statistics of one chip [C, H, W] with plain numpy nan-functions -> [C, 5]."""
    v = chip.reshape(len(chip), -1).astype(np.float64)
    with warnings.catch_warnings():  # all-NaN channels are expected here: NaN statistics
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([np.nanmean(v, 1), np.nanstd(v, 1), *np.nanquantile(v, [0.1, 0.5, 0.9], axis=1)], axis=1)


def test_shape_names_and_no_nan(tiny_store):
    f = handcrafted_features(tiny_store, batch_size=16)
    names = feature_names(tiny_store)
    assert f.dtype == np.float32 and f.shape == (50, 5 * PER_CHANNEL) and len(names) == f.shape[1]
    assert names[:6] == ["s2rgb.B4.mean", "s2rgb.B4.std", "s2rgb.B4.q10", "s2rgb.B4.q50", "s2rgb.B4.q90",
                         "s2rgb.B4.present"]
    assert np.isfinite(f).all()


def test_missing_modality_and_channel_are_flagged_and_filled(tiny_store):
    f = handcrafted_features(tiny_store)
    names = feature_names(tiny_store)
    col = {n: i for i, n in enumerate(names)}
    # chip 3 has no s1amp at all, chip 4 lacks VH only (see conftest)
    assert f[3, col["s1amp.VV.present"]] == 0 and f[3, col["s1amp.VH.present"]] == 0
    assert f[4, col["s1amp.VV.present"]] == 1 and f[4, col["s1amp.VH.present"]] == 0
    assert np.all(f[3, [col[f"s1amp.VV.{s}"] for s in STATISTICS]] == 0)
    # standardised statistic columns: mean 0, std 1 over the chips where the channel is present
    vh = f[:, col["s1amp.VH.mean"]]
    ok = f[:, col["s1amp.VH.present"]] == 1
    assert ok.sum() == 48
    assert vh[ok].mean() == pytest.approx(0, abs=1e-5) and vh[ok].std() == pytest.approx(1, abs=1e-4)


def test_values_equal_direct_numpy_on_one_chip(tiny_store):
    raw = handcrafted_features(tiny_store, positions=[4, 7], standardise=False)
    names = feature_names(tiny_store)
    for row, p in enumerate([4, 7]):
        for mod in tiny_store.modalities:
            ref = direct(tiny_store.read(mod, p))
            for c, ch in enumerate(tiny_store.channels(mod)):
                got = raw[row, [names.index(f"{mod}.{ch}.{s}") for s in STATISTICS]]
                if np.isnan(ref[c]).all():
                    assert np.all(got == 0) and raw[row, names.index(f"{mod}.{ch}.present")] == 0
                else:
                    assert np.allclose(got, ref[c], rtol=1e-5, atol=1e-6), (mod, ch)


def test_chip_statistics_partial_nan_pixels():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=(3, 2, 9, 9)).astype(np.float32)
    x[0, 0, :4] = np.nan          # some pixels missing
    x[1, 1] = np.nan              # a whole channel missing
    x[2, 0, 0, 0] = np.inf        # non-finite counts as missing
    got = chip_statistics(x)
    for b in range(3):
        ref = direct(np.where(np.isfinite(x[b]), x[b], np.nan))
        assert np.allclose(got[b], ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert np.isnan(got[1, 1]).all()


def test_subsets_and_errors(tiny_store):
    f = handcrafted_features(tiny_store, positions=np.arange(10), channels={"s1amp": ["VH"]})
    assert f.shape == (10, PER_CHANNEL)
    assert feature_names(tiny_store, {"s1amp": ["VH"]})[0] == "s1amp.VH.mean"
    with pytest.raises(FeatureError, match="no 'coh' data"):
        handcrafted_features(tiny_store, channels={"coh": ["VV_12d"]})
    with pytest.raises(FeatureError, match=r"no s1amp channels \['HH'\]"):
        handcrafted_features(tiny_store, channels={"s1amp": ["HH"]})
    with pytest.raises(FeatureError, match="out of range"):
        handcrafted_features(tiny_store, positions=[0, 50])


# ----------------------------------------------------------------------------------------- more baselines
def test_histograms_equal_direct_numpy_and_sum_to_one():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 6, 6)).astype(np.float32)
    x[0, 0, :2] = np.nan          # partial NaN
    x[1, 1] = np.nan              # whole channel missing
    x[2, 0, 0, 0] = 9.0           # above the range: last bin
    x[2, 0, 0, 1] = -9.0          # below the range: first bin
    edges = np.stack([np.linspace(-2, 2, 9), np.linspace(-1, 3, 9)])     # [C, 8 bins + 1]
    got = chip_histograms(x, edges)
    assert got.shape == (3, 2, 8)
    for b in range(3):
        for c in range(2):
            v = x[b, c].ravel()
            v = v[np.isfinite(v)]
            if not v.size:
                assert np.isnan(got[b, c]).all()
                continue
            ref = np.histogram(np.clip(v, edges[c, 0], edges[c, -1]), bins=edges[c])[0] / v.size
            np.testing.assert_allclose(got[b, c], ref, atol=1e-12)
            assert got[b, c].sum() == pytest.approx(1.0)


def test_baseline_features_shapes_names_and_missing(tiny_store):
    f = baseline_features(tiny_store, batch_size=16)
    assert set(f) == set(BASELINES)
    for k, v in f.items():
        assert v.dtype == np.float32 and len(v) == 50 and np.isfinite(v).all(), k
        assert len(baseline_names(tiny_store, k)) == v.shape[1], k
    np.testing.assert_allclose(f["stats"], handcrafted_features(tiny_store), atol=1e-6)
    assert f["combined"].shape[1] == sum(f[k].shape[1] for k in ("stats", "hist", "hist-q", "texture"))
    assert f["hist-q"].shape == f["hist"].shape and not np.allclose(f["hist-q"], f["hist"])
    names = baseline_names(tiny_store, "hist")
    assert f["hist"].shape[1] == 5 * (HIST_BINS + 1)
    col = {n: i for i, n in enumerate(names)}
    assert f["hist"][3, col["s1amp.VV.present"]] == 0 and f["hist"][4, col["s1amp.VH.present"]] == 0
    assert f["hist"][4, col["s1amp.VV.present"]] == 1
    tnames = baseline_names(tiny_store, "texture")
    assert "s1amp.VV-VH.mean" in tnames and "s2rgb.B4.grad1.q90" in tnames and "s2rgb.B3-B2.std" in tnames
    # raw histograms (no z-scoring) are fractions summing to 1 where the channel is present
    raw = baseline_features(tiny_store, ["hist"], standardise=False)["hist"]
    fr = raw.reshape(50, 5, HIST_BINS + 1)
    present = fr[..., -1] == 1
    np.testing.assert_allclose(fr[..., :-1].sum(-1)[present], 1.0, atol=1e-6)
    assert (fr[..., :-1].sum(-1)[~present] == 0).all()


def test_texture_values_against_direct_numpy():
    rng = np.random.default_rng(2)
    x = rng.gamma(2.0, size=(2, 2, 8, 8)).astype(np.float32)
    got = chip_texture(x)
    assert got.shape == (2, 2 * len(TEXTURE_SCALES) + 1, 5)
    b, c = 1, 0
    z = x[b, c].astype(np.float64)
    g = np.sqrt((z[:-1, 1:] - z[:-1, :-1]) ** 2 + (z[1:, :-1] - z[:-1, :-1]) ** 2)
    np.testing.assert_allclose(got[b, 0], direct(g[None])[0], rtol=1e-5)
    d = (x[b, 0] - x[b, 1]).astype(np.float64)
    np.testing.assert_allclose(got[b, -1], direct(d[None])[0], rtol=1e-5, atol=1e-6)
