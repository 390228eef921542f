"""The verdict's statistics: intervals and readings by hand, the bootstrap's closed form against brute
force, and simulated comparisons with a known truth (the quality test's type I error and coverage,
the plan's minimum detectable difference)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from harness.report.simulate import Design, quality_test, simulated_detectable_difference
from harness.report.stats import (ARITHMETIC, INCONCLUSIVE, NOT_REPRODUCED, NOT_WORSE, REPRODUCED, WORSE, Estimate,
                                  arithmetic, bootstrap_variance, detectable_difference, mean_ci, non_inferiority,
                                  pair_sd, paired_difference, ratio_ci, ratio_reading, seeds_needed, t_quantile,
                                  verdict, width_in_words)

# ---------------------------------------------------------------- intervals by hand


def test_t_quantiles_come_from_scipy():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(1e7) == pytest.approx(1.95996, abs=1e-4)
    # Welch's fractional df: at 1.5 df the old table's interpolation in 1/df gave
    # (1/3) 12.706 + (2/3) 4.303 = 7.104, 18% above the quantile, 6.0167
    assert t_quantile(1.5) == pytest.approx(6.0167, abs=1e-4)


def test_mean_interval_by_hand():
    # [1, 2, 3]: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    e = mean_ci([1, 2, 3])
    assert (e.mean, e.n) == (2, 3)
    assert (e.lo, e.hi) == pytest.approx((2 - 2.4841, 2 + 2.4841), abs=1e-4)
    assert not mean_ci([5.0]).has_interval and "2" in mean_ci([5.0]).note
    assert mean_ci([]).mean is None
    assert (mean_ci([0.01, 0.02], bounds=(0, 1)).lo, mean_ci([0.98, 0.99], bounds=(0, 1)).hi) == (0, 1)


def test_a_positive_figure_gets_its_interval_on_the_log_scale():
    # [1, 3]: mean 2, sd sqrt(2), se 1, t(0.975, 1) = 12.706: a linear interval is [-10.7, 14.7];
    # on the log scale se(log mean) = 1 / 2, so the interval is 2 exp(-+ 6.353) = [0.00348, 1149.7]
    e = mean_ci([1.0, 3.0], positive=True)
    assert (e.lo, e.hi) == pytest.approx((2 * math.exp(-6.3531), 2 * math.exp(6.3531)), rel=1e-3)
    assert e.lo > 0 and mean_ci([1.0, 3.0]).lo < 0


def test_an_arithmetic_figure_gets_no_interval():
    e = arithmetic([7.0, 7.0, 7.0])
    assert e.mean == 7.0 and not e.has_interval and e.kind == ARITHMETIC
    assert e.note == "arithmetic: follows from the model sizes"


def test_ratio_interval_by_hand():
    e = ratio_ci([1.0, 1.0], [2.0, 2.0])
    assert (e.mean, e.lo, e.hi) == (0.5, 0.5, 0.5)
    # top [0.9, 1.1], bottom [1.8, 2.2]: R = 0.5; se(log R)^2 = 0.02/(2*1) + 0.08/(2*4) = 0.02, Welch df = 2
    e = ratio_ci([0.9, 1.1], [1.8, 2.2])
    half = 4.3027 * math.sqrt(0.02)
    assert (e.lo, e.hi) == pytest.approx((0.5 * math.exp(-half), 0.5 * math.exp(half)), rel=1e-4)
    assert not ratio_ci([1.0], [2.0]).has_interval
    assert ratio_ci([1.0], [0.0]).mean is None


def test_paired_t_by_hand_drops_unpaired_seeds():
    # d = [0.05, 0.00, 0.10]: mean 0.05, sd 0.05, se 0.028868, t(0.975, 2) 4.3027: half-width 0.12421
    top = {0: 0.50, 1: 0.60, 2: 0.70, 3: 0.9}
    bottom = {0: 0.45, 1: 0.60, 2: 0.60}
    result = paired_difference(top, bottom)
    e = result["reported"]
    assert (e.mean, e.lo, e.hi, e.n) == pytest.approx((0.05, 0.05 - 0.12421, 0.05 + 0.12421, 3), abs=1e-5)
    assert "seeds [3] left out" in e.method
    assert "no per-prompt results" in result["bootstrap"].note
    assert not paired_difference({0: 0.5}, {0: 0.4})["reported"].has_interval


def test_the_bootstrap_variance_is_the_exact_two_way_bootstrap():
    # D = [[1, 0], [0, 0]]: the mean is w0 m0 / 4 with w, m ~ Multinomial(2, 1/2); E[w0^2] = 4/4 + 1/2 = 1.5,
    # so E[(w0 m0)^2] = 2.25, Var(w0 m0) = 1.25 and Var(mean) = 1.25 / 16 = 0.078125
    assert bootstrap_variance(np.array([[1.0, 0.0], [0.0, 0.0]])) == pytest.approx(0.078125)
    # every resample of a 3 x 4 table, enumerated with its multinomial probability
    D = np.array([[1, 0, -1, 1], [0, 0, 1, -1], [1, 1, 0, 0]], dtype=float)

    def outcomes(n):
        for counts in itertools.product(range(n + 1), repeat=n):
            if sum(counts) == n:
                yield np.array(counts), math.factorial(n) / math.prod(math.factorial(c) for c in counts) / n**n
    mean = second = 0.0
    for (w, pw), (m, pm) in itertools.product(list(outcomes(3)), list(outcomes(4))):
        value = w @ D @ m / 12
        mean += pw * pm * value
        second += pw * pm * value**2
    assert bootstrap_variance(D) == pytest.approx(second - mean**2)
    assert bootstrap_variance(np.stack([D, D])) == pytest.approx([second - mean**2] * 2)  # batched


# ---------------------------------------------------------------- readings


@pytest.mark.parametrize("interval, reading", [
    ((-0.01, -0.04, 0.02), NOT_WORSE),  # lower bound -4 > -5 points
    ((-0.03, -0.05, -0.01), INCONCLUSIVE),  # the lower bound on -δ itself is not above it
    ((-0.02, -0.08, 0.04), INCONCLUSIVE),  # crosses -δ
    ((-0.10, -0.14, -0.06), WORSE),  # upper bound -6 < -5 points
    ((0.10, 0.05, 0.15), NOT_WORSE),
])
def test_non_inferiority_at_five_points(interval, reading):
    assert non_inferiority(Estimate(*interval), 0.05) == reading
    assert non_inferiority(Estimate(-0.01, note="one seed"), 0.05) == INCONCLUSIVE


def test_width_in_words():
    assert width_in_words(Estimate(0, -0.02, 0.02), 0.05) == "the interval is 4.0 points wide (narrower than the margin)"
    assert width_in_words(Estimate(0, -0.1, 0.1), 0.05) == ("the interval is 20.0 points wide "
                                                            "(4.0× the margin: too wide to tell)")


def test_ratio_readings_and_the_verdict():
    assert ratio_reading(Estimate(0.5, 0.41, 0.59)) == REPRODUCED
    assert ratio_reading(Estimate(0.5, 0.41, 0.59), band=0.05) == INCONCLUSIVE  # the band is a plan parameter
    assert ratio_reading(Estimate(0.7, 0.61, 0.8)) == NOT_REPRODUCED
    assert ratio_reading(Estimate(0.55, note="arithmetic", kind=ARITHMETIC)) == REPRODUCED  # read by its value
    assert ratio_reading(Estimate(0.5, note="one seed")) == INCONCLUSIVE
    assert verdict(REPRODUCED, NOT_WORSE) == REPRODUCED
    assert verdict(REPRODUCED, INCONCLUSIVE) == INCONCLUSIVE
    assert verdict(REPRODUCED, WORSE) == verdict(NOT_REPRODUCED, NOT_WORSE) == NOT_REPRODUCED


# ---------------------------------------------------------------- the plan's power


def test_detectable_difference_by_hand():
    # sqrt(2 (0.25 / 1000 + 0.02^2)) = sqrt(0.0013) = 0.036056
    assert pair_sd(0.02, 0.5, 1000) == pytest.approx(0.036056, abs=1e-6)
    # many seeds: the normal limit (1.95996 + 0.84162) sd / sqrt(S)
    assert detectable_difference(0.1, 400) == pytest.approx(2.80158 * 0.1 / 20, rel=5e-3)
    # 3 seeds: the noncentral t with 2 df, above the (t + t) approximation 4.3027 + 1.0607 = 5.363
    lam = detectable_difference(1.0, 3) * math.sqrt(3)
    crit = stats.t.ppf(0.975, 2)
    assert stats.nct.sf(crit, 2, lam) == pytest.approx(0.8, abs=1e-4) and lam > 5.363
    assert detectable_difference(0.1, 1) == math.inf
    assert seeds_needed(0.036056, 0.05) == 7
    assert detectable_difference(0.036056, 7) <= 0.05 < detectable_difference(0.036056, 6)


# ---------------------------------------------------------------- simulated comparisons, known truth

DESIGN = Design(seeds=3, prompts=1000, seed_sd=0.02, accuracy=0.5)  # the tiny preset's plan, 3 seeds


def test_simulated_comparisons_type_one_error_and_coverage():
    """200 simulated comparisons per truth at δ = 5 points: "not worse" at most 5% of the time when GRPO is
    truly 10 points worse (the test's type I error), and the reported paired interval covers the truth."""
    rows = {truth: quality_test(DESIGN, truth, margin=0.05, comparisons=200) for truth in (0.0, -0.03, -0.05, -0.10)}
    print("\ntruth    not worse  inconclusive  worse  coverage  (200 simulated comparisons each, 3 seeds x 1000 prompts)")
    for truth, r in rows.items():
        print(f"{100 * truth:+5.1f}    {r['not_worse']:9.1%}  {r['inconclusive']:12.1%}  {r['worse']:5.1%}  {r['coverage']:8.1%}")
    assert rows[-0.10]["not_worse"] <= 0.05
    assert rows[-0.05]["not_worse"] <= 0.05  # on the margin itself: about 2.5% expected
    for truth in (0.0, -0.03, -0.10):
        assert rows[truth]["coverage"] >= 0.93, (truth, rows[truth])
    assert rows[0.0]["not_worse"] > rows[-0.03]["not_worse"] > rows[-0.10]["not_worse"]  # the test has power
    assert rows[-0.10]["worse"] > 0.2


@pytest.mark.parametrize("design", [Design(seeds=2, prompts=200, seed_sd=0.03, accuracy=0.4),
                                    Design(seeds=5, prompts=1000, seed_sd=0.01, accuracy=0.3)])
def test_coverage_holds_at_other_designs(design):
    r = quality_test(design, -0.02, margin=0.05, comparisons=1000, seed=1)
    assert r["coverage"] >= 0.93, r


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_plans_detectable_difference_matches_a_simulation(seeds):
    design = Design(seeds=seeds, prompts=1000, seed_sd=0.02, accuracy=0.5)
    planned = detectable_difference(pair_sd(0.02, 0.5, 1000), seeds)
    simulated = simulated_detectable_difference(design, planned)
    print(f"\n{seeds} seeds: planned {100 * planned:.2f} points, simulated {100 * simulated:.2f} points")
    assert simulated == pytest.approx(planned, rel=0.2)
