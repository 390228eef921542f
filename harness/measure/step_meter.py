"""The measurement of one arm's steps: phase seconds and CUDA peaks on every step, live-tensor peaks
on the tracked steps, and FLOPs (the step record they go into: harness.results.step_record).

Live tensors are tracked on the second step and every `run.memory_every` steps after (from the
second step on every optimizer holds its state: the first step is not the steady state). The
tracker is a dispatch mode and costs time on every op, so tracked steps are left out of time per step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch

from harness.measure.live_tensors import LiveTensors
from harness.measure.probes import Probes, model_flops


def is_tracked_step(step: int, every: int, total_steps: int) -> bool:
    """Step indices count from 0: index 1 (the second step) and every `every` steps after it; a
    one-step run tracks its only step.

    >>> [s for s in range(25) if is_tracked_step(s, 10, 25)]
    [1, 11, 21]
    >>> [s for s in range(3) if is_tracked_step(s, 1, 3)], is_tracked_step(0, 10, 1)
    ([0, 1, 2], True)
    """
    if every <= 0:
        return False
    if total_steps <= 1:
        return True
    return every == 1 or (step >= 1 and (step - 1) % every == 0)


class StepMeter:
    """Phase contexts for the rollout and the algorithms' update loop (the `Meter` they expect)."""

    def __init__(self, probes: Probes, live: LiveTensors | None):
        self.probes, self.live = probes, live
        self.tracked = False

    @contextmanager
    def step(self, tracked: bool):
        """One training step; with `tracked`, under the live-tensor tracker."""
        self.tracked = tracked and self.live is not None
        try:
            with self.live if self.tracked else nullcontext():
                yield
        finally:
            self.tracked_peaks = dict(self.live.step_peaks) if self.tracked else {}
            self.tracked = False

    @contextmanager
    def phase(self, name: str):
        with self.probes.phase(name), (self.live.phase(name) if self.tracked else nullcontext()):
            yield

    def retag_rollout(self, batch) -> None:
        """From now on the rollout batch's tensors count as `rollout`, not as the activations that made them."""
        if self.tracked:
            self.live.retag_rollout(batch.tensors())


def step_flops(model_sizes: dict[str, int], sequence_tokens: int, epochs: int, has_reference: bool) -> float:
    """Model FLOPs of one step (arithmetic: 2N per token forward, 6N with backward), each model by its own size.

    generate, old log-probs (and reference log-probs) with the policy's size; values and the critic's
    update with the critic's own size (no LM head).
    """
    policy, critic = model_sizes["policy"], model_sizes.get("critic", 0)
    forward = model_flops(policy, sequence_tokens, backward=False) * (2 + has_reference)
    forward += model_flops(critic, sequence_tokens, backward=False)
    training = sum(model_flops(size, sequence_tokens * epochs, backward=True) for size in (policy, critic) if size)
    return forward + training


def to_floats(stats: dict[str, torch.Tensor | float]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()}


def non_finite(stats: dict[str, float]) -> str | None:
    """The first statistic that is NaN or infinite (a diverged step), or None."""
    for name, value in stats.items():
        if not math.isfinite(value):
            return f"{name} is {value}"
    return None
