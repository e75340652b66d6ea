"""RGB rendering of chips: every modality, missing pixels grey, SAR false colour."""

import numpy as np
import pytest

from data.modalities import MODALITY_KEYS, get_modality
from ui.render import chip_to_rgb


@pytest.mark.parametrize("key", MODALITY_KEYS)
def test_to_rgb_any_modality(key):
    m = get_modality(key)
    rng = np.random.default_rng(0)
    lo, hi = m.valid_range
    x = rng.uniform(lo, min(hi, lo + (hi - lo) / 2), size=(len(m.channels), 16, 16)).astype(np.float32)
    x[:, 0, 0] = np.nan
    rgb = chip_to_rgb(m, x)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 128).all()  # missing pixels drawn mid-grey


def test_sar_false_colour_water_darker_than_urban():
    m = get_modality("s1amp")
    water = np.stack([np.full((4, 4), -22.0), np.full((4, 4), -29.0)])
    urban = np.stack([np.full((4, 4), 0.0), np.full((4, 4), -8.0)])
    assert chip_to_rgb(m, water).mean() < chip_to_rgb(m, urban).mean()
