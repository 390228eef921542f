"""`harness compare`: the arms of an equal-budget comparison, each in its own process.

    from harness.config import load_config
    from harness.commands.compare import compare
    compare(load_config("smoke"), ["grpo", "ppo"], seeds=[0, 1], out="results/my-comparison")
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from harness import Interrupted, UserError
from harness import distributed as ranks_
from harness.algorithms import check_algorithms
from harness.commands.plan import analysis_plan_lines, make_plan
from harness.config import Config, check_seed, check_setup, config_from_dict, make_task, read_yaml
from harness.estimate_grid import check_at_scale
from harness.exports import write_steps_table
from harness.io import (FolderLock, check_writable, command_line, new_folder, read_json_object,
                        refuse_if_being_written, remove_temporaries, write_json, write_yaml)
from harness.results import arm_rows, ratio_rows
from harness.runner import _partial_state as partial_state  # the steps a stopped arm wrote
from harness.runner import load_summary, run_name, summarize
from harness.supervise import Supervisor, death_of
from harness.terminal import ArmProgress, plan_lines, render_terminal, timestamp
from harness.trackers import attach_report, parse_report_to

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
    from harness.models import build_or_load_tiny, tiny_folder
    task = make_task(config)
    if (tiny_folder(config.model, task) / "config.json").exists():
        return
    with ArmProgress("tiny model") as progress:
        build_or_load_tiny(config.model, task, progress=lambda s, n, loss: progress("warm start", s, n, {"loss": loss}))


def arm_command(arm_dir: Path, resume: bool) -> list[str]:
    """`harness run --run-dir DIR`: the arm in its own process, which starts its torchrun job when
    run.nproc_per_node asks for one, and holds the arm's folder while it runs."""
    return [sys.executable, "-m", "harness", "run", "--run-dir", str(arm_dir), *(["--resume"] if resume else [])]


def compare(config: Config, algos: list[str], seeds: list[int], out: Path | str | None = None,
            report: bool = True) -> int:
    """Start a comparison: every (algorithm, seed) arm under the same budget, then tables and the report.

    Returns 0 when every arm finished, 1 when one did not (its failure is recorded in its summary).
    """
    if not seeds:
        raise UserError("a comparison needs at least one seed")
    for seed in seeds:
        check_seed(seed)
    check_setup(config, algos)
    ranks_.check_launch(config)
    check_at_scale(config)
    if out:
        comparison_dir = Path(out)
        check_writable(comparison_dir, "comparison folder")
    else:
        check_writable(config.run.results_dir, "results folder")
        comparison_dir = new_folder(config.run.results_dir, f"compare__{config.task.label}__{timestamp()}")
    with FolderLock(comparison_dir, command_line()):
        if (comparison_dir / "comparison.json").exists():
            raise UserError(f"{comparison_dir} already holds a comparison; finish it with "
                            f"'harness compare --resume {comparison_dir}', or choose another --out")
        analysis_plan = make_plan(config, len(seeds), algos)  # fixed before any arm runs, saved with them
        arms = plan_arms(config, algos, seeds)
        write_yaml(comparison_dir / "config.yaml", config.to_dict())
        write_json(comparison_dir / "comparison.json", {
            "algos": algos, "seeds": seeds, "preset": config.preset, "task": config.task.name,
            "model": config.model.name, "budget": {"unit": config.budget.unit, "total": config.budget.total},
            "config_hash": config.hash(), "fairness": fairness_lines(config), "plan": analysis_plan,
            "arms": [{"algo": a["algo"], "seed": a["seed"], "dir": a["dir"]} for a in arms]})
        for arm in arms:
            write_yaml(comparison_dir / arm["dir"] / "config.yaml", {**arm["config"].to_dict(), "algo": arm["algo"]})
        print("\n".join(plan_lines(config, algos, seeds, comparison_dir, parse_report_to(config.run.report_to))))
        print("\n".join(analysis_plan_lines(analysis_plan)), flush=True)
        return run_arms(comparison_dir, config, algos, seeds, arms, resume=False, report=report)


def read_plan(comparison_dir: Path) -> tuple[Config, list[str], list[int]]:
    """The saved config, algorithms and seeds of a comparison folder; one line naming a damaged file."""
    path = comparison_dir / "comparison.json"
    plan = read_json_object(path, {"algos": list, "seeds": list})
    try:
        check_algorithms(plan["algos"])
        known = bool(plan["algos"])
    except (ValueError, TypeError):  # an unknown name, or not a name at all
        known = False
    if not known:
        raise UserError(f"{path} is damaged: 'algos' {plan['algos']!r} are not algorithm names")
    if not plan["seeds"] or not all(type(seed) is int for seed in plan["seeds"]):
        raise UserError(f"{path} is damaged: 'seeds' {plan['seeds']!r} are not a list of seeds")
    try:
        config = config_from_dict(read_yaml(comparison_dir / "config.yaml"))
    except UserError as err:
        raise UserError(f"{comparison_dir / 'config.yaml'}: {err}") from None
    return config, plan["algos"], plan["seeds"]


def resume(comparison_dir: Path | str, report: bool = True) -> int:
    """Finish an interrupted comparison: finished arms are kept, the others resume from their checkpoints."""
    comparison_dir = Path(comparison_dir)
    if not (comparison_dir / "comparison.json").exists():
        raise UserError(f"{comparison_dir} holds no comparison.json: not a comparison folder")
    with FolderLock(comparison_dir, command_line()):
        config, algos, seeds = read_plan(comparison_dir)
        check_setup(config, algos)
        saved_plan = read_json_object(comparison_dir / "comparison.json").get("plan")
        if saved_plan:
            print("\n".join(analysis_plan_lines(saved_plan)))
        return run_arms(comparison_dir, config, algos, seeds, plan_arms(config, algos, seeds), resume=True,
                        report=report)


def run_arms(comparison_dir: Path, config: Config, algos: list[str], seeds: list[int], arms: list[dict[str, Any]],
             resume: bool, report: bool) -> int:
    """Each arm in turn as its own process; then the tables, the verdict and the report.

    SIGINT or SIGTERM to this process is forwarded to the running arm, which records `interrupted`,
    and the comparison stops (exit 130 or 143). An arm killed by a signal nobody sent through here (the
    out-of-memory killer's SIGKILL) is recorded as `killed`, and the other arms go on.
    """
    refuse_if_being_written(*(comparison_dir / arm["dir"] for arm in arms))
    remove_temporaries(comparison_dir)
    with Supervisor().forwarding_signals() as supervisor:
        prepare_model(config)
        for arm in arms:
            arm_dir = comparison_dir / arm["dir"]
            previous = _summary_or_refuse(arm_dir)
            if previous and previous.get("status") == "ok":
                continue  # finished before an interruption
            if not (arm_dir / "config.yaml").exists():
                write_yaml(arm_dir / "config.yaml", {**arm["config"].to_dict(), "algo": arm["algo"]})
            resumable = resume and (arm_dir / "checkpoint" / "state.pt").exists()
            code, last_line = supervisor.run(arm_command(arm_dir, resumable), arm_dir / "arm.log")
            record_outcome(arm_dir, arm, code, last_line, supervisor.stopped_by)
            if supervisor.stopped_by:  # the user's own Ctrl-C, or SIGTERM to this process: stop here
                raise Interrupted(supervisor.stopped_by, hint=f"harness compare --resume {comparison_dir}")
        summaries = [load_summary(comparison_dir / a["dir"]) for a in arms]
        write_json(comparison_dir / "summary.json", comparison_summary(config, algos, seeds, summaries))
        at_scale(config, algos, comparison_dir)
        render_terminal(summaries, algos)
        print(f"comparison: {comparison_dir}")
        exports = [write_steps_table(comparison_dir, arms)]
        print(f"steps table: {exports[0]}")
        print_verdict(comparison_dir)
        if report:
            from harness.report import build_report, report_files
            html, pdf = build_report(comparison_dir)
            print(f"report: {html}")
            if pdf:
                print(f"report: {pdf}")
            exports += report_files(comparison_dir)
        attach_report([comparison_dir / a["dir"] for a in arms], exports, config.run.report_to,
                      config.run.tracker_project, config.run.results_dir)
    return 0 if all(s.get("status") == "ok" for s in summaries) else 1


def _summary_or_refuse(arm_dir: Path) -> dict[str, Any] | None:
    """An arm's summary before it (re)runs; a damaged one is one line, never silently run over."""
    if not (arm_dir / "summary.json").exists():
        return None
    try:
        return read_json_object(arm_dir / "summary.json")
    except UserError as err:
        raise UserError(f"{err}; delete it to run that arm again") from None


def record_outcome(arm_dir: Path, arm: dict[str, Any], code: int, last_line: str | None,
                   stopped_by: int | None) -> None:
    """What the arm could not record itself: killed by a signal, or dead before it wrote why."""
    try:
        summary = read_json_object(arm_dir / "summary.json") if (arm_dir / "summary.json").exists() else None
    except UserError:
        summary = None
    if summary and summary.get("status") not in (None, "running"):
        return  # the arm recorded its own outcome (ok, failed, oom, diverged, interrupted, ...)
    state = partial_state(arm_dir)
    if stopped_by:
        status, error = "interrupted", f"interrupted by {signal.Signals(stopped_by).name} after step {state.step}"
    elif code < 0:
        status, error = "killed", f"killed ({death_of(code)}) after step {state.step}"
    else:
        status, error = "failed", f"arm process exited with status {code}" + (f": {last_line}" if last_line else "")
    write_json(arm_dir / "summary.json", summarize(arm["config"], arm["algo"], {"state": state}, status, error))


def print_verdict(comparison_dir: Path) -> None:
    """Each primary figure with its interval and reading, as the report states them."""
    from harness.report.data import load_comparison
    from harness.report.verdict import terminal_lines, verdict_section
    print("\n".join(terminal_lines(verdict_section(load_comparison(comparison_dir)))))


def at_scale(config: Config, algos: list[str], comparison_dir: Path) -> None:
    """The report's "At scale" grid (harness estimate) for the models in estimate.at_scale, into at_scale.json."""
    from harness.estimate_grid import at_scale_models, write_at_scale
    if not at_scale_models(config) or (comparison_dir / "at_scale.json").exists():
        return
    print(f"at scale: estimating {', '.join(at_scale_models(config))} at world size "
          f"{config.estimate.at_scale_world_size} on fake tensors (cached per configuration)", flush=True)
    data = write_at_scale(config, algos, comparison_dir / "at_scale.json",
                          progress=lambda done, total, what: print(f"at scale {done}/{total}: {what}", flush=True))
    if data:
        ranges = "; ".join(f"{model} {'/'.join(grid['pair'])} from {grid['ratio_range'][0]:.3f} to "
                           f"{grid['ratio_range'][1]:.3f}" for model, grid in data["models"].items())
        print(f"at scale (estimated step peak ratio): {ranges}; {data['seconds']:.0f} s; "
              f"{comparison_dir / 'at_scale.json'}", flush=True)


def comparison_summary(config: Config, algos, seeds, summaries) -> dict[str, Any]:
    return {"algos": algos, "seeds": seeds, "budget": {"unit": config.budget.unit, "total": config.budget.total},
            "arms": arm_rows(summaries), "ratios": ratio_rows(summaries, algos)}
