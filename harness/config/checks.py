"""Setup checks that need only the config and the tasks: a task's name and options, a data task's reward
function and whether its examples fit the tiny model."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness import UserError
from harness.config.derive import make_task
from harness.config.schema import Config

def check_task_options(config: Config) -> None:
    """A reasoning-gym task's options against the generator's own config dataclass: names, types, its validate()."""
    from reasoning_gym.factory import DATASETS

    from harness.tasks.gym import GYM_TASKS, RG_PREFIX, is_rg_task
    name = config.task.name
    generator, defaults = ((name[len(RG_PREFIX):], {}) if is_rg_task(name)
                           else (GYM_TASKS[name].generator, GYM_TASKS[name].options))
    options_class = DATASETS[generator][1]
    fields = {f.name: f for f in dataclasses.fields(options_class) if f.name not in ("seed", "size")}
    for key, value in config.task.options.items():
        if key not in fields:
            raise UserError(f"unknown option 'task.options.{key}' of task {name}; "
                            f"valid: {', '.join(sorted(fields))}")
        default = fields[key].default
        if isinstance(default, (bool, int, float, str)) and not _same_kind(value, default):
            raise UserError(f"task.options.{key} expects {type(default).__name__}, got {value!r}")
    try:
        options_class(**{**defaults, **config.task.options, "seed": config.task.seed,
                         "size": config.task.eval_size}).validate()
    except (AssertionError, ValueError, TypeError) as err:
        raise UserError(f"task.options of {name}: {err}") from None


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, int) if isinstance(default, int) else isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_task(config: Config) -> None:
    """A data task reads, its reward function answers, and its examples fit the tiny model."""
    from harness.tasks.data import is_data_task
    from harness.tasks.gym import RG_PREFIX, is_rg_task, rg_names, task_names
    if config.run.eval_split == "validation" and (is_data_task(config.task.name) or config.task.validation_size < 1):
        raise UserError(f"run.eval_split=validation: task {config.task.name} has no validation split "
                        f"({'data tasks have none yet' if is_data_task(config.task.name) else 'task.validation_size is 0'}); "
                        "tune on a built-in task, or evaluate on the test split")
    if is_rg_task(config.task.name):
        if config.task.name[len(RG_PREFIX):] not in rg_names():
            raise UserError(f"unknown reasoning-gym dataset '{config.task.name[len(RG_PREFIX):]}'; "
                            f"valid: {', '.join(rg_names())}")
        check_task_options(config)
        return
    if not is_data_task(config.task.name):
        if config.task.name not in task_names():
            raise UserError(f"unknown task '{config.task.name}'; valid: {', '.join(task_names())}, "
                            "rg:DATASET (any reasoning-gym dataset), or data:FILE.jsonl (your own prompts and answers)")
        check_task_options(config)
        if config.model.name == "tiny":
            task = make_task(config)
            check_tiny_fit(config, task.eval_examples() + task.validation_examples())
        return
    task = make_task(config)
    task.check_reward_function()
    if config.model.name == "tiny":
        check_tiny_fit(config, task.train + task.held_out)


def check_tiny_fit(config: Config, examples) -> None:
    """The tiny model has one position per character: a prompt with rollout.max_new_tokens, and a prompt with
    the supervised target and EOS (the warm start), fit model.max_positions; the cap leaves room for the target."""
    if not examples:
        return
    positions, new_tokens = config.model.max_positions, config.rollout.max_new_tokens
    longest_prompt = max(len(e.prompt) for e in examples)
    longest_target = max(len(e.supervised_target) + 1 for e in examples)  # EOS included
    longest_pair = max(len(e.prompt) + len(e.supervised_target) + 1 for e in examples)
    if max(longest_prompt + new_tokens, longest_pair) > positions:
        raise UserError(f"{config.task.name}: prompts of up to {longest_prompt} characters with answers of up to "
                        f"{longest_target} tokens and rollout.max_new_tokens={new_tokens} do not fit the tiny model's "
                        f"{positions} positions (one per character); raise model.max_positions, use shorter examples "
                        "or a Hub model (--model)")
    if new_tokens < longest_target and is_worked(examples):
        raise UserError(f"{config.task.name}: rollout.max_new_tokens={new_tokens} cuts the worked answers the tiny "
                        f"model is warm-started to write, up to {longest_target} tokens with EOS; raise it")


def is_worked(examples) -> bool:
    """Whether the examples' supervised targets are more than their answers (a scratchpad)."""
    return any(e.target for e in examples)

