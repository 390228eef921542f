"""Forward passes to log-probs, the way TRL computes them: completion positions only, divided by the
temperature, a selective log-softmax; entropy row by row; activation checkpointing and autocast.

Shapes: B completions, P prompt tokens, T completion tokens, V vocabulary.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext

import torch

from harness.algorithms.batch import RolloutBatch, TrainSettings
from harness.algorithms.ops import upcast


def selective_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., targets] `[B, T]` from logits `[B, T, V]`, without a full log-softmax.

    Gather minus logsumexp, row by row so that the logsumexp's fp32 temporaries are one row's
    (TRL's selective_log_softmax); bf16 logits are upcast one row at a time.
    """
    rows = []
    for row_logits, row_targets in zip(logits, targets):
        row_logits = upcast(row_logits)
        picked = row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy `[B, T]` of the categorical over the last dimension, row by row in fp32."""
    rows = []
    for row_logits in logits:
        row_logits = upcast(row_logits)
        probs = torch.softmax(row_logits, dim=-1)
        rows.append(torch.logsumexp(row_logits, dim=-1) - (probs * row_logits).sum(-1))
    return torch.stack(rows)


def _accepts_logits_to_keep(model) -> bool:
    cached = getattr(model, "_harness_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        model._harness_logits_to_keep = cached
    return cached


def completion_logits(model, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits `[B, T, V]` that predicted each completion token, divided by the sampling temperature.

    Only the positions that predict a completion token (P - 1 ... P + T - 2) go through the LM head
    (`logits_to_keep` with their indices): the prompt's logits are never materialised.
    """
    length = batch.completion_mask.shape[1]
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    if _accepts_logits_to_keep(model):
        keep = torch.arange(batch.prompt_length - 1, batch.prompt_length - 1 + length, device=batch.input_ids.device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       use_cache=False, logits_to_keep=keep).logits
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       use_cache=False).logits[:, -(length + 1):-1]
    return logits / temperature if temperature != 1.0 else logits


def completion_logps(model, batch: RolloutBatch, temperature: float = 1.0,
                     entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs `[B, T]` of the completion tokens, entropies `[B, T]` or None) under `model`."""
    logits = completion_logits(model, batch, temperature)
    targets = batch.input_ids[:, batch.prompt_length:]
    logps = selective_log_softmax(logits, targets)
    return logps, entropy_from_logits(logits) if entropy else None


@torch.no_grad()
def batched_logps(model, batch: RolloutBatch, settings: TrainSettings) -> torch.Tensor:
    """Log-probs `[B, T]` in no-grad micro-batches of `settings.logprob_batch_size` rows."""
    with autocast(model, settings.autocast_dtype):
        return torch.cat([completion_logps(model, part, settings.temperature)[0]
                          for part in batch.split(settings.logprob_batch_size)])


def checkpointing_on(model) -> None:
    """transformers' activation checkpointing, non-reentrant (>= 5 names it so; earlier: gradient checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def checkpointing_is_on(model) -> bool:
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def autocast(model, dtype: torch.dtype | None) -> AbstractContextManager:
    """bf16 compute over fp32 weights (bf16-mixed); nothing for fp32 or pure bf16."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=dtype)

