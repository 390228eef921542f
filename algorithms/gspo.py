"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): GRPO's group advantages
with the importance ratio and its clip taken per completion instead of per token.

A completion's ratio is the geometric mean of its tokens' ratios, s_i = exp(mean over its tokens of
logp - old_logp) (length-normalised, so that long and short completions clip alike), clipped at
1 - eps_low and 1 + eps_high around 1 with the paper's small ranges (3e-4 and 4e-4, section 5.1): a
sequence ratio moves far less than a token's. As TRL's GRPOTrainer with importance_sampling_level=
"sequence" and loss_type="grpo": the per-completion loss -min(s_i A_i, clip(s_i) A_i) is broadcast over
its tokens and averaged like GRPO's loss. The paper has no KL term (beta 0); with one, the shared loop
adds beta x k3 as for every algorithm. With one optimizer step per rollout every ratio is 1 and GSPO
is GRPO (the paper cuts each rollout into four minibatches: optim.minibatches=4).
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.algorithms.batch import RolloutBatch
from harness.algorithms.grpo import GRPO, GRPOConfig
from harness.algorithms.ops import aggregate, masked_mean, masked_sum, ratio_stats


class GSPOConfig(GRPOConfig):
    beta: float = Field(0.0, ge=0, description="Weight of the k3 KL term to the reference in the loss: the paper "
                                               "sets none; for matched-KL comparisons.")
    eps_low: float = Field(3e-4, gt=0, le=1, description="Clip the sequence ratio below at 1 - eps_low (paper, "
                                                         "section 5.1).")
    eps_high: float = Field(4e-4, gt=0, description="Clip the sequence ratio above at 1 + eps_high.")


def sequence_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i `[B]`: the mean over each completion's tokens of logp - old_logp (0 for an empty completion)."""
    mask = mask.to(logps.dtype)
    return masked_sum(logps - old_logps, mask, dim=-1) / mask.sum(-1).clamp(min=1)


def gspo_loss(logps, old_logps, advantages, mask, eps_low=3e-4, eps_high=4e-4, aggregation="sequence",
              denominator=None, max_tokens=None):
    """Sequence-clipped surrogate: logps, old_logps, mask `[B, T]`; advantages `[B]`, one per completion.

    Returns (loss, stats): policy_loss, clipfrac and approx_kl as every algorithm reports them, per token
    (clipfrac: the share of tokens whose gradient the clip removed, here those of the clipped completions).
    """
    ratio = torch.exp(sequence_log_ratio(logps, old_logps, mask))  # [B]
    surrogate = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages)  # [B]
    # broadcast over the completion's tokens, as TRL does: "sequence" gives each completion's own loss back
    loss = aggregate(surrogate.unsqueeze(-1), mask, aggregation, denominator, max_tokens)
    with torch.no_grad():
        clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))  # [B]
        clipfrac = masked_mean(clipped.to(logps.dtype).unsqueeze(-1), mask.to(logps.dtype))  # over tokens
        approx_kl = ratio_stats(logps, old_logps, advantages, mask, eps_low, eps_high)["approx_kl"]
    return loss, {"policy_loss": loss.detach(), "clipfrac": clipfrac, "approx_kl": approx_kl}


class GSPO(GRPO):
    name = "gspo"
    Config = GSPOConfig

    def policy_loss(self, logps, mb: RolloutBatch, denominator):
        # GRPO's prepare leaves each completion's advantage on all its tokens (0 on padding): the first
        # token holds it, and an empty completion's row is 0 and weighs nothing
        o = self.options
        return gspo_loss(logps, mb.old_logps, mb.advantages[:, 0], mb.completion_mask, o.eps_low, o.eps_high,
                         self.needs.aggregation, denominator, self.settings.max_new_tokens)
