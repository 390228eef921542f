"""Confidence over seeds: t-intervals of means and of GRPO/PPO ratios, and the verdict rule.

No scipy: the two-sided 95% t quantiles are a table (df 1..30) and a Cornish-Fisher expansion above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev
from typing import Sequence

LEVEL = 0.95
Z_975 = 1.959963984540054
# t_{0.975, df} for df = 1..30
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# The claim: GRPO needs about half of PPO's resources. A ratio "is about 0.5" when it lies in this band.
CLAIM = 0.5
BAND = (0.4, 0.6)


def t_quantile(df: float) -> float:
    """Two-sided 95% quantile of Student's t; fractional df (Welch) interpolate in 1/df."""
    if df < 1:
        raise ValueError("a t-interval needs at least one degree of freedom")
    if df > 30:
        z = Z_975  # Cornish-Fisher: exact to 3 decimals from df 30 on
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    low, high = math.floor(df), math.ceil(df)
    if low == high:
        return T_975[low - 1]
    weight = (1 / df - 1 / high) / (1 / low - 1 / high)
    return weight * T_975[low - 1] + (1 - weight) * T_975[high - 1]


@dataclass
class Estimate:
    """A seed mean with its 95% interval (lo, hi are None when it cannot be had)."""

    mean: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    note: str | None = None  # why there is no interval

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None


def mean_ci(values: Sequence[float], exact: bool = False) -> Estimate:
    """Mean of seed values with a t-interval; `exact` figures are deterministic (interval = point)."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return Estimate(None, n=0, note="not measured")
    m = mean(values)
    if exact:
        return Estimate(m, m, m, n, note="exact: the same for every seed")
    if n < 2:
        return Estimate(m, n=1, note="one seed (an interval needs ≥ 2)")
    half = t_quantile(n - 1) * stdev(values) / math.sqrt(n)
    return Estimate(m, m - half, m + half, n)


def difference_ci(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a) - mean(b) with a Welch t-interval (the arms are separate processes)."""
    a = [float(v) for v in a if v is not None]
    b = [float(v) for v in b if v is not None]
    if not a or not b:
        return Estimate(None, note="not measured")
    d = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2:
        return Estimate(d, n=min(len(a), len(b)), note="one seed (an interval needs ≥ 2)")
    va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(d, d, d, min(len(a), len(b)))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(df) * se
    return Estimate(d, d - half, d + half, min(len(a), len(b)))


def ratio_ci(top: Sequence[float], bottom: Sequence[float], exact: bool = False) -> Estimate:
    """mean(top) / mean(bottom), 95% interval by the delta method on the log of the ratio.

    se(log R)^2 = s_t^2 / (n_t m_t^2) + s_b^2 / (n_b m_b^2), with a t quantile at the
    Welch-Satterthwaite degrees of freedom; the interval is exp(log R -+ t se), so it stays positive.
    """
    top = [float(v) for v in top if v is not None]
    bottom = [float(v) for v in bottom if v is not None]
    if not top or not bottom:
        return Estimate(None, note="not measured")
    mt, mb = mean(top), mean(bottom)
    n = min(len(top), len(bottom))
    if mb == 0:
        return Estimate(None, n=n, note="the denominator is zero")
    ratio = mt / mb
    if exact:
        return Estimate(ratio, ratio, ratio, n, note="exact: the same for every seed")
    if len(top) < 2 or len(bottom) < 2:
        return Estimate(ratio, n=n, note="one seed (an interval needs ≥ 2)")
    if mt <= 0 or mb <= 0:
        return Estimate(ratio, n=n, note="no log-ratio interval for non-positive means")
    vt = stdev(top) ** 2 / (len(top) * mt**2)
    vb = stdev(bottom) ** 2 / (len(bottom) * mb**2)
    se = math.sqrt(vt + vb)
    if se == 0:
        return Estimate(ratio, ratio, ratio, n)
    df = (vt + vb) ** 2 / (vt**2 / (len(top) - 1) + vb**2 / (len(bottom) - 1))
    half = t_quantile(df) * se
    return Estimate(ratio, ratio * math.exp(-half), ratio * math.exp(half), n)


# ---------------------------------------------------------------- the verdict rule

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"

RULE = [
    f"A ratio agrees with the claim when its whole 95% interval lies in [{BAND[0]}, {BAND[1]}] "
    f"(the claimed {CLAIM} within ±{BAND[1] - CLAIM:.1f}); it contradicts the claim when its whole "
    "interval lies outside that band; otherwise it is inconclusive. Exact (counted) figures are the "
    "same for every seed, so their interval is the point itself; a measured figure from one seed has "
    "no interval and is inconclusive.",
    "Quality is not worse when the 95% interval of GRPO's minus PPO's final held-out accuracy reaches "
    "zero or above; it is worse when the whole interval lies below zero; with fewer than 2 seeds per "
    "arm it is unknown.",
    "The verdict is 'reproduced' when the primary memory ratio agrees with the claim and quality is "
    "not worse; 'not reproduced' when the primary memory ratio contradicts the claim or quality is "
    "worse; 'inconclusive' otherwise (an arm without a finished seed included).",
]


def ratio_reading(estimate: Estimate, band: tuple[float, float] = BAND) -> str:
    """reproduced | not reproduced | inconclusive, for one ratio and its interval."""
    if estimate.mean is None or not estimate.has_interval:
        return INCONCLUSIVE
    if band[0] <= estimate.lo and estimate.hi <= band[1]:
        return REPRODUCED
    if estimate.hi < band[0] or estimate.lo > band[1]:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def quality_reading(difference: Estimate) -> str:
    """not worse | worse | unknown, from GRPO - PPO final accuracy."""
    if difference.mean is None or not difference.has_interval:
        return "unknown"
    return "worse" if difference.hi < 0 else "not worse"


def verdict(memory: Estimate, difference: Estimate) -> str:
    memory_reading, quality = ratio_reading(memory), quality_reading(difference)
    if memory_reading == NOT_REPRODUCED or quality == "worse":
        return NOT_REPRODUCED
    if memory_reading == REPRODUCED and quality == "not worse":
        return REPRODUCED
    return INCONCLUSIVE
