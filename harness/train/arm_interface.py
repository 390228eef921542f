"""The arm interface: what the runner (harness.train.runner) calls on an arm of any kind.

An arm kind is a class, looked up by name in harness.config.arm_kinds, built with
`(config, algo, run_dir, progress)`: that sets it up (its task, its model, its data). The runner then drives it:

    state = arm.resume()                                  # a checkpoint's counters, or None: start afresh
    state = state or RunState(base_eval=arm.evaluate(), base_lm_eval=arm.lm_eval("base"))
    with Probes(arm.device) as probes:
        arm.train(state, probes, log)                     # to the budget; every step's record through `log`
    final_eval, final_lm_eval = arm.evaluate(), arm.lm_eval("final")
    arm.save_final_model()
    ... arm.state_bytes() ...                             # the model state, for the summary

`log(state, record)` is the runner's: the periodic held-out evaluation, steps.jsonl, the trackers, the
progress line, and Diverged when the record says the step diverged. So the summary, the step log and the
failure records are the same for every kind. Our loop (harness.train.arm.Arm) and TRL's GRPOTrainer
(harness.crosscheck.trl.arm.TRLArm) share the parts of an arm that train a policy on our task
(harness.train.policy_arm.PolicyArm); an arm kind need not: this protocol is all the runner asks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.config.schema import Config
from harness.results.step_record import StepRecord
from harness.train.checkpoint import RunState

if TYPE_CHECKING:
    from harness.measure.probes import Probes

Progress = Callable[[str, int, int, dict[str, float]], None]  # (phase, done, total, figures)
StepLog = Callable[[RunState, StepRecord], None]


class Diverged(Exception):
    """A step produced a non-finite loss, gradient norm or log-prob."""


@runtime_checkable
class ArmRunner(Protocol):
    """One arm while it trains, as the runner drives it (the order is in this module's docstring).

    Under torchrun every rank builds and drives its arm; rank 0 alone writes files.
    """

    device: str  # where the probes measure (cpu, cuda:N)

    def resume(self) -> RunState | None:
        """With a checkpoint: its counters, the models, optimizers and generators restored, and steps.jsonl cut
        back to them. None when there is none (or the kind keeps none): the runner starts afresh."""

    def evaluate(self) -> dict[str, Any]:
        """Greedy held-out figures of the policy as it is now (harness.results.records.EvalScores' keys)."""

    def lm_eval(self, label: str) -> dict[str, Any] | None:
        """lm-evaluation-harness scores of the policy as it is now, or None when run.lm_eval is off."""

    def train(self, state: RunState, probes: Probes, log: StepLog) -> None:
        """Train until the budget is spent, adding each step to `state` and passing its record to `log`."""

    def save_final_model(self) -> None:
        """The trained policy and its tokenizer as a Hugging Face folder, run_dir/final_model."""

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """Arithmetic: bytes of parameters, gradients and optimizer state of each model, as this process holds them."""


class ArmKind(Protocol):
    """An arm kind's class: building it sets the arm up."""

    def __call__(self, config: Config, algo: str, run_dir: Path, progress: Progress | None = None) -> ArmRunner: ...
