"""Calibration: real-sample statistics are sane, and the simulator's per-class statistics lie in the documented ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.calibration import CALIBRATION_RANGES, check, decay, fit_decay, measure_real, measure_simulated, patch_class
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def real() -> dict:
    return measure_real(SHARED_DATA)


@pytest.fixture(scope="module")
def sim() -> dict:
    return measure_simulated()


def test_patch_class_majority_rule():
    assert patch_class(["Pastures"]) == "grassland"
    assert patch_class(["Non-irrigated arable land", "Pastures"]) is None  # tie
    assert patch_class(["Non-irrigated arable land", "Coniferous forest", "Mixed forest"]) == "forest"


def test_fit_decay_recovers_parameters():
    days = np.array([12, 24, 36, 48, 72, 96, 132], dtype=float)
    g0, g_inf, tau = fit_decay(days, decay(days, 0.8, 0.3, 30.0))
    assert abs(g0 - 0.8) < 0.02 and abs(g_inf - 0.3) < 0.02 and abs(tau - 30.0) < 2.0


def test_real_measurements_finite_and_plausible(real):
    stats = {k: v for k, v in real.items() if isinstance(v, float)}
    assert stats and all(math.isfinite(v) for v in stats.values()), [k for k, v in stats.items() if not math.isfinite(v)]
    for cls in ("water", "forest", "cropland", "grassland"):
        assert -30 < real[f"s1.{cls}.VV.median"] < 0, cls
        assert -35 < real[f"s1.{cls}.VH.median"] < real[f"s1.{cls}.VV.median"], cls
        for b in ("B4", "B3", "B2"):
            assert 0 < real[f"s2.{cls}.{b}.median"] < 0.3, (cls, b)
    # Physics the samples must show: water darkest in S1, vegetation greener than red in S2.
    assert real["s1.water.VV.median"] < min(real[f"s1.{c}.VV.median"] for c in ("forest", "cropland", "grassland"))
    assert real["s2.grassland.B3.median"] > real["s2.grassland.B4.median"]
    assert real["coh.n_pairs"] == 30
    for g in ("all", "high", "low"):
        assert 0 < real[f"coh.{g}.132d.median"] < real[f"coh.{g}.12d.median"] < 1, g
        assert 0 <= real[f"coh.{g}.fit.g_inf"] <= real[f"coh.{g}.fit.g0"] <= 1, g
    assert real["coh.high.12d.median"] > real["coh.low.12d.median"]


def test_ranges_contain_the_real_measurements(real):
    """Every documented range with a real counterpart contains that real measurement."""
    outside = [(k, real[r.real], (r.lo, r.hi)) for k, r in CALIBRATION_RANGES.items()
               if r.real is not None and not r.contains(real[r.real])]
    assert not outside, outside


def test_simulated_statistics_within_calibration_ranges(sim):
    """The simulator (AOI conus, seed 0) per land-cover class lies within every documented range."""
    failures = [f"{k} = {v:.3f} not in [{r.lo}, {r.hi}] ({r.source})" for k, v, r, ok in check(sim) if not ok]
    assert not failures, "simulated statistics outside docs/CALIBRATION.md ranges:\n" + "\n".join(failures)
