"""`harness run`: train one arm in this process (what `harness compare` starts for each arm)."""

from __future__ import annotations

from pathlib import Path

from harness import UserError
from harness.config import Config, check_setup, config_from_dict, read_yaml
from harness.runner import run_arm, run_name
from harness.terminal import ArmProgress, print_arm, timestamp


def run(config: Config, algo: str, out: Path | str | None = None, probes: bool = True) -> int:
    """Train a new arm into `out` (default results/TASK__ALGO__sSEED__TIME); 0 when it finished."""
    check_setup(config, [algo])
    run_dir = Path(out or Path(config.run.results_dir) / f"{run_name(config, algo)}__{timestamp()}")
    return _train(config, algo, run_dir, resume=False, probes=probes)


def run_folder(run_dir: Path | str, resume: bool = False, probes: bool = True) -> int:
    """Train the arm a folder's config.yaml describes; with `resume`, from its checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} holds no config.yaml: not a run folder")
    saved = read_yaml(run_dir / "config.yaml")
    algo = saved.pop("algo", None)
    if not algo:
        raise UserError(f"{run_dir / 'config.yaml'} names no algorithm ('algo')")
    config = config_from_dict(saved)
    check_setup(config, [algo])
    return _train(config, algo, run_dir, resume=resume, probes=probes)


def _train(config: Config, algo: str, run_dir: Path, resume: bool, probes: bool) -> int:
    with ArmProgress(f"{algo} s{config.run.seed}") as progress:
        summary = run_arm(config, algo, run_dir, resume=resume, progress=progress, probes_enabled=probes)
    print_arm(summary, run_dir)
    return 0 if summary["status"] == "ok" else 1
