"""`harness tune`: each arm tuned on the validation split with the same point budget, under the comparison's KL
regime, over its algorithm's declared axes (harness.commands.tune_search), written as a preset whose per-arm
settings `harness compare` then applies (best against best).

    harness tune --algos grpo,ppo --preset tiny --points 12 --budget 30720 --curve-steps 600

Every point is an arm of its own (folder `<task>__<arm>.t<i>__s<seed>`), trained and scored as a sweep point is
(harness.commands.sweep: run.eval_split = validation, no lm-eval), on a seed apart from the comparison's. With
--curve-steps, each arm's choice then trains that long with a validation score every few steps: where the curves
stop rising is the step budget the preset suggests; the test split is never read. The preset (--write-preset,
default preset.yaml in the folder) is the starting preset with --config and --set applied, plus an
arm_settings section: each arm's chosen values with their provenance, and the validation tables as comments.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import UserError
from harness.commands import compare as compare_
from harness.commands.arm_specs import ArmSpec, arm_config, check_arm_list
from harness.commands.sweep import sweep_config
from harness.commands.terminal import duration, timestamp
from harness.commands.tune_search import (Axis, axis_fields, chosen_visit, coordinate_search, declared_axes,
                                          edge_report, plateau_step)
from harness.commands.tune_table import print_tune, write_preset
from harness.config.derive import algorithm_options, make_task
from harness.config.kl import KLSetting
from harness.config.load import config_from_dict, copy_config, read_yaml
from harness.config.schema import Config, check_seed
from harness.estimate.preflight import check_algorithms_fit, check_setup
from harness.results.io import (FolderLock, check_writable, command_line, output_folder, read_json_object, read_jsonl,
                                refuse_if_being_written, remove_temporaries, write_json, write_yaml)
from harness.results.records import Summary
from harness.train.runner import load_summary
from harness.train.supervise import Supervisor

TUNE_FILE = "tune.json"
TUNE_SEED = 1000  # apart from the comparison's seeds 0, 1, ...: a lucky tuning run never replays in a comparison
POINT_SOURCE = "harness tune point"


def tune_specs(arms: list[ArmSpec | str]) -> list[ArmSpec]:
    """The arms to tune: one per algorithm, each a bare algorithm name (what is tuned is the algorithm's
    settings; a field held fixed goes in --set for every arm)."""
    specs = compare_.as_specs(arms)
    for spec in specs:
        if spec.overrides or spec.name != spec.algo:
            raise UserError(f"harness tune tunes one arm per algorithm: give algorithm names (e.g. grpo,ppo), not "
                            f"'{spec.text}'; hold a field fixed for every arm with --set")
    return specs


def points_config(config: Config, budget: int | None) -> Config:
    """A point's config: a sweep point's (validation split, no lm-eval, the point budget), without periodic
    evaluations (the choice reads the final one)."""
    points = sweep_config(config, budget)
    points.run.eval_every = 0
    return points


def current_value(config: Config, algo: str, field: str) -> Any:
    """A dotted field's value in an arm's config; an algorithm's option with its default filled in (PPO's
    critic_lr 0 reads as the policy's learning rate, what 0 means)."""
    section, name = field.split(".", 1)
    if section == "algorithms":
        value = getattr(algorithm_options(config, algo), name.split(".", 1)[1])
        return config.optim.lr if field.endswith("critic_lr") and not value else value
    return getattr(getattr(config, section), name)


def arm_axes(config: Config, spec: ArmSpec, kl: KLSetting, task=None) -> tuple[list, dict[str, Any]]:
    """An arm's axes, each count ladder cut to the values its config allows, and its starting setting: the
    arm's present values (the preset's, its per-arm settings, your --set)."""
    start_config = arm_config(config, spec, kl)
    fields = axis_fields(spec.algo)
    current = {field: current_value(start_config, spec.algo, field) for field in fields}
    axes = declared_axes(spec.algo, current, config.rollout.batch_size, config.total_steps())
    allowed = []
    for axis in axes:
        if axis.step > 1:  # a learning rate: every positive value is a valid one
            allowed.append(axis)
            continue
        values = tuple(v for v in axis.ladder if v == current[axis.field] or valid(config, spec, kl, axis.field, v, task))
        allowed.append(type(axis)(axis.field, values, axis.step, tuple(v for v in axis.first if v in values),
                                  axis.bounds))
    return allowed, current


def valid(config: Config, spec: ArmSpec, kl: KLSetting, field: str, value: Any, task) -> bool:
    try:
        checked = arm_config(config, ArmSpec(spec.name, spec.algo, {field: value}, spec.preset), kl)
        check_algorithms_fit(checked, [spec.algo], task)
    except UserError:
        return False
    return True


def tune(config: Config, arms: list[ArmSpec | str], points: int = 12, out: Path | str | None = None,
         budget: int | None = None, kl: KLSetting | None = None, seed: int = TUNE_SEED, curve_steps: int = 0,
         curve_every: int = 0, write_to: Path | str | None = None, preset_data: dict[str, Any] | None = None) -> int:
    """Tune every arm, print the validation tables, write the preset. `preset_data`: the preset with --config
    and --set applied, unparsed (what the written preset starts from; default: the resolved config)."""
    specs = tune_specs(arms)
    kl = kl or KLSetting()
    if points < 1:
        raise UserError("--points must be at least 1 per arm")
    if curve_steps < 0 or curve_every < 0:
        raise UserError("--curve-steps and --curve-every must be positive (--curve-steps 0: no curves)")
    if write_to is not None:
        if not str(write_to).endswith((".yaml", ".yml")):
            raise UserError(f"--write-preset {write_to} must end in .yaml or .yml (how --preset tells a file from a "
                            "preset's name)")
        check_writable(Path(write_to).resolve().parent, "--write-preset folder")
    check_seed(seed)
    base = points_config(config, budget)
    check_setup(base, [])
    task = make_task(base)
    axes = {s.name: arm_axes(base, s, kl, task) for s in specs}
    arms_planned = compare_.plan_arms(base, specs, [seed], kl)
    compare_.check_arms(base, arms_planned)
    if curve_steps:
        curve_config(base, curve_steps, curve_every)
    tune_dir = output_folder(out, config.run.results_dir, f"tune__{config.task.label}__{timestamp()}", "tune")
    with FolderLock(tune_dir, command_line()):
        if (tune_dir / TUNE_FILE).exists():
            raise UserError(f"{tune_dir} already holds a tune; finish it with 'harness tune --resume {tune_dir}'")
        write_yaml(tune_dir / "config.yaml", config.to_dict())
        write_yaml(tune_dir / "points_config.yaml", base.to_dict())
        plan = {"command": command_line(), "preset": config.preset, "arm_specs": [s.to_dict() for s in specs],
                "axes": {name: {"start": start, "axes": [asdict(a) for a in found]}
                         for name, (found, start) in axes.items()},
                "points": points, "seed": seed, "kl": kl.to_dict(),
                "budget": {"unit": base.budget.unit, "total": base.budget.total, "steps": base.total_steps()},
                "validation_prompts": len(task.eval_examples()), "points_config_hash": base.hash(),
                "curve": {"steps": curve_steps, "every": curve_every or default_every(curve_steps)},
                "preset_data": preset_data if preset_data is not None else plain_data(config),
                "write_to": str(Path(write_to or tune_dir / "preset.yaml").resolve()),
                "selection": "highest greedy accuracy on the validation split of all the arm's points; ties: the "
                             "earliest", "arms": {}}
        write_json(tune_dir / TUNE_FILE, plan)
        print("\n".join(plan_lines(plan, base, tune_dir)), flush=True)
        return run_tune(tune_dir, config, base, specs, plan, resume=False)


def default_every(curve_steps: int) -> int:
    """A validation score every this many steps of a curve: about 20 points on it."""
    return max(1, curve_steps // 20) if curve_steps else 0


def plain_data(config: Config) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in ("derived", "preset")}


def curve_config(base: Config, steps: int, every: int) -> Config:
    """The curve runs' config: a point's, for `steps` rollout steps, scored on validation every `every`."""
    curve = copy_config(base)
    curve.budget.unit, curve.budget.total = "steps", steps
    curve.run.eval_every = every or default_every(steps)
    return curve


def plan_lines(plan: dict[str, Any], base: Config, tune_dir: Path) -> list[str]:
    """The tune's plan, printed before the first point: the budget per arm, the order of the axes, the time."""
    budget = plan["budget"]
    names = list(plan["axes"])
    lines = [f"tune: {len(names)} arm{'s' * (len(names) != 1)} ({', '.join(names)}) x {plan['points']} points each, "
             f"{budget['total']} {budget['unit']} ({budget['steps']} steps) per point, the same for every arm; "
             f"scored on the validation split ({plan['validation_prompts']} prompts), seed {plan['seed']}, "
             f"KL {plan['kl']['mode']}",
             "  search: from each arm's present settings, one axis at a time in the order below; probe either side "
             "(or an axis's first values), widen while the best is the lowest or highest probed, move to the best; "
             "a pass that moves nothing halves the learning rates' step; stops at the point budget or when a pass "
             "at the finest step moves nothing"]
    for name, entry in plan["axes"].items():
        texts = [saved_axis(a).text(entry["start"][a["field"]]) for a in entry["axes"]]
        lines.append(f"  {name}: " + "; then ".join(texts))
    per_point = past_point_seconds(base.run.results_dir, plan["points_config_hash"], tune_dir)
    total_points = plan["points"] * len(names)
    if per_point:
        lines.append(f"  expected time: at most {total_points} points x {duration(per_point)} = "
                     f"{duration(total_points * per_point)} (per-point time of earlier tunes of this config)")
    else:
        lines.append(f"  expected time: at most {total_points} points; measured on each arm's start point, which "
                     "runs first")
    if plan["curve"]["steps"]:
        lines.append(f"  then each arm's choice for {plan['curve']['steps']} steps, scored on validation every "
                     f"{plan['curve']['every']} steps: where the curves stop rising is the suggested budget")
    lines.append(f"  folder: {tune_dir}; preset: {plan['write_to']}")
    return lines


def past_point_seconds(results_dir: Path | str, points_hash: str, skip: Path) -> float | None:
    """The mean seconds per point of earlier tunes of the same point config in results_dir."""
    seconds = []
    for path in Path(results_dir).glob(f"*/{TUNE_FILE}"):
        if path.parent.resolve() == skip.resolve():
            continue
        try:
            data = read_json_object(path)
            if data.get("points_config_hash") == points_hash:
                seconds += [p["seconds"] for arm in data["arms"].values() for p in arm["points"] if p.get("seconds")]
        except (UserError, KeyError, TypeError, AttributeError):
            continue
    return sum(seconds) / len(seconds) if seconds else None


def resume_tune(tune_dir: Path | str) -> int:
    """Finish a tune: finished points are kept (the search replays them), the others run or resume."""
    tune_dir = Path(tune_dir)
    if not (tune_dir / TUNE_FILE).exists():
        raise UserError(f"{tune_dir} holds no {TUNE_FILE}: not a tune folder")
    with FolderLock(tune_dir, command_line()):
        plan = read_json_object(tune_dir / TUNE_FILE, {"arm_specs": list, "axes": dict, "points": int})
        try:
            specs = check_arm_list([ArmSpec.from_dict(e) for e in plan["arm_specs"]])
            config = config_from_dict(read_yaml(tune_dir / "config.yaml"))
            base = config_from_dict(read_yaml(tune_dir / "points_config.yaml"))
            KLSetting(**plan["kl"])
        except (KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{tune_dir / TUNE_FILE} is damaged ({type(err).__name__}: {err})") from None
        return run_tune(tune_dir, config, base, specs, plan, resume=True)


class PointRunner:
    """The search's score function for one arm: each setting it asks for runs as a point of its own (on a resume,
    a point that finished is read back, and one that did not resumes), and its validation accuracy is returned.
    `save(points)` records the arm's points so far after each one."""

    def __init__(self, tune_dir: Path, base: Config, spec: ArmSpec, plan: dict[str, Any], supervisor, resume: bool,
                 save=lambda points: None):
        self.tune_dir, self.base, self.spec, self.plan = tune_dir, base, spec, plan
        self.supervisor, self.resume, self.save = supervisor, resume, save
        self.recorded = list((plan["arms"].get(spec.name) or {}).get("points") or [])
        self.points: list[dict[str, Any]] = []

    def __call__(self, setting: dict[str, Any]) -> float | None:
        index = len(self.points)
        if index < len(self.recorded) and self.recorded[index]["setting"] != setting:
            raise UserError(f"{self.tune_dir / TUNE_FILE}: point {index} of {self.spec.name} was "
                            f"{self.recorded[index]['setting']}, the search now asks for {setting}: the search "
                            "changed since this tune started; start a new tune")
        point = ArmSpec(f"{self.spec.name}.t{index}", self.spec.algo, {**self.spec.overrides, **setting},
                        self.spec.preset, source=POINT_SOURCE)
        arm = compare_.plan_arms(self.base, [point], [self.plan["seed"]], KLSetting(**self.plan["kl"]))[0]
        compare_.check_arms(self.base, [arm])
        refuse_if_being_written(self.tune_dir / arm["dir"])
        compare_.run_each_arm(self.tune_dir, [arm], self.resume, self.supervisor,
                              hint=f"harness tune --resume {self.tune_dir}")
        summary = load_summary(self.tune_dir / arm["dir"]) or Summary()
        final, base = summary.eval.final, summary.eval.base
        self.points.append({"index": index, "dir": arm["dir"], "setting": setting,
                            "status": summary.status or "missing",
                            "score": final.accuracy if summary.ok and final is not None else None,
                            "n": final.n if final is not None else None,
                            "base": base.accuracy if base is not None else None,
                            "seconds": point_seconds(self.tune_dir / arm["dir"])})
        self.save(self.points)
        return self.points[-1]["score"]


def point_seconds(run_dir: Path) -> float | None:
    """A point's time, start to end, from its own files: env.json is written as it starts, summary.json as it
    ends (a point resumed after a stop: its last part)."""
    try:
        return round((run_dir / "summary.json").stat().st_mtime - (run_dir / "env.json").stat().st_mtime, 1)
    except OSError:
        return None


def saved_axis(entry: dict[str, Any]) -> Axis:
    """An axis as tune.json saved it."""
    return Axis(entry["field"], tuple(entry["ladder"]), entry["step"], tuple(entry["first"]), tuple(entry["bounds"]))


def run_tune(tune_dir: Path, config: Config, base: Config, specs: list[ArmSpec], plan: dict[str, Any],
             resume: bool) -> int:
    remove_temporaries(tune_dir)
    results: dict[str, Any] = dict(plan.get("arms") or {})
    with Supervisor().forwarding_signals() as supervisor:
        compare_.prepare_model(base, [plan["seed"]])  # the points' own warm start, not the comparison's seed 0
        starts = {spec.name: PointRunner(tune_dir, base, spec, {**plan, "arms": {}}, supervisor, resume)
                  for spec in specs}
        for spec in specs:  # each arm's start first: its time per point makes the expected time
            starts[spec.name](plan["axes"][spec.name]["start"])
        print(expected_time_line(plan, {name: runner.points[0] for name, runner in starts.items()}), flush=True)
        for spec in specs:
            entry = plan["axes"][spec.name]
            axes = [saved_axis(a) for a in entry["axes"]]
            def save(points, name=spec.name):  # the arm's points so far, for a resume after a stop
                results[name] = {**(results.get(name) or {}), "points": points}
                write_json(tune_dir / TUNE_FILE, {**plan, "arms": results})

            runner = PointRunner(tune_dir, base, spec, {**plan, "arms": dict(results)}, supervisor, resume, save)
            progress = Progress(spec.name, plan["points"], runner)
            visits = coordinate_search(axes, entry["start"], plan["points"], progress)
            choice = chosen_visit(visits)
            results[spec.name] = {
                "points": [{**p, "why": v.why, "axis": v.axis} for p, v in zip(runner.points, visits)],
                "choice": None if choice is None else {"index": choice.index, "setting": choice.setting,
                                                       "score": choice.score},
                "edges": edge_report(axes, visits, choice.setting) if choice else [],
                "converged": len(visits) < plan["points"]}
            write_json(tune_dir / TUNE_FILE, {**plan, "arms": results})
        failed = [s.name for s in specs if results[s.name]["choice"] is None]
        if failed:
            raise UserError(f"no finished point for arm {', '.join(failed)}: nothing to choose; see the points' "
                            f"arm.log in {tune_dir}")
        curves = run_curves(tune_dir, base, specs, plan, results, supervisor) if plan["curve"]["steps"] else {}
    plan = {**plan, "arms": results, "curves": curves}
    write_json(tune_dir / TUNE_FILE, plan)
    print_tune(plan)
    path = write_preset(plan, tune_dir)
    print(f"preset: {path} (harness compare --preset {path} runs each arm with its chosen settings)")
    return 0


def expected_time_line(plan: dict[str, Any], starts: dict[str, dict[str, Any]]) -> str:
    """The tune's expected time from each arm's start point: at most its points at that time, and the curves at
    that time per step."""
    parts, total = [], 0.0
    for name, start in starts.items():
        seconds = start.get("seconds") or 0.0
        score = "failed" if start["score"] is None else f"{start['score']:.1%}"
        curve = seconds / plan["budget"]["steps"] * plan["curve"]["steps"]
        total += seconds * plan["points"] + curve
        parts.append(f"{name} {duration(seconds)} (start {score})")
    curves = " and the curves" if plan["curve"]["steps"] else ""
    return (f"expected time: per point {', '.join(parts)}: at most {duration(total)} for "
            f"{plan['points']} points per arm{curves}")


class Progress:
    """Wraps a PointRunner: a line after each point, with the arm's best so far and its time left."""

    def __init__(self, arm: str, points: int, runner: PointRunner):
        self.arm, self.total, self.runner = arm, points, runner

    def __call__(self, setting: dict[str, Any]) -> float | None:
        score = self.runner(setting)
        done = self.runner.points
        last = done[-1]
        best = max((p["score"] for p in done if p["score"] is not None), default=None)
        mean = sum(p["seconds"] or 0 for p in done) / len(done)
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:g}" for k, v in setting.items())
        print(f"{self.arm} point {len(done)}/{self.total} ({shown}): "
              + ("failed: " + last["status"] if score is None else f"validation {score:.1%}")
              + (f"; best so far {best:.1%}" if best is not None else "")
              + f"; {duration(last['seconds'])}; at most {duration(mean * (self.total - len(done)))} left for "
                f"{self.arm}", flush=True)
        return score


def run_curves(tune_dir: Path, base: Config, specs: list[ArmSpec], plan: dict[str, Any], results: dict[str, Any],
               supervisor) -> dict[str, Any]:
    """Each arm's choice trained for the curve's steps, scored on validation every few steps; where each curve
    stops rising (tune_search.plateau_step), and the budget that lets every arm get there."""
    curve = curve_config(base, plan["curve"]["steps"], plan["curve"]["every"])
    kl = KLSetting(**plan["kl"])
    out: dict[str, Any] = {"arms": {}}
    for spec in specs:
        setting = results[spec.name]["choice"]["setting"]
        point = ArmSpec(f"{spec.name}.curve", spec.algo, {**spec.overrides, **setting}, spec.preset, source=POINT_SOURCE)
        arm = compare_.plan_arms(curve, [point], [plan["seed"]], kl)[0]
        print(f"{spec.name} curve: its choice for {curve.budget.total} steps, validation every "
              f"{curve.run.eval_every} steps ({arm['dir']})", flush=True)
        compare_.run_each_arm(tune_dir, [arm], True, supervisor, hint=f"harness tune --resume {tune_dir}")
        points = validation_curve(tune_dir / arm["dir"])
        entry = {"dir": arm["dir"], "curve": points}
        if len(points) >= 2:
            entry["plateau"] = plateau_step(points, plan["validation_prompts"])
        out["arms"][spec.name] = entry
    plateaus = [e["plateau"]["step"] for e in out["arms"].values() if "plateau" in e and not e["plateau"]["flat"]]
    if plateaus:
        steps = max(plateaus)
        out["steps"] = steps
        unit = base.budget.unit
        out["budget"] = {"unit": unit, "total": steps * base.completions_per_step if unit == "completions" else steps}
        if unit == "tokens":
            out["budget"] = None  # a token budget is not a step count: the curves say steps only
    return out


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation accuracy): the start, then every periodic evaluation of the run."""
    summary = load_summary(run_dir) or Summary()
    base = summary.eval.base.accuracy if summary.eval.base is not None else None
    points = [(0, base)] if base is not None else []
    if (run_dir / "steps.jsonl").exists():
        points += [(row["step"], row["eval/accuracy"]) for row in read_jsonl(run_dir / "steps.jsonl")
                   if row.get("eval/accuracy") is not None]
    return points

