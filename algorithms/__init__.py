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


def algorithm_names() -> list[str]:
    return sorted(REGISTRY)


def get_algorithm(name: str):
    """The algorithm class registered as `name` (KeyError when there is none)."""
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_algorithms(names: list[str]) -> None:
    """ValueError naming the first unknown algorithm, with the valid names."""
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown algorithm '{name}'; valid: {', '.join(algorithm_names())}")


def parse_options(name: str, options: dict):
    """The typed options of algorithm `name` from a plain mapping (YAML, --set), defaults filled in."""
    from harness.algorithms.base import options_from
    return options_from(get_algorithm(name).Config, options)
