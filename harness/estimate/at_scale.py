"""The comparison's "At scale" estimate: the recipes named in `estimate.at_scale`, and on request this
comparison's own config on a big model; `harness compare` writes it to at_scale.json for the report.

`estimate.at_scale` names recipes (default `verl-qwen2-7b-gsm8k`, verl's GRPO/PPO pair for Qwen2-7B on
8 GPUs) and models, comma-separated. A recipe runs as `harness estimate --recipe NAME` does, over the
default preset, so that its figures are the published setup's whatever the comparison's own workload (and
its fake steps come from the shared cache after the first comparison on a machine). A model name maps this
comparison's config onto that model at `estimate.at_scale_world_size` GPUs (`estimate.at_scale_grid`: the
whole sensitivity grid): a toy workload on a big model, shown because it was asked for, with a warning
when its rows are shorter than 64 tokens. Beside them, this machine's measured matmul peak, which the
report reads the run's measured time per phase against (MFU per phase).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import UserError
from harness.config.load import copy_config
from harness.config.schema import Config
from harness.results.headline import arm_pair
from harness.results.io import write_json

RECIPE_BASE_PRESET = "tiny"  # what a recipe's fields go over in the At scale section (not the comparison's config)


def at_scale_names(config: Config) -> list[str]:
    return list(config.estimate.at_scale)  # a list field: 'none' is the empty list


def is_recipe(name: str) -> bool:
    from harness.estimate.recipes import recipe_names
    return name in recipe_names() or name.endswith((".yaml", ".yml"))


def at_scale_models(config: Config) -> list[str]:
    """The models (not recipes) of estimate.at_scale: this comparison's config mapped onto each."""
    return [name for name in at_scale_names(config) if not is_recipe(name)]


def at_scale_recipes(config: Config) -> list[str]:
    return [name for name in at_scale_names(config) if is_recipe(name)]


def at_scale_config(config: Config, model: str) -> Config:
    from harness.estimate.estimator import spread_over_gpus
    out = copy_config(config)
    out.model.name = model
    out.estimate.world_size = config.estimate.at_scale_world_size
    return spread_over_gpus(out)


def recipe_arm_configs(name: str, overrides: list[str] | None = None) -> tuple[Any, dict[str, Config]]:
    from harness.estimate.recipes import load_recipe, recipe_configs
    recipe = load_recipe(name)
    return recipe, recipe_configs([recipe], RECIPE_BASE_PRESET, overrides=overrides)


def adapter_overrides(config: Config) -> list[str]:
    """The comparison's LoRA adapters (and PPO's critic base) as --set lines over a recipe: a LoRA comparison's
    memory question is GRPO against PPO with adapters, so the published setup is estimated with them; a full
    fine-tuning comparison adds nothing."""
    lora = config.model.lora
    if not lora.enabled:
        return []
    fields = [f"model.lora.{name}={getattr(lora, name)}" for name in ("rank", "alpha", "dropout", "target_modules")]
    critic_base = config.algorithms.get("ppo", {}).get("critic_base")
    return fields + ([f"algorithms.ppo.critic_base={critic_base}"] if critic_base else [])


def adapter_words(overrides: list[str]) -> str:
    """How a recipe's estimate differs from the published setup, for the report's labels ('' when it does not)."""
    values = dict(line.split("=", 1) for line in overrides)
    if "model.lora.rank" not in values:
        return ""
    words = f"with this comparison's LoRA (rank {values['model.lora.rank']}, alpha {values['model.lora.alpha']}"
    if "algorithms.ppo.critic_base" in values:
        words += f", critic base {values['algorithms.ppo.critic_base']}"
    return words + ") in place of its full fine-tuning"


def check_at_scale(config: Config) -> None:
    """Every recipe and model of the "At scale" section resolves and its workload fits, before any folder is written."""
    from harness.estimate.estimator import plan_estimate
    try:
        for name in at_scale_recipes(config):
            _, configs = recipe_arm_configs(name, adapter_overrides(config))
            for arm_config in configs.values():
                from harness.estimate.estimator import spread_over_gpus
                plan_estimate(spread_over_gpus(arm_config))
        for model in at_scale_models(config):
            plan_estimate(at_scale_config(config, model))
    except UserError as err:
        raise UserError(f"estimate.at_scale: {err} (estimate.at_scale=none turns the At scale section off)") from None


def recipe_estimate(name: str, progress: Callable[[str], None] | None = None,
                    overrides: list[str] | None = None) -> dict[str, Any]:
    """`harness estimate --recipe NAME [--set ...]` for the report: every arm, its phases per GPU, fit, GPUs, FLOPs
    and time; `overrides` (adapter_overrides) go over the recipe's fields and are recorded beside its name."""
    from harness.estimate.estimator import estimate_arms
    recipe, configs = recipe_arm_configs(name, overrides)
    sources = {algo: {"name": recipe.name, "title": recipe.title, "source": recipe.source_line(algo)}
               for algo in configs}
    result = estimate_arms(configs, progress=progress, recipes=sources)
    adapted = {"overrides": list(overrides), "words": adapter_words(overrides)} if overrides else {}
    return {**result, "recipe": {"name": recipe.name, "title": recipe.title, **adapted}}


def this_machine(config: Config) -> dict[str, Any]:
    """The matmul peak this machine measures in the comparison's compute dtype (what its MFU is read against)."""
    import torch

    from harness.measure.flops import matmul_peak
    dtype = torch.float32 if config.model.precision == "fp32" else torch.bfloat16
    return {"matmul_peak": matmul_peak(dtype), "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "device": "cpu"}


def write_at_scale(config: Config, algos: list[str], path: Path, progress=None,
                   line: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The recipes' estimates and the models' grids of "At scale", written to `path` (at_scale.json)."""
    from harness.estimate.describe import short_workload
    from harness.estimate.estimator import plan_estimate
    from harness.estimate.grid import config_cell, estimate_grid
    recipes, models = at_scale_recipes(config), at_scale_models(config)
    if not recipes and not (models and arm_pair(algos)):
        return None
    started = time.perf_counter()
    out: dict[str, Any] = {"kind": "at_scale", "world_size": config.estimate.at_scale_world_size, "recipes": {},
                           "models": {}, "warnings": []}
    for name in recipes:
        out["recipes"][name] = recipe_estimate(name, progress=line, overrides=adapter_overrides(config))
    if arm_pair(algos):
        estimate_models = estimate_grid if config.estimate.at_scale_grid else config_cell
        for model in models:
            scaled = at_scale_config(config, model)
            warning = short_workload(plan_estimate(scaled))
            if warning:
                out["warnings"].append(f"{model}: {warning}")
                if line:
                    line(f"warning: {model}: {warning}")
            out["models"][model] = estimate_models(scaled, algos, progress=progress)
    out["this_machine"] = this_machine(config)
    out["seconds"] = time.perf_counter() - started
    write_json(path, out)
    return out
