"""`harness run`: train one arm (what `harness compare` starts for each arm): in this process, or as a
torchrun job of run.nproc_per_node processes that this process launches and waits for."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

from harness import UserError
from harness import distributed as ranks_
from harness.config import Config, algorithm_options, check_setup, config_from_dict, read_yaml
from harness.io import write_yaml
from harness.runner import record_launch_failure, run_arm, run_name
from harness.terminal import ArmProgress, print_arm, timestamp


def run(config: Config, algo: str, out: Path | str | None = None, probes: bool = True) -> int:
    """Train a new arm into `out` (default results/TASK__ALGO__sSEED__TIME); 0 when it finished."""
    check_setup(config, [algo])
    ranks_.check_launch(config)
    run_dir = Path(out or Path(config.run.results_dir) / f"{run_name(config, algo)}__{timestamp()}")
    if config.world_size > 1:
        resolved = config.to_dict()
        resolved["derived"]["algorithm_options"] = dataclasses.asdict(algorithm_options(config, algo))
        write_yaml(run_dir / "config.yaml", {**resolved, "algo": algo})
        return launch(run_dir, config, resume=False)
    return _train(config, algo, run_dir, resume=False, probes=probes)


def launch(run_dir: Path, config: Config, resume: bool) -> int:
    """Start the arm's torchrun job and wait for it; the ranks write the folder. A rank that dies
    (killed, out of memory) takes the job down: its number goes into the summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "launcher.log"
    with open(log, "w") as handle:
        code = subprocess.run(ranks_.arm_command(run_dir, resume, config), stderr=handle).returncode
    if code:
        record_launch_failure(run_dir, config, code, log.read_text(errors="replace"))
    return code


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
    if config.world_size > 1 and not ranks_.from_env().active:  # not yet a rank of the job: start it
        ranks_.check_launch(config)
        return launch(run_dir, config, resume)
    return _train(config, algo, run_dir, resume=resume, probes=probes)


def _train(config: Config, algo: str, run_dir: Path, resume: bool, probes: bool) -> int:
    if not ranks_.from_env().main:  # the other ranks of a torchrun job train silently
        summary = run_arm(config, algo, run_dir, resume=resume, progress=None, probes_enabled=probes)
        return 0 if summary["status"] == "ok" else 1
    with ArmProgress(f"{algo} s{config.run.seed}") as progress:
        summary = run_arm(config, algo, run_dir, resume=resume, progress=progress, probes_enabled=probes)
    print_arm(summary, run_dir)
    return 0 if summary["status"] == "ok" else 1
