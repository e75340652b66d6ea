"""The one progress-callback signature of core's long steps (embedding, pipeline, evaluation)."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[float, str], None]
"""`callback(fraction, message)`: fraction done in [0, 1] and a one-line message (the step is in the message)."""


def clamp_fraction(fraction: float) -> float:
    """A progress fraction kept inside [0, 1] (rounding can step just outside)."""
    return float(min(max(float(fraction), 0.0), 1.0))
