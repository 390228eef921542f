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
GPUs are added on top. The critic and a reward model may sit on GPUs of their own (OpenRLHF): the step's
phases are then read per GPU group, and the GPU count is part of the answer. Beside the memory,
`harness.estimate.compute` gives each arm's FLOPs and roofline GPU time per step (arithmetic).

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
from pathlib import Path
from typing import Any
from collections.abc import Callable

from harness import UserError, __version__
from harness.config.derive import algorithm_options, make_task
from harness.config.load import copy_config
from harness.config.choices import DEVICE_MEMORY_GIB
from harness.config.schema import Config, validate
from harness.config.schema import config_hash
from harness.estimate.model_specs import resolve_model
from harness.train.distributed import model_sharding
from harness.estimate.gpu_figures import Plan, arm_figures, elsewhere_models
from harness.results.headline import arm_pair
from harness.results.io import read_json, write_json
from harness.results.units import GIB

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
ENGINE_MODULES = ("harness.estimate.fake_step", "harness.estimate.fake_repeats", "harness.estimate.fake_generation",
                  "harness.estimate.estimator", "harness.measure.live_tensors",
                  "harness.measure.step_meter", "harness.train.arm",
                  "harness.train.distributed", "harness.train.rollout", "harness.train.models", "harness.algorithms.base",
                  "harness.algorithms.batch", "harness.algorithms.ops", "harness.algorithms.logprobs",
                  "harness.algorithms.adapters", "harness.train.lora")


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
    check_placement(config, reward is not None)
    positions = model.max_positions
    if positions and prompt + completion > positions:
        raise UserError(f"a prompt of {prompt} tokens and a completion of {completion} do not fit the {positions} "
                        f"positions of {model.name} (max_position_embeddings); shorten estimate.prompt_length or "
                        "estimate.completion_length")
    return Plan(model=model, reward_model=reward, world_size=world, batch_rows=batch,
                workload=Workload(rows, prompt, completion, config.rollout.samples_per_prompt),
                reserve=settings.rollout_reserve, engine=settings.rollout_engine, device=settings.device_memory,
                cuda_optimizer=cuda_optimizer, critic_gpus=settings.critic_gpus, engine_gpus=settings.engine_gpus)


def check_placement(config: Config, has_reward_model: bool) -> None:
    """GPUs of their own for the critic (and reward model) and for the rollout engine, as the estimate reads them."""
    settings = config.estimate
    if settings.critic_gpus and settings.critic_gpus != settings.world_size:
        raise UserError(f"estimate.critic_gpus={settings.critic_gpus}: a critic group of another size than the policy's "
                        f"{settings.world_size} GPUs is not estimated; give {settings.world_size} or 0 (on the policy's)")
    if settings.critic_gpus and config.algorithms.get("ppo", {}).get("critic_pass") == "joint":
        raise UserError("estimate.critic_gpus: a joint critic pass needs the critic on the policy's GPUs; set "
                        "algorithms.ppo.critic_pass=separate or estimate.critic_gpus=0")
    if settings.engine_gpus and (settings.engine_gpus % settings.engine_tp or not settings.rollout_reserve):
        raise UserError(f"estimate.engine_gpus={settings.engine_gpus} needs a multiple of estimate.engine_tp="
                        f"{settings.engine_tp} and an engine's reservation (estimate.rollout_reserve)")


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
        "algo": algo, "options": algorithm_options(config, algo).model_dump(),
        "settings": dataclasses.asdict(train_settings(config)), "precision": config.model.precision,
        "checkpointing": config.model.gradient_checkpointing, "model": plan.model.config.to_dict(),
        "lora": config.model.lora.model_dump(),
        "reward_model": plan.reward_model.config.to_dict() if plan.reward_model else None,
        "workload": dataclasses.asdict(plan.workload), "world_size": plan.world_size,
        "sampling": [config.rollout.temperature, config.rollout.top_p], "cuda_optimizer": plan.cuda_optimizer,
        "stack": {m: model_sharding(config.run, m) for m in ("policy", "critic", "reference")},
        "elsewhere": elsewhere_models(plan),
        "versions": [__version__, torch.__version__, importlib.import_module("transformers").__version__],
        "code": code_fingerprint(algo)})


def estimates_dir() -> Path:
    from harness.train.models import cache_dir
    return cache_dir() / "estimates"


def _fake_step(config: Config, algo: str, plan: Plan) -> dict[str, Any]:
    from harness.estimate.fake_step import fake_step
    step = fake_step(config, algo, plan.model.config, plan.reward_model.config if plan.reward_model else None,
                     plan.workload, plan.world_size, foreach=plan.cuda_optimizer, name=plan.model.name,
                     elsewhere=elsewhere_models(plan))
    return dataclasses.asdict(step)


def cached_arm(config: Config, algo: str, plan: Plan, use_cache: bool = True,
               memo: dict[str, dict] | None = None) -> dict[str, Any] | None:
    """One arm's fake step from this run's memo or the cache, or None."""
    key = cache_key(config, algo, plan)
    if memo is not None and key in memo:
        return {**memo[key], "cached": True}
    path = estimates_dir() / f"{key}.json"
    if use_cache and path.exists():
        try:
            return {**read_json(path), "cached": True}
        except (OSError, ValueError):
            pass  # a damaged cache file is computed again
    return None


def store_arm(config: Config, algo: str, plan: Plan, raw: dict[str, Any], memo: dict[str, dict] | None) -> None:
    key = cache_key(config, algo, plan)
    write_json(estimates_dir() / f"{key}.json", raw)
    if memo is not None:
        memo[key] = raw


def run_arm(config: Config, algo: str, plan: Plan, use_cache: bool = True,
            memo: dict[str, dict] | None = None) -> dict[str, Any]:
    """One arm's fake step (full-size figures, see fake_step.FakeStep), from the cache when it holds it
    (`memo`: the steps this run already computed, reused even without the cache)."""
    raw = cached_arm(config, algo, plan, use_cache, memo)
    if raw is not None:
        return raw
    raw = _fake_step(config, algo, plan)
    store_arm(config, algo, plan, raw, memo)
    return {**raw, "cached": False}


# Below this many parameters a fake step takes seconds: arms run one after another (a worker process costs more).
PARALLEL_FROM = 10 ** 8


MANY_LAYERS = 40  # past this many decoder layers the progress line says the fake step takes minutes


def slow_note(plan: Plan) -> str:
    """What a progress line adds for a deep model: every layer's ops run on fake tensors (Qwen2.5-72B's 80
    layers took 200 CPU seconds for both arms here)."""
    layers = getattr(plan.model.config, "num_hidden_layers", 0) or 0
    return (f" ({layers} decoder layers, each run on fake tensors: minutes on a laptop CPU, cached after)"
            if layers >= MANY_LAYERS else "")


def run_arms(jobs: list[tuple[Config, str, Plan]], use_cache: bool = True, memo: dict[str, dict] | None = None,
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Several arms' fake steps: the cached ones read back, the others in worker processes side by side (one
    per core, each fake step is one Python thread) when the models are big, else one after another."""
    import os
    out: list[dict[str, Any] | None] = [cached_arm(c, a, p, use_cache, memo) for c, a, p in jobs]
    todo = [i for i, raw in enumerate(out) if raw is None]
    from harness.estimate.compute import parameter_count
    big = [i for i in todo if parameter_count(jobs[i][2].model.config) >= PARALLEL_FROM]
    limit = int(os.environ.get("HARNESS_ESTIMATE_WORKERS") or 0) or os.cpu_count() or 1  # 1: one after another
    workers = min(len(big), limit)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        if progress:
            progress(f"{', '.join(jobs[i][1] for i in big)}: fake steps of {jobs[big[0]][2].model.name} in {workers} "
                     f"processes{slow_note(jobs[big[0]][2])}")
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {i: pool.submit(_fake_step, *jobs[i]) for i in big}
            for i, future in futures.items():
                out[i] = future.result()
                store_arm(*jobs[i], out[i], memo)
                out[i] = {**out[i], "cached": False}
    for i in todo:
        if out[i] is None:
            config, algo, plan = jobs[i]
            if progress:
                progress(f"{algo}: fake step of {plan.model.name}{slow_note(plan)}")
            out[i] = run_arm(config, algo, plan, use_cache, memo)
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------- the command's engine

def ratio(arms: dict[str, dict[str, Any]], algos: list[str], key: str) -> dict[str, Any] | None:
    pair = arm_pair(algos)
    if not pair:
        return None
    top, bottom = (arms[a] for a in pair)
    if "." in key:
        outer, inner = key.split(".")
        top, bottom = top.get(outer, {}), bottom.get(outer, {})
        key = inner
    if not bottom.get(key):
        return None
    return {"numerator": pair[0], "denominator": pair[1], "value": top[key] / bottom[key]}


RATIOS = {"peak": "peak", "model_state": "model_state_total", "model_state_all_gpus": "model_state_all_gpus",
          "gpus": "gpus", "flops": "compute.flops_total", "gpu_seconds": "compute.gpu_seconds"}


def shared_notes(per_arm: dict[str, list[str]]) -> list[str]:
    """Notes every arm shares, then each arm's own, prefixed with its name."""
    first = next(iter(per_arm.values()))
    common = [line for line in first if all(line in lines for lines in per_arm.values())]
    own = [f"{algo.upper()}: {line}" for algo, lines in per_arm.items() for line in lines if line not in common]
    return common + own


def estimate_arms(configs: dict[str, Config], use_cache: bool = True, cuda_optimizer: bool = True,
                  progress: Callable[[str], None] | None = None, recipes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-GPU phase peaks of each arm (each with its own config), the step peaks, their GRPO/PPO ratios, the fit
    on named devices, GPU counts, FLOPs and roofline GPU time (JSON-able)."""
    from harness.config.derive import algorithm_needs
    from harness.estimate.describe import describe, notes, short_workload
    configs = {algo: spread_over_gpus(config) for algo, config in configs.items()}
    plans = {algo: plan_estimate(config, cuda_optimizer) for algo, config in configs.items()}
    raws = run_arms([(configs[a], a, plans[a]) for a in configs], use_cache, progress=progress)
    arms = {}
    for (algo, config), raw in zip(configs.items(), raws):
        arms[algo] = {**arm_figures(raw, plans[algo], config, algo, algorithm_needs(config, algo).critic),
                      "setup": describe(config, plans[algo])}
        if recipes and algo in recipes:
            arms[algo]["recipe"] = recipes[algo]
    algos = list(configs)
    warnings = list(dict.fromkeys(w for w in (short_workload(p) for p in plans.values()) if w))
    first = algos[0]
    return {"kind": "estimate", "harness": __version__, "setup": arms[first]["setup"], "arms": arms,
            "ratio": {name: ratio(arms, algos, key) for name, key in RATIOS.items()},
            "devices": {k: {"label": label, "bytes": gib * GIB} for k, (label, gib) in DEVICE_MEMORY_GIB.items()},
            "warnings": warnings, "notes": shared_notes({a: notes(configs[a], plans[a]) for a in algos})}


def estimate(config: Config, algos: list[str], use_cache: bool = True, cuda_optimizer: bool = True,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per-GPU phase peaks of each arm of one config, the step peaks, their ratio and the fit on named devices."""
    return estimate_arms(dict.fromkeys(algos, config), use_cache, cuda_optimizer, progress)
