"""The sensitivity grid of `harness estimate --grid`, and the comparison's own config on a big model.

How the GRPO/PPO memory ratio reads depends on choices the claim leaves open: a KL term (and so a
reference model) or not, a learned reward model or a rule, the critic trained in its own pass or
jointly, activation checkpointing, a colocated rollout engine kept resident or put to sleep, and the
stack: precision, the sequence length, CPU offload of the frozen models and the critic, and the engine's
share of the GPU. The grid estimates every combination of the axes it is given (`--grid-axes`; all
nine by default: 2^9 = 512 cells) and gives the range of the ratio. Each arm's fake step is cached per
configuration (`$HARNESS_CACHE/estimates/`), so a rerun is instant and the cells that share an arm's
configuration (GRPO has no critic pass; the engine's mode and share are arithmetic) run once.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Callable

from harness import UserError
from harness.config.load import copy_config
from harness.config.choices import DEVICE_MEMORY_GIB
from harness.config.schema import Config
from harness.estimate.describe import describe, notes
from harness.estimate.estimator import plan_estimate, run_arm, spread_over_gpus
from harness.estimate.gpu_figures import arm_figures
from harness.results.headline import arm_pair

AXES = [("kl", ("on", "off")), ("reward_model", ("none", "same")), ("critic_pass", ("separate", "joint")),
        ("checkpointing", ("off", "on")), ("rollout_engine", ("resident", "asleep")),
        ("precision", ("fp32", "bf16-mixed")), ("sequence", ("1x", "4x")), ("offload", ("none", "frozen+critic")),
        ("engine_share", ("0.3", "0.6"))]
AXIS_NAMES = [axis for axis, _ in AXES]
DEFAULT_RESERVE = 0.3  # TRL's vllm_gpu_memory_utilization in colocate mode (verl's examples: 0.6, the other value)
LONGER = 4  # the "4x" sequence: completions four times the config's, within the model's positions


def kl_options(config: Config, algo: str, on: bool) -> dict[str, float]:
    """The options that turn the algorithm's KL to the reference (and so the reference model) on or off:
    on keeps the config's coefficients, or takes the algorithm's defaults where the config has none."""
    from harness.algorithms import get_algorithm, kl_settings
    if not on:
        return kl_settings(algo, "off", 0.0)
    fields = get_algorithm(algo).KL_OPTIONS.values()
    configured = {name: config.algorithms.get(algo, {}).get(name) for name in fields}
    if any(configured.values()):
        return {}
    defaults = get_algorithm(algo).Config.model_fields
    return {name: defaults[name].default for name in fields}


def cell_config(config: Config, algos: list[str], cell: dict[str, str], reserve: float) -> Config:
    """`config` with one grid cell's choices applied (an axis the cell does not name keeps the config's)."""
    out = copy_config(config)
    for algo in algos:
        if "kl" in cell:
            out.algorithms[algo] = {**out.algorithms.get(algo, {}), **kl_options(config, algo, cell["kl"] == "on")}
        if "critic_pass" in cell and "critic_pass" in _options_class(algo).model_fields:
            out.algorithms[algo] = {**out.algorithms.get(algo, {}), "critic_pass": cell["critic_pass"]}
    if "checkpointing" in cell:
        out.model.gradient_checkpointing = cell["checkpointing"] == "on"
    if "reward_model" in cell:
        out.estimate.reward_model = cell["reward_model"]
    out.estimate.rollout_reserve = float(cell.get("engine_share", reserve))
    if "rollout_engine" in cell:
        out.estimate.rollout_engine = cell["rollout_engine"]
    if "precision" in cell:
        out.model.precision = cell["precision"]
    if cell.get("sequence") == "4x":
        out.estimate.completion_length = longer_completion(config)
    if "offload" in cell:
        out.run.offload_reference = out.run.offload_critic = cell["offload"] == "frozen+critic"
    return out


def longer_completion(config: Config) -> int:
    """LONGER times the config's completion length, within the model's positions."""
    from harness.estimate.estimator import task_prompt_length
    from harness.estimate.model_specs import resolve_model
    completion = config.estimate.completion_length or config.rollout.max_new_tokens
    prompt = config.estimate.prompt_length or task_prompt_length(config)
    positions = resolve_model(config.model.name, config).max_positions or 10 ** 9
    return max(min(LONGER * completion, positions - prompt), completion)


def _options_class(algo: str):
    from harness.algorithms import get_algorithm
    return get_algorithm(algo).Config


def algo_has_critic(config: Config, algo: str) -> bool:
    from harness.config.derive import algorithm_needs
    return algorithm_needs(config, algo).critic


def cells(axes: list[str] | None = None) -> list[dict[str, str]]:
    out = [{}]
    for axis, values in AXES:
        if axes is None or axis in axes:
            out = [{**c, axis: v} for c in out for v in values]
    return out


def parse_axes(text: str | None) -> list[str]:
    """'kl,precision' -> those axes, in the grid's order; None or 'all' -> every axis."""
    if not text or text.strip().lower() == "all":
        return list(AXIS_NAMES)
    wanted = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in AXIS_NAMES]
    if unknown or not wanted:
        raise UserError(f"--grid-axes '{text}': unknown axis {', '.join(unknown) or '(none given)'}; "
                        f"valid: {', '.join(AXIS_NAMES)}, all")
    return [a for a in AXIS_NAMES if a in wanted]


def estimate_grid(config: Config, algos: list[str], use_cache: bool = True,
                  progress: Callable[[int, int, str], None] | None = None, axes: list[str] | None = None) -> dict[str, Any]:
    """Every cell's per-GPU step peak of each arm and their ratio; the ratio's range (JSON-able)."""
    axes = axes or list(AXIS_NAMES)
    config = spread_over_gpus(config)
    pair = arm_pair(algos)
    if pair is None:
        raise UserError("--grid compares two algorithms: give two in --algos (e.g. grpo,ppo)")
    reserve = config.estimate.rollout_reserve or DEFAULT_RESERVE
    started = time.perf_counter()
    rows, computed, reused, memo = [], 0, 0, {}
    grid = cells(axes)
    for index, cell in enumerate(grid, 1):
        cell_cfg = cell_config(config, list(pair), cell, reserve)
        plan = plan_estimate(cell_cfg)
        label = " ".join(f"{axis}={cell[axis]}" for axis in axes)
        figures = {}
        for algo in pair:
            if progress:
                progress(index, len(grid), f"{label}: {algo}")
            raw = run_arm(cell_cfg, algo, plan, use_cache, memo)
            computed += not raw["cached"]
            reused += raw["cached"]
            figures[algo] = arm_figures(raw, plan, has_critic=algo_has_critic(cell_cfg, algo))
        top, bottom = figures[pair[0]], figures[pair[1]]
        rows.append({**cell, "peaks": {a: figures[a]["peak"] for a in pair},
                     "peak_phases": {a: figures[a]["peak_phase"] for a in pair},
                     "ratio": top["peak"] / bottom["peak"] if bottom["peak"] else None})
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    lowest = min(rows, key=lambda r: r["ratio"])
    highest = max(rows, key=lambda r: r["ratio"])
    base = plan_estimate(config)
    varying = ("rollout engine:", "a learned reward model")  # notes of choices the grid varies
    return {"kind": "estimate_grid", "pair": list(pair), "setup": describe(config, base), "axes": axes,
            "reserve": reserve, "cells": rows, "ratio_range": [min(ratios), max(ratios)],
            "lowest": lowest, "highest": highest, "seconds": time.perf_counter() - started,
            "fake_steps": {"computed": computed, "reused": reused},
            "notes": [line for line in notes(config, base) if not line.startswith(varying)]
            + [f"in every cell a rollout engine reserves {reserve:.0%} of the "
               f"{DEVICE_MEMORY_GIB[config.estimate.device_memory][0]}'s memory (or the cell's engine share; resident "
               "during training, or asleep) and generates; reward model same: a frozen learned reward model of the "
               "policy's size scores every completion, in both arms; sequence 4x: completions four times as long "
               "(within the model's positions); offload frozen+critic: the reference's and the critic's shards in CPU "
               "memory (FSDP2's CPUOffloadPolicy: above world size 1 only); the log-prob path is not an axis yet"]}


def config_cell(config: Config, algos: list[str], use_cache: bool = True,
                progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """The grid's answer for one cell: this config's own choices (two fake steps, not the grid's dozens)."""
    config = spread_over_gpus(config)
    pair = arm_pair(algos)
    plan = plan_estimate(config)
    figures = {}
    for algo in pair:
        if progress:
            progress(1, 1, f"this configuration: {algo}")
        figures[algo] = arm_figures(run_arm(config, algo, plan, use_cache), plan)
    top, bottom = (figures[a]["peak"] for a in pair)
    cell = {"peaks": {a: figures[a]["peak"] for a in pair}, "peak_phases": {a: figures[a]["peak_phase"] for a in pair},
            "ratio": top / bottom if bottom else None}
    return {"kind": "estimate_cell", "pair": list(pair), "setup": describe(config, plan), "axes": [],
            "reserve": config.estimate.rollout_reserve, "cells": [cell], "ratio_range": [cell["ratio"]] * 2,
            "lowest": cell, "highest": cell, "notes": notes(config, plan)}
