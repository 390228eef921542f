"""Forward passes to log-probs, the way TRL computes them: completion positions only, divided by the
temperature in place, a selective log-softmax; entropy row by row; or, with `model.logprob_chunk`, the LM
head in chunks of positions (`chunked_head`: the logits never whole, recomputed in backward). Activation
checkpointing and autocast.

Shapes: B completions, P prompt tokens, T completion tokens, V vocabulary.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext

import torch

from harness.algorithms.batch import RolloutBatch, TrainSettings
from harness.algorithms.chunked_head import LogprobHead, chunked_head_refusal, head_replaced
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


def _forward(model, batch: RolloutBatch) -> tuple[torch.Tensor, bool]:
    """The model's output on the batch with only the positions that predict a completion token (P - 1 ...
    P + T - 2) through the LM head where the model can (`logits_to_keep` with their indices): (output,
    whether it holds those positions only)."""
    length = batch.completion_mask.shape[1]
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                  use_cache=False)
    if not _accepts_logits_to_keep(model):
        return model(**kwargs).logits, False
    keep = torch.arange(batch.prompt_length - 1, batch.prompt_length - 1 + length, device=batch.input_ids.device)
    return model(**kwargs, logits_to_keep=keep).logits, True


def completion_logits(model, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits `[B, T, V]` that predicted each completion token, divided by the sampling temperature.

    The prompt's logits are never materialised where the model takes `logits_to_keep`. The division is
    in place, as TRL and verl do it (`logits / t` would hold a second copy): the logits are the LM head's
    matmul output, which autograd does not save for backward.
    """
    logits, kept = _forward(model, batch)
    if not kept:
        logits = logits[:, batch.prompt_length - 1: -1]
    return logits.div_(temperature) if temperature != 1.0 else logits


def chunked_completion_logps(model, batch: RolloutBatch, temperature: float, chunk: int,
                             entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs `[B, T]`, entropies `[B, T]` or None) through the LM head `chunk` positions at a time
    (`chunked_head`): the same values and gradients as `completion_logps`, the `[B, T, V]` logits never whole."""
    refusal = chunked_head_refusal(model.config)
    if refusal:
        raise ValueError(refusal)
    length = batch.completion_mask.shape[1]
    targets = batch.input_ids[:, batch.prompt_length:]
    positions = slice(batch.prompt_length - 1, batch.prompt_length - 1 + length)
    kept = _accepts_logits_to_keep(model)
    with head_replaced(model, lambda head: LogprobHead(head, targets, temperature, chunk, entropy,
                                                       None if kept else positions)):
        packed, _ = _forward(model, batch)  # [B, T, 2]: log-probs, entropies
    return packed[..., 0], packed[..., 1] if entropy else None


def completion_logps(model, batch: RolloutBatch, temperature: float = 1.0, entropy: bool = False,
                     chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs `[B, T]` of the completion tokens, entropies `[B, T]` or None) under `model`; with
    `chunk`, through the LM head that many positions at a time."""
    if chunk:
        return chunked_completion_logps(model, batch, temperature, chunk, entropy)
    logits = completion_logits(model, batch, temperature)
    targets = batch.input_ids[:, batch.prompt_length:]
    logps = selective_log_softmax(logits, targets)
    return logps, entropy_from_logits(logits) if entropy else None


def completion_logps_and_entropy(model, batch: RolloutBatch,
                                 settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The update's (log-probs `[B, T]`, entropies `[B, T]`): the entropy carries a gradient only when an
    entropy bonus is on (TRL: a statistic under no_grad otherwise); `settings.logprob_chunk` picks the path."""
    bonus = bool(settings.entropy_coef)
    if settings.logprob_chunk:
        logps, entropy = chunked_completion_logps(model, batch, settings.temperature, settings.logprob_chunk, True)
        return logps, entropy if bonus else entropy.detach()
    logits = completion_logits(model, batch, settings.temperature)
    logps = selective_log_softmax(logits, batch.input_ids[:, batch.prompt_length:])
    if bonus:
        return logps, entropy_from_logits(logits)
    with torch.no_grad():
        return logps, entropy_from_logits(logits.detach())


def logprob_rows(settings: TrainSettings, rows: int) -> int:
    """Rows per no-grad pass over a batch of `rows` (this process's): `rollout.logprob_batch_size`, else the
    update's micro-batch, as verl and TRL size it (a whole minibatch when `optim.micro_batch_size` is 0 too)."""
    return settings.logprob_batch_size or settings.micro_batch_size or max(1, rows // settings.minibatches)


@torch.no_grad()
def batched_logps(model, batch: RolloutBatch, settings: TrainSettings) -> torch.Tensor:
    """Log-probs `[B, T]` in no-grad micro-batches of `logprob_rows` rows."""
    with autocast(model, settings.autocast_dtype):
        return torch.cat([completion_logps(model, part, settings.temperature, chunk=settings.logprob_chunk)[0]
                          for part in batch.split(logprob_rows(settings, batch.size))])


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

