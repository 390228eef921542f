"""`harness compare`: the arms of an equal-budget comparison, each in its own process.

    from harness.commands.compare import compare
    from harness.config.schema import load_config
    compare(load_config("smoke"), ["grpo", "ppo", "ppo-n1=ppo:rollout.samples_per_prompt=1"], seeds=[0, 1],
            out="results/my-comparison", kl=KLSetting("loss"))

An arm is a name, an algorithm and config overrides (harness.commands.arm_specs); every ratio is taken against one
baseline arm (default: the first PPO arm).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from harness import Interrupted, UserError
from harness.commands.arm_specs import (ArmSpec, arm_config, check_arm_list, check_baseline, parse_arm_spec,
                                        setting_lines)
from harness.commands.plan import analysis_plan_lines, make_plan
from harness.commands.terminal import ArmProgress, plan_lines, render_terminal, timestamp
from harness.config.derive import make_task
from harness.config.kl import KLSetting
from harness.config.load import config_from_dict, copy_config, read_yaml
from harness.config.schema import Config, check_seed
from harness.estimate.at_scale import check_at_scale
from harness.estimate.preflight import check_algorithms_fit, check_setup
from harness.results.arm_config import arm_config_dict
from harness.results.exports import write_steps_table
from harness.results.headline import arm_pair_of, arm_rows, ratio_rows
from harness.results.io import (FolderLock, checkpoint_file, command_line, output_folder, read_json_object,
                        refuse_if_being_written, remove_temporaries, write_json, write_yaml)
from harness.results.records import ComparisonPlan
from harness.results.safe_io import refuse_link
from harness.results.trackers import attach_report
from harness.train import distributed as ranks_
from harness.train.inputs import INPUTS_FILE, check_inputs, record_inputs
from harness.train.runner import _partial_state as partial_state  # the steps a stopped arm wrote
from harness.train.runner import ArmResult, finished_ok, load_summary, run_name, summarize, write_summary
from harness.train.supervise import Supervisor, death_of

FAIRNESS = [
    "same base model and weights for the arms of a seed (each seed its own warm start), tokenizer, task and prompt "
    "order for every arm",
    "same sampling (temperature, top-p, max new tokens), generation backend and precision",
    "same policy optimizer and optimizer steps per rollout batch; each arm's own hyperparameters (learning rate, "
    "group size, critic) are its own, tuned on the validation split where the preset says so (best against best)",
    "same seeds; the sampling seed of step k is the same in every arm",
    "equal budget in {unit}: {total} per arm",
    "PPO's critic: the policy's architecture and size, initialized from its weights",
    "reference model loaded in an arm exactly when its KL coefficient is non-zero",
]


def fairness_lines(config: Config, specs: list[ArmSpec] = (), kl: KLSetting | None = None) -> list[str]:
    """The fairness rules, then what this comparison sets apart from them: the KL, each arm's overrides."""
    lines = [line.format(unit=config.budget.unit, total=config.budget.total) for line in FAIRNESS]
    lines.append(f"KL to the reference: {(kl or KLSetting()).words()}")
    lines += [f"arm {s.name}: {s.algo} with {line}" for s in specs for line in setting_lines(s)]
    return lines


def as_specs(arms: list[ArmSpec | str]) -> list[ArmSpec]:
    """Arms given as specs or as --algos items ('grpo', 'ppo-n1=ppo:rollout.samples_per_prompt=1'), checked."""
    return check_arm_list([a if isinstance(a, ArmSpec) else parse_arm_spec(a) for a in arms])


def plan_arms(config: Config, specs: list[ArmSpec | str], seeds: list[int],
              kl: KLSetting | None = None) -> list[dict[str, Any]]:
    """Every (arm, seed): its config (the KL setting, then its overrides), checked, and its folder."""
    arms = []
    for seed in seeds:
        for spec in as_specs(specs):
            arm = arm_config(config, spec, kl, seed)
            arms.append({"arm": spec.name, "algo": spec.algo, "overrides": dict(spec.overrides), "seed": seed,
                         "dir": run_name(arm, spec.name), "config": arm})
    return arms


def check_arms(config: Config, arms: list[dict[str, Any]]) -> None:
    """What differs between arms, checked for each distinct arm config (the seed changes nothing here)."""
    task = make_task(config)
    seen = set()
    for arm in arms:
        key = (arm["algo"], repr(sorted(arm["overrides"].items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_algorithms_fit(arm["config"], [arm["algo"]], task)
        except UserError as err:
            raise UserError(f"arm {arm['arm']}: {err}") from None


def prepare_model(config: Config, seeds: list[int] | None = None) -> None:
    """Build (or find) each seed's warm-started model once, before any arm starts its clock; both arms of a
    seed start from it."""
    from harness.train.models import prepare_model as build
    for seed in seeds if seeds is not None else [config.run.seed]:
        seeded = copy_config(config)
        seeded.run.seed = seed
        build(seeded, lambda seed=seed: ArmProgress(f"tiny model, seed {seed}"))


def arm_command(arm_dir: Path, resume: bool) -> list[str]:
    """`harness run --run-dir DIR`: the arm in its own process, which starts its torchrun job when
    run.nproc_per_node asks for one, and holds the arm's folder while it runs; with `resume`, from its
    checkpoint when it wrote one."""
    resume = resume and checkpoint_file(arm_dir).exists()
    return [sys.executable, "-m", "harness", "run", "--run-dir", str(arm_dir), *(["--resume"] if resume else [])]


def compare(config: Config, arms: list[ArmSpec | str], seeds: list[int], out: Path | str | None = None,
            report: bool = True, baseline: str | None = None, kl: KLSetting | None = None) -> int:
    """Start a comparison: every (arm, seed) under the same budget, then tables and the report.

    Returns 0 when every arm finished, 1 when one did not (its failure is recorded in its summary).
    """
    specs = as_specs(arms)
    kl = kl or KLSetting()
    baseline = check_baseline(specs, baseline)
    if not seeds:
        raise UserError("a comparison needs at least one seed")
    for seed in seeds:
        check_seed(seed)
    check_setup(config, [])
    planned = plan_arms(config, specs, seeds, kl)
    check_arms(config, planned)
    if config.run.node_rank > 0:  # node 0 plans and writes the comparison; this node joins its arms
        from harness.commands.follow import follow
        return follow(config, out)
    ranks_.check_launch(config)
    if config.run.parallel_arms:
        ranks_.arm_device_sets(config)
    check_at_scale(config)
    comparison_dir = output_folder(out, config.run.results_dir, f"compare__{config.task.label}__{timestamp()}",
                                   "comparison")
    with FolderLock(comparison_dir, command_line()):
        if (comparison_dir / "comparison.json").exists():
            raise UserError(f"{comparison_dir} already holds a comparison; finish it with "
                            f"'harness compare --resume {comparison_dir}', or choose another --out")
        pair = arm_pair_of({s.name: s.algo for s in specs}, baseline)
        analysis_plan = make_plan(config, len(seeds), list(pair) if pair else [s.name for s in specs])
        write_yaml(comparison_dir / "config.yaml", config.to_dict())
        write_json(comparison_dir / "comparison.json", ComparisonPlan(
            algos=list(dict.fromkeys(s.algo for s in specs)), arm_specs=[s.to_dict() for s in specs],
            baseline=baseline, kl=kl.to_dict(), seeds=seeds, preset=config.preset,
            task=config.task.name, model=config.model.name,
            budget={"unit": config.budget.unit, "total": config.budget.total},
            config_hash=config.hash(), fairness=fairness_lines(config, specs, kl), plan=analysis_plan,
            arms=[{k: a[k] for k in ("arm", "algo", "overrides", "seed", "dir")} for a in planned]).to_json())
        record_inputs(comparison_dir, config)
        for arm in planned:
            write_arm_config(comparison_dir / arm["dir"], arm)
        print("\n".join(plan_lines(config, specs, seeds, comparison_dir, config.run.report_to,
                                   baseline=baseline, kl=kl, arm_configs=arm_configs(planned))))
        print("\n".join(analysis_plan_lines(analysis_plan)), flush=True)
        return run_arms(comparison_dir, config, specs, seeds, planned, resume=False, report=report, baseline=baseline)


def arm_configs(planned: list[dict[str, Any]]) -> dict[str, Config]:
    """The first seed's config of each arm, by name."""
    out: dict[str, Config] = {}
    for arm in planned:
        out.setdefault(arm["arm"], arm["config"])
    return out


def read_plan(comparison_dir: Path) -> tuple[Config, list[ArmSpec], list[int], str, KLSetting]:
    """The saved config, arms, seeds, baseline and KL of a comparison folder; one line naming a damaged file."""
    path = comparison_dir / "comparison.json"
    plan = read_json_object(path, {"algos": list, "seeds": list})
    try:
        entries = plan.get("arm_specs") or [{"name": a, "algo": a, "overrides": {}} for a in plan["algos"]]
        specs = check_arm_list([ArmSpec.from_dict(e) for e in entries])
        kl = KLSetting(**(plan.get("kl") or {}))
        baseline = check_baseline(specs, plan.get("baseline"))
    except UserError as err:  # a name that is no folder name, an unknown algorithm, a shared field overridden
        raise UserError(f"{path} is damaged: {err}") from None
    except (ValueError, TypeError, KeyError, AttributeError):  # not entries at all
        specs = []
    if not specs:
        raise UserError(f"{path} is damaged: 'algos' {plan['algos']!r} are not algorithm names")
    if not plan["seeds"] or not all(type(seed) is int for seed in plan["seeds"]):
        raise UserError(f"{path} is damaged: 'seeds' {plan['seeds']!r} are not a list of seeds")
    try:
        config = config_from_dict(read_yaml(comparison_dir / "config.yaml"))
    except UserError as err:
        raise UserError(f"{comparison_dir / 'config.yaml'}: {err}") from None
    return config, specs, plan["seeds"], baseline, kl


def resume(comparison_dir: Path | str, report: bool = True, force: bool = False) -> int:
    """Finish an interrupted comparison: finished arms are kept, the others resume from their checkpoints,
    once the inputs are found unchanged since it started (or `force` says to go on: recorded)."""
    comparison_dir = Path(comparison_dir)
    if not (comparison_dir / "comparison.json").exists():
        raise UserError(f"{comparison_dir} holds no comparison.json: not a comparison folder")
    with FolderLock(comparison_dir, command_line()):
        config, specs, seeds, baseline, kl = read_plan(comparison_dir)
        check_setup(config, [])
        planned = plan_arms(config, specs, seeds, kl)
        check_arms(config, planned)
        check_resumable(comparison_dir, config, planned, force)
        saved_plan = read_json_object(comparison_dir / "comparison.json").get("plan")
        if saved_plan:
            print("\n".join(analysis_plan_lines(saved_plan)))
        return run_arms(comparison_dir, config, specs, seeds, planned, resume=True, report=report, baseline=baseline)


def check_resumable(folder: Path, config: Config, arms: list[dict[str, Any]], force: bool) -> None:
    """The inputs of the comparison and of each arm it will resume, unchanged since they started (one line
    otherwise); with `force`, the override recorded in each. Arm folders must be folders, never links."""
    for arm in arms:
        refuse_link(folder / arm["dir"])
    check_inputs(folder, config, force)
    for arm in arms:
        arm_dir = folder / arm["dir"]
        if (arm_dir / INPUTS_FILE).exists() and not finished_ok(arm_dir):
            check_inputs(arm_dir, arm["config"], force)


def run_arms(comparison_dir: Path, config: Config, specs: list[ArmSpec], seeds: list[int],
             arms: list[dict[str, Any]], resume: bool, report: bool, baseline: str | None = None) -> int:
    """Each arm in turn as its own process; then the tables, the verdict and the report.

    SIGINT or SIGTERM to this process is forwarded to the running arm, which records `interrupted`,
    and the comparison stops (exit 130 or 143). An arm killed by a signal nobody sent through here (the
    out-of-memory killer's SIGKILL) is recorded as `killed`, and the other arms go on.
    """
    refuse_if_being_written(*(comparison_dir / arm["dir"] for arm in arms))
    for folder in (comparison_dir, *(comparison_dir / arm["dir"] / sub for arm in arms for sub in ("", "checkpoint"))):
        remove_temporaries(folder)  # what killed writers left; this process holds the folder now
    baseline = baseline or check_baseline(specs, None)
    names = {s.name: s.algo for s in specs}
    with Supervisor().forwarding_signals() as supervisor:
        prepare_model(config, seeds)
        run_each_arm(comparison_dir, arms, resume, supervisor, hint=f"harness compare --resume {comparison_dir}")
        summaries = [load_summary(comparison_dir / a["dir"]) for a in arms]
        write_json(comparison_dir / "summary.json", comparison_summary(config, specs, seeds, summaries, baseline))
        at_scale(config, list(dict.fromkeys(s.algo for s in specs)), comparison_dir)
        render_terminal(summaries, names, baseline=baseline)
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
    return 0 if all(s is not None and s.ok for s in summaries) else 1


def run_each_arm(folder: Path, arms: list[dict[str, Any]], resume: bool, supervisor: Supervisor, hint: str) -> None:
    """Each arm not yet finished as its own process under `supervisor`: in turn, or side by side on
    disjoint GPU sets with run.parallel_arms; a stop signal ends the loop."""
    pending = []
    for arm in arms:
        arm_dir = folder / arm["dir"]
        previous = _summary_or_refuse(arm_dir)
        if previous and previous.get("status") == "ok":
            label_summary(arm_dir, arm)
            continue  # finished before an interruption
        if not (arm_dir / "config.yaml").exists():
            write_arm_config(arm_dir, arm)
        pending.append(arm)
    if pending and pending[0]["config"].run.parallel_arms:
        run_side_by_side(folder, pending, resume, supervisor, hint)
        return
    for arm in pending:
        arm_dir = folder / arm["dir"]
        code, last_line = supervisor.run(arm_command(arm_dir, resume), arm_dir / "arm.log")
        try:
            record_outcome(arm_dir, arm, code, last_line, supervisor.stopped_by)
            label_summary(arm_dir, arm)
        except OSError as err:  # a full disk: say so, and let the next arm try
            print(f"warning: arm {arm['arm']} s{arm['seed']} ended with status {code} and its outcome could not be "
                  f"recorded: {err.filename or arm_dir}: {err.strerror or err}", file=sys.stderr)
        if supervisor.stopped_by:  # the user's own Ctrl-C, or SIGTERM to this process: stop here
            raise Interrupted(supervisor.stopped_by, hint=hint)


def run_side_by_side(folder: Path, arms: list[dict[str, Any]], resume: bool, supervisor: Supervisor, hint: str) -> None:
    """The arms at once, each on its own set of run.nproc_per_node GPUs; memory and time stay per arm."""
    by_dir = {arm["dir"]: arm for arm in arms}
    jobs = []
    for arm in arms:
        arm_dir = folder / arm["dir"]
        jobs.append((arm["dir"], arm_command(arm_dir, resume), arm_dir / "arm.log"))

    def finished(key: str, code: int, last_line: str | None) -> None:
        record_outcome(folder / key, by_dir[key], code, last_line, supervisor.stopped_by)
        label_summary(folder / key, by_dir[key])

    supervisor.run_side_by_side(jobs, ranks_.arm_device_sets(arms[0]["config"]), finished)
    if supervisor.stopped_by:
        raise Interrupted(supervisor.stopped_by, hint=hint)


def write_arm_config(arm_dir: Path, arm: dict[str, Any]) -> None:
    """The arm's config.yaml, what `harness run --run-dir` trains from: its config, algorithm and name."""
    write_yaml(arm_dir / "config.yaml", arm_config_dict(arm["config"], arm["algo"], arm["arm"]))


def label_summary(arm_dir: Path, arm: dict[str, Any]) -> None:
    """The arm's name and overrides in its summary.json (the arm process knows only its algorithm and config)."""
    try:
        summary = load_summary(arm_dir)
    except UserError:
        return
    if summary is None or (summary.arm == arm["arm"] and summary.overrides == arm["overrides"]):
        return
    summary.arm, summary.overrides = arm["arm"], arm["overrides"]
    write_summary(arm_dir, summary)


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
    write_summary(arm_dir, summarize(arm["config"], arm["algo"], ArmResult(state), status, error))


def print_verdict(comparison_dir: Path) -> None:
    """Each primary figure with its interval and reading, as the report states them."""
    from harness.report.data import load_comparison
    from harness.report.verdict import terminal_lines, verdict_section
    print("\n".join(terminal_lines(verdict_section(load_comparison(comparison_dir)))))


def at_scale(config: Config, algos: list[str], comparison_dir: Path) -> None:
    """The report's "At scale" estimates (harness estimate) of the recipes and models in estimate.at_scale."""
    from harness.estimate.at_scale import at_scale_names, write_at_scale
    if not at_scale_names(config) or (comparison_dir / "at_scale.json").exists():
        return
    print(f"at scale: estimating {', '.join(at_scale_names(config))} on fake tensors (cached per configuration)",
          flush=True)
    data = write_at_scale(config, algos, comparison_dir / "at_scale.json",
                          progress=lambda done, total, what: print(f"at scale {done}/{total}: {what}", flush=True),
                          line=lambda text: print(f"at scale: {text}", flush=True))
    if data:
        from harness.report.at_scale import summary_lines
        for text in summary_lines(data):
            print(f"at scale: {text}", flush=True)
        print(f"at scale: {data['seconds']:.0f} s; {comparison_dir / 'at_scale.json'}", flush=True)


def comparison_summary(config: Config, specs: list[ArmSpec], seeds, summaries, baseline: str) -> dict[str, Any]:
    names = {s.name: s.algo for s in specs}
    return {"algos": list(dict.fromkeys(names.values())), "arm_specs": [s.to_dict() for s in specs],
            "baseline": baseline, "seeds": seeds,
            "budget": {"unit": config.budget.unit, "total": config.budget.total},
            "arms": arm_rows(summaries), "ratios": ratio_rows(summaries, names, baseline)}
