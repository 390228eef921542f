"""The `harness` command: compare, run, and the tools around them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """Bad flags give one line and exit status 2, without the usage dump."""

    def error(self, message: str) -> None:
        raise UserError(f"{message} (see '{self.prog} --help')")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (preset <- --config <- flags <- --set)")
    group.add_argument("--preset", default="tiny", help="YAML preset: tiny (default), smoke, ...")
    group.add_argument("--config", help="a YAML file of config sections applied over the preset")
    group.add_argument("--model", help="'tiny' (embedded) or a Hugging Face name or local folder")
    group.add_argument("--task", help="offline task, e.g. chain_sum or spell_backward")
    group.add_argument("--budget", type=int, help="budget per arm, in budget.unit (default: sampled completions)")
    group.add_argument("--budget-unit", choices=["completions", "tokens", "steps"], help="what is held equal")
    group.add_argument("--device", help="cpu, cuda or cuda:N")
    group.add_argument("--eval-tasks", help="extra lm-eval benchmarks by name, e.g. gsm8k,gsm8k_cot (need the Hub)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override any config field, e.g. --set rollout.samples_per_prompt=4 (repeatable)")
    group.add_argument("--results-dir", help="where run folders go (default: results)")


def config_from_args(args: argparse.Namespace, algos: list[str] = (), seed: int | None = None):
    from harness.config import load_config
    overrides = list(args.overrides)
    flag_fields = {"model": "model.name", "task": "task.name", "budget": "budget.total",
                   "budget_unit": "budget.unit", "device": "run.device", "results_dir": "run.results_dir",
                   "eval_tasks": "run.eval_tasks"}
    for flag, field in flag_fields.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.insert(0, f"{field}={value}")
    if seed is not None:
        overrides.append(f"run.seed={seed}")
    config = load_config(args.preset, args.config, overrides)
    check_setup(config, algos)
    return config


def check_setup(config, algos: list[str] = ()) -> None:
    """Everything that can be checked before a folder is written: task, model path, device, options."""
    from harness.models import check_model_name
    from harness.runner import algorithm_options, check_device
    from tasks.gym import task_names
    if config.task.name not in task_names():
        raise UserError(f"unknown task '{config.task.name}'; valid: {', '.join(task_names())}")
    check_model_name(config.model.name)
    check_device(config.run.device)
    if config.rollout.backend == "vllm":
        raise UserError("rollout.backend=vllm is not available in this version: generation runs through "
                        "transformers (rollout.backend=hf) on every device")
    for algo in algos:
        algorithm_options(config, algo)


def parse_algos(text: str) -> list[str]:
    from algorithms import algorithm_names
    algos = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in algos if a not in algorithm_names()]
    if unknown or not algos:
        raise UserError(f"unknown algorithm '{','.join(unknown) or text}'; valid: {', '.join(algorithm_names())}")
    if len(set(algos)) != len(algos):
        raise UserError(f"--algos names an algorithm twice: {text}")
    return algos


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------- progress

class ArmProgress:
    """A rich progress bar for one arm (warm start, then training)."""

    def __init__(self, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        self.label = label
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, phase: str, done: int, total: int, info: dict[str, float]) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(f"{self.label} {phase}", total=total, info="")
        text = "  ".join(f"{k} {v:.3f}" for k, v in info.items())
        self.progress.update(self.tasks[phase], completed=done, info=text)


# ---------------------------------------------------------------- run

def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import config_from_dict, read_yaml
    from harness.runner import run_arm, run_name
    quiet_libraries()
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} holds no config.yaml: not a run folder")
        saved = read_yaml(run_dir / "config.yaml")
        algo = saved.pop("algo", None) or args.algo
        config = config_from_dict(saved)
        parse_algos(algo)
    else:
        if not args.algo:
            raise UserError("harness run needs --algo (e.g. --algo grpo) or --run-dir of an existing run")
        algo = parse_algos(args.algo)[0]
        config = config_from_args(args, [algo])
        run_dir = Path(args.out or Path(config.run.results_dir) / f"{run_name(config, algo)}__{timestamp()}")
    with ArmProgress(f"{algo} s{config.run.seed}") as progress:
        summary = run_arm(config, algo, run_dir, resume=args.resume, progress=progress,
                          probes_enabled=not args.no_probes)
    print_arm(summary, run_dir)
    return EXIT_OK if summary["status"] == "ok" else EXIT_FAILED


def print_arm(summary: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    console = Console()
    if summary["status"] != "ok":
        console.print(f"[red]{summary['algo']} s{summary['seed']}: {summary['status']}: {summary['error']}[/red]")
    else:
        base, final = summary["eval"]["base"]["accuracy"], summary["eval"]["final"]["accuracy"]
        console.print(f"{summary['algo']} s{summary['seed']}: accuracy {base:.1%} -> {final:.1%} in "
                      f"{summary['steps']} steps, {summary['wall_s']:.1f} s")
    console.print(f"results: {run_dir}")


# ---------------------------------------------------------------- compare

def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import run_comparison
    quiet_libraries()
    return run_comparison(args)


def build_parser() -> Parser:
    parser = Parser(prog="harness", description="Equal-budget GRPO vs PPO: what each costs and what each buys.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")

    compare = sub.add_parser("compare", help="run each algorithm under the same budget and compare")
    compare.add_argument("--algos", default="grpo,ppo", help="comma-separated algorithms (default: grpo,ppo)")
    compare.add_argument("--seeds", type=int, default=1, help="seeds per algorithm (0, 1, ... N-1)")
    compare.add_argument("--seed", type=int, default=0, help="first seed")
    compare.add_argument("--out", help="comparison folder (default: results/compare__TASK__TIME)")
    compare.add_argument("--resume", metavar="DIR", help="finish an interrupted comparison folder")
    compare.add_argument("--no-report", action="store_true", help="skip the HTML/PDF report")
    compare.add_argument("--no-probes", action="store_true", help="turn probes off: samplers, CUDA peaks and saved-activation hooks (state bytes stay)")
    add_config_flags(compare)
    compare.set_defaults(func=cmd_compare)

    run = sub.add_parser("run", help="train one arm")
    run.add_argument("--algo", help="algorithm, e.g. grpo")
    run.add_argument("--out", help="run folder (default: results/TASK__ALGO__sSEED__TIME)")
    run.add_argument("--run-dir", help="an existing run folder: train from its config.yaml")
    run.add_argument("--resume", action="store_true", help="with --run-dir: continue from its checkpoint")
    run.add_argument("--no-probes", action="store_true", help="turn probes off: samplers, CUDA peaks and saved-activation hooks (state bytes stay)")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    # Subcommands that live in their own modules register themselves here.
    for module in ("harness.evaluate", "harness.report", "harness.gate", "harness.bench"):
        try:
            register = __import__(module, fromlist=["register_cli"]).register_cli
        except (ImportError, AttributeError):
            continue
        register(sub)

    for name, helptext, func in [("tasks", "list the offline tasks", cmd_tasks),
                                 ("presets", "list the presets", cmd_presets)]:
        sub.add_parser(name, help=helptext).set_defaults(func=func)
    return parser


def cmd_tasks(args) -> int:
    from tasks.gym import GYM_TASKS
    for name, spec in sorted(GYM_TASKS.items()):
        print(f"{name:16s} reasoning-gym '{spec.generator}', options {spec.options}")
    return EXIT_OK


def cmd_presets(args) -> int:
    from harness.config import PRESET_DIR, preset_names
    for name in preset_names():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:12s} {first}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except UserError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness: interrupted; finished steps are saved (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
