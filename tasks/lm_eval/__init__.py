"""lm-eval task YAMLs for the local held-out splits, written per run with absolute data paths.

`write_local_tasks(task, folder, ...)` writes, for one offline task:

    folder/<task>.jsonl               the held-out split, one {"id", "prompt", "answer"} per line
    folder/harness_<task>.yaml        greedy decoding, regex filter, exact_match        -> pass@1
    folder/harness_<task>_k<k>.yaml   k samples per prompt (repeats: k), same filter    -> pass@k, maj@k
    folder/metrics.py                 the functions the YAMLs name (`!function metrics....`)

The folder runs as it is with `lm_eval --include_path folder --tasks harness_<task>`.

The answer is judged the way the task's own reward judges it (`Reward.solved`): the regex filter
takes the whole completion before EOS without surrounding blanks (tasks.gym.extract_answer), and a
task's `AnswerRule` (more filter steps, exact_match settings) reproduces reasoning-gym's
`score_answer(...) == 1`. tests/test_evaluate.py checks that equivalence for every task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ANSWER_REGEX = r"(?s)^\s*(.*?)\s*$"  # the whole completion, stripped (tasks.gym.extract_answer)


@dataclass(frozen=True)
class AnswerRule:
    """How one task's answers are judged: filter steps after the regex, then exact_match's settings."""

    filters: tuple[dict[str, Any], ...] = ()
    match: dict[str, Any] = field(default_factory=dict)
    verifier: str = "exact"  # exact (lm-eval's exact_match) or math (math-verify, metrics.is_correct)
    regex: str = ANSWER_REGEX  # what of the completion is the answer


class Function(str):
    """A YAML `!function module.name` scalar (lm-eval resolves it next to the YAML file)."""


ANSWER_RULES: dict[str, AnswerRule] = {
    # reasoning-gym compares Decimal values after removing commas ("+016", "16.0", "1,6" all equal
    # 16): numeric_answers writes every number as its integer spelling, as the reference is written.
    "chain_sum": AnswerRule(filters=({"function": "custom", "filter_fn": Function("metrics.numeric_answers")},)),
    # reasoning-gym lowercases both sides and gives full credit only to an exact match.
    "spell_backward": AnswerRule(match={"ignore_case": True}),
    "spell_backward_long": AnswerRule(match={"ignore_case": True}),
    # the final answer after the last '#' (tasks.scratchpad.final_answer), judged as chain_sum's
    "chain_sum_scratchpad": AnswerRule(regex=r"(?s)^(?:.*#)?\s*(.*?)\s*$",
                                       filters=({"function": "custom", "filter_fn": Function("metrics.numeric_answers")},)),
}
# rg:DATASET tasks ask for the answer between tags (tasks.gym.tagged_answer); lm-eval compares it exactly,
# where the generator's own checker may accept other spellings: its pass@1 can be below the reward's accuracy.
TAGGED_RULE = AnswerRule(regex=r"(?s)<answer>\s?(.*?)\s?</answer>")
DEFAULT_RULE = AnswerRule()  # reasoning-gym's default score_answer: full credit only for answer == reference
MATH_RULE = AnswerRule(verifier="math")  # a data task with --reward math: math-verify, as its reward judges


def answer_rule(task) -> AnswerRule:
    """How `task`'s answers are judged: by its name for the built-in tasks, by its own check for a data task."""
    if hasattr(task, "check"):  # a data task: math-verify or the stripped text, whatever its name
        return MATH_RULE if task.check == "math" else DEFAULT_RULE
    if task.name.startswith("rg_"):
        return TAGGED_RULE
    return ANSWER_RULES.get(task.name, DEFAULT_RULE)


@dataclass(frozen=True)
class LocalTasks:
    """Where one task's files went and the lm-eval task names to ask for."""

    folder: Path
    greedy: str  # e.g. harness_chain_sum
    sampled: str | None  # e.g. harness_chain_sum_k8; None when k == 0
    k: int
    data_file: Path


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def lm_eval_name(task_name: str, k: int = 0) -> str:
    """The lm-eval task name of a local task, and of its k-sample variant.

    >>> lm_eval_name("chain_sum"), lm_eval_name("chain_sum", 8)
    ('harness_chain_sum', 'harness_chain_sum_k8')
    """
    return f"harness_{task_name}" + (f"_k{k}" if k else "")


def sample_ks(k: int) -> list[int]:
    """The k values reported from k samples: powers of two below k, and k.

    >>> sample_ks(8), sample_ks(6)
    ([1, 2, 4, 8], [1, 2, 4, 6])
    """
    return sorted({2 ** i for i in range(k.bit_length()) if 2 ** i < k} | {k})


def task_yaml(name: str, data_file: Path, *, max_gen_toks: int, stop: list[str], rule: AnswerRule = DEFAULT_RULE,
              k: int = 0, temperature: float = 1.0, top_p: float = 1.0, about: dict[str, Any] | None = None) -> dict:
    """One generate_until task over a local JSONL split: greedy when k == 0, else k samples per prompt."""
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "answer",
        "target_delimiter": "",
    }
    extract = [{"function": "regex", "regex_pattern": rule.regex, "fallback": ""}, *map(dict, rule.filters)]
    verifier = {} if rule.verifier == "exact" else {"verifier": rule.verifier}
    if k == 0:
        config["generation_kwargs"] = {"until": list(stop), "max_gen_toks": max_gen_toks, "do_sample": False}
        config["filter_list"] = [{"name": "answer", "filter": [*extract, {"function": "take_first"}]}]
        metric = "exact_match" if rule.verifier == "exact" else Function("metrics.answer_match")
        config["metric_list"] = [{"metric": metric, "aggregation": "mean", "higher_is_better": True,
                                  **verifier, **rule.match}]
    else:
        # top_k 0 turns off transformers' default top-k of 50, as the rollout does.
        config["repeats"] = k
        config["generation_kwargs"] = {"until": list(stop), "max_gen_toks": max_gen_toks, "do_sample": True,
                                       "temperature": temperature, "top_p": top_p, "top_k": 0}
        config["filter_list"] = [{"name": "samples", "filter": extract}]
        config["metric_list"] = [{"metric": Function("metrics.sampled_scores"), "aggregation": "mean",
                                  "higher_is_better": True, "ks": sample_ks(k), **verifier, **rule.match}]
    config["metadata"] = {"version": 1, **(about or {})}
    return config


def write_if_changed(path: Path, text: str) -> Path:
    """Rewrite only on a change: `datasets` caches a JSON split by its files' modification times."""
    path = Path(path)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def write_split(examples, path: Path) -> Path:
    """The held-out split as JSONL: {"id", "prompt", "answer"} per line, in the task's order."""
    rows = [json.dumps({"id": i, "prompt": e.prompt, "answer": e.answer}) + "\n" for i, e in enumerate(examples)]
    return write_if_changed(path, "".join(rows))


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    return write_if_changed(path, yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True))


def write_local_tasks(task, folder: Path, *, max_gen_toks: int, stop: list[str], k: int = 0,
                      temperature: float = 1.0, top_p: float = 1.0) -> LocalTasks:
    """Write the JSONL split, the greedy YAML and (k > 0) the sampled YAML of `task` into `folder`."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data_file = write_split(task.eval_examples(), folder / f"{task.name}.jsonl")
    about = {"harness_task": task.name, "options": dict(getattr(task, "options", {})),
             "data_seed": getattr(task, "seed", None)}
    common = dict(max_gen_toks=max_gen_toks, stop=stop, rule=answer_rule(task), about=about)
    write_if_changed(folder / "metrics.py", Path(__file__).with_name("metrics.py").read_text())
    greedy = lm_eval_name(task.name)
    write_yaml(folder / f"{greedy}.yaml", task_yaml(greedy, data_file, **common))
    sampled = None
    if k > 0:
        sampled = lm_eval_name(task.name, k)
        write_yaml(folder / f"{sampled}.yaml",
                   task_yaml(sampled, data_file, k=k, temperature=temperature, top_p=top_p, **common))
    return LocalTasks(folder=folder, greedy=greedy, sampled=sampled, k=k, data_file=data_file)
