"""Log-probs through the LM head in chunks of positions, the `[B, T, V]` logits never whole: TRL's fused LM
head (`trl.trainer.utils.add_fused_lm_head`) and Liger's fused linear cross-entropy, in plain torch.

Forward: each chunk's logits (hidden states times the head's weight), divided by the temperature, a
log-softmax gathered at the targets (and the entropy), then dropped. Backward: each chunk's logits are
recomputed, the log-softmax's gradient worked out in place in one fp32 buffer (`logits_grad`), and the
head's weight gradient summed chunk by chunk in place.
What the update keeps per token is the hidden state the head reads, not a row of the vocabulary.

The model runs whole, with its LM head swapped for one that returns log-probs, so that whatever wraps
the model's forward (FSDP2 gathers the root's parameters, the LM head's with them, in its pre-forward
hook and again before backward) sees an ordinary forward.

Shapes: B completions, T completion tokens, N = B * T positions, H hidden, V vocabulary, C a chunk.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from harness.algorithms.ops import upcast

# Config attributes that scale the logits after the LM head (Gemma's softcapping, Cohere's logit_scale, ...):
# the swapped head would return log-probs to that scaling, so such models are refused.
LOGIT_SCALINGS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                  "logits_scaling")


def chunked_head_refusal(model_config) -> str | None:
    """Why the chunked log-prob path cannot run this model (one line), or None when it can."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in LOGIT_SCALINGS:
        value = getattr(text_config, name, None)
        if value is not None and value != 1:
            return (f"model.logprob_chunk: {getattr(text_config, 'model_type', 'this model')} scales its logits after "
                    f"the LM head ({name}={value}), which the chunked path does not apply; set model.logprob_chunk=0")
    return None


def logps_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                      with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs `[C]`, entropies `[C]` or None) of logits `[C, V]` divided by the temperature, in fp32 (no grad).

    The order of the unchunked path (`completion_logits`, then `selective_log_softmax`, `entropy_from_logits`):
    divided in the logits' dtype (in place: `logits` is the chunk's own), then upcast.
    """
    if temperature != 1.0:
        logits.div_(temperature)
    logits = upcast(logits)
    normaliser = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    if not with_entropy:
        return logps, None
    return logps, normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def logits_grad(logits: torch.Tensor, targets: torch.Tensor, temperature: float, grad_logps: torch.Tensor | None,
                entropy: torch.Tensor | None, grad_entropy: torch.Tensor | None) -> torch.Tensor:
    """The gradient `[C, V]`, in the logits' dtype, of sum(grad_logps * logps + grad_entropy * entropies) with
    respect to the chunk's logits `[C, V]` (consumed: divided in place), worked in place in one fp32 buffer.

    With z = logits / t, p = softmax(z) and H the entropy: d log p_target / dz_j = 1[j = target] - p_j and
    dH / dz_j = -p_j (log p_j + H), so dz = -p * (g_logp + g_H * (log p + H)) + g_logp at the target; then
    cast to the logits' dtype and divided by t, as autograd does through the unchunked path's upcast and
    division (`tests/test_logprobs.py` checks it against autograd).
    """
    dtype = logits.dtype
    if temperature != 1.0:
        logits.div_(temperature)
    log_p = upcast(logits)  # fp32 (a copy of bf16 logits; fp32 logits are worked on in place)
    del logits
    log_p -= torch.logsumexp(log_p, dim=-1, keepdim=True)  # [C, V] log p
    if grad_entropy is None:
        grad = log_p.exp_().mul_(-grad_logps.unsqueeze(-1))
    else:
        p = log_p.exp()
        factor = log_p.add_(entropy.unsqueeze(-1)).mul_(grad_entropy.unsqueeze(-1))
        if grad_logps is not None:
            factor += grad_logps.unsqueeze(-1)
        grad = p.mul_(factor).neg_()
        del factor, log_p
    if grad_logps is not None:
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_logps.unsqueeze(-1).to(grad.dtype))
    grad = grad.to(dtype)
    return grad.div_(temperature) if temperature != 1.0 else grad


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's where it is on (bf16-mixed), the input's otherwise."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision compute (TRL accumulates in fp32); fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def accumulate(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """total += a @ b in place: in total's dtype; for an fp32 `total` and bf16 factors, without rounding the
    product to bf16 first (TRL's `_addmm_fp32`)."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    elif total.device.type == "cuda":
        torch.addmm(total, a, b, out_dtype=torch.float32, out=total)
    else:
        total.addmm_(a.to(total.dtype), b.to(total.dtype))


class ChunkedHeadLogps(torch.autograd.Function):
    """(log-probs `[N]`, entropies `[N]` or None) of `targets` under softmax((hidden @ weight.T + bias) / temperature),
    `chunk` positions at a time; the logits are recomputed chunk by chunk in backward.

    The entropy is computed in the same pass; it carries a gradient only where the caller uses it (an
    entropy bonus): otherwise backward gets None for it and skips its term.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk: int, with_entropy: bool):
        ctx.set_materialize_grads(False)
        dtype = compute_dtype(hidden)
        w = weight.to(dtype)  # [V, H] autocast's copy, made once for every chunk
        b = bias.to(dtype) if bias is not None else None
        count = hidden.shape[0]
        out_dtype = accumulation_dtype(dtype)
        logps = torch.empty(count, dtype=out_dtype, device=hidden.device)
        entropy = torch.empty(count, dtype=out_dtype, device=hidden.device) if with_entropy else None
        for start in range(0, count, chunk):
            end = min(start + chunk, count)
            logits = F.linear(hidden[start:end].to(dtype), w, b)  # [C, V]
            chunk_logps, chunk_entropy = logps_and_entropy(logits, targets[start:end], temperature, with_entropy)
            logps[start:end] = chunk_logps
            if with_entropy:
                entropy[start:end] = chunk_entropy
        ctx.save_for_backward(hidden, weight, bias, targets, entropy)
        ctx.dtype, ctx.temperature, ctx.chunk = dtype, temperature, chunk
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy):
        hidden, weight, bias, targets, entropy = ctx.saved_tensors
        dtype, temperature, chunk = ctx.dtype, ctx.temperature, ctx.chunk
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        # summed over the chunks in the weight's own dtype, the dtype its gradient ends in: fp32 master weights
        # under autocast take each chunk's bf16 product unrounded (as TRL does); bf16 weights (FSDP2's gathered
        # bf16-mixed parameters) sum in bf16, with no fp32 copy of the vocabulary x hidden gradient
        grad_weight = torch.zeros_like(weight) if wants_weight else None
        grad_bias = torch.zeros_like(bias, dtype=accumulation_dtype(bias.dtype)) if wants_bias else None
        count = hidden.shape[0]
        for start in range(0, count, chunk):
            end = min(start + chunk, count)
            rows = hidden[start:end].to(dtype)  # [C, H]
            grad_logits = logits_grad(F.linear(rows, w, b), targets[start:end], temperature,  # [C, V], recomputed
                                      None if grad_logps is None else grad_logps[start:end],
                                      None if grad_entropy is None else entropy[start:end],
                                      None if grad_entropy is None else grad_entropy[start:end])
            if wants_hidden:
                grad_hidden[start:end] = (grad_logits @ w).to(hidden.dtype)
            if wants_weight:
                accumulate(grad_weight, grad_logits.t(), rows)
            if wants_bias:
                grad_bias += grad_logits.sum(0, dtype=grad_bias.dtype)
            del grad_logits
        return (grad_hidden, grad_weight, None if grad_bias is None else grad_bias.to(bias.dtype),
                None, None, None, None)


class LogprobHead(torch.nn.Module):
    """Stands in for a model's LM head for one forward: hidden states `[B, T, H]` -> `[B, T, 2]`, the
    log-probs of `targets` `[B, T]` and the entropies (NaN where not asked for), through `ChunkedHeadLogps`.

    `positions`: the slice of the hidden states that predict the targets, for a model that computes
    every position (no `logits_to_keep`); None when the model already kept only those.
    """

    def __init__(self, head: torch.nn.Linear, targets: torch.Tensor, temperature: float, chunk: int,
                 with_entropy: bool, positions: slice | None = None):
        super().__init__()
        self.head = head
        self.targets, self.temperature, self.chunk = targets, temperature, chunk
        self.with_entropy, self.positions = with_entropy, positions

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.positions is not None:
            hidden = hidden[:, self.positions]
        rows, length = self.targets.shape
        logps, entropy = ChunkedHeadLogps.apply(hidden.reshape(rows * length, -1), self.head.weight, self.head.bias,
                                                self.targets.reshape(-1), self.temperature, self.chunk,
                                                self.with_entropy)
        if entropy is None:
            entropy = torch.full_like(logps, float("nan"))
        # a tensor of its own, not a view: FSDP2 hooks the root's output for backward
        return torch.stack([logps.view(rows, length), entropy.view(rows, length)], dim=-1)


@contextmanager
def head_replaced(model: torch.nn.Module, make_head):
    """`model` with its output embedding (the LM head) replaced by `make_head(head)` for the block."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"model.logprob_chunk needs a linear LM head; {type(model).__name__}'s is "
                         f"{type(head).__name__}: set model.logprob_chunk=0")
    for parent in model.modules():
        name = next((n for n, child in parent.named_children() if child is head), None)
        if name is not None:
            break
    else:
        raise ValueError(f"cannot find the LM head of {type(model).__name__} among its modules")
    setattr(parent, name, make_head(head))
    try:
        yield
    finally:
        setattr(parent, name, head)
