"""REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
Models", arXiv 2501.03262): PPO's tricks without a critic.

The per-token reward is the score at the last completion token minus kl_coef times the k1 KL to the
reference on every token (PPO's reward); the advantage is the reward-to-go, normalised over the
whole batch (not the group); the loss is PPO-clip, token mean. The `baseline` variant, as verl has
it (REINFORCE++-baseline), first subtracts the group's mean of the summed reward, then normalises
over the batch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field

from harness.algorithms.base import Algorithm, Needs
from harness.algorithms.batch import RolloutBatch
from harness.algorithms.grpo import group_stats
from harness.algorithms.ops import masked_whiten
from harness.algorithms.options import StrictModel
from harness.algorithms.ppo import ppo_policy_loss, token_rewards


class ReinforcePPConfig(StrictModel):
    kl_coef: float = Field(0.01, ge=0, description="Per-token k1 KL in the reward (OpenRLHF's init_kl_coef).")
    kl_loss_coef: float = Field(0.0, ge=0, description="k3 KL in the loss instead (for matched-KL comparisons).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of the reward-to-go.")
    clip_eps: float = Field(0.2, gt=0, le=1, description="PPO ratio clip.")
    baseline: bool = Field(False, description="REINFORCE++-baseline: subtract the group mean of the summed reward "
                                              "first (verl).")


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Returns `[B, T]`: sum over t' >= t of gamma^(t' - t) r_t', within each completion."""
    mask = mask.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def reinforce_pp_advantages(rewards, mask, group_size: int, gamma: float = 1.0, baseline: bool = False):
    """Advantages `[B, T]` from token rewards `[B, T]`, normalised over every completion token of the batch."""
    if baseline:
        totals = (rewards * mask).sum(-1).view(-1, group_size)  # [B / G, G]
        centred = (totals - totals.mean(dim=1, keepdim=True)).reshape(-1)
        return masked_whiten(centred.unsqueeze(-1) * mask, mask)
    return masked_whiten(reward_to_go(rewards, mask, gamma), mask)


class ReinforcePP(Algorithm):
    name = "reinforce_pp"
    Config = ReinforcePPConfig
    KL_OPTIONS = {"loss": "kl_loss_coef", "reward": "kl_coef"}

    @classmethod
    def declare_needs(cls, options, settings) -> Needs:
        return replace(super().declare_needs(options, settings), min_group_size=2 if options.baseline else 1)

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        mask = batch.completion_mask
        rewards = token_rewards(batch.scores, batch.old_logps, batch.ref_logps, self.options.kl_coef, mask)
        batch.advantages = reinforce_pp_advantages(rewards, mask, batch.group_size, self.options.gamma,
                                                   self.options.baseline)
        return group_stats(batch.scores, batch.group_size) if batch.group_size > 1 else {}

    def policy_loss(self, logps, mb: RolloutBatch, denominator):
        return ppo_policy_loss(logps, mb.old_logps, mb.advantages, mb.completion_mask, self.options.clip_eps,
                               denominator)
