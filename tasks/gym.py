"""Offline tasks from reasoning-gym generators, with compact prompts for a tiny model.

reasoning-gym draws item i of a dataset with seed + i, so two datasets whose seeds are closer than
their sizes share items. Train and eval use seeds far apart and eval questions are also removed
from training by exact match on the prompt.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Callable

import reasoning_gym

from harness.tasks.base import Example, Reward

TRAIN_SEED_OFFSET = 1_000_000_000  # far beyond any eval split's size: no seed + i can collide
TRAIN_CHUNK = 4096  # train items are generated in chunks of this many, chunk k with its own seed


@dataclass(frozen=True)
class GymSpec:
    generator: str
    alphabet: str
    answer_pattern: str  # the shape a well-formed answer has
    options: dict[str, Any]
    to_prompt: Callable[[dict[str, Any]], str]


def chain_sum_prompt(item: dict[str, Any]) -> str:
    """The compact prompt of a chain_sum item: the expression without blanks, then '='.

    >>> chain_sum_prompt({"metadata": {"expression": "4 - 1 + 12"}})
    '4-1+12='
    """
    return item["metadata"]["expression"].replace(" ", "") + "="


def spell_backward_prompt(item: dict[str, Any]) -> str:
    """The compact prompt of a spell_backward item: the word in lower case, then '>'.

    >>> spell_backward_prompt({"metadata": {"word": "sun"}})
    'sun>'
    """
    return item["metadata"]["word"].lower() + ">"


GYM_TASKS: dict[str, GymSpec] = {
    "chain_sum": GymSpec(
        generator="chain_sum",
        alphabet="0123456789+-=",
        answer_pattern=r"-?\d+",
        options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        to_prompt=chain_sum_prompt,
    ),
    "spell_backward": GymSpec(
        generator="spell_backward",
        alphabet=string.ascii_lowercase + ">",
        answer_pattern=r"[a-z]+",
        options={"min_word_len": 3, "max_word_len": 6},
        to_prompt=spell_backward_prompt,
    ),
}


def extract_answer(completion: str) -> str:
    """The answer is the whole completion up to EOS, without surrounding blanks.

    >>> extract_answer(" 42 ")
    '42'
    """
    return completion.strip()


class GymTask:
    """A reasoning-gym generator behind the Task protocol."""

    def __init__(self, name: str, eval_size: int = 200, seed: int = 0, format_weight: float = 0.1,
                 options: dict[str, Any] | None = None):
        if name not in GYM_TASKS:
            raise KeyError(name)
        self.spec = GYM_TASKS[name]
        self.name = name
        self.alphabet = self.spec.alphabet
        self.options = {**self.spec.options, **(options or {})}
        self.seed = seed
        self.format_weight = format_weight
        self._eval_dataset = reasoning_gym.create_dataset(
            self.spec.generator, size=eval_size, seed=seed, **self.options)
        self._eval = [self._example(item) for item in self._eval_dataset]
        self._eval_prompts = {example.prompt for example in self._eval}
        self._train_chunks: dict[int, list[Example]] = {}

    def _example(self, item: dict[str, Any]) -> Example:
        return Example(prompt=self.spec.to_prompt(item), answer=str(item["answer"]), item=item)

    def _train_chunk(self, chunk: int) -> list[Example]:
        if chunk not in self._train_chunks:
            dataset = reasoning_gym.create_dataset(
                self.spec.generator, size=TRAIN_CHUNK,
                seed=self.seed + TRAIN_SEED_OFFSET + chunk * TRAIN_CHUNK, **self.options)
            examples = [self._example(item) for item in dataset]
            self._train_chunks[chunk] = [e for e in examples if e.prompt not in self._eval_prompts]
        return self._train_chunks[chunk]

    def train_examples(self, step: int, count: int) -> list[Example]:
        """The prompts of one training step: the same for every algorithm at the same step."""
        start = step * count
        out: list[Example] = []
        while len(out) < count:
            index = start + len(out)
            chunk = self._train_chunk(index // TRAIN_CHUNK)
            offset = index % TRAIN_CHUNK
            out.extend(chunk[offset: offset + count - len(out)])
            if offset >= len(chunk):  # the chunk lost items to de-duplication: move to the next
                start += TRAIN_CHUNK - offset
        return out

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def reward(self, completion: str, example: Example, finished: bool = True) -> Reward:
        """Score one completion (text before EOS); `finished` says whether EOS was produced."""
        answer = extract_answer(completion)
        well_formed = finished and re.fullmatch(self.spec.answer_pattern, answer) is not None
        correct = float(self._eval_dataset.score_answer(answer=answer, entry=example.item)) if answer else 0.0
        if correct > 1.0:
            # spell_backward sums 1/len per matching letter; for some lengths the float sum overshoots 1
            # and skips the 0.2 penalty it gives a non-exact answer: give it the 0.8 it meant.
            correct = 0.8
        format_score = 1.0 if well_formed else 0.0
        return Reward(format=format_score, correct=correct, total=correct + self.format_weight * format_score)


def task_names() -> list[str]:
    return sorted(GYM_TASKS)


def load_task(name: str, **kwargs: Any) -> GymTask:
    return GymTask(name, **kwargs)
