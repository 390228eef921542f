"""Arm kinds by name: what `--algos` and an `algorithms.<name>` section accept.

An arm trains one of our algorithms (`harness.algorithms.REGISTRY`) in our loop, or is a cross-check:
another library's trainer of one of our algorithms, taking that algorithm's options, group size and KL
fields. Every kind runs through the same arm interface (`harness.train.arm_interface.ArmRunner`); the
runner looks its class up here by name, so a second cross-check is one line below and one folder under
`harness/crosscheck/`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from harness.algorithms import algorithm_names


@dataclass(frozen=True)
class CrossCheck:
    checks: str  # the algorithm it cross-checks: its options, group size and KL fields
    arm: str  # "module:Class" of its arm, imported when an arm of this kind runs
    check_options: str  # "module:function" that refuses options its trainer cannot run, before any folder


OUR_ARM = "harness.train.arm:Arm"
CROSS_CHECKS = {
    "trl-grpo": CrossCheck("grpo", "harness.crosscheck.trl.arm:TRLArm",
                           "harness.crosscheck.trl.settings:check_trl_options"),
}


def arm_kind_names() -> list[str]:
    """Every name an arm can train: our algorithms, then the cross-checks."""
    return algorithm_names() + sorted(CROSS_CHECKS)


def algorithm_of(name: str) -> str:
    """The algorithm an arm kind trains: its own name, or the one a cross-check checks."""
    return CROSS_CHECKS[name].checks if name in CROSS_CHECKS else name


def check_arm_kinds(names: list[str]) -> None:
    """ValueError naming the first unknown arm kind, with the valid names."""
    for name in names:
        if name not in arm_kind_names():
            raise ValueError(f"unknown algorithm '{name}'; valid: {', '.join(arm_kind_names())}")


def _load(target: str):
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def arm_class(name: str):
    """The class that trains an arm of kind `name` (imported on demand: a cross-check's library loads only
    when one of its arms runs)."""
    return _load(CROSS_CHECKS[name].arm if name in CROSS_CHECKS else OUR_ARM)


def check_kind_options(name: str, options) -> None:
    """A cross-check's refusal of options its trainer cannot run (UserError); our loop runs every option."""
    if name in CROSS_CHECKS:
        _load(CROSS_CHECKS[name].check_options)(name, options)
