"""An arm's config.yaml: its config, its algorithm and its name in a comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import UserError
from harness.config.load import config_from_dict, read_yaml
from harness.config.schema import Config

ARM_KEYS = ("algo", "arm")  # what an arm's config.yaml holds beside its config


def arm_config_dict(config: Config, algo: str, name: str | None = None) -> dict[str, Any]:
    """What an arm's config.yaml holds: its config, its algorithm, and its name in a comparison when that is
    not the algorithm's (`ppo-n1`), so that the arm's own lines name it."""
    return {**config.to_dict(), "algo": algo, **({"arm": name} if name and name != algo else {})}


def read_arm_config(run_dir: Path) -> tuple[Config, str, str]:
    """(config, algorithm, arm name) from an arm folder's config.yaml; one line when it is not one."""
    path = run_dir / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir} holds no config.yaml: not a run folder")
    saved = read_yaml(path)
    algo, name = saved.pop("algo", None), saved.pop("arm", None)
    if not algo:
        raise UserError(f"{path} names no algorithm ('algo')")
    try:
        return config_from_dict(saved), algo, str(name or algo)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None

