"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv
2503.20783): GRPO with its two biases removed.

The advantage is the reward minus the group mean, not divided by the group's std (which weighs
too-easy and too-hard prompts up), and the loss is summed over tokens and divided by a constant,
the number of completions times max_new_tokens, not by each completion's length (which makes short
right answers and long wrong ones cheaper). The paper's objective has no KL term: beta is 0 unless
set (or matched across arms with `harness compare --kl`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field

from harness.algorithms.base import Needs
from harness.algorithms.grpo import GRPO, group_advantages
from harness.algorithms.options import StrictModel


class DrGRPOConfig(StrictModel):
    beta: float = Field(0.0, ge=0, description="Weight of the k3 KL term to the reference in the loss; the paper's "
                                               "objective has none.")
    kl_reward_coef: float = Field(0.0, ge=0, description="k1 KL summed over each completion, subtracted from its reward.")
    eps_low: float = Field(0.2, gt=0, le=1, description="Clip the ratio below at 1 - eps_low.")
    eps_high: float = Field(0.2, gt=0, description="Clip the ratio above at 1 + eps_high.")


class DrGRPO(GRPO):
    name = "dr_grpo"
    Config = DrGRPOConfig

    @classmethod
    def declare_needs(cls, options, settings) -> Needs:
        # sum over tokens / (completions x max_new_tokens)
        return replace(super().declare_needs(options, settings), aggregation="constant")

    def advantages(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(scores, group_size, scale="none")
