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
}
# Arms trained by another library's trainer (harness/trl_arm.py): they take the options, group size and KL
# fields of the algorithm they cross-check, and are listed apart from the algorithms our loop trains.
CROSS_CHECKS = {"trl-grpo": "grpo"}


def algorithm_names() -> list[str]:
    return sorted(REGISTRY)


def get_algorithm(name: str):
    """The algorithm class registered as `name` (KeyError when there is none); for a cross-check arm,
    the class of the algorithm it checks."""
    module, cls = REGISTRY[CROSS_CHECKS.get(name, name)].split(":")
    return getattr(importlib.import_module(module), cls)


def check_algorithms(names: list[str]) -> None:
    """ValueError naming the first unknown algorithm, with the valid names."""
    for name in names:
        if name not in REGISTRY and name not in CROSS_CHECKS:
            raise ValueError(f"unknown algorithm '{name}'; valid: {', '.join(algorithm_names() + sorted(CROSS_CHECKS))}")


def parse_options(name: str, options: dict):
    """The typed options of algorithm `name` from a plain mapping (YAML, --set), defaults filled in."""
    from harness.algorithms.base import options_from
    return options_from(get_algorithm(name).Config, options)


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
