"""core.diagnostics: constant predictions, calibration and confusion tables."""

from __future__ import annotations

import numpy as np
import pytest

from core.diagnostics import calibration_table, confusion_table, constant_prediction


def test_constant_prediction_is_found_and_nan_ignored():
    flat = constant_prediction(np.array([0.0, 0.0, np.nan, 0.0]))
    assert flat is not None and flat.value == 0.0 and flat.n == 3
    assert constant_prediction(np.array([0.1, 0.2, np.nan])) is None
    assert constant_prediction(np.array([np.nan, 0.3])) is None  # one prediction says nothing


def test_calibration_of_a_calibrated_probability_lies_on_the_diagonal():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20_000)
    present = (rng.uniform(size=p.size) < p).astype(float)
    table = calibration_table(p, present, bins=10)
    assert len(table) == 10 and table["chips"].sum() == p.size
    assert np.allclose(table["predicted"], table["observed"], atol=0.03)
    # An overconfident model (always 0.9) is one bin far from the diagonal.
    over = calibration_table(np.full(1000, 0.9), present[:1000])
    assert len(over) == 1 and over["predicted"].iloc[0] - over["observed"].iloc[0] > 0.3
    with pytest.raises(ValueError):
        calibration_table(p, present[:10])


def test_confusion_table_counts_chips_at_the_threshold():
    table = confusion_table(np.array([0.9, 0.8, 0.2, 0.6, np.nan]), np.array([1, 0, 1, 1, 1.0]), 0.5)
    assert table.loc["truly present", "predicted present"] == 2
    assert table.loc["truly present", "predicted absent"] == 1
    assert table.loc["truly absent", "predicted present"] == 1
    assert int(table.to_numpy().sum()) == 4
