"""What the engine derives from a config: the task it names, the training settings, an algorithm's options."""

from __future__ import annotations

from harness.config.arm_kinds import algorithm_of
from harness.config.schema import Config

def train_settings(config: Config):
    """What the algorithms' shared loop needs from this config."""
    import torch

    from harness.algorithms.batch import TrainSettings
    return TrainSettings(
        lr=config.optim.lr, weight_decay=config.optim.weight_decay, epochs=config.optim.epochs,
        minibatches=config.optim.minibatches, micro_batch_size=config.optim.micro_batch_size,
        max_grad_norm=config.optim.max_grad_norm, entropy_coef=config.optim.entropy_coef,
        temperature=config.rollout.temperature, max_new_tokens=config.rollout.max_new_tokens,
        logprob_batch_size=config.rollout.logprob_batch_size, logprob_chunk=config.model.logprob_chunk,
        autocast_dtype=torch.bfloat16 if config.model.precision == "bf16-mixed" else None)


def logprob_rows(config: Config, world: int | None = None) -> int:
    """Rows per no-grad pass (old and reference log-probs, values) on each of `world` processes:
    rollout.logprob_batch_size, else the update's micro-batch (a whole minibatch when that is 0 too), at
    most the process's share of the batch."""
    from harness.algorithms.logprobs import logprob_rows as rows_per_pass
    rows = config.rollout.batch_size // (world or config.world_size)
    return min(rows_per_pass(train_settings(config), rows), rows)


def make_task(config: Config):
    """The task this config names, with its eval split, data seed, format weight and options; with
    run.eval_split=validation, a view of it whose held-out examples are the validation split."""
    task = config.task
    from harness.tasks.data import is_data_task, load_data_task
    if is_data_task(task.name):
        loaded = load_data_task(task.name, prompt_key=task.prompt_key, answer_key=task.answer_key,
                                eval_file=task.eval_file, eval_size=task.eval_size, seed=task.seed,
                                reward=task.reward, format_weight=task.format_weight, options=task.options,
                                reward_timeout=task.reward_timeout)
    else:
        from harness.tasks.gym import load_task
        loaded = load_task(task.name, eval_size=task.eval_size, seed=task.seed, format_weight=task.format_weight,
                           options=task.options, validation_size=task.validation_size)
    return ValidationView(loaded) if config.run.eval_split == "validation" else loaded


class ValidationView:
    """A task whose held-out examples (`eval_examples`, what every evaluation and lm-eval score) are its
    validation split: what a sweep selects on, so that the test split is never read while tuning.
    Everything else is the task's own; `whole_task` is the task itself (its splits shape the warm start)."""

    def __init__(self, task):
        self.whole_task = task

    def __getattr__(self, name: str):
        if name == "whole_task":  # not set yet (copy, pickle): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.whole_task, name)

    def eval_examples(self):
        return self.whole_task.validation_examples()


def algorithm_options(config: Config, algo: str):
    """The typed options of `algo` from config.algorithms.<algo>, defaults filled in; one clear line if bad."""
    from harness.algorithms import parse_options
    checked = algorithm_of(algo)
    values = config.algorithms.get(algo, {})
    if checked != algo:  # a cross-check: the checked algorithm's options, its own section over them
        values = {**config.algorithms.get(checked, {}), **values}
    return parse_options(checked, values, where=f"algorithms.{algo}.")


def algorithm_needs(config: Config, algo: str):
    """What an arm's algorithm needs (harness.algorithms.base.Needs) under this config: a critic, a reference, ..."""
    from harness.algorithms import get_algorithm
    return get_algorithm(algorithm_of(algo)).declare_needs(algorithm_options(config, algo), train_settings(config))
