"""`harness sweep`: a small grid per arm on a short budget, selected on the validation split only, then a
comparison of each arm's best setting against the others' on fresh seeds (the test split).

    from harness.commands.sweep import sweep
    from harness.config.schema import load_config
    sweep(load_config("smoke"), ["grpo", "ppo"], {"optim.lr": [1e-4, 3e-4]}, seeds=1, out="results/my-sweep")

A grid field applies to every arm whose config has it; `algorithms.NAME.*` fields only to the arms that run
NAME. Each point is an arm of its own (folder `<task>__<arm>.p<i>__s<seed>`) trained with run.eval_split =
validation, so its held-out accuracy, and the choice made from it, never read the test split. The best point
per arm is the highest mean validation accuracy over the sweep's seeds; ties go to the first in grid order.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from harness import UserError
from harness.commands import compare as compare_
from harness.commands.arm_specs import ArmSpec, algorithm_section, check_arm_list, check_baseline
from harness.commands.terminal import timestamp
from harness.config.kl import KLSetting
from harness.config.load import config_from_dict, copy_config, parse_scalar, read_yaml
from harness.config.schema import Config, check_seed
from harness.estimate.preflight import check_setup
from harness.report.sweep import SWEEP_FILE
from harness.results.io import (FolderLock, command_line, output_folder, read_json_object, refuse_if_being_written,
                        remove_temporaries, write_json, write_yaml)
from harness.results.records import EvalScores, Summary
from harness.train.inputs import record_inputs
from harness.train.runner import load_summary
from harness.train.supervise import Supervisor

COMPARE_FOLDER = "compare"


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """['optim.lr=1e-4,3e-4', ...] -> {'optim.lr': [0.0001, 0.0003]}, in the order given."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, _, values = item.partition("=")
        key = key.strip()
        if not key or "." not in key or not values.strip():
            raise UserError(f"--grid '{item}' must look like section.field=v1,v2,...")
        if key in grid:
            raise UserError(f"--grid names {key} twice; give its values once, comma-separated")
        parsed = [parse_scalar(v.strip()) for v in values.split(",") if v.strip()]
        if len(set(map(repr, parsed))) != len(parsed):
            raise UserError(f"--grid {key} repeats a value: {values}")
        grid[key] = parsed
    if not grid:
        raise UserError("harness sweep needs at least one --grid section.field=v1,v2,...")
    return grid


MAX_POINTS_UNASKED = 64  # point runs a sweep starts without --yes


def check_grid_applies(specs: list[ArmSpec], grid: dict[str, list[Any]]) -> None:
    """Every algorithms.NAME.* field of the grid applies to an arm (else it would be silently ignored)."""
    for key in grid:
        if key.startswith("algorithms.") and not any(key in fields_for(spec, grid) for spec in specs):
            raise UserError(f"--grid {key} applies to no arm: none runs {key.split('.')[1]} (arms: "
                            f"{', '.join(f'{s.name}={s.algo}' for s in specs)})")


def point_count(specs: list[ArmSpec], grid: dict[str, list[Any]], seeds: int) -> int:
    """Point runs of the sweep: each arm's grid (the fields that apply to it) times the seeds."""
    return seeds * sum(math.prod(len(grid[key]) for key in fields_for(spec, grid)) for spec in specs)


def expected_time(config: Config, runs: int) -> str:
    """The sweep's time from earlier finished arms of the same preset, model and task in results_dir (wall
    seconds per step, evaluations included), or a sentence saying there are none."""
    folder = Path(config.run.results_dir)
    per_step = []
    for path in [*folder.glob("*/summary.json"), *folder.glob("*/*/summary.json")]:
        try:
            summary = read_json_object(path)
        except UserError:
            continue
        same = all(summary.get(k) == v for k, v in (("preset", config.preset), ("model", config.model.name),
                                                     ("task", config.task.name), ("status", "ok")))
        if same and isinstance(summary.get("steps"), int) and summary["steps"] and summary.get("wall_s"):
            per_step.append(summary["wall_s"] / summary["steps"])
    steps = runs * config.total_steps()
    if not per_step:
        return (f"{steps} training steps in all; no finished run of preset {config.preset} with this model and task "
                f"in {folder} to time them by")
    from harness.commands.terminal import duration
    seconds = steps * sum(per_step) / len(per_step)
    return f"{steps} training steps in all, about {duration(seconds)} (from {len(per_step)} finished runs in {folder})"


def fields_for(spec: ArmSpec, grid: dict[str, list[Any]]) -> list[str]:
    """The grid fields that apply to an arm: algorithms.NAME.* only to arms running NAME, the rest to all."""
    section = algorithm_section(spec.algo)
    return [key for key in grid if not key.startswith("algorithms.") or key.split(".")[1] in (section, spec.algo)]


def sweep_config(config: Config, budget: int | None) -> Config:
    """The points' config: validation split, no lm-eval (selection reads greedy validation accuracy), short budget."""
    points = copy_config(config)
    points.run.eval_split = "validation"
    points.run.lm_eval = False
    if budget is not None:
        points.budget.total = budget
    points.estimate.at_scale = []
    return points


def plan_points(config: Config, specs: list[ArmSpec], grid: dict[str, list[Any]], seeds: list[int],
                kl: KLSetting) -> list[dict[str, Any]]:
    """Every (arm, grid point, seed) as an arm of its own, each config checked."""
    points = []
    for spec in specs:
        fields = fields_for(spec, grid)
        for index, values in enumerate(itertools.product(*(grid[f] for f in fields))):
            setting = dict(zip(fields, values))
            point = ArmSpec(f"{spec.name}.p{index}", spec.algo, {**spec.overrides, **setting}, spec.preset)
            for arm in compare_.plan_arms(config, [point], seeds, kl):
                points.append({**arm, "base_arm": spec.name, "point": index, "setting": setting})
    check_arm_list([ArmSpec(p["arm"], p["algo"], p["overrides"], spec.preset) for spec in specs for p in points
                    if p["seed"] == seeds[0] and p["base_arm"] == spec.name])
    return points


def sweep(config: Config, arms: list[ArmSpec | str], grid: dict[str, list[Any]], seeds: int = 1,
          out: Path | str | None = None, budget: int | None = None, kl: KLSetting | None = None,
          baseline: str | None = None, compare_after: bool = True, compare_seeds: int | None = None,
          first_seed: int = 0, report: bool = True, yes: bool = False) -> int:
    """Run the grid, pick each arm's best point on validation accuracy, then compare the best on fresh seeds.
    Above MAX_POINTS_UNASKED point runs it starts only with `yes`, having said what it would cost."""
    specs = compare_.as_specs(arms)
    kl = kl or KLSetting()
    baseline = check_baseline(specs, baseline)
    if seeds < 1:
        raise UserError("--seeds must be at least 1 per point")
    check_grid_applies(specs, grid)
    runs = point_count(specs, grid, seeds)
    cost = f"{runs} point runs, {expected_time(sweep_config(config, budget), runs)}"
    if runs > MAX_POINTS_UNASKED and not yes:
        raise UserError(f"this sweep has {cost}; add --yes to start it, or narrow the grid")
    compare_seeds = compare_seeds or config.verdict.seeds
    sweep_seeds = list(range(first_seed, first_seed + seeds))
    for seed in sweep_seeds + [first_seed + seeds + compare_seeds - 1]:
        check_seed(seed)
    points_config = sweep_config(config, budget)
    check_setup(points_config, [])
    points = plan_points(points_config, specs, grid, sweep_seeds, kl)
    compare_.check_arms(points_config, points)
    check_setup(config, [])  # the comparison after it, on the test split
    sweep_dir = output_folder(out, config.run.results_dir, f"sweep__{config.task.label}__{timestamp()}", "sweep")
    with FolderLock(sweep_dir, command_line()):
        if (sweep_dir / SWEEP_FILE).exists():
            raise UserError(f"{sweep_dir} already holds a sweep; finish it with 'harness sweep --resume {sweep_dir}'")
        write_yaml(sweep_dir / "config.yaml", config.to_dict())
        plan = {"arm_specs": [s.to_dict() for s in specs], "grid": grid, "seeds": sweep_seeds,
                "budget": {"unit": points_config.budget.unit, "total": points_config.budget.total},
                "kl": kl.to_dict(), "baseline": baseline, "compare": compare_after,
                "compare_seeds": list(range(first_seed + seeds, first_seed + seeds + compare_seeds)),
                "selection": "highest mean greedy accuracy on the validation split over the sweep's seeds; "
                             "ties: the first point in grid order",
                "points": [point_entry(p) for p in points]}
        write_json(sweep_dir / SWEEP_FILE, plan)
        write_yaml(sweep_dir / "points_config.yaml", points_config.to_dict())
        record_inputs(sweep_dir, points_config)
        print(f"sweep: {len(points)} point runs = {len(points) // len(sweep_seeds)} points x {len(sweep_seeds)} "
              f"seed{'s' * (len(sweep_seeds) != 1)}, {points_config.budget.total} {points_config.budget.unit} each, "
              f"selected on the validation split ({config.task.validation_size} prompts); folder {sweep_dir}",
              flush=True)
        print(f"expected: {cost}", flush=True)
        return run_sweep(sweep_dir, config, points_config, specs, points, plan, resume=False, report=report)


def point_entry(point: dict[str, Any]) -> dict[str, Any]:
    return {k: point[k] for k in ("arm", "base_arm", "algo", "point", "setting", "overrides", "seed", "dir")}


def resume_sweep(sweep_dir: Path | str, report: bool = True, force: bool = False) -> int:
    """Finish a sweep: finished points are kept, the others resume; then the choice and the comparison."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP_FILE).exists():
        raise UserError(f"{sweep_dir} holds no {SWEEP_FILE}: not a sweep folder")
    with FolderLock(sweep_dir, command_line()):
        plan = read_json_object(sweep_dir / SWEEP_FILE, {"arm_specs": list, "grid": dict, "seeds": list})
        try:
            specs = check_arm_list([ArmSpec.from_dict(e) for e in plan["arm_specs"]])
            kl = KLSetting(**plan.get("kl", {}))
            config = config_from_dict(read_yaml(sweep_dir / "config.yaml"))
            points_config = config_from_dict(read_yaml(sweep_dir / "points_config.yaml"))
        except (KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{sweep_dir / SWEEP_FILE} is damaged ({type(err).__name__}: {err})") from None
        points = plan_points(points_config, specs, plan["grid"], plan["seeds"], kl)
        compare_.check_resumable(sweep_dir, points_config, points, force)
        return run_sweep(sweep_dir, config, points_config, specs, points, plan, resume=True, report=report)


def run_sweep(sweep_dir: Path, config: Config, points_config: Config, specs: list[ArmSpec],
              points: list[dict[str, Any]], plan: dict[str, Any], resume: bool, report: bool) -> int:
    refuse_if_being_written(*(sweep_dir / p["dir"] for p in points))
    remove_temporaries(sweep_dir)
    with Supervisor().forwarding_signals() as supervisor:
        compare_.prepare_model(points_config)
        compare_.run_each_arm(sweep_dir, points, resume, supervisor, hint=f"harness sweep --resume {sweep_dir}")
    results = point_results(sweep_dir, points)
    choice = choose(specs, results)
    write_json(sweep_dir / SWEEP_FILE, {**plan, "results": results, "choice": choice})
    print_sweep(plan["grid"], results, choice)
    from harness.report.sweep import write_sweep_report
    html = write_sweep_report(sweep_dir)
    print(f"sweep report: {html}")
    if not plan.get("compare", True):
        return 0 if all(r["status"] == "ok" for r in results) else 1
    missing = [s.name for s in specs if choice.get(s.name) is None]
    if missing:
        raise UserError(f"no finished point for arm {', '.join(missing)}: nothing to compare; "
                        f"see the points' arm.log in {sweep_dir}")
    best = [ArmSpec(s.name, s.algo, choice[s.name]["overrides"], s.preset) for s in specs]
    compare_dir = sweep_dir / COMPARE_FOLDER
    print(f"best against best on fresh seeds {plan['compare_seeds']} (test split): "
          + ", ".join(b.text for b in best), flush=True)
    if (compare_dir / "comparison.json").exists():
        return compare_.resume(compare_dir, report=report)
    return compare_.compare(config, best, plan["compare_seeds"], out=compare_dir, report=report,
                            baseline=plan.get("baseline"), kl=KLSetting(**plan.get("kl", {})))


def point_results(sweep_dir: Path, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each point: its setting, each seed's validation accuracy and split size, and their mean."""
    by_point: dict[str, dict[str, Any]] = {}
    for p in points:
        summary = load_summary(sweep_dir / p["dir"]) or Summary()
        final, base = summary.eval.final or EvalScores(), summary.eval.base or EvalScores()
        entry = by_point.setdefault(p["arm"], {"arm": p["base_arm"], "point": p["arm"], "index": p["point"],
                                               "algo": p["algo"], "setting": p["setting"],
                                               "overrides": p["overrides"], "seeds": {}, "status": "ok"})
        entry["seeds"][str(p["seed"])] = {"accuracy": final.accuracy, "n": final.n, "base": base.accuracy,
                                          "status": summary.status or "missing", "dir": p["dir"]}
        if not summary.ok:
            entry["status"] = summary.status or "missing"
    for entry in by_point.values():
        values = [s["accuracy"] for s in entry["seeds"].values() if s["accuracy"] is not None]
        entry["validation_accuracy"] = sum(values) / len(values) if values and entry["status"] == "ok" else None
    return list(by_point.values())


def choose(specs: list[ArmSpec], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm, the point of the highest mean validation accuracy; ties go to the first in grid order."""
    choice: dict[str, Any] = {}
    for spec in specs:
        finished = [r for r in results if r["arm"] == spec.name and r["validation_accuracy"] is not None]
        if not finished:
            choice[spec.name] = None
            continue
        best = max(finished, key=lambda r: (r["validation_accuracy"], -r["index"]))
        choice[spec.name] = {"point": best["point"], "setting": best["setting"], "overrides": best["overrides"],
                             "validation_accuracy": best["validation_accuracy"]}
    return choice


def print_sweep(grid: dict[str, list[Any]], results: list[dict[str, Any]], choice: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    table = Table(title="Sweep: greedy accuracy on the validation split (mean over the sweep's seeds)")
    table.add_column("arm")
    for key in grid:
        table.add_column(key, justify="right")
    table.add_column("validation acc.", justify="right")
    table.add_column("status")
    for r in results:
        chosen = (choice.get(r["arm"]) or {}).get("point") == r["point"]
        accuracy = r["validation_accuracy"]
        table.add_row(r["arm"] + (" (best)" if chosen else ""), *(escape(str(r["setting"].get(k, "—"))) for k in grid),
                      "—" if accuracy is None else f"{accuracy:.1%}", r["status"],
                      style="bold" if chosen else None)
    Console().print(table)
