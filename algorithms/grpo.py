"""GRPO (DeepSeekMath, arXiv 2402.03300, section 4.1): group-relative advantages, no critic.

The loss is the clipped surrogate with the k3 estimate of KL to the reference added in the loss
(not in the reward), averaged per sequence then over the batch, as in the paper's equation (3).
`grpo_loss` is that equation whole; the GRPO class leaves its KL term (`beta`) to the shared loop,
which adds it for every algorithm alike.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, get_args

import torch
from pydantic import Field

from harness.algorithms.base import Algorithm, Needs
from harness.algorithms.batch import RolloutBatch
from harness.algorithms.ops import aggregate, clipped_surrogate, kl_loss_term, ratio_stats
from harness.algorithms.ops import kl_k3  # noqa: F401  (DESIGN.md's API: algorithms.grpo.kl_k3)
from harness.algorithms.options import StrictModel

Scale = Literal["group", "batch", "none"]
SCALES = get_args(Scale)


class GRPOConfig(StrictModel):
    beta: float = Field(0.04, ge=0, description="Weight of the k3 KL term to the reference in the loss (paper: 0.04).")
    kl_reward_coef: float = Field(0.0, ge=0, description="k1 KL summed over each completion, subtracted from its "
                                                         "reward before the group baseline.")
    eps_low: float = Field(0.2, gt=0, le=1, description="Clip the ratio below at 1 - eps_low.")
    eps_high: float = Field(0.2, gt=0, description="Clip the ratio above at 1 + eps_high (DAPO raises it to 0.28).")
    scale: Scale = Field("group", description="Advantage scaling: group std (paper), batch std, or none.")
    aggregation: Literal["sequence", "token"] = Field(
        "sequence", description="Loss over tokens: sequence (paper: mean of sequence means) or token (DAPO: mean of tokens).")
    std_eps: float = Field(1e-4, ge=0, description="Added to the std before dividing.")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Outcome advantages `[N]` from rewards `[N]` grouped contiguously by prompt.

    group: (r - group mean) / (group std + eps); batch: divided by the batch std; none: r - mean.
    A group whose rewards are all equal gets 0 whatever the scale.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # [N / G, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale '{scale}'; valid: {', '.join(SCALES)}")
    return centred.reshape(-1)


def grpo_loss(logps, old_logps, advantages, mask, eps_low=0.2, eps_high=0.2, beta=0.04, ref_logps=None,
              aggregation="sequence", denominator=None, max_tokens=None):
    """Clipped surrogate plus beta * k3 KL, all `[B, T]`; advantages `[B]` or `[B, T]`.

    Returns (loss, stats): policy_loss (the surrogate's share of the loss), clipfrac, approx_kl.
    """
    surrogate = clipped_surrogate(logps, old_logps, advantages, eps_low, eps_high)  # [B, T]
    policy_loss = aggregate(surrogate, mask, aggregation, denominator, max_tokens)
    loss = policy_loss
    if beta and ref_logps is not None:
        loss = loss + kl_loss_term(logps, ref_logps, mask, beta, aggregation, denominator, max_tokens)
    stats = {"policy_loss": policy_loss.detach(), **ratio_stats(logps, old_logps, advantages, mask, eps_low, eps_high)}
    return loss, stats


@torch.no_grad()
def group_stats(rewards: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """zero_adv_frac: share of groups whose rewards are all equal (no learning signal); reward_std: mean within-group std."""
    grouped = rewards.view(-1, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return {"zero_adv_frac": (spread == 0).float().mean(), "reward_std": grouped.std(dim=1).mean()}


def reward_with_kl(scores, logps, ref_logps, mask, coef: float) -> torch.Tensor:
    """Scores `[B]` minus coef times the k1 KL of each completion, summed over its tokens."""
    if not coef or ref_logps is None:
        return scores
    return scores - coef * ((logps - ref_logps) * mask).sum(-1)


class GRPO(Algorithm):
    name = "grpo"
    Config = GRPOConfig
    KL_OPTIONS = {"loss": "beta", "reward": "kl_reward_coef"}

    @classmethod
    def declare_needs(cls, options, settings) -> Needs:
        # a variant whose options choose no aggregation (Dr. GRPO, DAPO) sets its own
        return replace(super().declare_needs(options, settings), min_group_size=2,
                       aggregation=getattr(options, "aggregation", "sequence"))

    def advantages(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        """Per-completion advantages `[B]`."""
        return group_advantages(scores, group_size, self.options.scale, self.options.std_eps)

    def prepare(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        rewards = reward_with_kl(batch.scores, batch.old_logps, batch.ref_logps, batch.completion_mask,
                                 self.options.kl_reward_coef)
        advantages = self.advantages(rewards, batch.group_size)
        batch.advantages = advantages.unsqueeze(-1) * batch.completion_mask  # [B, T]
        return group_stats(batch.scores, batch.group_size)

    def policy_loss(self, logps, mb: RolloutBatch, denominator):
        # beta 0: the shared loop adds the KL term (`needs.kl_loss_coef` is beta), for every algorithm alike
        o = self.options
        return grpo_loss(logps, mb.old_logps, mb.advantages, mb.completion_mask, o.eps_low, o.eps_high, 0.0,
                         None, self.needs.aggregation, denominator, self.settings.max_new_tokens)
