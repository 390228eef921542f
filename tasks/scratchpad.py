"""Sums worked on a scratchpad: tens of completion tokens and one reward at the end, for the tiny model.

A chain_sum item of three to six terms (one digit each by default) is asked as its compact expression,
and the completion writes every partial sum before the final answer, one step per term after the first:

    prompt      3+7-9-8=
    completion  3+7=10;10-9=1;1-8=-7;#-7          then EOS

The reward reads only the final answer (after the last '#'): 1 when it equals the sum, else 0, plus
`format_weight` when the whole completion is a well-formed scratchpad with one step per term and ends
with EOS. A wrong partial sum is not penalised where it happens: the one reward at the end is all the
signal, so a learned critic's credit assignment and the length normalisers have something to do,
which they do not on chain_sum's answers of at most four tokens (a contextual bandit). The scratchpad
text is the supervised target of the tiny model's warm start.
"""

from __future__ import annotations

import re
from typing import Any

from reasoning_gym.utils import compute_decimal_reward

from harness.tasks.base import Reward

STEP_END, FINAL_MARK = ";", "#"
ALPHABET = "0123456789+-=" + STEP_END + FINAL_MARK
NUMBER = r"-?\d+"
STEP = rf"{NUMBER}[+-]{NUMBER}={NUMBER}{STEP_END}"  # one partial sum: "19-30=-11;"


def terms_of(expression: str) -> tuple[int, list[tuple[str, int]]]:
    """The first term and each (operator, term) after it of a chain_sum expression (blank-separated,
    terms may be negative with reasoning-gym's allow_negation).

    >>> terms_of("12 + 7 - 30")
    (12, [('+', 7), ('-', 30)])
    >>> terms_of("5 - -3")
    (5, [('-', -3)])
    """
    first, *rest = expression.split()
    if len(rest) % 2 or any(op not in "+-" for op in rest[::2]):
        raise ValueError(f"not a chain of sums and differences: {expression!r}")
    return int(first), [(op, int(term)) for op, term in zip(rest[::2], rest[1::2])]


def scratchpad(expression: str) -> str:
    """The worked completion of an expression: each partial sum, then '#' and the final answer.

    >>> scratchpad("12 + 7 - 30 + 41")
    '12+7=19;19-30=-11;-11+41=30;#30'
    >>> scratchpad("5 - -3")
    '5--3=8;#8'
    """
    total, steps = terms_of(expression)
    written = []
    for op, term in steps:
        result = total + term if op == "+" else total - term
        written.append(f"{total}{op}{term}={result}{STEP_END}")
        total = result
    return "".join(written) + f"{FINAL_MARK}{total}"


def final_answer(completion: str) -> str:
    """What follows the last '#', without surrounding blanks; the whole completion when it has no '#'.

    >>> final_answer("12+7=19;#19"), final_answer(" 19 "), final_answer("1#2#3")
    ('19', '19', '3')
    """
    return completion.rpartition(FINAL_MARK)[2].strip()


def is_scratchpad(completion: str, steps: int) -> bool:
    """Whether the completion has the scratchpad's shape: `steps` partial sums, then '#' and a number.
    The shape only: a wrong partial sum is still well-formed.

    >>> is_scratchpad("12+7=19;19-30=-11;#-11", 2), is_scratchpad("12+7=19;19-30=-12;#5", 2)
    (True, True)
    >>> is_scratchpad("12+7=19;#19", 2), is_scratchpad("#-11", 2), is_scratchpad("12+7=19;19-30=-11;-11", 2)
    (False, False, False)
    """
    return re.fullmatch(rf"(?:{STEP}){{{steps}}}{FINAL_MARK}{NUMBER}", completion) is not None


def scratchpad_reward(completion: str, item: dict[str, Any], finished: bool = True,
                      format_weight: float = 0.1) -> Reward:
    """Score one completion (text before EOS) of a chain_sum `item`: correct 1 when the final answer
    equals the sum as reasoning-gym compares numbers ("+030", "30.0" and "30" are equal; its partial
    credit for an answer that merely contains the sum is not given), format 1 for a well-formed
    scratchpad that ended with EOS.

    >>> item = {"answer": "-11", "metadata": {"expression": "12 + 7 - 30", "num_terms": 3}}
    >>> scratchpad_reward("12+7=19;19-30=-11;#-11", item)  # worked and right: 1 + 0.1
    Reward(format=1.0, correct=1.0, total=1.1)
    >>> scratchpad_reward("12+7=19;19-30=-12;#-11", item).total  # a wrong step, the right answer: full credit
    1.1
    >>> scratchpad_reward("12+7=19;19-30=-11;#-111", item).total  # well-formed, wrong: the format weight only
    0.1
    >>> scratchpad_reward("-11", item).total, scratchpad_reward("12+7=19;#-11", item, finished=False).total
    (1.0, 1.0)
    """
    steps = item["metadata"]["num_terms"] - 1
    correct = 1.0 if compute_decimal_reward(final_answer(completion), oracle_answer=item["answer"]) >= 1.0 else 0.0
    well_formed = 1.0 if finished and is_scratchpad(completion, steps) else 0.0
    return Reward(format=well_formed, correct=correct, total=correct + format_weight * well_formed)


def scratchpad_target(item: dict[str, Any]) -> str:
    """The supervised completion of a chain_sum item: its scratchpad.

    >>> scratchpad_target({"metadata": {"expression": "4 - 1 + 12"}})
    '4-1=3;3+12=15;#15'
    """
    return scratchpad(item["metadata"]["expression"])


def terms_difficulty(item: dict[str, Any]) -> str:
    """The level of a scratchpad item: its number of terms (one step each after the first).

    >>> terms_difficulty({"metadata": {"num_terms": 4, "num_digits": 2}})
    '4 terms'
    """
    return f"{item['metadata']['num_terms']} terms"
