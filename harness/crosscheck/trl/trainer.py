"""TRL's GRPOTrainer as the trl-grpo arm drives it: the task's reward as a TRL reward function, our
prompts as a dataset in our order, and a trainer subclass that wraps four of its methods (generation,
scoring, the no-grad log-prob passes, the rollout as a whole) in the harness's phase probes.

Those methods are private to TRL 1.x (checked against 1.16), hence the version range in pyproject.toml.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import torch
from datasets import Dataset
from trl import GRPOTrainer

from harness.measure.step_meter import StepMeter
from harness.tasks.base import Example, Reward
from harness.train.rollout import encode_prompts

ROLLOUT_PHASES = ("generate", "score", "old_logprobs", "ref_logprobs")  # measured inside TRL's rollout


class TaskReward:
    """TRL reward function: the task's `Reward.total` (correctness + format_weight x well-formed) of each
    completion, scored exactly as our rollout scores it; keeps the batch's rewards for the step record."""

    __name__ = "task_reward"  # TRL names the reward column after the function

    def __init__(self, task, examples: list[Example], eos_token_id: int):
        self.task, self.examples, self.eos_token_id = task, examples, eos_token_id
        self.rewards: list[Reward] = []
        self.completions: list[str] = []
        self.completion_lengths: list[int] = []  # generated tokens, EOS included
        self.example_ids: list[int] = []

    def __call__(self, prompts, completions, completion_ids, example, **_) -> list[float]:
        # TRL cuts each completion after its first EOS, so a finished completion ends with it
        finished = [bool(ids) and ids[-1] == self.eos_token_id for ids in completion_ids]
        self.rewards = [self.task.reward(text, self.examples[index], finished=done)
                        for text, index, done in zip(completions, example, finished)]
        self.completions = list(completions)
        self.completion_lengths = [len(ids) for ids in completion_ids]
        self.example_ids = list(example)
        return [r.total for r in self.rewards]


def prompt_dataset(task, prompts_per_step: int, steps: int):
    """(examples, dataset): task.train_examples(step, prompts_per_step) for step 0, 1, ... in order; the
    dataset's `example` column indexes `examples` (TRL hands dataset columns to the reward function)."""
    examples = [e for step in range(steps) for e in task.train_examples(step, prompts_per_step)]
    return examples, Dataset.from_dict({"prompt": [e.prompt for e in examples], "example": list(range(len(examples)))})


class _Tensors:
    """TRL's rollout tensors, for the live-tensor tracker's `rollout` category."""

    def __init__(self, inputs: list[dict[str, Any]]):
        self._tensors = [v for part in inputs for v in part.values() if isinstance(v, torch.Tensor)]

    def tensors(self) -> list[torch.Tensor]:
        return self._tensors


class TRLMeter:
    """The harness's StepMeter inside TRL's step: the step context opens at a rollout's first
    on_step_begin; rollout phases are measured by name; one policy_update phase runs from the end of
    the rollout to the rollout's last optimizer step; both close at its last on_step_end."""

    def __init__(self, meter: StepMeter):
        self.meter = meter
        self.rollout_s = 0.0  # TRL's whole rollout; what the named phases leave is "advantages"
        self._open = ExitStack()
        self.updating = False

    def phase(self, name: str):
        return self.meter.phase(name)

    def begin_step(self, tracked: bool) -> None:
        self._open.enter_context(self.meter.step(tracked))

    def begin_update(self, rollout_tensors: _Tensors) -> None:
        self.meter.retag_rollout(rollout_tensors)
        self._open.enter_context(self.meter.phase("policy_update"))
        self.updating = True

    def end_step(self) -> None:
        self._open.close()  # the update phase, then the step
        self.updating = False

    def take_step_times(self) -> dict[str, float]:
        times = self.meter.probes.take_step_times()
        times["advantages"] = max(self.rollout_s - sum(times.get(name, 0.0) for name in ROLLOUT_PHASES), 0.0)
        self.rollout_s = 0.0
        return times


class ProbedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the harness's phase probes around its rollout phases (TRL 1.x's method names)."""

    meter: TRLMeter
    prompt_lengths: list[int] = []  # tokens of each prompt of the last rollout, as our rollout encodes them

    def _tokenize_prompts(self, prompts: list):
        # through our rollout's encoder: the same chat template (where the run uses one), no special tokens
        if not isinstance(prompts[0], str):
            return super()._tokenize_prompts(prompts)
        encoded = encode_prompts(self.processing_class, prompts, "cpu")
        ids = [row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
        self.prompt_lengths = [len(row) for row in ids]
        return ids, None, {}

    def _generate_single_turn(self, *args, **kwargs):
        with self.meter.phase("generate"):
            return super()._generate_single_turn(*args, **kwargs)

    def _calculate_rewards(self, *args, **kwargs):
        with self.meter.phase("score"):
            return super()._calculate_rewards(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        if torch.is_grad_enabled():  # the training forward: part of the update phase
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        with self.meter.phase("ref_logprobs" if model is self.ref_model else "old_logprobs"):
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    def _prepare_inputs(self, generation_batch):
        start = time.perf_counter()
        inputs = super()._prepare_inputs(generation_batch)
        if self.model.training and not self.meter.updating:  # this call generated: the rollout ends here
            self.meter.rollout_s += time.perf_counter() - start
            self.meter.begin_update(_Tensors(self._buffered_inputs))
        return inputs
