"""The Task protocol shared by every task and the rollout/reward path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Example:
    """One question: the compact prompt the model sees and what it is scored against."""

    prompt: str  # compact text, e.g. "12+7-3="
    answer: str  # the generator's reference answer, e.g. "16"
    item: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # raw generator entry
    target: str = ""  # the worked completion a supervised warm start trains on (a scratchpad); "": the answer

    @property
    def supervised_target(self) -> str:
        """What the tiny model's warm start teaches it to write after the prompt (EOS follows)."""
        return self.target or self.answer


@dataclass(frozen=True)
class Reward:
    """Format and correctness kept apart, so that a run can show which one RL moved."""

    format: float  # 1.0 when the completion ended with EOS and has the answer's shape
    # the generator's own score in [0, 1] (partial credit where it gives some); a data task: its reward function's value
    correct: float
    total: float  # correct + format_weight * format

    @property
    def solved(self) -> bool:
        return self.correct >= 1.0


class Task(Protocol):
    name: str
    alphabet: str  # every character a prompt or an answer may hold

    def train_examples(self, step: int, count: int) -> list[Example]: ...

    def eval_examples(self) -> list[Example]:
        """The test split: distinct prompts, never trained on and never used for tuning."""
        ...

    def validation_examples(self) -> list[Example]:
        """A split for tuning (sweeps, early stopping), disjoint from the test split and from training."""
        ...

    def reward(self, completion: str, example: Example, finished: bool = True) -> Reward: ...
