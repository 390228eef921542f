"""What an estimate ran, in words and fields: the setup of each arm, the notes every figure carries, and
the warning for a workload that describes nothing anyone runs."""

from __future__ import annotations

from typing import Any

from harness.config.choices import DEVICE_MEMORY_GIB
from harness.config.derive import logprob_rows
from harness.config.schema import Config
from harness.results.units import GIB

SHORT_WORKLOAD_TOKENS = 64  # below this many tokens a row, on a model of a billion parameters or more: warn
BIG_MODEL = 10 ** 9


def describe(config: Config, plan) -> dict[str, Any]:
    """The setup of one arm's estimate (JSON-able)."""
    w, run = plan.workload, config.run
    device_memory = DEVICE_MEMORY_GIB[plan.device][1] * GIB
    return {"model": plan.model.name, "source": plan.model.source, "precision": config.model.precision,
            "gradient_checkpointing": config.model.gradient_checkpointing, "world_size": plan.world_size,
            "batch": plan.batch_rows, "rows_per_gpu": w.rows, "prompt_length": w.prompt_length,
            "completion_length": w.completion_length, "group_size": config.rollout.samples_per_prompt,
            "minibatches": config.optim.minibatches, "micro_batch_size": config.optim.micro_batch_size,
            "logprob_batch_size": logprob_rows(config, plan.world_size), "logprob_chunk": config.model.logprob_chunk,
            "epochs": config.optim.epochs,
            "reward_model": plan.reward_model.name if plan.reward_model else None,
            "rollout_engine": ({"reserve": plan.reserve, "mode": plan.engine, "device": plan.device,
                                "tp": config.estimate.engine_tp, "bytes": round(plan.reserve * device_memory)}
                               if plan.reserve else None),
            "sharding": {"policy": run.shard_policy, "critic": run.shard_critic, "reference": run.shard_reference},
            "offload": [m for m in ("policy", "critic", "reference") if getattr(run, f"offload_{m}")],
            "critic_gpus": plan.critic_gpus, "engine_gpus": plan.engine_gpus,
            "optimizer_path": "CUDA (foreach)" if plan.cuda_optimizer else "CPU (per tensor)"}


def short_workload(plan) -> str | None:
    """A warning when the rows are shorter than SHORT_WORKLOAD_TOKENS on a model of 1B parameters or more:
    a toy preset's workload mapped onto a big model describes a step nobody runs."""
    from harness.estimate.compute import parameter_count
    w = plan.workload
    tokens = w.prompt_length + w.completion_length
    if tokens >= SHORT_WORKLOAD_TOKENS:
        return None
    count = parameter_count(plan.model.config)
    if count < BIG_MODEL:
        return None
    return (f"a {tokens}-token row ({w.prompt_length} prompt + {w.completion_length} completion) on "
            f"{plan.model.name} ({count / 1e9:.1f}B parameters) is a toy workload on a big model: nobody runs this "
            "step, and its activations are a sliver of a real one's; give --prompt-length and --completion-length, "
            "or a published setup with --recipe (see 'harness recipes')")


def notes(config: Config, plan) -> list[str]:
    w = plan.workload
    lines = ["estimated, not measured: each arm's own step ran on fake tensors (FakeTensorMode); the live-tensor "
             "tracker recorded what would be live in each phase, nothing was allocated",
             "generation simulated with the policy's own forward: a prefill of the prompt into the KV cache, then one "
             f"forward per new token, every completion the full {w.completion_length} tokens (generate stops early "
             "only by reading the sampled tokens, and fake tensors hold no data)",
             "the fake device is the CPU: CUDA kernels such as flash attention save slightly different tensors for "
             "backward than the CPU path estimated here",
             f"prompts of {w.prompt_length} tokens" + ("" if config.estimate.prompt_length else
                                                      " (the task's longest, one token per character)")]
    if plan.cuda_optimizer:
        lines.append("AdamW runs its foreach implementation, which torch picks for CUDA tensors (it holds a "
                     "temporary copy of the second moments during the optimizer step)")
    if plan.world_size > 1:
        lines.append(f"per GPU of {plan.world_size}: rank 0 of an arm under torchrun, its models sharded by the arm's "
                     "own FSDP2 code (harness.train.distributed: each decoder layer then the root, MixedPrecisionPolicy for "
                     "bf16-mixed) over a fake process group; activations, temporaries and KV cache for this GPU's "
                     f"{w.rows} of {plan.batch_rows} completions; FSDP buffers are FSDP2's gathered parameters and "
                     "communication buffers, alive as long as FSDP2 keeps them (the same on gloo and NCCL)")
        run = config.run
        gathered = [m for m in ("policy", "critic", "reference") if getattr(run, f"shard_{m}") == "grad_optim"]
        if gathered:
            lines.append(f"{' and '.join(gathered)}: ZeRO-2-like (run.shard_*=grad_optim: parameters gathered from "
                         "forward to backward; gradients and AdamW state sharded)")
        offloaded = [m for m in ("policy", "reference", "critic") if getattr(run, f"offload_{m}")]
        if offloaded:
            lines.append(f"{' and '.join(offloaded)}: parameter and optimizer shards in CPU memory (run.offload_*, "
                         "FSDP2's CPUOffloadPolicy), left out; gathered to the GPU while computing. Their gradient "
                         "shards count on the GPU until the update ends (FSDP2 moves them to CPU memory as they are "
                         f"reduced): at most 1/{plan.world_size} of the fp32 parameters too many")
    if plan.reserve:
        where = (f"on {plan.engine_gpus} GPUs of its own (estimate.engine_gpus), each reserving"
                 if plan.engine_gpus else "colocated, reserving")
        lines.append(f"rollout engine: {where} {plan.reserve:.0%} of the device's memory, as vLLM's "
                     f"gpu_memory_utilization does" + ("" if plan.engine_gpus else
                                                       f"; {plan.engine} during training; it generates, so the "
                                                       "generate phase holds the model state and the engine"))
    if plan.critic_gpus:
        lines.append(f"the critic and the reward model on {plan.critic_gpus} GPUs of their own (estimate.critic_gpus), "
                     "sharded over them: their GPUs hold their state, the rollout batch, and the compute of the "
                     "phases they run (score, values, critic update)")
    if plan.reward_model:
        lines.append(f"a learned reward model ({plan.reward_model.name}, frozen, in the compute dtype) scores every "
                     "completion in the score phase")
    return lines
