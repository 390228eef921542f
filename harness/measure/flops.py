"""FLOPs per phase of a step (arithmetic) and this machine's measured matmul peak.

A phase's FLOPs follow from the models' matmul sizes and the tokens it processes (Kaplan et al. 2020:
2 N per token forward, 6 N with backward; attention's own score FLOPs are left out, a few percent at
1-2k tokens): the decoder's body runs on every token of a sequence, the LM head on completion positions
only (the log-prob passes keep those logits; generation computes one position's logits per new token),
and activation checkpointing recomputes the body's forward in backward. Backward is two matmuls per
weight, one for the input's gradient and one for the weight's: a frozen weight (a LoRA base) skips the
second, so a LoRA update costs about 4 N per token, not 6 N. A critic and a learned reward model have a
scalar head. The same function counts a real run's step and an estimate's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from harness.algorithms.adapters import trained_parameters

# Which model runs in which phase, forward only (1) or forward and backward (3: backward is twice forward).
PHASE_PASSES = {"generate": [("policy", 1)], "score": [("reward_model", 1)], "old_logprobs": [("policy", 1)],
                "ref_logprobs": [("policy", 1)], "values": [("critic", 1)], "policy_update": [("policy", 3)],
                "critic_update": [("critic", 3)], "joint_update": [("policy", 3), ("critic", 3)]}
TRAINED_PHASES = ("policy_update", "critic_update", "joint_update")


@dataclass(frozen=True)
class MatmulSizes:
    """Parameters a token meets in matmuls: the body (embedding lookups excluded) and the output head."""

    body: int
    head: int  # the LM head (on completion positions), or a scalar value or score head
    frozen_body: int = 0  # of `body`, the parameters that get no gradient (a LoRA base)
    frozen_head: int = 0  # of `head`, likewise


def matmul_sizes(model: torch.nn.Module) -> MatmulSizes:
    """A causal LM's, a critic's or a reward model's matmul sizes (meta, fake, real or sharded models alike).
    A critic on the policy's LoRA base (`shared_body()`) runs that base: its body is the policy's decoder."""
    shared = getattr(model, "shared_body", None)
    body_model = shared() if callable(shared) else model
    embeddings = {id(p) for m in body_model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    head = next((getattr(model, name) for name in ("lm_head", "score", "value_head", "v_head")
                 if isinstance(getattr(model, name, None), torch.nn.Module)), None)
    if head is None and hasattr(model, "get_output_embeddings"):  # a peft model: its base's LM head
        head = model.get_output_embeddings()
    head_params = {id(p): p for p in head.parameters()} if head is not None else {}
    # the frozen base and the model's own trained parameters: a second adapter on the same base (the shared
    # critic's on the policy's, or the policy's under the critic) is switched off in this model's passes
    own = {id(p) for p in trained_parameters(model)}
    body = [p for p in body_model.parameters() if id(p) not in embeddings and id(p) not in head_params
            and (not p.requires_grad or id(p) in own)]
    return MatmulSizes(body=sum(p.numel() for p in body), head=sum(p.numel() for p in head_params.values()),
                       frozen_body=sum(p.numel() for p in body if not p.requires_grad),
                       frozen_head=sum(p.numel() for p in head_params.values() if not p.requires_grad))


def phase_flops(sizes: dict[str, MatmulSizes], sequence_tokens: int, completion_tokens: int, epochs: int,
                checkpointing: bool, phases) -> dict[str, float]:
    """{phase: FLOPs} for the phases named (a step's timed phases; those of PHASE_PASSES only).

    `sizes`: {"policy", "critic", "reward_model": MatmulSizes} of the models present; the reference is the
    policy's size. Tokens count every sequence of the step (all processes), prompt and completion."""
    out = {}
    for phase in phases:
        if phase not in PHASE_PASSES:
            continue
        total, present = 0.0, False
        for model, passes in PHASE_PASSES[phase]:
            if model not in sizes:
                continue
            present = True
            size, repeat = sizes[model], epochs if phase in TRAINED_PHASES else 1
            head_tokens = completion_tokens if model == "policy" else sequence_tokens
            forward = 2 * (size.body * sequence_tokens + size.head * head_tokens)
            if passes == 3:  # forward, the inputs' gradients (as much again), the trained weights' gradients
                weight_grads = 2 * ((size.body - size.frozen_body) * sequence_tokens
                                    + (size.head - size.frozen_head) * head_tokens)
                recompute = 2 * size.body * sequence_tokens if checkpointing else 0
                total += (2 * forward + weight_grads + recompute) * repeat
            else:
                total += forward * repeat
        if present:  # a rule-based reward scores without a model: no FLOPs counted, no phase
            out[phase] = total
    return out


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 1.0) -> float:
    """This machine's measured matmul FLOP/s on the CPU: the best of repeated `size`-square matmuls over
    about `seconds` (what MFU on this machine is read against)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: threads, allocator
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - started))
    return best
