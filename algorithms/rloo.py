"""RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
from Human Feedback in LLMs", arXiv 2402.14740): REINFORCE with a leave-one-out baseline, no critic.

Each completion's baseline is the mean reward of the other G - 1 completions of its prompt, with no
std scaling. The whole completion is one action: its log-prob is the sum over tokens, and the KL
penalty to the reference is part of the reward, summed over the sequence (k1), as in the paper and
in TRL's RLOOTrainer. The ratio is clipped at the sequence level (REINFORCE itself at one epoch and
one minibatch, where the ratio is 1).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field

from harness.algorithms.base import Algorithm, Needs
from harness.algorithms.batch import RolloutBatch
from harness.algorithms.grpo import group_stats
from harness.algorithms.ops import masked_sum, ratio_stats
from harness.algorithms.options import StrictModel


class RLOOConfig(StrictModel):
    kl_coef: float = Field(0.05, ge=0, description="Sequence KL (k1, summed over tokens) subtracted from the reward "
                                                   "(TRL's beta).")
    kl_loss_coef: float = Field(0.0, ge=0, description="k3 KL in the loss instead (for matched-KL comparisons).")
    eps_low: float = Field(0.2, gt=0, le=1, description="Sequence ratio clipped below at 1 - eps_low.")
    eps_high: float = Field(0.2, gt=0, description="Sequence ratio clipped above at 1 + eps_high.")


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r_i minus the mean of the other G - 1 rewards of its group: `[N]` from `[N]` grouped contiguously.

    Equal to G / (G - 1) * (r_i - group mean).
    """
    if group_size < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 completions per prompt")
    grouped = rewards.view(-1, group_size)  # [N / G, G]
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(policy || reference) per completion `[B]`: sum over tokens of logp - ref."""
    return masked_sum(logps - ref_logps, mask.to(logps.dtype), dim=-1)


def rloo_loss(logps, old_logps, advantages, mask, eps_low=0.2, eps_high=0.2, denominator=None):
    """Clipped surrogate of whole completions: ratio = exp(sum of token log-ratios) `[B]`, advantages `[B]`.

    Returns (loss, stats): policy_loss, clipfrac (share of completions whose gradient the clip
    removed), approx_kl (per token, as every algorithm reports it).
    """
    mask = mask.to(logps.dtype)
    log_ratio = masked_sum(logps - old_logps, mask, dim=-1)  # [B]
    ratio = torch.exp(log_ratio)
    surrogate = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages)
    loss = surrogate.sum() / (denominator if denominator is not None else advantages.numel())
    with torch.no_grad():
        clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))
        token_stats = ratio_stats(logps, old_logps, advantages, mask, eps_low, eps_high)
    return loss, {"policy_loss": loss.detach(), "clipfrac": clipped.to(logps.dtype).mean(),
                  "approx_kl": token_stats["approx_kl"]}


class RLOO(Algorithm):
    name = "rloo"
    Config = RLOOConfig
    KL_OPTIONS = {"loss": "kl_loss_coef", "reward": "kl_coef"}

    @classmethod
    def declare_needs(cls, options, settings) -> Needs:
        # sequence: the minibatch's denominator is its number of completions
        return replace(super().declare_needs(options, settings), min_group_size=2, aggregation="sequence")

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        rewards = batch.scores
        if self.options.kl_coef and batch.ref_logps is not None:
            rewards = rewards - self.options.kl_coef * sequence_kl(batch.old_logps, batch.ref_logps, batch.completion_mask)
        batch.extras["sequence_advantages"] = leave_one_out_advantages(rewards, batch.group_size)  # [B]
        batch.advantages = batch.extras["sequence_advantages"].unsqueeze(-1) * batch.completion_mask
        return group_stats(batch.scores, batch.group_size)

    def policy_loss(self, logps, mb: RolloutBatch, denominator):
        return rloo_loss(logps, mb.old_logps, mb.extras["sequence_advantages"], mb.completion_mask,
                         self.options.eps_low, self.options.eps_high, denominator)
