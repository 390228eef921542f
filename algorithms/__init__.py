"""Interchangeable RL algorithms. A new one is one file here plus one line in REGISTRY."""

from __future__ import annotations

import importlib

REGISTRY = {
    "grpo": "algorithms.grpo:GRPO",
    "ppo": "algorithms.ppo:PPO",
}


def algorithm_names() -> list[str]:
    return sorted(REGISTRY)


def get_algorithm(name: str):
    """The algorithm class registered as `name` (KeyError when there is none)."""
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
