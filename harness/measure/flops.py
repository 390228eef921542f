"""FLOPs per phase of a step (arithmetic) and this machine's measured matmul peak.

A phase's FLOPs follow from the models' matmul sizes and the tokens it processes (Kaplan et al. 2020:
2 N per token forward, 6 N with backward; attention's own score FLOPs are left out, a few percent at
1-2k tokens): the decoder's body runs on every token of a sequence, the LM head on completion positions
only (the log-prob passes keep those logits; generation computes one position's logits per new token),
and activation checkpointing recomputes the body's forward in backward. A critic and a learned reward
model have a scalar head. The same function counts a real run's step and an estimate's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

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


def matmul_sizes(model: torch.nn.Module) -> MatmulSizes:
    """A causal LM's, a critic's or a reward model's matmul sizes (meta, fake, real or sharded models alike)."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    head = next((getattr(model, name) for name in ("lm_head", "score", "value_head", "v_head")
                 if isinstance(getattr(model, name, None), torch.nn.Module)), None)
    head_params = {id(p): p.numel() for p in head.parameters()} if head is not None else {}
    body = sum(p.numel() for p in model.parameters() if id(p) not in embeddings and id(p) not in head_params)
    return MatmulSizes(body=body, head=sum(head_params.values()))


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
            recompute = 2 * size.body * sequence_tokens if passes == 3 and checkpointing else 0
            total += (passes * forward + recompute) * repeat
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
