"""The flags several subcommands share, and how they become a Config, arms and a KL setting."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import UserError
from harness.algorithms import KL_MODES
from harness.config.choices import BUDGET_UNITS, CHAT_TEMPLATES

EXIT_OK, EXIT_USAGE = 0, 2


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
