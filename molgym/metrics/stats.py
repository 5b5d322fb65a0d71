"""Summaries with 95 % confidence intervals (deterministic: no resampling, no RNG).

- fractions (0/1 outcomes): Wilson score interval;
- real values: Student-t interval of the mean (``mean ± t_{0.975, n-1} · sd / sqrt(n)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["wilson_interval", "mean_interval", "summarize"]

_Z = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = _Z) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Student-t 95 % interval of the mean; a single value gives ``(v, v)``."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    from scipy.special import stdtrit  # Student-t quantile; much lighter to import than scipy.stats

    half = float(stdtrit(len(x) - 1, 0.975) * x.std(ddof=1) / math.sqrt(len(x)))
    return (float(x.mean() - half), float(x.mean() + half))


def summarize(
    values: Sequence[float | bool | None], binary: bool = False, bounds: tuple[float, float] | None = None
) -> dict:
    """``{"mean", "ci95": [lo, hi], "n"}`` over the non-``None``, finite values (mean ``None`` if none); real
    values also get ``"median"`` and ``"p90"`` (90th percentile), the robust figures strain metrics are
    reported with.

    ``bounds`` clips the interval of a quantity that cannot leave them (e.g. ``(0, 1)`` for a per-molecule
    fraction such as atom stability).
    """
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not x:
        return {"mean": None, "ci95": [None, None], "n": 0}
    lo, hi = wilson_interval(int(round(sum(x))), len(x)) if binary else mean_interval(x)
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    out = {"mean": float(np.mean(x)), "ci95": [lo, hi], "n": len(x)}
    if not binary:
        out["median"], out["p90"] = float(np.median(x)), float(np.percentile(x, 90))
    return out
