"""DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv
2503.14476): GRPO's group advantages with four changes.

- Clip-higher: the ratio is clipped at 1 - 0.2 below and 1 + 0.28 above, so that unlikely tokens
  can gain probability (entropy does not collapse).
- Token-level loss: every token of the batch weighs the same (sum over tokens / their number).
- Dynamic sampling: groups whose rewards are all equal carry no signal; they are dropped and more
  prompts are sampled until the batch is full (`filters_groups`: the harness's rollout does it, and
  every completion it samples counts against the budget).
- Overlong reward shaping: a completion within `overlong_buffer` tokens of max_new_tokens loses
  reward linearly, down to -overlong_penalty at the cap.
There is no KL term (beta = 0; the options exist so that `harness compare --kl` can match other arms).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field

from harness.algorithms.base import Needs
from harness.algorithms.batch import RolloutBatch
from harness.algorithms.grpo import GRPO, group_advantages, group_stats, reward_with_kl
from harness.algorithms.options import StrictModel


class DAPOConfig(StrictModel):
    eps_low: float = Field(0.2, gt=0, le=1, description="Clip the ratio below at 1 - eps_low.")
    eps_high: float = Field(0.28, gt=0, description="Clip-higher: clip the ratio above at 1 + eps_high.")
    overlong_buffer: float = Field(0.2, ge=0, le=1, description="Share of max_new_tokens before the cap where the "
                                                                "length penalty ramps (paper: 4096 of 20480).")
    overlong_penalty: float = Field(1.0, ge=0, description="The length penalty at max_new_tokens.")
    dynamic_sampling: bool = Field(True, description="Drop groups without reward spread and refill the batch.")
    max_generation_rounds: int = Field(3, ge=1, description="Rounds of sampling per step to fill the batch (verl's "
                                                            "max_num_gen_batches).")
    beta: float = Field(0.0, ge=0, description="k3 KL to the reference in the loss: DAPO drops it; for matched-KL "
                                               "comparisons only.")
    kl_reward_coef: float = Field(0.0, ge=0, description="k1 KL summed per completion, subtracted from its reward: "
                                                         "likewise for matched-KL comparisons only.")


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft length penalty `[B]`: 0 up to max_tokens - buffer, then falling linearly to -penalty at
    max_tokens: ((max_tokens - buffer) - length) / buffer * penalty."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    start = max_tokens - buffer
    return (torch.clamp(start - lengths.float(), max=0.0) / buffer * penalty).clamp(min=-penalty)


def has_spread(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """`[N / G]` True for each group whose rewards are not all equal."""
    grouped = scores.view(-1, group_size)
    return grouped.max(dim=1).values > grouped.min(dim=1).values


class DAPO(GRPO):
    name = "dapo"
    Config = DAPOConfig

    @classmethod
    def declare_needs(cls, options, settings) -> Needs:
        return replace(super().declare_needs(options, settings), aggregation="token",
                       filters_groups=options.dynamic_sampling)

    def buffer_tokens(self) -> int:
        return max(1, round(self.options.overlong_buffer * self.settings.max_new_tokens)) if self.options.overlong_buffer else 0

    def advantages(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(scores, group_size, scale="group")

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        lengths = batch.completion_mask.sum(-1)
        rewards = reward_with_kl(batch.scores, batch.old_logps, batch.ref_logps, batch.completion_mask,
                                 self.options.kl_reward_coef)
        shaped = rewards + overlong_penalty(lengths, self.settings.max_new_tokens, self.buffer_tokens(),
                                                 self.options.overlong_penalty).to(batch.scores.dtype)
        batch.advantages = self.advantages(shaped, batch.group_size).unsqueeze(-1) * batch.completion_mask
        return {**group_stats(batch.scores, batch.group_size), "overlong_penalty": (shaped - rewards).mean()}
