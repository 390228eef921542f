"""The sensitivity grid of `harness estimate --grid` and the report's "At scale" section.

How the GRPO/PPO memory ratio reads depends on choices the claim leaves open: a KL term (and so a
reference model) or not, a learned reward model or a rule, the critic trained in its own pass or
jointly, activation checkpointing, and a colocated rollout engine kept resident or put to sleep.
The grid estimates every combination (2^5 = 32 cells) and gives the range of the ratio. Each arm's
fake step is cached per configuration (`$HARNESS_CACHE/estimates/`), so a rerun is instant and the
cells that share an arm's configuration (GRPO has no critic pass; the engine is arithmetic) run once.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Callable

from harness import UserError
from harness.config.load import copy_config
from harness.config.choices import DEVICE_MEMORY_GIB
from harness.config.schema import Config
from harness.estimate.estimator import arm_figures, describe, notes, plan_estimate, run_arm, spread_over_gpus
from harness.results.headline import arm_pair
from harness.results.io import write_json

AXES = [("kl", ("on", "off")), ("reward_model", ("none", "same")), ("critic_pass", ("separate", "joint")),
        ("checkpointing", ("off", "on")), ("rollout_engine", ("resident", "asleep"))]
DEFAULT_RESERVE = 0.3  # TRL's vllm_gpu_memory_utilization in colocate mode


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
    """`config` with one grid cell's choices applied."""
    out = copy_config(config)
    for algo in algos:
        out.algorithms[algo] = {**out.algorithms.get(algo, {}), **kl_options(config, algo, cell["kl"] == "on")}
        if "critic_pass" in _options_class(algo).model_fields:
            out.algorithms[algo] = {**out.algorithms.get(algo, {}), "critic_pass": cell["critic_pass"]}
    out.model.gradient_checkpointing = cell["checkpointing"] == "on"
    out.estimate.reward_model = cell["reward_model"]
    out.estimate.rollout_reserve = reserve
    out.estimate.rollout_engine = cell["rollout_engine"]
    return out


def _options_class(algo: str):
    from harness.algorithms import get_algorithm
    return get_algorithm(algo).Config


def cells() -> list[dict[str, str]]:
    out = [{}]
    for axis, values in AXES:
        out = [{**c, axis: v} for c in out for v in values]
    return out


def estimate_grid(config: Config, algos: list[str], use_cache: bool = True,
                  progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Every cell's per-GPU step peak of each arm and their ratio; the ratio's range (JSON-able)."""
    config = spread_over_gpus(config)
    pair = arm_pair(algos)
    if pair is None:
        raise UserError("--grid compares two algorithms: give two in --algos (e.g. grpo,ppo)")
    reserve = config.estimate.rollout_reserve or DEFAULT_RESERVE
    started = time.perf_counter()
    rows, computed, reused, memo = [], 0, 0, {}
    grid = cells()
    for index, cell in enumerate(grid, 1):
        cell_cfg = cell_config(config, list(pair), cell, reserve)
        plan = plan_estimate(cell_cfg)
        label = " ".join(f"{axis}={cell[axis]}" for axis, _ in AXES)
        figures = {}
        for algo in pair:
            if progress:
                progress(index, len(grid), f"{label}: {algo}")
            raw = run_arm(cell_cfg, algo, plan, use_cache, memo)
            computed += not raw["cached"]
            reused += raw["cached"]
            figures[algo] = arm_figures(raw, plan)
        top, bottom = figures[pair[0]], figures[pair[1]]
        rows.append({**cell, "peaks": {a: figures[a]["peak"] for a in pair},
                     "peak_phases": {a: figures[a]["peak_phase"] for a in pair},
                     "ratio": top["peak"] / bottom["peak"] if bottom["peak"] else None})
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    lowest = min(rows, key=lambda r: r["ratio"])
    highest = max(rows, key=lambda r: r["ratio"])
    base = plan_estimate(config)
    varying = ("rollout engine:", "a learned reward model")  # notes of choices the grid varies
    return {"kind": "estimate_grid", "pair": list(pair), "setup": describe(config, base), "axes": [a for a, _ in AXES],
            "reserve": reserve, "cells": rows, "ratio_range": [min(ratios), max(ratios)],
            "lowest": lowest, "highest": highest, "seconds": time.perf_counter() - started,
            "fake_steps": {"computed": computed, "reused": reused},
            "notes": [line for line in notes(config, base) if not line.startswith(varying)]
            + [f"in every cell a rollout engine reserves {reserve:.0%} of the "
               f"{DEVICE_MEMORY_GIB[config.estimate.device_memory][0]}'s memory (resident during training, or asleep) "
               "and generates; reward model same: a frozen learned reward model of the policy's size scores every "
               "completion, in both arms"]}


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


# ---------------------------------------------------------------- the comparison report's "At scale"

def at_scale_models(config: Config) -> list[str]:
    return list(config.estimate.at_scale)


def at_scale_config(config: Config, model: str) -> Config:
    out = copy_config(config)
    out.model.name = model
    out.estimate.world_size = config.estimate.at_scale_world_size
    return spread_over_gpus(out)


def check_at_scale(config: Config) -> None:
    """Every model of the "At scale" grid resolves and its workload fits, before any folder is written."""
    for model in at_scale_models(config):
        try:
            plan_estimate(at_scale_config(config, model))
        except UserError as err:
            raise UserError(f"estimate.at_scale: {err} (estimate.at_scale=none turns the At scale section off)") from None


def write_at_scale(config: Config, algos: list[str], path, progress=None) -> dict[str, Any] | None:
    """The grid of each "At scale" model, written to `path` (at_scale.json) for the report to read."""
    models = at_scale_models(config)
    if not models or arm_pair(algos) is None:
        return None
    started = time.perf_counter()
    estimate_models = estimate_grid if config.estimate.at_scale_grid else config_cell
    grids = {model: estimate_models(at_scale_config(config, model), algos, progress=progress) for model in models}
    data = {"kind": "at_scale", "world_size": config.estimate.at_scale_world_size, "models": grids,
            "seconds": time.perf_counter() - started}
    write_json(path, data)
    return data
