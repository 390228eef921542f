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
from harness.report.stats import (ARITHMETIC, AT_LEAST, AT_MOST, ESTIMATED, EXACT, INCONCLUSIVE, NOT_REPRODUCED,
                                  NOT_WORSE, REPRODUCED, UNKNOWN, WORSE, Estimate, ToTarget, arithmetic, band_reading,
                                  bootstrap_variance, censored_paired_ratio, claim_verdict, completions_band,
                                  detectable_difference, mean_ci, non_inferiority, pair_sd, paired_difference,
                                  paired_ratio, ratio_ci, ratio_reading, seed_ratio, seeds_needed, t_quantile,
                                  width_in_words)

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


def test_the_reported_interval_is_the_method_the_plan_named():
    # per prompt: seeds 0 and 1 with GRPO solving 2 more of 4 prompts in seed 0 and 1 more in seed 1
    top, bottom = {0: 0.75, 1: 0.5}, {0: 0.25, 1: 0.25}
    top_prompts, bottom_prompts = {0: [1, 1, 1, 0], 1: [1, 1, 0, 0]}, {0: [1, 0, 0, 0], 1: [1, 0, 0, 0]}
    named_t = paired_difference(top, bottom, top_prompts, bottom_prompts, method="paired_t")
    named_boot = paired_difference(top, bottom, top_prompts, bottom_prompts, method="bootstrap")
    assert named_t["reported"] is named_t["paired_t"] and named_boot["reported"] is named_boot["bootstrap"]
    # never the tighter of the two chosen after seeing them: each method keeps its own width
    t_width = named_t["paired_t"].hi - named_t["paired_t"].lo
    boot_width = named_t["bootstrap"].hi - named_t["bootstrap"].lo
    assert t_width != pytest.approx(boot_width)
    assert named_t["reported"].hi - named_t["reported"].lo == pytest.approx(t_width)
    with pytest.raises(ValueError):
        paired_difference(top, bottom, method="tighter")


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
    assert ratio_reading(Estimate(0.72, note="fake tensors", kind=ESTIMATED)) == NOT_REPRODUCED  # so is an estimate
    assert ratio_reading(Estimate(0.52, deterministic=True)) == REPRODUCED  # and a deterministic figure
    assert ratio_reading(Estimate(0.5, note="one seed")) == INCONCLUSIVE
    # the verdict: quality, compute (time to the target) and memory (read by regime); memory not read: at best inconclusive
    assert claim_verdict(NOT_WORSE, REPRODUCED, REPRODUCED) == REPRODUCED
    assert claim_verdict(NOT_WORSE, REPRODUCED, None) == INCONCLUSIVE
    assert claim_verdict(INCONCLUSIVE, REPRODUCED, REPRODUCED) == INCONCLUSIVE
    assert claim_verdict(WORSE, REPRODUCED, REPRODUCED) == NOT_REPRODUCED
    assert claim_verdict(NOT_WORSE, NOT_REPRODUCED, None) == claim_verdict(NOT_WORSE, REPRODUCED, NOT_REPRODUCED) \
        == NOT_REPRODUCED


def test_completions_to_the_target_are_read_against_one():
    # the claim's band, 0.40-0.60 around 0.5 (± 20%), carried to 1: 0.80-1.20
    low, high = completions_band(0.5, [0.4, 0.6])
    assert (low, high) == (0.8, 1.2)
    equal = Estimate(1.02, 0.93, 1.10)  # GRPO as sample-efficient as PPO: what the claim predicts
    assert band_reading(equal, low, high) == REPRODUCED
    assert ratio_reading(equal, 0.5, 0.1) == NOT_REPRODUCED  # read against 0.5 it would say the opposite
    assert band_reading(Estimate(0.5, 0.45, 0.56), low, high) == NOT_REPRODUCED  # twice as efficient: not the claim


# ---------------------------------------------------------------- resources to a target, censored at the budget


def test_one_seeds_ratio_and_what_it_bounds():
    assert seed_ratio(ToTarget(40, True), ToTarget(80, True)) == (0.5, EXACT)
    # GRPO spent its whole budget (100) without reaching the target that PPO reached at 80: it needed more than
    # 100, so the ratio is at least 100/80
    assert seed_ratio(ToTarget(100, False), ToTarget(80, True)) == (1.25, AT_LEAST)
    # PPO never reached it in its 100; GRPO did at 40: at most 40/100
    assert seed_ratio(ToTarget(40, True), ToTarget(100, False)) == (0.4, AT_MOST)
    assert seed_ratio(ToTarget(100, False), ToTarget(100, False))[1] == UNKNOWN


def test_paired_ratio_by_hand():
    # per-seed ratios 0.5, 1, 2: logs -0.6931, 0, 0.6931; geometric mean 1; sd(log) 0.6931, se 0.6931/sqrt(3) = 0.40018,
    # t(0.975, 2) 4.3027: half-width 1.72186, interval exp(-+1.72186) = [0.17873, 5.5951]
    e = paired_ratio([0.5, 1.0, 2.0])
    assert (e.mean, e.lo, e.hi, e.n) == pytest.approx((1.0, 0.17873, 5.5951, 3), rel=1e-4)
    assert "paired by seed" in e.method
    # a deterministic figure (the same on every seed by construction): its value, no interval
    d = paired_ratio([0.834, 0.834], deterministic=True)
    assert d.mean == pytest.approx(0.834) and not d.has_interval and d.deterministic
    # identical ratios of a figure that is not deterministic: no zero-width interval claiming certainty
    assert not paired_ratio([1.0, 1.0, 1.0]).has_interval and "no spread" in paired_ratio([1.0, 1.0]).note
    assert not paired_ratio([0.5]).has_interval


def test_pairing_by_seed_is_not_a_ratio_of_means():
    # seed 0 is slow in both arms, seed 1 fast: GRPO needs exactly half of PPO in each seed
    top = {0: ToTarget(100.0, True), 1: ToTarget(10.0, True), 2: ToTarget(50.0, True)}
    bottom = {0: ToTarget(200.0, True), 1: ToTarget(20.0, True), 2: ToTarget(100.0, True)}
    paired, per_seed = censored_paired_ratio(top, bottom)
    assert per_seed == {0: (0.5, EXACT), 1: (0.5, EXACT), 2: (0.5, EXACT)}
    assert paired.mean == pytest.approx(0.5) and "no spread" in paired.note
    # unpaired, the seeds' spread swamps the ratio: 0.5 of means, an interval from about 0.13 to 1.9
    unpaired = ratio_ci([100.0, 10.0, 50.0], [200.0, 20.0, 100.0])
    assert unpaired.mean == pytest.approx(0.5) and unpaired.lo < 0.2 and unpaired.hi > 1.5
    # a seed finished in one arm only is left out, and said so
    top[3] = ToTarget(5.0, True)
    assert "seeds [3] left out: finished in one arm only" in censored_paired_ratio(top, bottom)[0].note


def test_a_seed_that_never_reaches_the_target_is_censored_at_its_budget_not_dropped():
    # GRPO reaches the target at 512 and 1,024 completions in seeds 0 and 1, never in seed 2 (budget 2,048);
    # PPO at 1,024 in all three: ratios 0.5, 1 and at least 2 (dropping seed 2 would give 0.71 from survivors)
    grpo = {0: ToTarget(512, True), 1: ToTarget(1024, True), 2: ToTarget(2048, False)}
    ppo = {0: ToTarget(1024, True), 1: ToTarget(1024, True), 2: ToTarget(1024, True)}
    e, per_seed = censored_paired_ratio(grpo, ppo)
    assert per_seed[2] == (2.0, AT_LEAST)
    # the bound: geometric mean of 0.5, 1, 2 = 1, interval [0.17873, 5.5951] as above, read one-sided
    assert e.bound == AT_LEAST and (e.mean, e.lo, e.hi) == pytest.approx((1.0, 0.17873, 5.5951), rel=1e-4)
    assert "the numerator never reached the target in seed 2, counted at its budget" in e.note
    assert band_reading(e, 0.4, 0.6) == INCONCLUSIVE  # at least 0.18 says nothing against 0.40-0.60
    # GRPO never reaches it (budget 2,048); PPO at 1,024, 800, 1,200: ratios at least 2, 2.56, 1.7067;
    # logs 0.69315, 0.94001, 0.53480: mean 0.72265, sd 0.20428, se 0.11794, half 4.3027 x 0.11794 = 0.50746:
    # the bound's interval starts at exp(0.21519) = 1.2401 > 0.60: GRPO needs more than the claim, whatever the truth
    never = {s: ToTarget(2048, False) for s in range(3)}
    e, _ = censored_paired_ratio(never, {0: ToTarget(1024, True), 1: ToTarget(800, True), 2: ToTarget(1200, True)})
    assert e.lo == pytest.approx(1.2401, rel=1e-3) and band_reading(e, 0.4, 0.6) == NOT_REPRODUCED
    # PPO never reaches it: an upper bound, read only below the band
    e, _ = censored_paired_ratio({0: ToTarget(100, True), 1: ToTarget(120, True)},
                                 {0: ToTarget(1000, False), 1: ToTarget(1000, False)})
    assert e.bound == AT_MOST and e.hi < 0.4 and band_reading(e, 0.4, 0.6) == NOT_REPRODUCED
    e, _ = censored_paired_ratio({0: ToTarget(500, True), 1: ToTarget(520, True)},
                                 {0: ToTarget(1000, False), 1: ToTarget(1000, False)})
    assert band_reading(e, 0.4, 0.6) == INCONCLUSIVE  # at most about 0.5: it could lie below the band
    # neither arm reached it in a seed, or bounds both ways: no ratio at all
    e, _ = censored_paired_ratio({0: ToTarget(2048, False), 1: ToTarget(512, True)},
                                 {0: ToTarget(2048, False), 1: ToTarget(1024, True)})
    assert e.mean is None and "neither arm reached the target in seed 0" in e.note
    e, _ = censored_paired_ratio({0: ToTarget(2048, False), 1: ToTarget(512, True)},
                                 {0: ToTarget(1024, True), 1: ToTarget(2048, False)})
    assert e.mean is None and "censored both ways" in e.note
    e, _ = censored_paired_ratio({0: ToTarget(0, True)}, {0: ToTarget(0, True)})  # reached before any training
    assert e.mean is None and "a figure of zero in seed 0" in e.note


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


@pytest.mark.parametrize("method", ["paired_t", "bootstrap"])
def test_simulated_comparisons_type_one_error_and_coverage(method):
    """200 simulated comparisons per truth at δ = 5 points: "not worse" at most 5% of the time when GRPO is
    truly 10 points worse (the test's type I error), and the interval the plan names covers the truth."""
    rows = {truth: quality_test(DESIGN, truth, margin=0.05, comparisons=200, method=method)
            for truth in (0.0, -0.03, -0.05, -0.10)}
    print("\ntruth    not worse  inconclusive  worse  coverage  (200 simulated comparisons each, 3 seeds x 1000 prompts)")
    for truth, r in rows.items():
        print(f"{100 * truth:+5.1f}    {r['not_worse']:9.1%}  {r['inconclusive']:12.1%}  {r['worse']:5.1%}  {r['coverage']:8.1%}")
    assert rows[-0.10]["not_worse"] <= 0.05
    assert rows[-0.05]["not_worse"] <= 0.05  # on the margin itself: about 2.5% expected
    for truth in (0.0, -0.03, -0.10):
        assert rows[truth]["coverage"] >= 0.93, (truth, rows[truth])
    if method == "paired_t":  # the plan's default has power at 3 seeds
        assert rows[0.0]["not_worse"] > rows[-0.03]["not_worse"] > rows[-0.10]["not_worse"]
        assert rows[-0.10]["worse"] > 0.2
    else:  # the bootstrap over prompts x seeds counts the prompts' noise twice and is read at S - 1 df: it is wider
        paired = quality_test(DESIGN, 0.0, margin=0.05, comparisons=200, method="paired_t")
        assert rows[0.0]["mean_width"] > paired["mean_width"] and rows[0.0]["not_worse"] <= paired["not_worse"]


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
