"""`harness estimate`: what each arm's step would hold per GPU at any model size and world size.

Each arm's own step runs on fake tensors (`harness.estimate.fake_step`): the figures are predictions of the
peak bytes of live tensors per phase, "estimated", never measured. With a world size N > 1 they are
rank 0's under torchrun: the step runs on its share of the rollout batch, with its models sharded by
the arm's own FSDP2 code over a fake process group of N ranks, so that parameters, gradients and
optimizer state are its shards (FSDP2's padding included) and the gathered layers and communication
buffers are FSDP2's own, freed when FSDP2 frees them. Those lifetimes are the same on the CPU with gloo
and on GPUs with NCCL (Python references, not streams), so the estimate takes no backend; what NCCL
allocates inside its collectives is no tensor and is counted neither here nor by the live-tensor
measurement. A colocated rollout engine's reservation, a learned reward model and the fit on named
GPUs are added on top.

    from harness.config.schema import load_config
    from harness.estimate.estimator import estimate
    result = estimate(load_config("tiny", overrides=["model.name=Qwen/Qwen2.5-7B", "estimate.world_size=8"]),
                      ["grpo", "ppo"])
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from harness import UserError, __version__
from harness.config.derive import algorithm_options, make_task
from harness.config.load import copy_config
from harness.config.schema import Config, DEVICE_MEMORY_GIB, validate
from harness.config.schema import config_hash
from harness.estimate.model_specs import ModelSpec, resolve_model
from harness.results.headline import PHASES, arm_pair
from harness.results.io import read_json, write_json

GIB = 2 ** 30
MODEL_STATE = ("params", "grads", "optimizer")
# Table columns: (category, short label, what it is), in the order a step's memory builds up.
CATEGORIES = [("params", "params", "parameters (and buffers) of every model"),
              ("grads", "grads", "gradients"),
              ("optimizer", "optim", "AdamW state (and its step's temporaries)"),
              ("weight_casts", "casts", "autocast's compute-dtype copies of trained weights"),
              ("activations", "activ", "tensors made in forward (saved for backward, logits, values)"),
              ("temporaries", "temps", "tensors made in backward"),
              ("kv_cache", "KV", "what generation keeps: the KV cache, logits and sampler tensors"),
              ("rollout", "rollout", "the rollout batch: ids, masks, log-probs, advantages"),
              ("fsdp_buffers", "FSDP", "FSDP2's gathered parameters, all-gather and reduce-scatter buffers"),
              ("rollout_engine", "engine", "a colocated rollout engine's reservation (arithmetic)")]
# The code whose change makes a cached estimate stale.
ENGINE_MODULES = ("harness.estimate.fake_step", "harness.estimate.fake_generation", "harness.estimate.estimator",
                  "harness.measure.live_tensors", "harness.measure.step_meter", "harness.train.arm",
                  "harness.train.distributed", "harness.train.rollout", "harness.train.models", "harness.algorithms.base",
                  "harness.algorithms.batch", "harness.algorithms.ops", "harness.algorithms.logprobs")


@dataclass
class Plan:
    """What an estimate runs: the model, one GPU's workload, and how its figures are read."""

    model: ModelSpec
    reward_model: ModelSpec | None
    world_size: int
    batch_rows: int  # completions per step, all GPUs together
    workload: Any  # fake_generation.Workload of one GPU
    reserve: float  # the rollout engine's share of device memory (0: none)
    engine: str  # resident | asleep
    device: str  # a key of DEVICE_MEMORY_GIB
    cuda_optimizer: bool = True  # AdamW's foreach path, which torch takes for CUDA tensors


# ---------------------------------------------------------------- the plan, checked before anything runs

def task_prompt_length(config: Config) -> int:
    """The task's longest held-out prompt, one token per character (the tiny model's tokenizer)."""
    return max(len(example.prompt) for example in make_task(config).eval_examples())


def check_world(config: Config, world: int) -> None:
    """The arm's own checks for a run on `world` processes: whole groups per sampling slice, whole slices
    per process, minibatches and micro-batches that divide each process's rows."""
    probe = copy_config(config)
    probe.run.nproc_per_node, probe.run.nnodes, probe.run.node_rank = world, 1, 0
    try:
        validate(probe)
    except UserError as err:
        raise UserError(f"world size {world}: {err}") from None


def spread_over_gpus(config: Config) -> Config:
    """The config's global batch over estimate.world_size GPUs: a micro-batch no larger than one GPU's
    minibatch (the largest that divides it), since a micro-batch sized for one device rarely divides an
    eighth of the batch. A config that already fits comes back as it is."""
    per_gpu = config.rollout.batch_size // config.estimate.world_size // max(config.optim.minibatches, 1)
    micro = config.optim.micro_batch_size
    if not micro or not per_gpu or per_gpu % micro == 0:
        return config
    out = copy_config(config)
    out.optim.micro_batch_size = math.gcd(micro, per_gpu)
    return out


def plan_estimate(config: Config, cuda_optimizer: bool = True) -> Plan:
    """The plan for `config`'s model and workload, or one line saying what cannot be estimated."""
    from harness.estimate.fake_generation import Workload
    settings = config.estimate
    model = resolve_model(config.model.name, config)
    reward = {"none": None, "same": model}.get(settings.reward_model.strip().lower(), "other")
    if reward == "other":
        reward = resolve_model(settings.reward_model, config)
    world, batch = settings.world_size, config.rollout.batch_size
    check_world(config, world)
    rows = batch // world
    prompt = settings.prompt_length or task_prompt_length(config)
    completion = settings.completion_length or config.rollout.max_new_tokens
    positions = model.max_positions
    if positions and prompt + completion > positions:
        raise UserError(f"a prompt of {prompt} tokens and a completion of {completion} do not fit the {positions} "
                        f"positions of {model.name} (max_position_embeddings); shorten estimate.prompt_length or "
                        "estimate.completion_length")
    return Plan(model=model, reward_model=reward, world_size=world, batch_rows=batch,
                workload=Workload(rows, prompt, completion, config.rollout.samples_per_prompt),
                reserve=settings.rollout_reserve, engine=settings.rollout_engine, device=settings.device_memory,
                cuda_optimizer=cuda_optimizer)


# ---------------------------------------------------------------- one arm, cached

@functools.cache
def code_fingerprint(algo: str) -> str:
    """A hash of the code that runs in a fake step (read once per process): a cached estimate of older
    code is not reused."""
    from harness.algorithms import REGISTRY
    modules = [*ENGINE_MODULES, REGISTRY[algo].split(":")[0]]
    sources = {name: Path(importlib.import_module(name).__file__).read_text() for name in modules}
    return config_hash(sources)


def cache_key(config: Config, algo: str, plan: Plan) -> str:
    """Everything a fake step's figures depend on."""
    from harness.config.derive import train_settings
    import torch
    return config_hash({
        "algo": algo, "options": dataclasses.asdict(algorithm_options(config, algo)),
        "settings": dataclasses.asdict(train_settings(config)), "precision": config.model.precision,
        "checkpointing": config.model.gradient_checkpointing, "model": plan.model.config.to_dict(),
        "reward_model": plan.reward_model.config.to_dict() if plan.reward_model else None,
        "workload": dataclasses.asdict(plan.workload), "world_size": plan.world_size,
        "sampling": [config.rollout.temperature, config.rollout.top_p], "cuda_optimizer": plan.cuda_optimizer,
        "versions": [__version__, torch.__version__, importlib.import_module("transformers").__version__],
        "code": code_fingerprint(algo)})


def estimates_dir() -> Path:
    from harness.train.models import cache_dir
    return cache_dir() / "estimates"


def run_arm(config: Config, algo: str, plan: Plan, use_cache: bool = True,
            memo: dict[str, dict] | None = None) -> dict[str, Any]:
    """One arm's fake step (full-size figures, see fake_step.FakeStep), from the cache when it holds it
    (`memo`: the steps this run already computed, reused even without the cache)."""
    key = cache_key(config, algo, plan)
    if memo is not None and key in memo:
        return {**memo[key], "cached": True}
    path = estimates_dir() / f"{key}.json"
    if use_cache and path.exists():
        try:
            return {**read_json(path), "cached": True}
        except (OSError, ValueError):
            pass  # a damaged cache file is computed again
    from harness.estimate.fake_step import fake_step
    step = fake_step(config, algo, plan.model.config, plan.reward_model.config if plan.reward_model else None,
                     plan.workload, plan.world_size, foreach=plan.cuda_optimizer, name=plan.model.name)
    raw = dataclasses.asdict(step)
    write_json(path, raw)
    if memo is not None:
        memo[key] = raw
    return {**raw, "cached": False}


# ---------------------------------------------------------------- per-GPU figures (pure)

def per_gpu(raw: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{phase: {category: bytes, total}} on one GPU: the fake step's figures (rank 0's under FSDP2 above world
    size 1), less the shards of offloaded models, which live in CPU memory."""
    out = {}
    for phase, row in raw["phases"].items():
        cells = {category: value for category, value in row.items() if category not in ("total", "offloaded")}
        out[phase] = {**cells, "total": sum(cells.values())}
    return out


def with_engine(phases: dict[str, dict[str, int]], engine_bytes: int, engine: str) -> dict[str, dict[str, int]]:
    """Phases with a colocated rollout engine's reservation. The engine generates: in the generate phase the
    GPU holds the model state and the engine; resident, it keeps its reservation through training too."""
    if not engine_bytes:
        return phases
    out = {}
    for phase, row in phases.items():
        if phase == "generate":
            cells = {k: v for k, v in row.items() if k in (*MODEL_STATE, "rollout")}
            cells["rollout_engine"] = engine_bytes
        elif engine == "resident":
            cells = {**{k: v for k, v in row.items() if k != "total"}, "rollout_engine": engine_bytes}
        else:
            cells = {k: v for k, v in row.items() if k != "total"}
        out[phase] = {**cells, "total": sum(cells.values())}
    return out


def step_peak(phases: dict[str, dict[str, int]]) -> tuple[int, str]:
    phase = max(phases, key=lambda name: phases[name]["total"])
    return phases[phase]["total"], phase


def device_bytes(device: str) -> int:
    return DEVICE_MEMORY_GIB[device][1] * GIB


def ordered(phases: dict[str, Any]) -> dict[str, Any]:
    return {p: phases[p] for p in sorted(phases, key=lambda p: PHASES.index(p) if p in PHASES else len(PHASES))}


def arm_figures(raw: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """One arm's per-GPU phases, step peak and model state, and its peak on each named device."""
    gpu = per_gpu(raw)
    engine_bytes = round(plan.reserve * device_bytes(plan.device))
    phases = ordered(with_engine(gpu, engine_bytes, plan.engine))
    peak, peak_phase = step_peak(phases)
    state = raw["model_state"]
    on_devices = {}
    for device in DEVICE_MEMORY_GIB:
        device_peak, _ = step_peak(with_engine(gpu, round(plan.reserve * device_bytes(device)), plan.engine))
        on_devices[device] = {"peak": device_peak, "fits": device_peak <= device_bytes(device)}
    return {"phases": phases, "peak": peak, "peak_phase": peak_phase, "model_state": state,
            "model_state_total": sum(row["total"] for row in state.values()), "on_devices": on_devices,
            "seconds": raw["seconds"], "cached": raw.get("cached", False)}


# ---------------------------------------------------------------- the command's engine

def describe(config: Config, plan: Plan) -> dict[str, Any]:
    w = plan.workload
    return {"model": plan.model.name, "source": plan.model.source, "precision": config.model.precision,
            "gradient_checkpointing": config.model.gradient_checkpointing, "world_size": plan.world_size,
            "batch": plan.batch_rows, "rows_per_gpu": w.rows, "prompt_length": w.prompt_length,
            "completion_length": w.completion_length, "group_size": config.rollout.samples_per_prompt,
            "minibatches": config.optim.minibatches, "micro_batch_size": config.optim.micro_batch_size,
            "logprob_batch_size": config.rollout.logprob_batch_size,
            "reward_model": plan.reward_model.name if plan.reward_model else None,
            "rollout_engine": ({"reserve": plan.reserve, "mode": plan.engine, "device": plan.device,
                                "bytes": round(plan.reserve * device_bytes(plan.device))} if plan.reserve else None),
            "optimizer_path": "CUDA (foreach)" if plan.cuda_optimizer else "CPU (per tensor)"}


def notes(config: Config, plan: Plan) -> list[str]:
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
        offloaded = [name for name, flag in (("reference", config.run.offload_reference),
                                             ("critic", config.run.offload_critic)) if flag]
        if offloaded:
            lines.append(f"{' and '.join(offloaded)}: parameter and optimizer shards in CPU memory (run.offload_*), "
                         "left out; gathered to the GPU while computing. Their gradient shards count on the GPU until "
                         "the update ends (FSDP2 moves them to CPU memory as they are reduced): at most 1/"
                         f"{plan.world_size} of the fp32 parameters too many")
    if plan.reserve:
        lines.append(f"rollout engine: {plan.reserve:.0%} of the device's memory reserved, as TRL's colocated vLLM "
                     f"does; {plan.engine} during training; it generates, so the generate phase holds the model "
                     "state and the engine")
    if plan.reward_model:
        lines.append(f"a learned reward model ({plan.reward_model.name}, frozen, in the compute dtype) scores every "
                     "completion in the score phase, in both arms")
    return lines


def ratio(arms: dict[str, dict[str, Any]], algos: list[str], key: str) -> dict[str, Any] | None:
    pair = arm_pair(algos)
    if not pair or arms[pair[1]][key] == 0:
        return None
    return {"numerator": pair[0], "denominator": pair[1], "value": arms[pair[0]][key] / arms[pair[1]][key]}


MANY_LAYERS = 40  # past this many decoder layers the progress line says the fake step takes minutes


def estimate(config: Config, algos: list[str], use_cache: bool = True, cuda_optimizer: bool = True,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per-GPU phase peaks of each arm, the step peaks, their ratio and the fit on named devices (JSON-able)."""
    config = spread_over_gpus(config)
    plan = plan_estimate(config, cuda_optimizer)
    arms = {}
    layers = getattr(plan.model.config, "num_hidden_layers", 0) or 0
    # every layer's ops run on fake tensors: Qwen2.5-72B's 80 layers took 200 CPU seconds for both arms here
    cost = (f" ({layers} decoder layers, each run on fake tensors: minutes on a laptop CPU, cached after)"
            if layers >= MANY_LAYERS else "")
    for algo in algos:
        if progress:
            progress(f"{algo}: fake step of {plan.model.name}{cost}")
        arms[algo] = arm_figures(run_arm(config, algo, plan, use_cache), plan)
    return {"kind": "estimate", "harness": __version__, "setup": describe(config, plan), "arms": arms,
            "ratio": {"peak": ratio(arms, algos, "peak"), "model_state": ratio(arms, algos, "model_state_total")},
            "devices": {k: {"label": label, "bytes": gib * GIB} for k, (label, gib) in DEVICE_MEMORY_GIB.items()},
            "notes": notes(config, plan)}
