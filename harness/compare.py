"""`harness compare`: the arms of an equal-budget comparison, each in its own process."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import UserError
from harness.config import Config, config_from_dict, read_yaml
from harness.io import read_json, write_json, write_yaml
from harness.runner import configured_task, load_summary, run_name

FAIRNESS = [
    "same base model and weights, tokenizer, task and prompt order for every arm",
    "same sampling (temperature, top-p, max new tokens), generation backend and precision",
    "same policy optimizer, learning rate and optimizer steps per rollout batch",
    "same seeds; the sampling seed of step k is the same in every arm",
    "equal budget in {unit}: {total} per arm",
    "PPO's critic: the policy's architecture and size, initialized from its weights",
    "reference model loaded in an arm exactly when its KL coefficient is non-zero",
]


def fairness_lines(config: Config) -> list[str]:
    return [line.format(unit=config.budget.unit, total=config.budget.total) for line in FAIRNESS]


def plan_arms(config: Config, algos: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    arms = []
    for seed in seeds:
        for algo in algos:
            arm_config = config_from_dict(config.to_dict())
            arm_config.preset = config.preset
            arm_config.run.seed = seed
            arms.append({"algo": algo, "seed": seed, "dir": run_name(arm_config, algo), "config": arm_config})
    return arms


def prepare_model(config: Config) -> None:
    """Build (or find) the shared warm-started model once, before any arm starts its clock."""
    if config.model.name != "tiny":
        return
    from harness.cli import ArmProgress
    from harness.models import build_or_load_tiny, tiny_folder
    task = configured_task(config)
    if (tiny_folder(config.model, task) / "config.json").exists():
        return
    with ArmProgress("tiny model") as progress:
        build_or_load_tiny(config.model, task, progress=lambda s, n, loss: progress("warm start", s, n, {"loss": loss}))


def run_arm_process(arm_dir: Path, resume: bool) -> int:
    command = [sys.executable, "-m", "harness", "run", "--run-dir", str(arm_dir)]
    if resume:
        command.append("--resume")
    return subprocess.run(command).returncode


def run_comparison(args: argparse.Namespace) -> int:
    from harness.cli import config_from_args, parse_algos, timestamp
    if args.resume:
        comparison_dir = Path(args.resume)
        if not (comparison_dir / "comparison.json").exists():
            raise UserError(f"{comparison_dir} holds no comparison.json: not a comparison folder")
        plan = read_json(comparison_dir / "comparison.json")
        config = config_from_dict(read_yaml(comparison_dir / "config.yaml"))
        algos, seeds = plan["algos"], plan["seeds"]
    else:
        algos = parse_algos(args.algos)
        if args.seeds < 1:
            raise UserError("--seeds must be at least 1")
        config = config_from_args(args, algos)
        seeds = list(range(args.seed, args.seed + args.seeds))
        comparison_dir = Path(args.out or Path(config.run.results_dir) / f"compare__{config.task.name}__{timestamp()}")
        if (comparison_dir / "comparison.json").exists():
            raise UserError(f"{comparison_dir} already holds a comparison; use --resume {comparison_dir}")
    arms = plan_arms(config, algos, seeds)
    if not args.resume:
        write_yaml(comparison_dir / "config.yaml", config.to_dict())
        write_json(comparison_dir / "comparison.json", {
            "algos": algos, "seeds": seeds, "preset": config.preset, "task": config.task.name,
            "model": config.model.name, "budget": {"unit": config.budget.unit, "total": config.budget.total},
            "config_hash": config.hash(), "fairness": fairness_lines(config),
            "arms": [{"algo": a["algo"], "seed": a["seed"], "dir": a["dir"]} for a in arms]})
    prepare_model(config)
    for arm in arms:
        arm_dir = comparison_dir / arm["dir"]
        previous = load_summary(arm_dir)
        if previous and previous.get("status") == "ok":
            continue  # finished before an interruption
        resume = bool(args.resume and (arm_dir / "checkpoint" / "state.pt").exists())
        if not resume:
            write_yaml(arm_dir / "config.yaml", {**arm["config"].to_dict(), "algo": arm["algo"]})
        code = run_arm_process(arm_dir, resume)
        if code == 130 or code < 0:
            raise KeyboardInterrupt
        if load_summary(arm_dir) is None or load_summary(arm_dir).get("status") == "running":
            # The process died before it could record why (killed, or a crash in the interpreter).
            write_json(arm_dir / "summary.json", {"algo": arm["algo"], "seed": arm["seed"], "status": "failed",
                                                   "error": f"arm process exited with status {code}"})
    summaries = [load_summary(comparison_dir / a["dir"]) for a in arms]
    write_json(comparison_dir / "summary.json", comparison_summary(config, algos, seeds, summaries))
    print_comparison(comparison_dir, algos, summaries)
    if not args.no_report:
        write_report(comparison_dir)
    return 0 if all(s.get("status") == "ok" for s in summaries) else 1


def comparison_summary(config: Config, algos, seeds, summaries) -> dict[str, Any]:
    from harness.tables import arm_rows, ratio_rows
    return {"algos": algos, "seeds": seeds, "budget": {"unit": config.budget.unit, "total": config.budget.total},
            "arms": arm_rows(summaries), "ratios": ratio_rows(summaries, algos)}


def print_comparison(comparison_dir: Path, algos, summaries) -> None:
    from harness.tables import render_terminal
    render_terminal(summaries, algos)
    print(f"comparison: {comparison_dir}")


def write_report(comparison_dir: Path) -> None:
    try:
        from harness.report import build_report
    except ImportError:
        print("report: not built (harness.report is not available)")
        return
    html, pdf = build_report(comparison_dir)
    print(f"report: {html}")
    if pdf:
        print(f"report: {pdf}")
