"""Compute at scale, arithmetic: FLOPs per phase of one step and a roofline GPU time on a named GPU.

FLOPs follow from the models' matmul sizes and the step's tokens (`harness.measure.flops.phase_flops`:
2 N per token forward, 6 N with backward (4 N where the weights are a frozen LoRA base), the body's forward
again under activation checkpointing, every row at full length as the memory estimate takes it). Time is a
roofline bound, a lower bound of what a real step takes:

- forward and training phases: FLOPs / (GPUs x the GPU's dense peak x MFU), MFU defaulting to 0.35 from
  torchtitan's published FSDP figures (docs/performance.md at 15569716e373: Llama 3.1 8B on 8 H100s,
  "33% to 39% MFU" in bf16);
- generation: the prefill at that MFU; each decoding step bound by the larger of its FLOPs at peak and its
  HBM traffic at full bandwidth: the weights (bf16, split over the engine's tensor-parallel GPUs) once per
  decoding step, and every sequence's KV cache up to its current length. An engine holds as many sequences
  at once as its KV space allows (its reservation less the weights; without an engine, transformers'
  generate holds every row): beyond that it decodes in waves, each reading the weights again.

A step's GPU time is the sum of its phases (no overlap); its GPU-seconds are that times every GPU the arm
holds, busy or not (an arm's critic GPUs wait while the policy trains).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

from harness.estimate.devices import Gpu
from harness.measure.flops import MatmulSizes, matmul_sizes, phase_flops


@functools.cache
def _policy(model_json: str, lora_json: str = "") -> tuple[MatmulSizes, int, int]:
    """(matmul sizes, all parameters, hidden size) of a config's causal LM, built on the meta device, with the
    LoRA adapters of `lora_json` (a LoraSettings dump; empty: none) on its frozen base."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    facts = json.loads(model_json)
    config = AutoConfig.for_model(facts.pop("model_type"), **facts)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        count = sum(p.numel() for p in model.parameters())
        if lora_json:
            from harness.config.schema import LoraSettings
            from harness.train.lora import with_lora
            model = with_lora(model, LoraSettings(**json.loads(lora_json)))
    return matmul_sizes(model), count, config.get_text_config().hidden_size


def model_sizes(model_config, has_critic: bool, reward_config=None, lora=None) -> dict[str, MatmulSizes]:
    """{"policy", "critic", "reward_model": MatmulSizes} of an arm: the critic and a reward model are a
    decoder with a scalar head (the critic the policy's decoder: under LoRA its frozen base and adapters as
    large as the policy's, whichever base they sit on). `lora`: the arm's model.lora (None or rank 0: off)."""
    lora_json = json.dumps(lora.model_dump(), sort_keys=True) if lora is not None and lora.enabled else ""
    policy, _, hidden = _policy(model_config.to_json_string(use_diff=False), lora_json)
    out = {"policy": policy}
    if has_critic:
        out["critic"] = MatmulSizes(body=policy.body, head=hidden + 1, frozen_body=policy.frozen_body)
    if reward_config is not None:
        body, _, width = _policy(reward_config.to_json_string(use_diff=False))
        out["reward_model"] = MatmulSizes(body=body.body, head=width + 1)
    return out


def parameter_count(model_config) -> int:
    return _policy(model_config.to_json_string(use_diff=False))[1]


def kv_bytes_per_token(model_config, dtype_bytes: int = 2) -> int:
    """K and V of every layer for one token."""
    text = model_config.get_text_config()
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * dtype_bytes


def generation_time(rows: int, prompt: int, completion: int, parameters: int, kv_token: int, gpus: int, tp: int,
                    reserve: float, device: Gpu, mfu: float, weight_bytes: int = 2) -> dict[str, float]:
    """Roofline seconds of the generate phase on `gpus` GPUs (engines of `tp` GPUs each), per GPU."""
    engines = max(gpus // tp, 1)
    rows_per_engine = math.ceil(rows / engines)
    weights = weight_bytes * parameters / tp  # per GPU
    if reserve:
        kv_space = max(reserve * device.memory - weights, 0) * tp  # the engine's, over its tp GPUs
        at_once = max(int(kv_space // ((prompt + completion) * kv_token)), 1)
    else:
        at_once = rows_per_engine  # transformers' generate: every row at once
    waves = math.ceil(rows_per_engine / at_once)
    kv_read = rows_per_engine * (completion * prompt + completion * (completion + 1) / 2) * kv_token / tp
    decode_bytes = waves * completion * weights + kv_read
    decode_flops = 2 * parameters * rows_per_engine * completion / tp
    prefill = 2 * parameters * rows_per_engine * prompt / tp / (device.peak_bf16 * mfu)
    decode = max(decode_bytes / device.bandwidth, decode_flops / device.peak_bf16)
    return {"seconds": prefill + decode, "prefill_s": prefill, "decode_s": decode, "waves": waves,
            "sequences_at_once": min(at_once, rows_per_engine), "decode_bytes_per_gpu": decode_bytes}


def step_compute(config, plan, has_critic: bool, phases: list[str], gpus: dict[str, int], device: Gpu) -> dict[str, Any]:
    """FLOPs per phase (the whole arm) and roofline seconds per phase on `device`; the step's GPU-seconds.

    `gpus`: {"policy", "critic", "engine"}: the GPUs each group holds (0: none of its own)."""
    w = plan.workload
    rows = plan.batch_rows
    sequence, completion = rows * (w.prompt_length + w.completion_length), rows * w.completion_length
    reward_config = plan.reward_model.config if plan.reward_model else None
    sizes = model_sizes(plan.model.config, has_critic, reward_config, config.model.lora)
    flops = phase_flops(sizes, sequence, completion, config.optim.epochs, config.model.gradient_checkpointing, phases)
    precision, mfu = config.model.precision, config.estimate.mfu
    peak = device.peak(precision)
    seconds, details = {}, {}
    for phase, value in flops.items():
        group = "critic" if phase in ("values", "critic_update") or (phase == "score" and gpus["critic"]) else "policy"
        count = gpus[group] or gpus["policy"]
        if phase == "generate":
            generators = gpus["engine"] or gpus["policy"]
            details[phase] = generation_time(rows, w.prompt_length, w.completion_length, parameter_count(plan.model.config),
                                             kv_bytes_per_token(plan.model.config), generators, config.estimate.engine_tp,
                                             plan.reserve, device, mfu)
            seconds[phase] = details[phase]["seconds"]
        else:
            seconds[phase] = value / (count * peak * mfu)
    step = sum(seconds.values())
    held = sum(gpus.values())
    return {"flops": flops, "flops_total": sum(flops.values()), "seconds": seconds, "step_seconds": step,
            "gpu_seconds": step * held, "gpus": held, "device": device.label, "mfu": mfu, "generation": details.get("generate"),
            "sizes": {name: {"body": s.body, "head": s.head} for name, s in sizes.items()}}
