"""The `harness` command. argparse lives here and nowhere else: each subcommand turns its flags into a
Config and paths and calls a function of `harness.commands`, imported only when that subcommand runs
(so that `harness --help` answers without importing torch)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from harness import Interrupted, UserError, __version__
from harness.algorithms import KL_MODES
from harness.config.choices import BUDGET_UNITS, CHAT_TEMPLATES, DEVICE_MEMORY_GIB, ROLLOUT_ENGINES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """Bad flags give one line and exit status 2, without the usage dump."""

    def error(self, message: str) -> None:
        raise UserError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------- shared flags

def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (preset <- --config <- flags <- --set)")
    group.add_argument("--preset", help="YAML preset: tiny (default), smoke, ... (see 'harness presets')")
    group.add_argument("--config", help="a YAML file of config sections applied over the preset")
    group.add_argument("--model", help="'tiny' (embedded) or a Hugging Face name or local folder")
    group.add_argument("--task", help="offline task, e.g. chain_sum or spell_backward (see 'harness tasks'), or your "
                                      "own: data:FILE.jsonl|.parquet, or data:NAME of a dataset in the local cache")
    group.add_argument("--budget", type=int, help="budget per arm, in budget.unit (default: sampled completions)")
    group.add_argument("--budget-unit", choices=BUDGET_UNITS, help="what is held equal")
    group.add_argument("--device", help="cpu, cuda or cuda:N")
    group.add_argument("--eval-tasks", help="extra lm-eval benchmarks by name, e.g. gsm8k,gsm8k_cot (need the Hub)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override any config field, e.g. --set rollout.samples_per_prompt=4 (repeatable)")
    group.add_argument("--results-dir", help="where run folders go (default: results)")
    scale = parser.add_argument_group("scale-out: each arm as a torchrun job, its models FSDP2-sharded")
    scale.add_argument("--nproc-per-node", type=int, help="processes per arm on this machine, one per GPU (gloo on the CPU)")
    scale.add_argument("--nnodes", type=int, help="machines per arm (run the same command on each)")
    scale.add_argument("--node-rank", type=int, help="this machine's index, 0 to nnodes - 1")
    scale.add_argument("--master-addr", help="node 0's address (torchrun rendezvous)")
    scale.add_argument("--master-port", type=int, help="node 0's port (default 29500)")
    data = parser.add_argument_group("your own task (--task data:...)")
    data.add_argument("--prompt-key", help="column holding the prompt text (default: prompt)")
    data.add_argument("--answer-key", help="column holding the reference answer (default: answer)")
    data.add_argument("--reward", help="math (math-verify, the default), exact, or a reward function with TRL's "
                                       "signature as module:function or file.py:function")
    data.add_argument("--eval-file", help="held-out examples from this file (default: a seeded cut of task.eval_size)")
    data.add_argument("--chat-template", choices=CHAT_TEMPLATES,
                      help="auto (default): prompts go through the tokenizer's chat template when it has one")
    parser.add_argument("--report-to", help="experiment trackers, comma-separated: trackio, wandb, tensorboard, "
                                            "mlflow, all, or none (default)")


FLAG_FIELDS = {"model": "model.name", "task": "task.name", "budget": "budget.total", "budget_unit": "budget.unit",
               "device": "run.device", "results_dir": "run.results_dir", "eval_tasks": "run.eval_tasks",
               "prompt_key": "task.prompt_key", "answer_key": "task.answer_key", "reward": "task.reward",
               "eval_file": "task.eval_file", "chat_template": "task.chat_template", "report_to": "run.report_to",
               "nproc_per_node": "run.nproc_per_node", "nnodes": "run.nnodes", "node_rank": "run.node_rank",
               "master_addr": "run.master_addr", "master_port": "run.master_port", "parallel_arms": "run.parallel_arms"}
CONFIG_FLAGS = ("preset", "config", *FLAG_FIELDS, "overrides")  # every flag that sets a config field


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The named flags, then --set, as --set writes them."""
    return [f"{field}={getattr(args, flag)}" for flag, field in FLAG_FIELDS.items()
            if getattr(args, flag, None) is not None] + list(args.overrides)


def config_from_args(args: argparse.Namespace, default_preset: str = "tiny"):
    """preset <- --config <- named flags <- --set, validated."""
    from harness.config.load import load_config
    return load_config(args.preset or default_preset, args.config, config_overrides(args))


def arm_settings_from_args(args: argparse.Namespace, default_preset: str = "tiny"):
    """The preset's per-arm settings by algorithm, and which of their fields --config and --set set for every arm."""
    from harness.config.load import load_arm_settings
    return load_arm_settings(args.preset or default_preset, args.config, config_overrides(args))


def refuse_flags_with(args: argparse.Namespace, flags: tuple[str, ...], what: str) -> None:
    """One line when flags are given that `what` (a resume: the folder's saved config) would silently ignore."""
    given = [f"--{'set' if name == 'overrides' else name.replace('_', '-')}" for name in flags
             if getattr(args, name, None) not in (None, [])]
    if given:
        raise UserError(f"{what}; drop {', '.join(given)} (to change them, start a new run)")


def refuse_force_without_resume(args: argparse.Namespace) -> None:
    if getattr(args, "force_resume", False):
        raise UserError("--force-resume goes with --resume: it continues a run whose inputs changed since it started")


def add_force_resume_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force-resume", action="store_true",
                        help="with --resume: continue even though a data file, reward module, model or the config "
                             "changed since the run started (recorded in inputs.json)")


def parse_algos(text: str) -> list[str]:
    from harness.config.arm_kinds import check_arm_kinds
    algos = [a.strip() for a in text.split(",") if a.strip()]
    if not algos:
        raise UserError(f"--algos names no algorithm: '{text}'")
    try:
        check_arm_kinds(algos)
    except ValueError as err:
        raise UserError(str(err)) from None
    if len(set(algos)) != len(algos):
        raise UserError(f"--algos names an algorithm twice: {text}")
    return algos


def add_probe_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-probes", action="store_true",
                        help="turn probes off: samplers, CUDA peaks and live-tensor tracking (model-state bytes stay)")


def add_arm_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", metavar="ARM", help="the arm every ratio is taken against (default: the first "
                                                          "PPO arm, else the first arm)")
    parser.add_argument("--kl", choices=KL_MODES,
                        help="KL to the reference, alike in every arm: off (no reference model), loss (k3 in the "
                             "loss), reward (k1 in the reward), native (each algorithm's default; the default)")
    parser.add_argument("--kl-coef", type=float, metavar="X",
                        help="the coefficient of --kl loss or reward (default 0.04 in the loss, 0.05 in the reward)")


# ---------------------------------------------------------------- handlers

def arm_specs_from_args(args: argparse.Namespace, default: str = "grpo,ppo"):
    """The arms: --algos, or the `arms:` section of --config (not both), each with its algorithm's per-arm
    settings from the preset."""
    from harness.commands.arm_specs import arms_from_yaml, parse_arm_specs
    from harness.config.load import read_yaml
    section = read_yaml(Path(args.config)).get("arms") if args.config else None
    if section is not None and args.algos:
        raise UserError(f"the arms are named twice: in --algos and in the arms: section of {args.config}; keep one")
    specs = arms_from_yaml(section, args.config) if section is not None else parse_arm_specs(args.algos or default)
    settings = arm_settings_from_args(args)
    return [spec.with_preset(settings) for spec in specs]


def kl_from_args(args: argparse.Namespace):
    from harness.config.kl import KLSetting
    return KLSetting(args.kl or "native", args.kl_coef)


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.commands import compare
    from harness.commands.terminal import quiet_libraries
    quiet_libraries()
    if args.resume:
        refuse_flags_with(args, ("algos", "seeds", "seed", "out", "baseline", "kl", "kl_coef", "devices_per_arm", *CONFIG_FLAGS),
                          f"--resume continues {args.resume} with the config, algorithms and seeds it was started with")
        return compare.resume(args.resume, report=not args.no_report, force=args.force_resume)
    refuse_force_without_resume(args)
    arms = arm_specs_from_args(args)
    kl = kl_from_args(args)
    if args.devices_per_arm is not None:
        if args.nproc_per_node is not None and args.nproc_per_node != args.devices_per_arm:
            raise UserError(f"--devices-per-arm {args.devices_per_arm} and --nproc-per-node {args.nproc_per_node} "
                            "both set an arm's processes (one per GPU): give one")
        if not args.parallel_arms:
            raise UserError("--devices-per-arm goes with --parallel-arms (without it, --nproc-per-node sets an arm's GPUs)")
        args.nproc_per_node = args.devices_per_arm
    config = config_from_args(args)
    seeds = config.verdict.seeds if args.seeds is None else args.seeds
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    first = args.seed or 0
    return compare.compare(config, arms, list(range(first, first + seeds)), out=args.out,
                           report=not args.no_report, baseline=args.baseline, kl=kl)


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.commands import sweep
    from harness.commands.terminal import quiet_libraries
    quiet_libraries()
    if args.resume:
        refuse_flags_with(args, ("algos", "grid", "seeds", "seed", "out", "baseline", "kl", "kl_coef", "compare_seeds",
                                 *(["no_compare"] if args.no_compare else []), *CONFIG_FLAGS),
                          f"--resume continues {args.resume} with the grid, arms and seeds it was started with")
        return sweep.resume_sweep(args.resume, report=not args.no_report, force=args.force_resume)
    refuse_force_without_resume(args)
    arms = arm_specs_from_args(args)
    kl = kl_from_args(args)
    grid = sweep.parse_grid(args.grid or [])
    point_budget, args.budget = args.budget, None  # --budget: per point; the comparison keeps the config's
    config = config_from_args(args)
    if (args.seeds is not None and args.seeds < 1) or (args.compare_seeds is not None and args.compare_seeds < 1):
        raise UserError("--seeds and --compare-seeds must be at least 1")
    return sweep.sweep(config, arms, grid, seeds=1 if args.seeds is None else args.seeds, out=args.out,
                       budget=point_budget, kl=kl, baseline=args.baseline, compare_after=not args.no_compare,
                       compare_seeds=args.compare_seeds, first_seed=args.seed or 0, report=not args.no_report,
                       yes=args.yes)


def cmd_tune(args: argparse.Namespace) -> int:
    from harness.commands import tune
    from harness.commands.terminal import quiet_libraries
    from harness.config.load import preset_data
    quiet_libraries()
    if args.resume:
        refuse_flags_with(args, ("algos", "points", "seed", "out", "kl", "kl_coef", "curve_steps", "curve_every",
                                 "write_preset", *CONFIG_FLAGS),
                          f"--resume continues {args.resume} with the arms, axes and budget it was started with")
        return tune.resume_tune(args.resume)
    arms = arm_specs_from_args(args)
    kl = kl_from_args(args)
    point_budget, args.budget = args.budget, None  # --budget: per point; the preset keeps the config's
    config = config_from_args(args)
    data = preset_data(args.preset or "tiny", args.config, config_overrides(args))
    return tune.tune(config, arms, points=12 if args.points is None else args.points, out=args.out, budget=point_budget, kl=kl,
                     seed=tune.TUNE_SEED if args.seed is None else args.seed, curve_steps=args.curve_steps or 0,
                     curve_every=args.curve_every or 0, write_to=args.write_preset, preset_data=data)


def cmd_plan(args: argparse.Namespace) -> int:
    from harness.commands.plan import plan_command
    if args.pilot:
        args.overrides = [*args.overrides, f"verdict.pilot={args.pilot}"]
    arms = arm_specs_from_args(args)
    config = config_from_args(args)
    seeds = config.verdict.seeds if args.seeds is None else args.seeds
    return plan_command(config, seeds, arms, simulate=args.simulate, baseline=args.baseline, kl=kl_from_args(args))


def cmd_run(args: argparse.Namespace) -> int:
    from harness.commands import run
    from harness.commands.terminal import quiet_libraries
    quiet_libraries()
    if args.run_dir:
        refuse_flags_with(args, ("algo", "out", *CONFIG_FLAGS),
                          f"--run-dir trains {args.run_dir} with the config saved in it")
        if not args.resume:
            refuse_force_without_resume(args)
        return run.run_folder(args.run_dir, resume=args.resume, probes=not args.no_probes,
                              force_resume=args.force_resume)
    refuse_force_without_resume(args)
    if args.resume:
        raise UserError("--resume needs --run-dir: the folder of the run to continue")
    if not args.algo:
        raise UserError("harness run needs --algo (e.g. --algo grpo) or --run-dir of an existing run")
    algo = parse_algos(args.algo)[0]
    from harness.commands.arm_specs import ArmSpec, arm_config, setting_lines
    spec = ArmSpec(algo, algo).with_preset(arm_settings_from_args(args))
    for line in setting_lines(spec):  # the preset's per-arm settings for this algorithm, as compare applies them
        print(f"{algo}: {line}")
    return run.run(arm_config(config_from_args(args), spec), algo, out=args.out, probes=not args.no_probes)


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.commands.eval import evaluate
    return evaluate(args.target, tasks=args.tasks, k=args.k, limit=args.limit, seed=args.seed,
                    max_new_tokens=args.max_new_tokens, device=args.device, out=args.out)


def cmd_report(args: argparse.Namespace) -> int:
    from harness.commands.report import report
    return report(args.comparison_dir, args.out, target=args.target, pdf=not args.no_pdf)


def cmd_check(args: argparse.Namespace) -> int:
    from harness.commands.check import check, parse_tolerance
    return check(args.dir, args.baseline, parse_tolerance(args.tolerance, "--tolerance"),
                 parse_tolerance(args.exact_tolerance, "--exact-tolerance"), args.strict_config)


def cmd_baseline(args: argparse.Namespace) -> int:
    from harness.commands.check import write_baseline
    return write_baseline(args.dir, args.out)


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.commands import bench
    from harness.commands.terminal import quiet_libraries
    from harness.crosscheck.trl import bench as bench_trl
    quiet_libraries()
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.what == "memory":
        return bench.bench_memory_command(config_from_args(args, default_preset="tiny-realistic-vocab"))
    if args.budget is None:
        args.overrides = ["budget.unit=steps", "budget.total=20", *args.overrides]
    if args.what == "trl":
        args.overrides = [*bench_trl.TRL_WORKLOAD, *args.overrides]  # the fixed workload, then the user's --set
        args.budget_unit = args.budget_unit or "steps"  # --budget N: N steps per run
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        config = config_from_args(args)
        if config.total_steps() < 3:
            raise UserError("harness bench trl needs at least 3 steps per run (the first warms caches, the second "
                            "carries the live-tensor tracker)")
        return bench_trl.bench_trl_command(config, args.repeats, workloads, out=Path(args.out) if args.out else None,
                                           profile_dir=Path(args.profile) if args.profile else None)
    algo = parse_algos(args.algo)[0]
    return bench.bench_probes_command(config_from_args(args), algo, args.repeats)


ESTIMATE_FLAGS = {"world_size": "estimate.world_size", "prompt_length": "estimate.prompt_length",
                  "completion_length": "estimate.completion_length", "reward_model": "estimate.reward_model",
                  "rollout_reserve": "estimate.rollout_reserve", "rollout_engine": "estimate.rollout_engine",
                  "device_memory": "estimate.device_memory"}


def cmd_estimate(args: argparse.Namespace) -> int:
    from harness.commands.estimate import estimate_command, recipe_command
    from harness.commands.terminal import quiet_libraries
    quiet_libraries()
    algos = parse_algos(args.algos) if args.algos else None
    args.overrides = [f"{field}={getattr(args, flag)}" for flag, field in ESTIMATE_FLAGS.items()
                      if getattr(args, flag) is not None] + list(args.overrides)
    if args.recipe:
        if args.grid:
            raise UserError("--grid varies one config's choices; with --recipe, --set changes the recipe's fields")
        overrides = [f"{field}={getattr(args, flag)}" for flag, field in FLAG_FIELDS.items()
                     if getattr(args, flag, None) is not None] + list(args.overrides)
        return recipe_command(args.recipe, args.preset or "tiny", args.config, overrides, algos, fit=args.fit,
                              as_json=args.json, use_cache=not args.no_cache)
    return estimate_command(config_from_args(args), algos or ["grpo", "ppo"], grid=args.grid, as_json=args.json,
                            use_cache=not args.no_cache, fit=args.fit, grid_axes=args.grid_axes)


def cmd_recipes(args: argparse.Namespace) -> int:
    from harness.commands.recipes import recipes_command
    return recipes_command(args.name, as_json=args.json)


def cmd_tasks(args: argparse.Namespace) -> int:
    from harness.tasks.gym import GYM_TASKS, rg_names
    for name, spec in sorted(GYM_TASKS.items()):
        print(f"{name:20s} reasoning-gym '{spec.generator}', options {spec.options}")
    names = rg_names()
    print(f"{'rg:NAME':20s} any of reasoning-gym's {len(names)} datasets with its own question text and answer "
          f"checker, for Hub models: {', '.join(names)}")
    print(f"{'data:FILE':20s} your own prompts and answers: JSONL, JSON or Parquet (--prompt-key, --answer-key, "
          "--reward; see the README)")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from harness.commands.config import config_command
    given = any(getattr(args, flag, None) not in (None, []) for flag in CONFIG_FLAGS)
    settings = None
    if given:
        from harness.config.load import load_arm_settings
        settings = load_arm_settings(args.preset or "tiny", args.config, config_overrides(args), check_options=False)
    return config_command(config_from_args(args) if given else None, prefix=args.section, as_json=args.json,
                          markdown=args.markdown, arm_settings=settings)


def cmd_presets(args: argparse.Namespace) -> int:
    from harness.config.load import PRESET_DIR, preset_names
    for name in preset_names():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:12s} {first}")
    return EXIT_OK


# ---------------------------------------------------------------- the parser

def build_parser() -> Parser:
    from harness.config.arm_kinds import arm_kind_names  # the registry's names: no torch imported
    parser = Parser(prog="harness", description="Equal-budget GRPO vs PPO: what each costs and what each buys.")
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")

    compare = sub.add_parser("compare", help="run each algorithm under the same budget and compare",
                             description="Train every algorithm with every seed under the same budget, each arm "
                                         "in its own process; print the tables and write the HTML/PDF report.")
    compare.add_argument("--algos", help="comma-separated arms (default: grpo,ppo): an algorithm "
                                         f"({', '.join(arm_kind_names())}), or a variant "
                                         "NAME=ALGO:section.field=value[:...], e.g. ppo-n1=ppo:rollout.samples_per_prompt=1 "
                                         "(or an arms: section in --config)")
    add_arm_flags(compare)
    compare.add_argument("--seeds", type=int, help="seeds per algorithm: SEED, SEED+1, ... (default: verdict.seeds, "
                                                   "1 in most presets; 'harness plan' says how many a margin needs)")
    compare.add_argument("--seed", type=int, help="first seed (default 0)")
    compare.add_argument("--out", help="comparison folder (default: results/compare__TASK__TIME)")
    compare.add_argument("--resume", metavar="DIR", help="finish an interrupted comparison folder")
    add_force_resume_flag(compare)
    compare.add_argument("--parallel-arms", action="store_const", const="true",
                         help="on a machine with several GPUs: arms (and seeds) at once, each on its own GPUs")
    compare.add_argument("--devices-per-arm", type=int, metavar="K",
                         help="GPUs per arm with --parallel-arms (the arm's --nproc-per-node; default 1)")
    compare.add_argument("--no-report", action="store_true", help="skip the HTML/PDF report")
    add_config_flags(compare)
    compare.set_defaults(func=cmd_compare)

    sweep = sub.add_parser(
        "sweep", help="a grid per arm on a short budget, chosen on the validation split, then best against best",
        description="Train every arm at every point of a grid (--grid section.field=v1,v2; algorithms.NAME.* fields "
                    "apply only to arms running NAME) on a short budget, evaluate each point on the validation split "
                    "only, pick each arm's best point (ties: the first in grid order), write sweep.json, sweep.html "
                    "and a figure, then compare the best settings on fresh seeds on the test split (compare/).")
    sweep.add_argument("--algos", help="comma-separated arms, as for compare (default: grpo,ppo)")
    sweep.add_argument("--grid", action="append", metavar="SECTION.FIELD=V1,V2,...",
                       help="values of a config field to try, e.g. optim.lr=1e-4,3e-4,1e-3 (repeatable: all combinations)")
    sweep.add_argument("--seeds", type=int, help="seeds per point (default 1)")
    sweep.add_argument("--seed", type=int, help="first seed of the sweep (default 0); the comparison takes the next ones")
    sweep.add_argument("--compare-seeds", type=int, help="seeds of the best-against-best comparison (default: verdict.seeds)")
    sweep.add_argument("--no-compare", action="store_true", help="stop after the choice")
    sweep.add_argument("--out", help="sweep folder (default: results/sweep__TASK__TIME)")
    sweep.add_argument("--resume", metavar="DIR", help="finish an interrupted sweep folder (finished points are kept)")
    add_force_resume_flag(sweep)
    sweep.add_argument("--no-report", action="store_true", help="skip the comparison's HTML/PDF report")
    sweep.add_argument("--yes", action="store_true", help="start a sweep of more than 64 point runs (it says what "
                                                          "it would cost without this)")
    add_arm_flags(sweep)
    add_config_flags(sweep)
    sweep.set_defaults(func=cmd_sweep)

    tune = sub.add_parser(
        "tune", help="tune each arm on the validation split, the same budget per arm; write a preset",
        description="Tune each arm's own settings on the validation split, with the same number of points and "
                    "the same budget per point for every arm, under the comparison's KL regime: the policy "
                    "learning rate for every arm, the group size (completions per prompt), and for PPO the "
                    "critic's learning rate and warm-up. A coordinate-wise search from the preset's present "
                    "settings widens any axis whose best value is at the edge of what it probed. Prints the "
                    "validation tables and writes a preset whose arm_settings 'harness compare --preset FILE' "
                    "applies to each arm, with their provenance.")
    tune.add_argument("--algos", help="comma-separated algorithms to tune (default: grpo,ppo)")
    tune.add_argument("--points", type=int, help="points (distinct settings) per arm (default 12)")
    tune.add_argument("--seed", type=int, help="the points' seed (default 1000: apart from a comparison's 0, 1, ...)")
    tune.add_argument("--curve-steps", type=int, metavar="N",
                      help="then train each arm's choice N steps, scored on validation every few steps: where the "
                           "curves stop rising is the budget the preset gets")
    tune.add_argument("--curve-every", type=int, metavar="K", help="steps between a curve's scores (default N/20)")
    tune.add_argument("--write-preset", metavar="FILE.yaml", help="where the preset goes (default: preset.yaml in "
                                                                  "the tune folder)")
    tune.add_argument("--out", help="tune folder (default: results/tune__TASK__TIME)")
    tune.add_argument("--resume", metavar="DIR", help="finish an interrupted tune folder (finished points are kept)")
    tune.add_argument("--kl", choices=KL_MODES,
                      help="the KL regime the comparison will use (default native), alike in every arm")
    tune.add_argument("--kl-coef", type=float, metavar="X", help="the coefficient of --kl loss or reward")
    add_config_flags(tune)
    tune.set_defaults(func=cmd_tune)

    plan = sub.add_parser(
        "plan", help="print the analysis plan of a comparison without running it",
        description="Print the plan 'harness compare' fixes before it runs: the primary figures, the "
                    "non-inferiority margin (verdict.margin), the target accuracy, the band around the claim, the "
                    "eval set, and the minimum detectable difference of the chosen seeds and eval size.")
    plan.add_argument("--algos", help="comma-separated arms, as for compare (default: grpo,ppo)")
    plan.add_argument("--seeds", type=int, help="seeds per algorithm (default: verdict.seeds)")
    plan.add_argument("--pilot", metavar="DIR", help="a finished comparison whose paired seed spread replaces "
                                                     "the stated assumption (verdict.seed_sd)")
    plan.add_argument("--simulate", action="store_true",
                      help="also run simulated comparisons under the plan: readings, coverage, power")
    add_arm_flags(plan)
    add_config_flags(plan)
    plan.set_defaults(func=cmd_plan)

    run = sub.add_parser("run", help="train one arm", description="Train one (algorithm, seed) arm in this process.")
    run.add_argument("--algo", help="algorithm, e.g. grpo")
    run.add_argument("--out", help="run folder (default: results/TASK__ALGO__sSEED__TIME)")
    run.add_argument("--run-dir", help="an existing run folder: train from its config.yaml")
    run.add_argument("--resume", action="store_true", help="with --run-dir: continue from its checkpoint")
    add_force_resume_flag(run)
    add_probe_flag(run)
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser(
        "eval", help="score a saved policy with lm-evaluation-harness",
        description="Score a run's final policy (or a saved model folder) on local held-out tasks "
                    "(greedy pass@1, maj@k, pass@k) and on standard lm-eval tasks by name.")
    evaluate.add_argument("target", metavar="RUN_DIR_OR_MODEL", help="a run folder with final_model/, or a saved model folder")
    evaluate.add_argument("--tasks", help="comma-separated: local tasks (chain_sum, ...) and/or lm-eval tasks "
                                          "(gsm8k, gsm8k_cot, minerva_math, ...); default: the run's task")
    evaluate.add_argument("--k", type=int, default=8, help="samples per prompt for maj@k and pass@k (default 8; 0: greedy only)")
    evaluate.add_argument("--limit", type=int, help="score only the first N prompts of each task")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of lm-eval's sampling (default 0)")
    evaluate.add_argument("--max-new-tokens", type=int, help="completion length cap (default: the run's rollout.max_new_tokens)")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    evaluate.add_argument("--out", help="where the JSONL, task YAMLs, samples and scores.json go "
                                        "(default: RUN_DIR/lm_eval, or a new temporary folder for a model folder)")
    evaluate.set_defaults(func=cmd_eval)

    report = sub.add_parser("report", help="write the HTML and PDF report of a comparison folder",
                            description="Write <name>.html (self-contained) and <name>.pdf of a comparison folder.")
    report.add_argument("comparison_dir", metavar="COMPARISON_DIR", help="a folder written by 'harness compare'")
    report.add_argument("--out", help="folder for <name>.html, <name>.pdf and <name>-figures/ (default: the comparison "
                                       "folder itself: report.html, report.pdf, figures/)")
    report.add_argument("--target", type=float,
                        help="held-out accuracy that arms are timed to (default: the lowest final accuracy of any finished arm)")
    report.add_argument("--no-pdf", action="store_true", help="write the HTML only")
    report.set_defaults(func=cmd_report)

    check = sub.add_parser(
        "check", help="memory-regression gate: compare a run or comparison with a baseline (exit 1 on growth)",
        description="Compare each arm's memory figures with a baseline written by 'harness baseline'. "
                    "Exit 0: nothing regressed; 1: a figure grew past its tolerance or an arm did not "
                    "finish; 2: bad input (missing files, a baseline of another preset or device).")
    check.add_argument("dir", metavar="RUN_OR_COMPARISON_DIR", help="a run folder or a comparison folder")
    check.add_argument("--baseline", required=True, metavar="FILE", help="e.g. results/baselines/cpu-smoke.json")
    check.add_argument("--tolerance", default="5%",
                       help="allowed growth of GPU allocator and NVML peaks (default 5%%); "
                            "compared only when both sides ran on the same kind of GPU")
    check.add_argument("--exact-tolerance", default="0%",
                       help="allowed growth of exact accounting (default 0%%: it is deterministic)")
    check.add_argument("--strict-config", action="store_true",
                       help="a config that differs from the baseline's is an error (exit 2), not a warning")
    check.set_defaults(func=cmd_check)

    baseline = sub.add_parser("baseline", help="write a memory baseline from a run or comparison",
                              description="Write the memory figures of each arm, with the preset, config "
                                          "hash, device and versions they were measured with.")
    baseline.add_argument("dir", metavar="RUN_OR_COMPARISON_DIR", help="a finished run or comparison folder")
    baseline.add_argument("--out", required=True, metavar="FILE", help="e.g. results/baselines/NAME.json")
    baseline.set_defaults(func=cmd_baseline)

    bench = sub.add_parser(
        "bench", help="benchmarks: probe overhead, the log-prob path's memory, our GRPO against TRL's",
        description="Benchmarks whose output is quoted, never asserted. probes: step time with probes on and "
                    "off; memory: the update's peak of live tensors with the old and the new log-prob path "
                    "(default preset tiny-realistic-vocab); trl: our GRPO arm against trl-grpo on a fixed "
                    "workload (64 completions per step, G = 8, 4 new tokens, beta 0.04, one optimizer step per "
                    "rollout), on the tiny model and with Qwen2.5's vocabulary rows: median step times, their "
                    "ratio, peaks of live tensors.")
    bench.add_argument("what", choices=["probes", "memory", "trl"], help="what to benchmark")
    bench.add_argument("--algo", default="ppo", help="probes: the arm to run (default ppo: the most probed)")
    bench.add_argument("--repeats", type=int, default=4,
                       help="probes: on/off pairs; trl: runs of each arm (alternating order); default 4")
    bench.add_argument("--workloads", default="tiny,realistic-vocab",
                       help="trl: which workloads, comma-separated (default tiny,realistic-vocab)")
    bench.add_argument("--out", help="trl: also write the figures to this JSON file")
    bench.add_argument("--profile", metavar="DIR",
                       help="trl: after timing, run each arm once more under pyinstrument and write its report to DIR")
    add_config_flags(bench)
    bench.set_defaults(func=cmd_bench)

    estimate = sub.add_parser(
        "estimate", help="GRPO vs PPO memory per GPU at any model size, from each arm's step on fake tensors",
        description="Run each arm's own training step on fake tensors (nothing is allocated) for any model config "
                    "and world size, and print the estimated peak of live tensors per phase and category, the step "
                    "peak, the GRPO/PPO ratio and whether it fits on H100, H200 and A100 GPUs. --model takes a Hub "
                    "name (Qwen/Qwen2.5-0.5B ... 72B and meta-llama/Llama-3.1-8B, 70B answer offline), a model "
                    "folder or a config.json; the workload comes from the preset and --set like a real run.")
    estimate.add_argument("--recipe", metavar="NAME[,NAME]",
                          help="a published setup (see 'harness recipes'): its arms, each with its own config; --set "
                               "changes any field over the recipe's")
    estimate.add_argument("--algos", help="comma-separated algorithms (default: grpo,ppo, or the recipe's arms)")
    estimate.add_argument("--fit", metavar="GPU",
                          help="fit search on a GPU (H100-80GB, H200, A100-40GB, A100-80GB, L40S, or GiB): per arm the "
                               "largest micro-batch and rollout batch per GPU that fit, and the fewest GPUs")
    estimate.add_argument("--world-size", type=int, help="GPUs per arm: per-GPU figures under FSDP/ZeRO-3 (default 1)")
    estimate.add_argument("--prompt-length", type=int,
                          help="prompt tokens (default: the task's longest prompt, one token per character)")
    estimate.add_argument("--completion-length", type=int, help="generated tokens (default: rollout.max_new_tokens)")
    estimate.add_argument("--reward-model", help="a learned reward model in both arms: none (default), same (the "
                                                 "policy's size), or a model name, folder or config.json")
    estimate.add_argument("--rollout-reserve", type=float, metavar="F",
                          help="a colocated rollout engine reserving this share of device memory, e.g. 0.3 (TRL's vLLM)")
    estimate.add_argument("--rollout-engine", choices=ROLLOUT_ENGINES,
                          help="the engine during training: resident (kept, default) or asleep (released)")
    estimate.add_argument("--device-memory", choices=list(DEVICE_MEMORY_GIB),
                          help="the device the reserve is a share of (default h100)")
    estimate.add_argument("--grid", action="store_true",
                          help="the sensitivity grid: every combination of its axes (KL, reward model, critic pass, "
                               "checkpointing, engine mode, precision, sequence length, offload, engine share); "
                               "prints the ratio's range")
    estimate.add_argument("--grid-axes", metavar="AXIS[,AXIS]",
                          help="the grid's axes (default all): kl, reward_model, critic_pass, checkpointing, "
                               "rollout_engine, precision, sequence, offload, engine_share")
    estimate.add_argument("--json", action="store_true", help="print the result as JSON")
    estimate.add_argument("--no-cache", action="store_true",
                          help="run every fake step again (results are cached in $HARNESS_CACHE/estimates)")
    add_config_flags(estimate)
    estimate.set_defaults(func=cmd_estimate)

    config = sub.add_parser(
        "config", help="every config field: type, default, bounds or choices, description",
        description="List every field of the config (its sections and each algorithm's options, "
                    "algorithms.NAME.OPTION) with its type, default, bounds or choices and description. With "
                    "--preset, --config, flags or --set, a value column shows the resolved config.")
    config.add_argument("section", nargs="?", help="only the fields under this section or field, e.g. rollout or "
                                                  "algorithms.ppo")
    config.add_argument("--json", action="store_true", help="print the fields as JSON")
    config.add_argument("--markdown", nargs="?", const="-", metavar="README",
                        help="print the README's configuration table; with a file, rewrite the table between "
                             "its markers there")
    add_config_flags(config)
    config.set_defaults(func=cmd_config)

    recipes = sub.add_parser("recipes", help="the published setups harness estimate --recipe runs, with their sources",
                             description="List the recipes: published RL setups (verl, TRL, OpenRLHF, DeepSeekMath) "
                                         "transcribed field by field, each with the repository, file and commit or "
                                         "paper section it was read from. With NAME: every field and its source, and "
                                         "what the harness cannot match.")
    recipes.add_argument("name", nargs="?", help="one recipe, field by field")
    recipes.add_argument("--json", action="store_true", help="print the recipes as JSON")
    recipes.set_defaults(func=cmd_recipes)


    sub.add_parser("tasks", help="list the offline tasks").set_defaults(func=cmd_tasks)
    sub.add_parser("presets", help="list the presets").set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        from harness.commands.terminal import progress_seconds
        progress_seconds()  # a bad $HARNESS_PROGRESS_SECONDS is one line before anything starts
        return args.func(args)
    except UserError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a write the checks could not foresee: a full disk, a folder removed under us
        where = f"{err.filename}: " if err.filename else ""
        print(f"harness: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Interrupted) as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        hint = getattr(stop, "hint", None) or "--resume"
        print(f"harness: stopped by {signal.Signals(signum).name}; finished steps are saved (continue with {hint})",
              file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
