"""Each subcommand's handler: its flags turned into a Config and paths, then a function of `harness.commands`,
imported only when that subcommand runs (so that `harness --help` answers without importing torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import UserError
from harness.cli.flags import (
    CONFIG_FLAGS,
    EXIT_OK,
    FLAG_FIELDS,
    arm_settings_from_args,
    arm_specs_from_args,
    config_from_args,
    config_overrides,
    kl_from_args,
    parse_algos,
    refuse_flags_with,
    refuse_force_without_resume,
)

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
