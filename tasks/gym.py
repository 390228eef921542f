"""Offline tasks from reasoning-gym generators, with compact prompts for a tiny model.

Three splits, disjoint by prompt text:
- test (`eval_examples`): the held-out prompts every figure of accuracy is measured on;
- validation (`validation_examples`): for tuning (a learning-rate sweep, early stopping), never the test;
- train (`train_examples`): the generator's stream with every held-out prompt removed.

The held-out splits hold distinct prompts only and cover the task's difficulty range: each difficulty
level (chain_sum: digits per term; spell_backward: word length) gets an equal share, except that a
small level (one whose draws mostly repeat, e.g. the 200 one-digit sums) gives each split at most
1/8 of its prompts, so that training keeps the rest; what a level cannot fill goes to the others.

reasoning-gym draws item i of a dataset with seed + i, so two datasets whose seeds are closer than
their sizes share items: the splits use seeds far apart, and the exclusion by prompt text covers
what still collides.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import reasoning_gym

from harness.tasks import scratchpad
from harness.tasks.base import Example, Reward

TRAIN_SEED_OFFSET = 1_000_000_000  # far beyond any eval split's size: no seed + i can collide
VALIDATION_SEED_OFFSET = 500_000_000  # the validation pool's seed, as far from the test pool as from training
TRAIN_CHUNK = 4096  # train items are generated in chunks of this many, chunk k with its own seed
POOL_DRAWS_PER_PROMPT = 20  # a held-out split is chosen from this many generator draws per prompt it holds
MIN_POOL_DRAWS = 2000
SMALL_LEVEL_SHARE = 1 / 8  # the most a held-out split takes of a level whose draws mostly repeat


def extract_answer(completion: str) -> str:
    """The answer is the whole completion up to EOS, without surrounding blanks.

    >>> extract_answer(" 42 ")
    '42'
    """
    return completion.strip()


def tagged_answer(completion: str) -> str | None:
    """What the completion holds between <answer> and </answer> (the last pair), reasoning-gym's format.

    >>> tagged_answer("so it is <answer> 42 </answer>"), tagged_answer("42")
    ('42', None)
    """
    from reasoning_gym.utils import extract_answer as extract_tagged
    return extract_tagged(completion)


@dataclass(frozen=True)
class GymSpec:
    generator: str
    alphabet: str
    answer_pattern: str  # the shape a well-formed answer has
    options: dict[str, Any]
    to_prompt: Callable[[dict[str, Any]], str]
    difficulty: Callable[[dict[str, Any]], str] = lambda item: "all"  # the level an item belongs to
    extract: Callable[[str], str | None] = extract_answer  # the answer in a completion; None: none given
    target: Callable[[dict[str, Any]], str] | None = None  # the worked completion to warm-start on; None: the answer
    # a pure reward function (completion, item, finished, format_weight) -> Reward; None: `extract` and
    # `answer_pattern` for the format, the generator's own score_answer for correctness
    score: Callable[[str, dict[str, Any], bool, float], Reward] | None = None


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


def chain_sum_difficulty(item: dict[str, Any]) -> str:
    """The level: terms and digits per term.

    >>> chain_sum_difficulty({"metadata": {"num_terms": 2, "num_digits": 1}})
    '2 terms of 1 digit'
    """
    meta = item["metadata"]
    digits = meta["num_digits"]
    return f"{meta['num_terms']} terms of {digits} digit{'s' * (digits != 1)}"


def spell_backward_difficulty(item: dict[str, Any]) -> str:
    """The level: the word's length.

    >>> spell_backward_difficulty({"metadata": {"word": "sun"}})
    '3 letters'
    """
    return f"{len(item['metadata']['word'])} letters"


GYM_TASKS: dict[str, GymSpec] = {
    "chain_sum": GymSpec(
        generator="chain_sum",
        alphabet="0123456789+-=",
        answer_pattern=r"-?\d+",
        options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        to_prompt=chain_sum_prompt,
        difficulty=chain_sum_difficulty,
    ),
    "spell_backward": GymSpec(
        generator="spell_backward",
        alphabet=string.ascii_lowercase + ">",
        answer_pattern=r"[a-z]+",
        options={"min_word_len": 3, "max_word_len": 6},
        to_prompt=spell_backward_prompt,
        difficulty=spell_backward_difficulty,
    ),
    # Where a critic's token-level credit can matter: answers of 8 to 12 letters (9 to 13 tokens with
    # EOS), one reward at the end, with partial credit for each leading letter in place.
    "spell_backward_long": GymSpec(
        generator="spell_backward",
        alphabet=string.ascii_lowercase + ">",
        answer_pattern=r"[a-z]+",
        options={"min_word_len": 8, "max_word_len": 12},
        to_prompt=spell_backward_prompt,
        difficulty=spell_backward_difficulty,
    ),
    # Where a critic has work to do: three to six one-digit terms worked on a scratchpad, every partial sum
    # written (15 to 55 completion tokens with EOS), one reward at the end for the final answer
    # (tasks/scratchpad.py). Two-digit terms make 20 to 71 tokens but the 1M-parameter model learns them
    # too slowly for a CPU warm start (0.5% greedy after 100 steps of 256, where one digit reaches 57%
    # after 400 steps of 64).
    "chain_sum_scratchpad": GymSpec(
        generator="chain_sum",
        alphabet=scratchpad.ALPHABET,
        answer_pattern=scratchpad.NUMBER,
        options={"min_terms": 3, "max_terms": 6, "min_digits": 1, "max_digits": 1},
        to_prompt=chain_sum_prompt,
        difficulty=scratchpad.terms_difficulty,
        extract=scratchpad.final_answer,
        target=scratchpad.scratchpad_target,
        score=scratchpad.scratchpad_reward,
    ),
}
RG_PREFIX = "rg:"  # any reasoning-gym dataset by name, with its own question text and answer checker
ANSWER_INSTRUCTION = "\nGive only the final answer, between <answer> and </answer>."


def is_rg_task(name: str) -> bool:
    return name.startswith(RG_PREFIX)


def rg_names() -> list[str]:
    import reasoning_gym.factory
    return sorted(reasoning_gym.factory.DATASETS)


def rg_spec(name: str) -> GymSpec:
    """The spec of `rg:<dataset>`: the generator's question, an instruction to tag the answer, and the
    generator's own checker on what the tags hold. For Hub models; the compact tasks suit the tiny one."""
    generator = name[len(RG_PREFIX):]
    if generator not in rg_names():
        raise KeyError(name)
    sample = reasoning_gym.create_dataset(generator, size=64, seed=0)
    text = "".join(item["question"] + ANSWER_INSTRUCTION + str(item["answer"]) + "<answer></answer>" for item in sample)
    return GymSpec(generator=generator, alphabet="".join(sorted(set(text))), answer_pattern=r"(?s).*", options={},
                   to_prompt=lambda item: item["question"] + ANSWER_INSTRUCTION, extract=tagged_answer)


def allocate(capacity: dict[str, int], total: int) -> dict[str, int]:
    """Equal shares of `total` over the levels, none above its capacity; what a level cannot take
    goes to the others (water-filling). Levels in sorted order get the odd remainders.

    >>> allocate({"1 digit": 25, "2 digits": 5000}, 1000)
    {'1 digit': 25, '2 digits': 975}
    >>> allocate({"a": 10, "b": 10, "c": 10}, 7)
    {'a': 3, 'b': 2, 'c': 2}
    """
    shares = dict.fromkeys(sorted(capacity), 0)
    remaining = total
    open_levels = [level for level in shares if capacity[level] > 0]
    while remaining > 0 and open_levels:
        share, extra = divmod(remaining, len(open_levels))
        for i, level in enumerate(open_levels):
            take = min(share + (i < extra), capacity[level] - shares[level])
            shares[level] += take
            remaining -= take
        open_levels = [level for level in open_levels if shares[level] < capacity[level]]
    return shares


class GymTask:
    """A reasoning-gym generator behind the Task protocol."""

    def __init__(self, name: str, eval_size: int = 1000, seed: int = 0, format_weight: float = 0.1,
                 options: dict[str, Any] | None = None, validation_size: int = 500):
        if name not in GYM_TASKS and not is_rg_task(name):
            raise KeyError(name)
        self.spec = rg_spec(name) if is_rg_task(name) else GYM_TASKS[name]
        self.name = name.replace(":", "_")  # rg:basic_arithmetic -> rg_basic_arithmetic in file and task names
        self.alphabet = self.spec.alphabet
        self.options = {**self.spec.options, **(options or {})}
        self.seed = seed
        self.format_weight = format_weight
        self._scorer = reasoning_gym.create_dataset(self.spec.generator, size=1, seed=seed, **self.options)
        self._eval = self._held_out(eval_size, seed, exclude=set())
        self._validation = self._held_out(validation_size, seed + VALIDATION_SEED_OFFSET,
                                          exclude={e.prompt for e in self._eval})
        self._held_out_prompts = {e.prompt for e in self._eval + self._validation}
        self._train_chunks: dict[int, list[Example]] = {}

    def _example(self, item: dict[str, Any]) -> Example:
        target = self.spec.target(item) if self.spec.target else ""
        return Example(prompt=self.spec.to_prompt(item), answer=str(item["answer"]), item=item, target=target)

    def difficulty(self, example: Example) -> str:
        return self.spec.difficulty(example.item)

    def composition(self, examples: list[Example]) -> dict[str, int]:
        """How many of `examples` each difficulty level holds, levels sorted."""
        counts: dict[str, int] = {}
        for example in examples:
            level = self.difficulty(example)
            counts[level] = counts.get(level, 0) + 1
        return dict(sorted(counts.items()))

    def _held_out(self, size: int, pool_seed: int, exclude: set[str]) -> list[Example]:
        """`size` distinct prompts (fewer if the generator has fewer), equal shares per difficulty level."""
        if size <= 0:
            return []
        draws = max(MIN_POOL_DRAWS, POOL_DRAWS_PER_PROMPT * size)
        pool = reasoning_gym.create_dataset(self.spec.generator, size=draws, seed=pool_seed, **self.options)
        distinct: dict[str, Example] = {}  # prompt -> its first example, in draw order
        draws_per_level: dict[str, int] = {}
        for item in pool:
            example = self._example(item)
            level = self.spec.difficulty(item)
            draws_per_level[level] = draws_per_level.get(level, 0) + 1
            distinct.setdefault(example.prompt, example)
        by_level: dict[str, list[Example]] = {level: [] for level in draws_per_level}
        for example in distinct.values():
            by_level[self.difficulty(example)].append(example)
        capacity = {}
        for level, examples in by_level.items():
            small = len(examples) < draws_per_level[level] / 2  # its draws mostly repeat: few prompts exist
            candidates = [e for e in examples if e.prompt not in exclude]
            cap = int(len(examples) * SMALL_LEVEL_SHARE) if small else len(candidates)
            capacity[level] = min(cap, len(candidates))
            by_level[level] = candidates
        shares = allocate(capacity, size)
        chosen = {e.prompt for level, examples in by_level.items() for e in examples[: shares[level]]}
        return [e for e in distinct.values() if e.prompt in chosen]

    def _train_chunk(self, chunk: int) -> list[Example]:
        if chunk not in self._train_chunks:
            dataset = reasoning_gym.create_dataset(
                self.spec.generator, size=TRAIN_CHUNK,
                seed=self.seed + TRAIN_SEED_OFFSET + chunk * TRAIN_CHUNK, **self.options)
            examples = [self._example(item) for item in dataset]
            self._train_chunks[chunk] = [e for e in examples if e.prompt not in self._held_out_prompts]
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
        """The test split: what every held-out accuracy is measured on; never used for tuning."""
        return list(self._eval)

    def validation_examples(self) -> list[Example]:
        """The validation split, for tuning (learning-rate sweeps, early stopping); disjoint from test and train."""
        return list(self._validation)

    def reward(self, completion: str, example: Example, finished: bool = True) -> Reward:
        """Score one completion (text before EOS); `finished` says whether EOS was produced."""
        if self.spec.score:
            return self.spec.score(completion, example.item, finished, self.format_weight)
        answer = self.spec.extract(completion)
        well_formed = finished and answer is not None and re.fullmatch(self.spec.answer_pattern, answer) is not None
        answer = answer or ""
        correct = float(self._scorer.score_answer(answer=answer, entry=example.item)) if answer else 0.0
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
