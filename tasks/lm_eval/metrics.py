"""Functions the local lm-eval tasks name: pass@k and maj@k from sampled answers, and number answers.

This file is copied next to every generated task YAML, which names its functions as
`!function metrics.<name>`, so it imports nothing from the project: a folder of YAML, JSONL and
this file runs with the plain `lm_eval` command.

Correctness is lm-eval's own `exact_match` with the task's ignore settings, the same definition
the greedy task uses, so greedy pass@1 and the sampled figures judge answers the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, arXiv 2107.03374).

    1 - C(n - c, k) / C(n, k): the chance that k samples drawn without replacement from the n
    hold at least one correct one.

    >>> pass_at_k(4, 1, 2)  # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: Sequence[str]) -> str:
    """The most frequent answer; a tie goes to the answer seen first (as lm-eval's majority_vote filter).

    >>> majority_vote(["3", "5", "5", "3"])
    '3'
    """
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    return Counter(answers).most_common(1)[0][0]


def majority_at_k(answers_per_problem: Sequence[Sequence[str]], references: Sequence[str], k: int | None = None,
                  same: Callable[[str, str], bool] | None = None) -> float:
    """maj@k: the share of problems whose majority answer over the first k samples is correct.

    `same(answer, reference)` says whether an answer is correct (default: string equality).

    >>> majority_at_k([["4", "4", "5"], ["1", "2", "2"]], ["4", "1"])
    0.5
    """
    if len(answers_per_problem) != len(references):
        raise ValueError("majority_at_k needs one reference per problem")
    if not references:
        return 0.0
    same = same or (lambda answer, reference: answer == reference)
    hits = [same(majority_vote(list(answers)[:k]), reference)
            for answers, reference in zip(answers_per_problem, references)]
    return sum(hits) / len(hits)


def is_correct(answer: str, reference: str, verifier: str = "exact", **match) -> bool:
    """lm-eval's exact_match on one pair, with the task's ignore settings; or math-verify's equivalence
    (verifier="math"), as a data task with --reward math judges its answers."""
    if verifier == "math":
        from math_verify import parse, verify
        return bool(answer.strip()) and verify(parse(reference), parse(answer))
    from lm_eval.api.metrics import exact_match_hf_evaluate
    return exact_match_hf_evaluate(predictions=[answer], references=[reference], **match)["exact_match"] == 1.0


def answer_match(references: list[str], predictions: list[str], verifier: str = "exact", **match) -> dict[str, float]:
    """Per-document greedy correctness under `verifier`, reported as exact_match like the built-in metric."""
    (reference,), (answer,) = references, predictions
    return {"exact_match": float(is_correct(answer, reference, verifier, **match))}


def sampled_scores(references: list[str], predictions: list[list[str]], ks: Sequence[int] = (1,),
                   verifier: str = "exact", **match) -> dict[str, float]:
    """Per-document metric for a task with `repeats: n`: pass@k and maj@k for each k in `ks`.

    lm-eval calls it once per document with references=[gold] and predictions=[[n answers]]
    (after the regex filter), and averages every returned key over documents.
    """
    (reference,), (answers,) = references, predictions
    answers = list(answers)
    correct = [is_correct(answer, reference, verifier, **match) for answer in answers]
    n, c = len(answers), sum(correct)
    scores: dict[str, float] = {}
    for k in ks:
        if k > n:
            continue
        scores[f"pass@{k}"] = pass_at_k(n, c, k)
        scores[f"maj@{k}"] = float(is_correct(majority_vote(answers[:k]), reference, verifier, **match))
    return scores


def canonical_number(text: str) -> str:
    """An answer that reads as a whole number (commas removed, as reasoning-gym removes them) in its
    plain integer spelling; anything else unchanged.

    >>> [canonical_number(t) for t in ["+016", "-0", "16.0", "1,6", "1e2", "16=", ""]]
    ['16', '0', '16', '16', '100', '16=', '']
    """
    try:
        value = Decimal(text.replace(",", ""))
        if value.is_finite() and value.adjusted() < 100 and value == value.to_integral_value():
            return str(int(value))
    except (InvalidOperation, ValueError, ArithmeticError):
        pass
    return text


def numeric_answers(resps: list[list[str]], docs) -> list[list[str]]:
    """lm-eval `custom` filter: canonical_number on every answer of every document."""
    return [[canonical_number(answer) for answer in answers] for answers in resps]
