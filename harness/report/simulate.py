"""Simulated comparisons with a known truth: how often the quality test says "not worse", whether its
interval covers the truth, and the difference the plan can detect, by the code the report runs.

The model is the plan's (harness.report.stats.pair_sd): every prompt has a difficulty shared by both
arms (its solve probability, uniform around the expected accuracy), every (arm, seed) a training
effect (normal, SD seed_sd, cut at ±4 SD), GRPO's solve probabilities are PPO's + the truth, and each
prompt is solved or not independently. The truth is then exactly the difference in expected accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.report.stats import LEVEL, bootstrap_bounds, paired_t_bounds

DIFFICULTY_HALF_WIDTH = 0.3  # prompt solve probabilities spread over expected accuracy ± this


@dataclass(frozen=True)
class Design:
    seeds: int
    prompts: int
    seed_sd: float = 0.02
    accuracy: float = 0.5  # expected accuracy of PPO's arm


def per_prompt_differences(rng: np.random.Generator, design: Design, truth: float, comparisons: int) -> np.ndarray:
    """GRPO − PPO solved flags, `[comparisons, seeds, prompts]`, each comparison with its own prompts."""
    c, s, p = comparisons, design.seeds, design.prompts
    half = min(DIFFICULTY_HALF_WIDTH, design.accuracy - 0.05, 0.95 - design.accuracy)
    difficulty = rng.uniform(design.accuracy - half, design.accuracy + half, (c, 1, p))

    def effects() -> np.ndarray:  # [c, s, 1]: one training effect per (arm, seed)
        return np.clip(rng.normal(0.0, design.seed_sd, (c, s, 1)), -4 * design.seed_sd, 4 * design.seed_sd)
    top = np.clip(difficulty + truth + effects(), 0, 1)
    bottom = np.clip(difficulty + effects(), 0, 1)
    return (rng.random((c, s, p)) < top).astype(np.float64) - (rng.random((c, s, p)) < bottom)


def reported_bounds(per_prompt: np.ndarray, method: str = "paired_t",
                    level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the interval the verdict reports: the one the plan names (paired t or bootstrap)."""
    if method == "bootstrap":
        _, lo, hi = bootstrap_bounds(per_prompt, level)
    else:
        _, lo, hi = paired_t_bounds(per_prompt.mean(-1), level)
    return lo, hi


def quality_test(design: Design, truth: float, margin: float, comparisons: int = 200,
                 seed: int = 0, method: str = "paired_t") -> dict[str, float]:
    """Shares of simulated comparisons read not worse / worse / inconclusive at `margin`, and coverage."""
    rng = np.random.default_rng(seed)
    lo, hi = reported_bounds(per_prompt_differences(rng, design, truth, comparisons), method)
    not_worse, worse = lo > -margin, hi < -margin
    return {"truth": truth, "comparisons": comparisons, "method": method, "not_worse": float(not_worse.mean()),
            "worse": float(worse.mean()), "inconclusive": float((~not_worse & ~worse).mean()),
            "coverage": float(((lo <= truth) & (truth <= hi)).mean()), "mean_width": float((hi - lo).mean())}


def detection_rate(design: Design, truth: float, comparisons: int, seed: int = 0, method: str = "paired_t") -> float:
    """Share of simulated comparisons whose reported interval excludes zero."""
    rng = np.random.default_rng(seed)
    lo, hi = reported_bounds(per_prompt_differences(rng, design, truth, comparisons), method)
    return float(((lo > 0) | (hi < 0)).mean())


def simulated_detectable_difference(design: Design, guess: float, power: float = 0.8, comparisons: int = 400,
                                    seed: int = 0, method: str = "paired_t") -> float:
    """The true difference detected with `power`, interpolated on a grid of truths around `guess`."""
    truths = guess * np.array([0.4, 0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4, 1.7, 2.0])
    rates = np.array([detection_rate(design, -t, comparisons, seed + i, method) for i, t in enumerate(truths)])
    rates = np.maximum.accumulate(rates)  # power rises with the gap: smooth out simulation noise
    if rates[-1] < power:
        return float("inf")
    return float(np.interp(power, rates, truths))
