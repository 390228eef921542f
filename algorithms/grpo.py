"""GRPO (DeepSeekMath, arXiv 2402.03300, section 4.1): group-relative advantages, no critic.

The loss is the clipped surrogate with the k3 estimate of KL to the reference added in the loss
(not in the reward), averaged per sequence then over the batch, as in the paper's equation (3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.algorithms.base import RolloutBatch, activation_scope, masked_mean, minibatch_indices, options_from, policy_forward

AGGREGATIONS = ("sequence", "token", "dr_grpo")
SCALES = ("group", "batch", "none")


@dataclass
class GRPOConfig:
    beta: float = 0.04  # weight of the k3 KL term to the reference (paper: 0.04)
    eps_low: float = 0.2  # clip ratio below at 1 - eps_low
    eps_high: float = 0.2  # clip ratio above at 1 + eps_high (DAPO raises it to 0.28)
    scale: str = "group"  # advantage scaling: group std (paper) | batch std | none (Dr. GRPO)
    aggregation: str = "sequence"  # sequence (paper) | token (DAPO) | dr_grpo (sum / max tokens)
    std_eps: float = 1e-4  # added to the std before dividing


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


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp, >= 0.

    http://joschu.net/blog/kl-approx.html
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str, max_tokens: int | None = None) -> torch.Tensor:
    """Reduce a `[B, T]` loss to a scalar.

    sequence: mean over sequences of each sequence's token mean (GRPO paper);
    token: sum over all tokens / number of tokens (DAPO);
    dr_grpo: sum over all tokens / (B * max_tokens), a constant normalizer (Dr. GRPO).
    """
    if aggregation == "sequence":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if aggregation == "token":
        return masked_mean(per_token, mask)
    if aggregation == "dr_grpo":
        return (per_token * mask).sum() / (mask.shape[0] * (max_tokens or mask.shape[1]))
    raise ValueError(f"unknown aggregation '{aggregation}'; valid: {', '.join(AGGREGATIONS)}")


def grpo_loss(logps, old_logps, advantages, mask, eps_low=0.2, eps_high=0.2, beta=0.04, ref_logps=None,
              aggregation="sequence", max_tokens=None):
    """Clipped surrogate plus beta * k3 KL, all `[B, T]`; advantages `[B]` or `[B, T]`.

    Returns (loss, stats) with stats detached floats: policy_loss, kl, clipfrac, approx_kl.
    """
    mask = mask.to(logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1] broadcasts over tokens
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    surrogate = torch.min(ratio * advantages, clipped_ratio * advantages)  # [B, T]
    per_token = -surrogate
    kl = torch.zeros_like(logps)
    if beta and ref_logps is not None:
        kl = kl_k3(logps, ref_logps)
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, aggregation, max_tokens)
    with torch.no_grad():
        was_clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))
        stats = {
            "policy_loss": aggregate(-surrogate, mask, aggregation, max_tokens).item(),
            "kl": masked_mean(kl, mask).item(),
            "clipfrac": masked_mean(was_clipped.to(mask.dtype), mask).item(),
            "approx_kl": masked_mean(kl_k3(logps, old_logps), mask).item(),  # new policy vs the sampler
        }
    return loss, stats


def group_stats(rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    """zero_adv_frac: share of groups whose rewards are all equal (no learning signal)."""
    grouped = rewards.view(-1, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return {"zero_adv_frac": (spread == 0).float().mean().item(),
            "reward_std": grouped.std(dim=1).mean().item()}


def mean_stats(history: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(h[key] for h in history) / len(history) for key in history[0]}


class GRPO:
    name = "grpo"
    Config = GRPOConfig

    def __init__(self, policy, reference, optim, options: dict | None = None, seed: int = 0):
        self.cfg = options_from(GRPOConfig, options or {})
        if self.cfg.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation '{self.cfg.aggregation}'; valid: {', '.join(AGGREGATIONS)}")
        if self.cfg.scale not in SCALES:
            raise ValueError(f"unknown scale '{self.cfg.scale}'; valid: {', '.join(SCALES)}")
        self.policy, self.reference, self.optim = policy, reference, optim
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.activation_probe = None  # set by the harness to count saved activations

    @property
    def needs_reference(self) -> bool:
        return self.cfg.beta > 0

    def trained_models(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        advantages = group_advantages(batch.scores, batch.group_size, self.cfg.scale, self.cfg.std_eps)
        batch.advantages = advantages.unsqueeze(-1) * batch.completion_mask  # [B, T]
        return group_stats(batch.scores, batch.group_size)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        self.policy.train()
        history = []
        for _ in range(self.optim.epochs):
            for index in minibatch_indices(batch.size, self.optim.minibatches, self.generator):
                mb = batch.select(index)
                with activation_scope(self.activation_probe):
                    logps, entropy = policy_forward(self.policy, mb, with_entropy=True)
                loss, stats = grpo_loss(logps, mb.old_logps, mb.advantages, mb.completion_mask,
                                        self.cfg.eps_low, self.cfg.eps_high, self.cfg.beta, mb.ref_logps,
                                        self.cfg.aggregation, max_tokens=mb.completion_mask.shape[1])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.optim.max_grad_norm)
                self.optimizer.step()
                stats.update(loss=loss.item(), entropy=masked_mean(entropy.detach(), mb.completion_mask).item(),
                             grad_norm=grad_norm.item())
                history.append(stats)
        self.policy.eval()
        return mean_stats(history)
