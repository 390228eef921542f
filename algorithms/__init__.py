"""Interchangeable RL algorithms. A new one is one file here plus one line in REGISTRY."""

from __future__ import annotations

import importlib

REGISTRY = {
    "grpo": "harness.algorithms.grpo:GRPO",
    "ppo": "harness.algorithms.ppo:PPO",
    "rloo": "harness.algorithms.rloo:RLOO",
    "reinforce_pp": "harness.algorithms.reinforce_pp:ReinforcePP",
    "dr_grpo": "harness.algorithms.dr_grpo:DrGRPO",
    "dapo": "harness.algorithms.dapo:DAPO",
    "gspo": "harness.algorithms.gspo:GSPO",
}


def algorithm_names() -> list[str]:
    return sorted(REGISTRY)


def get_algorithm(name: str):
    """The algorithm class registered as `name` (KeyError when there is none)."""
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_options(name: str, options: dict, where: str = ""):
    """The typed options of algorithm `name` from a plain mapping (YAML, --set), defaults filled in; one UserError
    line for the first bad one, its field named after `where` (e.g. 'algorithms.ppo.')."""
    return get_algorithm(name).Config.parse(options, where)


KL_MODES = ("native", "off", "loss", "reward")


def kl_settings(name: str, mode: str, coef: float) -> dict[str, float]:
    """The options that put algorithm `name`'s KL to the reference where `mode` says, alike in every arm.

    native: each algorithm's paper default (no change); off: no KL term, no reference model;
    loss: k3 in the loss with `coef`; reward: k1 in the reward with `coef`.
    """
    if mode not in KL_MODES:
        raise ValueError(f"unknown KL mode '{mode}'; valid: {', '.join(KL_MODES)}")
    if mode == "native":
        return {}
    fields = get_algorithm(name).KL_OPTIONS
    if mode != "off" and mode not in fields:
        raise ValueError(f"{name} has no KL term in the {mode}; use --kl off or native")
    return {field: (coef if place == mode else 0.0) for place, field in fields.items()}
