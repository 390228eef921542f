"""The Algorithm protocol and the small pieces every algorithm shares.

Shapes: B completions, P prompt tokens (left-padded), T completion tokens (right-padded).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F


@dataclass
class RolloutBatch:
    """What the shared rollout hands to every algorithm; algorithms add advantages and values."""

    input_ids: torch.Tensor  # [B, P + T] prompt (left-padded) then completion (right-padded)
    attention_mask: torch.Tensor  # [B, P + T]
    completion_mask: torch.Tensor  # [B, T] 1 on completion tokens up to and including EOS
    prompt_length: int  # P
    scores: torch.Tensor  # [B] total reward of each completion
    group_size: int  # completions per prompt, grouped contiguously
    old_logps: torch.Tensor  # [B, T] log-probs under the policy that sampled
    ref_logps: torch.Tensor | None = None  # [B, T] under the reference, when a KL term is on
    advantages: torch.Tensor | None = None  # [B, T] filled by Algorithm.prepare
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. PPO's values, returns

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """The rows `index` of every per-completion tensor (a minibatch)."""
        def pick(t):
            return None if t is None else t[index]
        return RolloutBatch(
            input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
            completion_mask=self.completion_mask[index], prompt_length=self.prompt_length,
            scores=self.scores[index], group_size=self.group_size, old_logps=self.old_logps[index],
            ref_logps=pick(self.ref_logps), advantages=pick(self.advantages),
            extras={k: v[index] for k, v in self.extras.items()})


class Algorithm(Protocol):
    """One file in algorithms/ implements this, plus a line in the registry."""

    name: str
    needs_reference: bool  # whether the rollout must compute ref_logps

    def trained_models(self) -> dict[str, torch.nn.Module]: ...  # e.g. {"policy": ..., "critic": ...}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def prepare(self, batch: RolloutBatch) -> dict[str, float]: ...  # fills batch.advantages

    def update(self, batch: RolloutBatch) -> dict[str, float]: ...  # optimizer steps, detached stats


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where mask is 1 (all of them, or along `dim`)."""
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; masked-out positions come back as 0."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def policy_forward(model, batch: RolloutBatch, with_entropy: bool = False):
    """Log-probs `[B, T]` of the completion tokens (and their entropies) under `model`."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=position_ids, use_cache=False).logits
    logits = logits[:, batch.prompt_length - 1: -1].float()  # [B, T, V]: the logits that predicted each completion token
    targets = batch.input_ids[:, batch.prompt_length:]  # [B, T]
    log_probs = F.log_softmax(logits, dim=-1)
    logps = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logps, None
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # [B, T]
    return logps, entropy


def activation_scope(probe):
    """The harness's saved-activation probe around one forward, when it set one."""
    return probe.forward() if probe is not None else nullcontext()


def minibatch_indices(size: int, minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random partition of range(size) into `minibatches` equal parts."""
    order = torch.randperm(size, generator=generator)
    return list(order.chunk(minibatches))


def options_from(cls: type, options: dict[str, Any]) -> Any:
    """An algorithm's config dataclass from YAML options, naming unknown keys."""
    from dataclasses import fields
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    values = {}
    for f in fields(cls):
        if f.name in options:
            kind = type(f.default)
            value = options[f.name]
            if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
                try:
                    value = float(value)
                except ValueError:
                    raise ValueError(f"{f.name} expects a number, got {value!r}") from None
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{f.name} expects {kind.__name__}, got {value!r}")
            values[f.name] = value
    return cls(**values)
