"""PPO for language models (InstructGPT, arXiv 2203.02155) with a learned critic the policy's size.

The critic is a copy of the policy's decoder with a scalar value head, initialized from the
policy's weights, trained by its own AdamW. The per-token reward is -kl_coef * (logp - ref_logp),
with the task's score added at the last completion token; advantages come from GAE and are
whitened over the batch. By default the critic is updated in its own pass after the policy's (verl,
OpenRLHF), so the two models' activations are never alive together; `critic_pass: joint` runs one
backward through both (old TRL's PolicyAndValueWrapper).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from harness.algorithms.base import Algorithm
from harness.algorithms.batch import RolloutBatch
from harness.algorithms.logprobs import autocast, checkpointing_is_on, checkpointing_on
from harness.algorithms.ops import (aggregate, clipped_surrogate, global_masked_mean, masked_mean, masked_whiten,
    ratio_stats, upcast)
from harness.algorithms.options import check_choice, check_range

CRITIC_PASSES = ("separate", "joint")


@dataclass
class PPOConfig:
    kl_coef: float = 0.05  # per-token k1 KL penalty in the reward (TRL's former default)
    kl_loss_coef: float = 0.0  # k3 KL in the loss instead (verl's use_kl_loss; for matched-KL comparisons)
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # policy ratio clip
    vf_clip: float = 0.2  # value clip around the rollout's values
    critic_lr: float = 0.0  # critic AdamW learning rate; 0 uses the policy's
    whiten: bool = True  # whiten advantages over the batch
    critic_pass: str = "separate"  # separate (verl, OpenRLHF) | joint (one backward through both models)
    critic_warmup_steps: int = 0  # first rollout steps that train the critic only (verl critic_warmup); they spend budget
    critic_warmup_head_only: bool = False  # during the warm-up train only the value head, not the critic's body

    def __post_init__(self):
        check_range("kl_coef", self.kl_coef, 0)
        check_range("kl_loss_coef", self.kl_loss_coef, 0)
        check_range("critic_warmup_steps", self.critic_warmup_steps, 0)
        check_range("gamma", self.gamma, 0, 1)
        check_range("lam", self.lam, 0, 1)
        check_range("clip_eps", self.clip_eps, 0, 1, low_open=True)
        check_range("vf_clip", self.vf_clip, 0, low_open=True)
        check_range("critic_lr", self.critic_lr, 0)
        check_choice("critic_pass", self.critic_pass, CRITIC_PASSES)


def token_rewards(scores, logps, ref_logps, kl_coef, mask):
    """Per-token rewards `[B, T]`: -kl_coef * (logp - ref) everywhere, plus the score at the last token."""
    mask = mask.to(scores.dtype)
    rewards = torch.zeros_like(mask)  # logps may be absent: without a KL term the sampler's are not scored
    if kl_coef and ref_logps is not None:
        rewards = -kl_coef * (logps - ref_logps)
    rewards = rewards * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)  # [B] index of each completion's last token
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalized advantage estimation over right-padded `[B, T]` tensors -> (advantages, returns).

    The value after the last completion token is 0 (the episode ends there).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@torch.no_grad()
def explained_variance(values, returns, mask) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over the masked positions of the whole step (1 is a perfect critic)."""
    residual = returns - values
    var_returns = global_masked_mean((returns - global_masked_mean(returns, mask)) ** 2, mask)
    var_residual = global_masked_mean((residual - global_masked_mean(residual, mask)) ** 2, mask)
    return 1 - var_residual / var_returns.clamp(min=1e-8)


def ppo_policy_loss(logps, old_logps, advantages, mask, clip_eps=0.2, denominator=None):
    """Clipped surrogate, token mean over `[B, T]` -> (loss, stats: policy_loss, clipfrac, approx_kl)."""
    loss = aggregate(clipped_surrogate(logps, old_logps, advantages, clip_eps, clip_eps), mask, "token", denominator)
    return loss, {"policy_loss": loss.detach(), **ratio_stats(logps, old_logps, advantages, mask, clip_eps, clip_eps)}


def value_loss(values, old_values, returns, mask, vf_clip=0.2, denominator=None):
    """Clipped value loss 0.5 * max((v - R)^2, (clip(v, v_old +- vf_clip) - R)^2), token mean.

    Returns (loss, stats: value_loss, vf_clipfrac). The critic has its own optimizer, so no value
    coefficient: Adam is invariant to a loss's scale.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -vf_clip, vf_clip)
    losses = torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    loss = 0.5 * aggregate(losses, mask, "token", denominator)
    with torch.no_grad():
        clipfrac = masked_mean(((values - old_values).abs() > vf_clip).to(values.dtype), mask.to(values.dtype))
    return loss, {"value_loss": loss.detach(), "vf_clipfrac": clipfrac}


class ValueModel(nn.Module):
    """A decoder of the policy's architecture with a scalar head instead of the LM head."""

    def __init__(self, policy):
        super().__init__()
        self.backbone = copy.deepcopy(policy.get_decoder())  # same size, initialized from the policy
        self.backbone.requires_grad_(True)
        if checkpointing_is_on(policy):
            checkpointing_on(self.backbone)
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.normal_(self.value_head.weight, std=1 / (policy.config.hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(device=next(self.backbone.parameters()).device,
                           dtype=next(self.backbone.parameters()).dtype)

    def forward(self, batch: RolloutBatch) -> torch.Tensor:
        """Values `[B, T, 1]`: the state before each completion token. Callers squeeze the last dimension: a
        view returned from an FSDP2 root is a tensor whose pre-backward hook an in-place op would drop."""
        length = batch.completion_mask.shape[1]
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
        hidden = hidden[:, -(length + 1):-1]  # [B, T, H] the states that predict each completion token
        return upcast(self.value_head(hidden))


class PPO(Algorithm):
    name = "ppo"
    Config = PPOConfig
    uses_critic = True
    KL_OPTIONS = {"loss": "kl_loss_coef", "reward": "kl_coef"}

    def __init__(self, policy, options, settings, seed=0):
        self.critic = ValueModel(policy)
        super().__init__(policy, options, settings, seed)

    def build_optimizers(self) -> None:
        super().build_optimizers()
        s = self.settings
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=self.options.critic_lr or s.lr,
                                                  weight_decay=s.weight_decay)

    @property
    def kl_loss_coef(self) -> float:
        return self.options.kl_loss_coef

    def policy_frozen(self) -> bool:
        """During the critic's warm-up the policy does not move; with head_only, neither does the critic's body."""
        warming = self.updates < self.options.critic_warmup_steps
        self.critic.backbone.requires_grad_(not (warming and self.options.critic_warmup_head_only))
        return warming

    @property
    def critic_pass(self) -> str:
        return self.options.critic_pass

    def trained_models(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer, "critic": self.critic_optimizer}

    @torch.no_grad()
    def compute_values(self, batch: RolloutBatch) -> None:
        self.critic.eval()
        with autocast(self.critic, self.settings.autocast_dtype):
            values = torch.cat([self.critic(part).squeeze(-1) for part in batch.split(self.settings.logprob_batch_size)])
        batch.values = values * batch.completion_mask  # [B, T]

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        mask = batch.completion_mask
        rewards = token_rewards(batch.scores, batch.old_logps, batch.ref_logps, self.options.kl_coef, mask)
        advantages, batch.returns = gae(rewards, batch.values, mask, self.options.gamma, self.options.lam)
        batch.advantages = masked_whiten(advantages, mask) if self.options.whiten else advantages
        return {"explained_variance": explained_variance(batch.values, batch.returns, mask),
                "value_mean": global_masked_mean(batch.values, mask)}

    def policy_loss(self, logps, mb: RolloutBatch, denominator):
        return ppo_policy_loss(logps, mb.old_logps, mb.advantages, mb.completion_mask, self.options.clip_eps,
                               denominator)

    def critic_loss(self, mb: RolloutBatch, denominator):
        return value_loss(self.critic(mb).squeeze(-1), mb.values, mb.returns, mb.completion_mask, self.options.vf_clip,
                          denominator)
