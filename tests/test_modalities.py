"""Modality registry: channels, normalisation, rendering and clear errors."""

import numpy as np
import pytest

from data.modalities import LABEL_TASKS, MODALITIES, MODALITY_KEYS, get_modality


def test_registry_contents():
    assert MODALITY_KEYS == ("s2rgb", "s1amp", "coh")
    assert MODALITIES["s2rgb"].channels == ("B4", "B3", "B2")
    assert MODALITIES["s1amp"].units == "backscatter (dB)"
    assert LABEL_TASKS == ("vegetation", "builtup", "cropland", "water")
    with pytest.raises(KeyError, match="known modalities"):
        get_modality("lidar")


def test_seasonal_channel_names_resolve_by_base():
    m = get_modality("s1amp")
    mean, std = m.channel_stats(["VV_winter", "VH_summer"])
    assert mean.tolist() == [-11.0, -18.0]
    with pytest.raises(KeyError, match="unknown channel"):
        m.channel_stats(["HH"])
    get_modality("coh").validate_channels(["VV_12d", "VV_24d", "VV_36d", "VV_48d"])
    with pytest.raises(ValueError, match="duplicate"):
        m.validate_channels(["VV", "VV"])


def test_normalise_keeps_nan_and_standardises():
    m = get_modality("s1amp")
    x = np.full((2, 4, 4), -11.0, dtype=np.float32)
    x[1] = -13.0
    x[0, 0, 0] = np.nan
    z = m.normalise(x)
    assert np.isnan(z[0, 0, 0]) and z[0, 1, 1] == 0.0 and np.isclose(z[1, 0, 0], 1.0)
    with pytest.raises(ValueError, match="channels"):
        m.normalise(x, ["VV"])
