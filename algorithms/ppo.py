"""PPO for language models (InstructGPT, arXiv 2203.02155) with a learned critic the policy's size.

The critic is a copy of the policy's decoder with a scalar value head, initialized from the
policy's weights. The per-token reward is -kl_coef * (logp - ref_logp), with the task's score added
at the last completion token; advantages come from GAE and are whitened over the batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from harness.algorithms.base import RolloutBatch, activation_scope, masked_mean, masked_whiten, minibatch_indices, options_from, policy_forward
from harness.algorithms.grpo import kl_k3, mean_stats


@dataclass
class PPOConfig:
    kl_coef: float = 0.05  # per-token KL penalty in the reward (TRL's former default)
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # policy ratio clip
    vf_clip: float = 0.2  # value clip around the rollout's values
    vf_coef: float = 0.1  # weight of the value loss
    critic_lr: float = 0.0  # critic AdamW learning rate; 0 uses the policy's
    whiten: bool = True  # whiten advantages over the batch


def token_rewards(scores, logps, ref_logps, kl_coef, mask):
    """Per-token rewards `[B, T]`: -kl_coef * (logp - ref) everywhere, plus the score at the last token."""
    mask = mask.to(logps.dtype)
    rewards = torch.zeros_like(logps)
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


def explained_variance(values, returns, mask) -> float:
    """1 - Var[returns - values] / Var[returns] over the masked positions (1 is a perfect critic)."""
    residual = returns - values
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return (1 - var_residual / var_returns.clamp(min=1e-8)).item()


def ppo_loss(logps, old_logps, advantages, values, old_values, returns, mask, clip_eps=0.2, vf_clip=0.2, vf_coef=0.1):
    """Clipped policy loss plus vf_coef times the clipped value loss, token means over `[B, T]`."""
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    pg_losses = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    policy_loss = masked_mean(pg_losses, mask)
    values_clipped = old_values + torch.clamp(values - old_values, -vf_clip, vf_clip)
    vf_losses = torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    value_loss = 0.5 * masked_mean(vf_losses, mask)
    loss = policy_loss + vf_coef * value_loss
    with torch.no_grad():
        delta = old_logps - logps
        stats = {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "clipfrac": masked_mean(((ratio - 1).abs() > clip_eps).to(mask.dtype), mask).item(),
            "vf_clipfrac": masked_mean(((values - old_values).abs() > vf_clip).to(mask.dtype), mask).item(),
            "approx_kl": masked_mean(torch.exp(-delta) + delta - 1, mask).item(),
        }
    return loss, stats


class ValueModel(nn.Module):
    """A decoder of the policy's architecture with a scalar head instead of the LM head."""

    def __init__(self, policy):
        super().__init__()
        self.backbone = copy.deepcopy(policy.get_decoder())  # same size, initialized from the policy
        self.backbone.requires_grad_(True)
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.normal_(self.value_head.weight, std=1 / (policy.config.hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: RolloutBatch) -> torch.Tensor:
        """Values `[B, T]`: the state before each completion token."""
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return values[:, batch.prompt_length - 1: -1]


class PPO:
    name = "ppo"
    Config = PPOConfig

    def __init__(self, policy, reference, optim, options: dict | None = None, seed: int = 0):
        self.cfg = options_from(PPOConfig, options or {})
        self.policy, self.reference, self.optim = policy, reference, optim
        device = next(policy.parameters()).device
        self.critic = ValueModel(policy).to(device)
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=self.cfg.critic_lr or optim.lr,
                                                  weight_decay=optim.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.activation_probe = None  # set by the harness to count saved activations

    @property
    def needs_reference(self) -> bool:
        return self.cfg.kl_coef > 0

    def trained_models(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer, "critic": self.critic_optimizer}

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        self.critic.eval()
        mask = batch.completion_mask
        values = self.critic(batch) * mask  # [B, T]
        rewards = token_rewards(batch.scores, batch.old_logps, batch.ref_logps, self.cfg.kl_coef, mask)
        advantages, returns = gae(rewards, values, mask, self.cfg.gamma, self.cfg.lam)
        batch.advantages = masked_whiten(advantages, mask) if self.cfg.whiten else advantages
        batch.extras.update(values=values, returns=returns)
        return {"explained_variance": explained_variance(values, returns, mask),
                "value_mean": masked_mean(values, mask).item()}

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        self.policy.train()
        self.critic.train()
        history = []
        for _ in range(self.optim.epochs):
            for index in minibatch_indices(batch.size, self.optim.minibatches, self.generator):
                mb = batch.select(index)
                with activation_scope(self.activation_probe):
                    logps, entropy = policy_forward(self.policy, mb, with_entropy=True)
                    values = self.critic(mb)
                loss, stats = ppo_loss(logps, mb.old_logps, mb.advantages, values, mb.extras["values"],
                                       mb.extras["returns"], mb.completion_mask, self.cfg.clip_eps,
                                       self.cfg.vf_clip, self.cfg.vf_coef)
                self.optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.optim.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.optim.max_grad_norm)
                self.optimizer.step()
                self.critic_optimizer.step()
                stats.update(loss=loss.item(), entropy=masked_mean(entropy.detach(), mb.completion_mask).item(),
                             grad_norm=grad_norm.item())
                if mb.ref_logps is not None:
                    stats["kl"] = masked_mean(kl_k3(logps.detach(), mb.ref_logps), mb.completion_mask).item()
                history.append(stats)
        self.policy.eval()
        self.critic.eval()
        return mean_stats(history)
