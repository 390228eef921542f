"""Intervals, the paired quality test and the plan's power, as small functions (scipy for quantiles).

- Arithmetic figures (they follow from sizes: model-state bytes) are the same for every seed: a
  value, labelled arithmetic, never an interval.
- Measured positive figures (bytes, seconds, counts): the seed mean with a 95% interval on the log
  scale, mean × exp(± t se(log mean)) with se(log mean) = s / (√n mean) (delta method), so that no
  bound goes below zero. GRPO/PPO ratios: the same on the log of the ratio of means, Welch df.
- Quality: GRPO − PPO final accuracy, paired (arms with the same seed share the warm start, the eval
  prompts and the first rollout). The plan names one interval method before the run (INTERVAL_METHODS):
  a paired t over the per-seed differences, or a two-way bootstrap over prompts × seeds.
- Resources to a target quality: GRPO/PPO paired by seed, the geometric mean of the per-seed ratios
  with a paired t on their logs (the ratio of geometric means of a paired design, as bioequivalence
  reads a ratio: Schuirmann 1987, J. Pharmacokinet. Biopharm. 15:657). A seed where an arm never
  reached the target is right-censored at its budget (type I censoring) and kept: its ratio is a
  bound (at least budget/PPO's figure when GRPO never reached it, at most GRPO's figure/budget when
  PPO never did), and the row is then read as a one-sided bound.
- Non-inferiority at margin δ: "not worse" only when the interval's lower bound lies above −δ,
  "worse" when its upper bound lies below −δ, "inconclusive" otherwise.
- The plan: the minimum detectable difference of a paired t at the planned seeds and eval size.

Functions named `*_bounds` work on numpy arrays with any leading (batch) axes, so the simulations in
harness.report.simulate run the very code the report uses, vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
MEASURED, ARITHMETIC, ESTIMATED = "measured", "arithmetic", "estimated"


def t_quantile(df: float | np.ndarray, level: float = LEVEL):
    """Two-sided `level` quantile of Student's t (scipy; fractional df for Welch)."""
    return stats.t.ppf((1 + level) / 2, df)


@dataclass
class Estimate:
    """A figure with its 95% interval (lo, hi are None when there is none, with the reason in note)."""

    mean: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    note: str | None = None  # why there is no interval, or what the figure is
    method: str | None = None  # how the interval was had
    kind: str = MEASURED  # measured | arithmetic | estimated (fake tensors, harness estimate)
    deterministic: bool = False  # the same on every seed by construction: read by its value, no interval
    bound: str | None = None  # AT_LEAST | AT_MOST: censored seeds make the figure a one-sided bound

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None


def _clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def arithmetic(values: Sequence[float | None], why: str = "follows from the model sizes") -> Estimate:
    """A figure that follows from sizes: its value, labelled, with no interval (it has no spread to estimate)."""
    values = _clean(values)
    if not values:
        return Estimate(None, note="not measured", kind=ARITHMETIC)
    return Estimate(float(np.mean(values)), n=len(values), note=f"arithmetic: {why}", kind=ARITHMETIC)


def mean_ci(values: Sequence[float | None], positive: bool = False,
            bounds: tuple[float, float] | None = None) -> Estimate:
    """Seed mean with a 95% t-interval; `positive` figures on the log scale, `bounds` clip (accuracy: 0, 1)."""
    values = _clean(values)
    n = len(values)
    if n == 0:
        return Estimate(None, note="not measured")
    m = float(np.mean(values))
    if n < 2:
        return Estimate(m, n=1, note="one seed (an interval needs ≥ 2)")
    se = float(np.std(values, ddof=1)) / math.sqrt(n)
    t = float(t_quantile(n - 1))
    if positive and m > 0 and min(values) >= 0:
        half = t * se / m
        return Estimate(m, m * math.exp(-half), m * math.exp(half), n, method=f"log-scale t, {n - 1} df")
    lo, hi = m - t * se, m + t * se
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Estimate(m, lo, hi, n, method=f"t, {n - 1} df")


def ratio_ci(top: Sequence[float | None], bottom: Sequence[float | None]) -> Estimate:
    """mean(top) / mean(bottom) of a measured figure, 95% interval by the delta method on the log ratio.

    se(log R)^2 = s_t^2 / (n_t m_t^2) + s_b^2 / (n_b m_b^2), t quantile at the Welch-Satterthwaite df;
    the interval is R exp(-+ t se): it stays positive.
    """
    top, bottom = _clean(top), _clean(bottom)
    if not top or not bottom:
        return Estimate(None, note="not measured")
    mt, mb = float(np.mean(top)), float(np.mean(bottom))
    n = min(len(top), len(bottom))
    if mb == 0:
        return Estimate(None, n=n, note="the denominator is zero")
    ratio = mt / mb
    if len(top) < 2 or len(bottom) < 2:
        return Estimate(ratio, n=n, note="one seed (an interval needs ≥ 2)")
    if mt <= 0 or mb <= 0:
        return Estimate(ratio, n=n, note="no log-ratio interval for non-positive means")
    vt = float(np.var(top, ddof=1)) / (len(top) * mt**2)
    vb = float(np.var(bottom, ddof=1)) / (len(bottom) * mb**2)
    se = math.sqrt(vt + vb)
    if se == 0:
        return Estimate(ratio, ratio, ratio, n, method="no spread over seeds")
    df = (vt + vb) ** 2 / (vt**2 / (len(top) - 1) + vb**2 / (len(bottom) - 1))
    half = float(t_quantile(df)) * se
    return Estimate(ratio, ratio * math.exp(-half), ratio * math.exp(half), n,
                    method=f"delta method on the log ratio, Welch df {df:.1f}")


def arithmetic_ratio(top: Sequence[float | None], bottom: Sequence[float | None],
                     why: str = "follows from the model sizes") -> Estimate:
    top, bottom = _clean(top), _clean(bottom)
    if not top or not bottom or np.mean(bottom) == 0:
        return Estimate(None, note="not measured", kind=ARITHMETIC)
    return Estimate(float(np.mean(top) / np.mean(bottom)), n=min(len(top), len(bottom)), note=f"arithmetic: {why}",
                    kind=ARITHMETIC)


# ---------------------------------------------------------------- paired quality

PAIRED_T = "paired t over seeds"
BOOTSTRAP = "two-way bootstrap over prompts × seeds"
# The quality interval the plan names before the run (verdict.interval), by key.
INTERVAL_METHODS = {"paired_t": PAIRED_T, "bootstrap": BOOTSTRAP}


def paired_t_bounds(differences: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) of per-seed paired differences `[..., S]`: mean ± t_{S-1} s / √S."""
    seeds = differences.shape[-1]
    mean = differences.mean(-1)
    half = t_quantile(seeds - 1, level) * differences.std(-1, ddof=1) / math.sqrt(seeds)
    return mean, mean - half, mean + half


def bootstrap_variance(per_prompt: np.ndarray) -> np.ndarray:
    """Variance of mean(D) over the two-way bootstrap of `D [..., S, P]`: seeds and prompts resampled
    independently with replacement (a seed's two arms stay paired, and so do a prompt's).

    The mean is linear in the resampling counts w (seeds) and m (prompts): sum(w D m) / (S P), with
    E[w w^T] = I + (1 - 1/S) 1 1^T and E[m m^T] = I + (1 - 1/P) 1 1^T. So the bootstrap distribution's
    variance has a closed form, without Monte Carlo error:
        E[(w^T D m)^2] = |D|_F^2 + (1 - 1/S) |1^T D|^2 + (1 - 1/P) |D 1|^2 + (1 - 1/S)(1 - 1/P) T^2,
    with T = 1^T D 1; the variance is that minus T^2, divided by (S P)^2.
    """
    seeds, prompts = per_prompt.shape[-2:]
    alpha, beta = 1 - 1 / seeds, 1 - 1 / prompts
    total = per_prompt.sum((-2, -1))
    second = ((per_prompt**2).sum((-2, -1)) + alpha * (per_prompt.sum(-2) ** 2).sum(-1)
              + beta * (per_prompt.sum(-1) ** 2).sum(-1) + alpha * beta * total**2)
    return (second - total**2) / (seeds * prompts) ** 2


def bootstrap_bounds(per_prompt: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) from the two-way bootstrap of `D [..., S, P]` (per-prompt GRPO − PPO, paired).

    A bootstrap over S seeds understates their spread by (S - 1)/S and a normal quantile ignores how
    little S seeds say about it: the standard error is scaled by √(S / (S - 1)) and read with a t
    quantile at S - 1 df, so that the interval holds its level with 2 or 3 seeds.
    """
    seeds = per_prompt.shape[-2]
    mean = per_prompt.mean((-2, -1))
    se = np.sqrt(bootstrap_variance(per_prompt) * seeds / (seeds - 1))
    half = t_quantile(seeds - 1, level) * se
    return mean, mean - half, mean + half


def paired_difference(top: dict[int, float], bottom: dict[int, float],
                      top_prompts: dict[int, Sequence[int]] | None = None,
                      bottom_prompts: dict[int, Sequence[int]] | None = None,
                      method: str = "paired_t") -> dict[str, Estimate]:
    """GRPO − PPO final accuracy over the seeds both arms finished: {'paired_t', 'bootstrap', 'reported'}.

    `top`/`bottom` map seed -> accuracy; `*_prompts` map seed -> per-prompt solved flags (the same
    prompts in the same order in every arm). The reported interval is the one `method` names (a key of
    INTERVAL_METHODS, fixed by the plan before the run), never the tighter of the two after the fact.
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; valid: {', '.join(INTERVAL_METHODS)}")
    seeds = sorted(set(top) & set(bottom))
    if not seeds:
        blank = Estimate(None, note="no seed finished in both arms")
        return {"paired_t": blank, "bootstrap": blank, "reported": blank}
    differences = np.array([top[s] - bottom[s] for s in seeds], dtype=float)
    mean = float(differences.mean())
    unpaired = sorted((set(top) | set(bottom)) - set(seeds))
    dropped = f"; seeds {unpaired} left out: finished in one arm only" if unpaired else ""
    if len(seeds) < 2:
        blank = Estimate(mean, n=1, note=f"one paired seed (an interval needs ≥ 2){dropped}")
        return {"paired_t": blank, "bootstrap": blank, "reported": blank}
    _, lo, hi = paired_t_bounds(differences)
    paired = Estimate(mean, float(lo), float(hi), len(seeds), method=f"{PAIRED_T} ({len(seeds)} seeds, "
                      f"{len(seeds) - 1} df){dropped}")
    if lo == hi:  # identical differences in every seed: a zero-width interval would be no evidence at all
        paired = Estimate(mean, n=len(seeds), note=f"no spread over {len(seeds)} seeds: the paired t has no "
                          f"interval{dropped}")
    boot = Estimate(mean, n=len(seeds), note="not available: the arms saved no per-prompt results")
    if top_prompts and bottom_prompts and all(s in top_prompts and s in bottom_prompts for s in seeds):
        rows = [np.asarray(top_prompts[s], float) - np.asarray(bottom_prompts[s], float)
                if len(top_prompts[s]) == len(bottom_prompts[s]) else None for s in seeds]
        if all(r is not None for r in rows) and len({len(r) for r in rows}) == 1:
            D = np.stack(rows)  # [S, P]
            b_mean, b_lo, b_hi = bootstrap_bounds(D)
            boot = Estimate(float(b_mean), float(b_lo), float(b_hi), len(seeds),
                            method=f"{BOOTSTRAP} ({len(seeds)} seeds × {D.shape[1]} prompts){dropped}")
            if b_lo == b_hi:
                boot = Estimate(float(b_mean), n=len(seeds), note="no spread: both arms solved the same prompts "
                                "in every seed")
        else:
            boot = Estimate(mean, n=len(seeds), note="not available: the arms' per-prompt results differ in length")
    return {"paired_t": paired, "bootstrap": boot, "reported": paired if method == "paired_t" else boot}


# ---------------------------------------------------------------- resources to a target, censored at the budget

EXACT, AT_LEAST, AT_MOST, UNKNOWN = "exact", "at least", "at most", "unknown"


@dataclass(frozen=True)
class ToTarget:
    """What one arm of one seed spent until it reached the target: `value` when `reached`, else its whole
    budget (it never reached the target: right-censored at the budget)."""

    value: float
    reached: bool


def seed_ratio(top: ToTarget, bottom: ToTarget) -> tuple[float, str]:
    """top/bottom of one seed and what it is: EXACT; AT_LEAST when top never reached the target (it would
    have needed more than its budget); AT_MOST when bottom never did; UNKNOWN when neither did.

    >>> seed_ratio(ToTarget(40, True), ToTarget(80, True)), seed_ratio(ToTarget(100, False), ToTarget(80, True))
    ((0.5, 'exact'), (1.25, 'at least'))
    """
    kind = {(True, True): EXACT, (False, True): AT_LEAST, (True, False): AT_MOST, (False, False): UNKNOWN}
    return top.value / bottom.value, kind[(top.reached, bottom.reached)]


def paired_ratio(ratios: Sequence[float], deterministic: bool = False) -> Estimate:
    """The geometric mean of per-seed ratios with a 95% paired t interval on their logs:
    exp(mean(log r) ± t_{n-1} sd(log r) / √n). `deterministic` figures (the same on every seed by
    construction) are read by their value, without an interval.
    """
    ratios = _clean(ratios)
    if not ratios:
        return Estimate(None, note="not measured")
    if min(ratios) <= 0:
        return Estimate(None, n=len(ratios), note="no log-ratio interval for non-positive figures")
    logs = np.log(ratios)
    value, n = float(np.exp(logs.mean())), len(ratios)
    if deterministic:
        return Estimate(value, n=n, deterministic=True, note="deterministic: the same on every seed, no interval")
    if n < 2:
        return Estimate(value, n=1, note="one seed (an interval needs ≥ 2)")
    sd = float(logs.std(ddof=1))
    if sd == 0:  # zero width would claim a certainty that n seeds cannot give
        return Estimate(value, n=n, note=f"no spread over {n} seeds: no interval")
    half = float(t_quantile(n - 1)) * sd / math.sqrt(n)
    return Estimate(value, value * math.exp(-half), value * math.exp(half), n,
                    method=f"paired by seed: geometric mean, t on the log ratios, {n - 1} df")


def censored_paired_ratio(top: dict[int, ToTarget], bottom: dict[int, ToTarget],
                          deterministic: bool = False) -> tuple[Estimate, dict[int, tuple[float, str]]]:
    """GRPO/PPO paired by seed over the seeds both arms finished, censored seeds kept at their budget.

    Returns (estimate, {seed: (ratio, kind)}). When every censored seed bounds the ratio the same way,
    the estimate is that bound (`bound` AT_LEAST or AT_MOST: the per-seed bounds' geometric mean and
    interval, read one-sided); a seed where neither arm reached the target, or bounds both ways, leave
    no reading (mean None, the reason in `note`).
    """
    seeds = sorted(set(top) & set(bottom))
    zero = [s for s in seeds if top[s].value <= 0 or bottom[s].value <= 0]
    if zero:  # reached at the very start, or nothing recorded: no ratio to take
        return Estimate(None, n=len(seeds), note=f"no ratio: a figure of zero in seed {zero[0]}"), {}
    per_seed = {s: seed_ratio(top[s], bottom[s]) for s in seeds}
    kinds = {kind for _, kind in per_seed.values()}
    unpaired = sorted((set(top) | set(bottom)) - set(seeds))
    dropped = f"; seeds {unpaired} left out: finished in one arm only" if unpaired else ""
    if not seeds:
        return Estimate(None, note="no seed finished in both arms"), per_seed
    if UNKNOWN in kinds or {AT_LEAST, AT_MOST} <= kinds:
        both = [str(s) for s in seeds if per_seed[s][1] == UNKNOWN]
        why = (f"neither arm reached the target in seed{'s' * (len(both) > 1)} {', '.join(both)}"
               if UNKNOWN in kinds else "censored both ways (a seed bounds the ratio from below, another from above)")
        return Estimate(None, n=len(seeds), note=f"no ratio: {why}{dropped}"), per_seed
    estimate = paired_ratio([r for r, _ in per_seed.values()], deterministic)
    bound = next((k for k in (AT_LEAST, AT_MOST) if k in kinds), None)
    if bound:
        censored = [s for s in seeds if per_seed[s][1] == bound]
        arm = "the numerator" if bound == AT_LEAST else "the denominator"
        estimate.bound = bound
        estimate.note = "; ".join(filter(None, [
            estimate.note, f"a bound ({bound}): {arm} never reached the target in seed{'s' * (len(censored) > 1)} "
                           f"{', '.join(map(str, censored))}, counted at its budget"]))
    if dropped:
        estimate.note = (estimate.note or "") + dropped
    return estimate, per_seed


# ---------------------------------------------------------------- readings

NOT_WORSE, WORSE, INCONCLUSIVE = "not worse", "worse", "inconclusive"
REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"


def non_inferiority(difference: Estimate, margin: float) -> str:
    """not worse | worse | inconclusive, for GRPO − PPO at margin δ (accuracy, e.g. 0.05)."""
    if difference.mean is None or not difference.has_interval:
        return INCONCLUSIVE
    if difference.lo > -margin:
        return NOT_WORSE
    if difference.hi < -margin:
        return WORSE
    return INCONCLUSIVE


def width_in_words(difference: Estimate, margin: float) -> str:
    """How wide the interval is against the margin, for a reader deciding whether to run more seeds."""
    if not difference.has_interval:
        return difference.note or "no interval"
    width = difference.hi - difference.lo
    times = width / margin
    if times <= 1:
        size = "narrower than the margin"
    elif times <= 2:
        size = f"{times:.1f}× the margin"
    else:
        size = f"{times:.1f}× the margin: too wide to tell"
    return f"the interval is {100 * width:.1f} points wide ({size})"


def band_reading(estimate: Estimate, low: float, high: float) -> str:
    """reproduced (within low–high) | not reproduced (wholly outside) | inconclusive.

    Arithmetic, estimated and deterministic figures have no interval: they are read by their value, which
    carries no sampling error. A one-sided bound (censored seeds) is read only in the direction it bounds: a
    lower bound whose interval lies wholly above the band is not reproduced, and so is an upper bound
    wholly below it; anything else about a bound is inconclusive (the truth lies further out).
    """
    if estimate.mean is None:
        return INCONCLUSIVE
    if estimate.kind in (ARITHMETIC, ESTIMATED) or estimate.deterministic:
        return REPRODUCED if low <= estimate.mean <= high else NOT_REPRODUCED
    if not estimate.has_interval:
        return INCONCLUSIVE
    if estimate.bound == AT_LEAST:
        return NOT_REPRODUCED if estimate.lo > high else INCONCLUSIVE
    if estimate.bound == AT_MOST:
        return NOT_REPRODUCED if estimate.hi < low else INCONCLUSIVE
    if low <= estimate.lo and estimate.hi <= high:
        return REPRODUCED
    if estimate.hi < low or estimate.lo > high:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def ratio_reading(estimate: Estimate, claim: float = 0.5, band: float = 0.1) -> str:
    """band_reading against claim ± band."""
    return band_reading(estimate, claim - band, claim + band)


def completions_band(claim: float, band: Sequence[float]) -> tuple[float, float]:
    """The band around 1 that completions to the target are read against: the claim's band, relative.

    >>> completions_band(0.5, [0.4, 0.6])
    (0.8, 1.2)
    """
    half = (band[1] - band[0]) / 2 / claim
    return round(1 - half, 12), round(1 + half, 12)


def claim_verdict(quality: str, compute: str, memory: str | None) -> str:
    """The claim (about half the resources for the same quality) holds when quality is not worse and both
    the compute and the memory reading are the claim; it fails when quality is worse or either resource
    reads outside the band. Memory that could not be read (None) leaves the verdict inconclusive at best."""
    memory = memory or INCONCLUSIVE
    if quality == WORSE or NOT_REPRODUCED in (compute, memory):
        return NOT_REPRODUCED
    if quality == NOT_WORSE and compute == REPRODUCED and memory == REPRODUCED:
        return REPRODUCED
    return INCONCLUSIVE


# ---------------------------------------------------------------- the plan's power

def pair_sd(seed_sd: float, accuracy: float, prompts: int) -> float:
    """SD of one seed's GRPO − PPO accuracy under the plan's stated model: each arm's accuracy is the
    truth + a seed effect (SD `seed_sd`) + binomial eval noise (accuracy (1 - accuracy) / prompts),
    independently in the two arms. Pairing usually correlates the arms, which only narrows the truth."""
    return math.sqrt(2 * (accuracy * (1 - accuracy) / prompts + seed_sd**2))


def noncentrality(seeds: int, level: float = LEVEL, power: float = 0.8) -> float:
    """λ with P(|T'| > t_crit) = power for T' noncentral t with S - 1 df (the paired t's power)."""
    df = seeds - 1
    crit = float(t_quantile(df, level))

    def shortfall(lam: float) -> float:
        far_tail = np.nan_to_num(stats.nct.cdf(-crit, df, lam))  # below 1e-3 once λ matters; scipy may give nan
        return float(stats.nct.sf(crit, df, lam) + far_tail) - power
    high = crit + 1.0
    while shortfall(high) < 0:  # power grows with λ: widen the bracket until it holds the answer
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high))


def detectable_difference(sd: float, seeds: int, level: float = LEVEL, power: float = 0.8) -> float:
    """The minimum detectable difference: the smallest true GRPO − PPO gap that a paired t over `seeds`
    seeds tells from zero with `power`, at a two-sided `level` interval. It is also (up to the far tail,
    a share below 1e-3) the smallest margin at which truly equal arms are read "not worse" with that
    power. Infinite below 2 seeds."""
    if seeds < 2:
        return math.inf
    return noncentrality(seeds, level, power) * sd / math.sqrt(seeds)


def seeds_needed(sd: float, margin: float, level: float = LEVEL, power: float = 0.8, most: int = 200) -> int | None:
    """The fewest seeds whose minimum detectable difference is within `margin` (None past `most`)."""
    for seeds in range(2, most + 1):
        if detectable_difference(sd, seeds, level, power) <= margin:
            return seeds
    return None
