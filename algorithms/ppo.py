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
import dataclasses
from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from harness.algorithms.adapters import (CRITIC_ADAPTER, adapter_modules, adapter_on, is_lora, lora_settings,
                                        strip_adapters, trained_parameters)
from harness.algorithms.base import Algorithm, CriticPass, Needs
from harness.algorithms.batch import RolloutBatch
from harness.algorithms.logprobs import autocast, checkpointing_is_on, checkpointing_on, logprob_rows
from harness.algorithms.ops import (aggregate, clipped_surrogate, global_masked_mean, masked_mean, masked_whiten,
    ratio_stats, upcast)
from harness.algorithms.options import StrictModel

CriticBase = Literal["separate", "shared"]

class PPOConfig(StrictModel):
    kl_coef: float = Field(0.05, ge=0, description="Per-token k1 KL penalty in the reward (TRL's former default).")
    kl_loss_coef: float = Field(0.0, ge=0, description="k3 KL in the loss instead (verl's use_kl_loss; for "
                                                       "matched-KL comparisons).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_eps: float = Field(0.2, gt=0, le=1, description="Policy ratio clip.")
    vf_clip: float = Field(0.2, gt=0, description="Value clip around the rollout's values.")
    critic_lr: float = Field(0.0, ge=0, description="Critic AdamW learning rate; 0 uses the policy's.")
    whiten: bool = Field(True, description="Whiten advantages over the batch.")
    critic_pass: CriticPass = Field("separate", description="separate (verl, OpenRLHF) or joint (one backward "
                                                            "through both models).")
    critic_warmup_steps: int = Field(0, ge=0, description="First rollout steps that train the critic only (verl "
                                                          "critic_warmup); they spend budget.")
    critic_warmup_head_only: bool = Field(False, description="During the warm-up train only the value head, not "
                                                             "the critic's body.")
    critic_base: CriticBase = Field("separate", description="Under LoRA (model.lora.rank > 0): separate (the critic's "
                                    "own frozen base, adapters, value head) or shared (a second adapter and a value "
                                    "head on the policy's frozen base).")


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


def value_head(hidden_size: int, like: torch.Tensor) -> nn.Linear:
    head = nn.Linear(hidden_size, 1)
    nn.init.normal_(head.weight, std=1 / (hidden_size + 1))
    nn.init.zeros_(head.bias)
    return head.to(device=like.device, dtype=like.dtype)


def values_of(decoder, head: nn.Linear, batch: RolloutBatch) -> torch.Tensor:
    """Values `[B, T, 1]` from a decoder and a value head: the state before each completion token. Callers
    squeeze the last dimension: a view returned from an FSDP2 root is a tensor whose pre-backward hook an
    in-place op would drop."""
    length = batch.completion_mask.shape[1]
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=position_ids, use_cache=False).last_hidden_state
    return completion_values(hidden, head, length)


def completion_values(hidden: torch.Tensor, head: nn.Linear, length: int) -> torch.Tensor:
    """The value head on the `[B, T, H]` states that predict each of the last `length` (completion) tokens."""
    return upcast(head(hidden[:, -(length + 1):-1]))


class ValueModel(nn.Module):
    """A decoder of the policy's architecture with a scalar head instead of the LM head.

    Under LoRA the decoder is its own frozen copy of the policy's base with adapters of the policy's LoRA
    config (critic_base: separate): the value head and the adapters train."""

    def __init__(self, policy):
        super().__init__()
        if is_lora(policy):
            from peft import get_peft_model
            decoder = strip_adapters(copy.deepcopy(policy.get_base_model().get_decoder()))
            settings = lora_settings(policy)  # its target modules by leaf name: the decoder has no `model.` prefix
            settings = dataclasses.replace(copy.deepcopy(settings), task_type=None,
                                           target_modules={name.split(".")[-1] for name in settings.target_modules})
            self.backbone = get_peft_model(decoder, settings)
        else:
            self.backbone = copy.deepcopy(policy.get_decoder())  # same size, initialized from the policy
            self.backbone.requires_grad_(True)
        if checkpointing_is_on(policy):
            checkpointing_on(self.backbone)
        self.value_head = value_head(policy.config.hidden_size, next(self.backbone.parameters()))

    def trained_parameters(self) -> list[nn.Parameter]:
        return [*trained_parameters(self.backbone), *self.value_head.parameters()]

    def body_parameters(self) -> list[nn.Parameter]:
        return trained_parameters(self.backbone)

    def forward(self, batch: RolloutBatch) -> torch.Tensor:
        return values_of(self.backbone, self.value_head, batch)


class SharedBaseValueModel(nn.Module):
    """The critic on the policy's own frozen base (critic_base: shared): a second adapter, switched on by name
    for the critic's passes (multi-adapter peft), and a value head. Its modules are the adapter's and the head,
    so its parameters and state are what it trains; the base is the policy's, held outside the module tree."""

    def __init__(self, policy):
        super().__init__()
        if not is_lora(policy):
            raise ValueError("algorithms.ppo.critic_base=shared needs LoRA (model.lora.rank > 0): the shared base "
                             "is the policy's frozen base")
        flags = [(p, p.requires_grad) for p in policy.parameters()]
        policy.add_adapter(CRITIC_ADAPTER, copy.deepcopy(lora_settings(policy)))
        for p, flag in flags:  # peft marks the inactive adapter untrainable; both adapters train here
            p.requires_grad_(flag)
        self.adapter = nn.ModuleList(adapter_modules(policy, CRITIC_ADAPTER))
        self.adapter.requires_grad_(True)
        self._policy = (policy,)  # not a submodule: the policy owns its base and is counted there
        self.value_head = value_head(policy.config.hidden_size, next(policy.parameters()))

    def trained_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def body_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    def forward(self, batch: RolloutBatch) -> torch.Tensor:
        policy = self._policy[0]
        root = policy.get_base_model()
        with adapter_on(policy, CRITIC_ADAPTER, training=self.training):
            if not is_fsdp(root):
                return values_of(root.get_decoder(), self.value_head, batch)
            return fsdp_root_values(root, self.value_head, batch)

    def shared_body(self) -> nn.Module:
        """The decoder its passes run (the policy's, with this critic's adapter on): what its FLOPs count."""
        return self._policy[0].get_base_model().get_decoder()

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP2 shards of this critic: its value head. Its adapter lives in the policy's decoder layers and
        is sharded with them (the policy is sharded after the adapter is added)."""
        return [self.value_head]


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


def fsdp_root_values(root: nn.Module, head: nn.Linear, batch: RolloutBatch) -> torch.Tensor:
    """`values_of` through an FSDP2 root (the shared critic under torchrun): the decoder is called through the
    root, so that FSDP2 gathers the root's parameters (embedding, final norm) as it does for the policy, with the
    LM head on the last position only; the values then carry a zero multiple of those logits, so that backward
    runs the root's pre-backward hook and gathers the final norm's weight again before its gradient is taken."""
    length = batch.completion_mask.shape[1]
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    states = []
    hook = root.get_decoder().register_forward_hook(lambda module, args, out: states.append(out.last_hidden_state))
    try:
        out = root(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return completion_values(states[0], head, length) + 0.0 * out.logits.float().sum()


class PPO(Algorithm):
    name = "ppo"
    Config = PPOConfig
    KL_OPTIONS = {"loss": "kl_loss_coef", "reward": "kl_coef"}

    def __init__(self, policy, options, settings, seed=0):
        self.critic = SharedBaseValueModel(policy) if options.critic_base == "shared" else ValueModel(policy)
        super().__init__(policy, options, settings, seed)

    def build_optimizers(self) -> None:
        super().build_optimizers()
        s = self.settings
        self.critic_optimizer = torch.optim.AdamW(trained_parameters(self.critic), lr=self.options.critic_lr or s.lr,
                                                  weight_decay=s.weight_decay)

    @classmethod
    def declare_needs(cls, options, settings) -> Needs:
        return replace(super().declare_needs(options, settings), critic=True, critic_pass=options.critic_pass)

    def policy_frozen(self) -> bool:
        """During the critic's warm-up the policy does not move; with head_only, neither does the critic's body."""
        warming = self.updates < self.options.critic_warmup_steps
        for param in self.critic.body_parameters():
            param.requires_grad_(not (warming and self.options.critic_warmup_head_only))
        return warming

    def trained_models(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer, "critic": self.critic_optimizer}

    def shard_models(self, shard) -> None:
        """FSDP2 over the policy, then over the critic's own units (the shared critic: its value head alone)."""
        shard("policy", self.policy)
        for unit in getattr(self.critic, "fsdp_units", lambda: [self.critic])():
            shard("critic", unit)
        self.build_optimizers()

    @torch.no_grad()
    def compute_values(self, batch: RolloutBatch) -> None:
        self.critic.eval()
        with autocast(self.critic, self.settings.autocast_dtype):
            values = torch.cat([self.critic(part).squeeze(-1) for part in batch.split(logprob_rows(self.settings, batch.size))])
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
