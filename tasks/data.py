"""Bring your own task: prompts and answers from a JSONL, JSON or Parquet file, a folder written by
`datasets.Dataset.save_to_disk`, or a `datasets` name already in the local cache, scored by a reward
function with TRL's signature or by math-verify.

    harness compare --task data:train.jsonl --prompt-key question --answer-key answer --reward rewards:exact

A reward function takes the completions and the examples' columns as keyword lists, as TRL's
GRPOTrainer calls it (`prompts`, then every column but `prompt`), and returns one float per completion:

    def exact(completions, answer, **kwargs):
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

With a function the reward is its value, and a completion counts as solved (accuracy) when it
scores 1.0 or more, as TRL's `accuracy_reward` gives 1.0 to a right answer. Without one (`math`,
the default) the answer column is checked with math-verify, `exact` compares the stripped text;
correctness plus `format_weight` x finished (EOS produced) is the reward, as for the built-in tasks.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import random
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness import UserError
from harness.tasks.base import Example, Reward
from harness.tasks.reward_guard import RewardExit, RewardTimeout, call_with_limit

DATA_PREFIX = "data:"
REWARD_TIMEOUT = 60.0  # seconds a reward function call may take (task.reward_timeout)
FILE_KINDS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
CHECKS = ("math", "exact")  # the answer checks that need no reward function
TRL_RESERVED = ("prompt", "completion", "completion_ids")  # columns TRL does not pass as keywords


class RewardFunctionError(RuntimeError):
    """A reward function that raised or returned something unusable during training (the arm fails)."""


def is_data_task(name: str) -> bool:
    return name.startswith(DATA_PREFIX)


def data_label(name: str) -> str:
    """The task's short name in folder and lm-eval task names.

    >>> data_label("data:~/sets/train.jsonl"), data_label("data:openai/gsm8k")
    ('train', 'gsm8k')
    """
    source = name[len(DATA_PREFIX):].rstrip("/")
    stem = Path(source).name
    for suffix in FILE_KINDS:
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_") or "data"


# ---------------------------------------------------------------- reading rows

def read_rows(source: str, split: str = "train", subset: str | None = None) -> list[dict[str, Any]]:
    """The rows of a data file, a saved `datasets` folder, or a cached `datasets` name, as plain dicts."""
    path = Path(source).expanduser()
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind:
        if not path.is_file():
            raise UserError(f"data file '{source}' does not exist")
        return read_file(path, kind)
    if path.is_dir():
        return read_saved_dataset(path, split)
    if source.startswith((".", "/", "~")):
        raise UserError(f"data '{source}' does not exist; give a .jsonl, .json or .parquet file, a folder "
                        "written by datasets' save_to_disk, or a datasets name in the local cache")
    return read_cached_dataset(source, split, subset)


def read_file(path: Path, kind: str) -> list[dict[str, Any]]:
    if kind == "parquet":
        try:
            import pyarrow
            import pyarrow.parquet
        except ImportError:
            raise UserError(f"reading {path} needs pyarrow: pip install pyarrow") from None
        try:
            return pyarrow.parquet.read_table(path).to_pylist()
        except (pyarrow.ArrowException, OSError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"{path} is not a readable Parquet file: {first}") from None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        if kind == "json":
            rows = json.loads(text)
            rows = rows.get("data", rows) if isinstance(rows, dict) else rows  # {"data": [...]} as `datasets` reads it
        else:
            rows = [json_line(path, number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be examples: give one flat JSON object per example") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path} must hold one JSON object per example")
    return rows


def json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {number} is not valid JSON: {err.msg}") from None


def read_saved_dataset(path: Path, split: str) -> list[dict[str, Any]]:
    import datasets
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"'{path}' is not a folder written by datasets' save_to_disk: {err}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UserError(f"'{path}' has no split '{split}'; splits: {', '.join(data)}")
        data = data[split]
    return data.to_list()


def read_cached_dataset(name: str, split: str, subset: str | None) -> list[dict[str, Any]]:
    """A Hub dataset from the local `datasets` cache only: no download at run time."""
    import datasets
    import datasets.config
    saved = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        return datasets.load_dataset(name, subset, split=split).to_list()
    except Exception as err:  # not cached, no such split or subset: one line, whatever datasets raised
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"dataset '{name}' (split '{split}') could not be read from the local datasets cache: "
                        f"{first}; give a JSONL or Parquet file instead") from None
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved


def to_examples(rows: list[dict[str, Any]], prompt_key: str, answer_key: str, where: str) -> list[Example]:
    if not rows:
        raise UserError(f"{where} holds no examples")
    for key, flag in ((prompt_key, "--prompt-key"), (answer_key, "--answer-key")):
        if key not in rows[0]:
            raise UserError(f"{where} has no column '{key}' ({flag}); columns: {', '.join(map(str, rows[0]))}")
    examples = []
    for number, row in enumerate(rows, 1):
        prompt = row.get(prompt_key)
        if not isinstance(prompt, str) or not prompt:
            raise UserError(f"{where} row {number}: '{prompt_key}' must be non-empty text, got {prompt!r} "
                            "(chat messages are not read; the chat template is applied with --chat-template auto)")
        if row.get(answer_key) is None:
            raise UserError(f"{where} row {number} has no '{answer_key}'")
        examples.append(Example(prompt=prompt, answer=str(row[answer_key]).strip(), item=row))
    return examples


def fingerprint(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.prompt, e.answer]).encode())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------- rewards

def load_reward_function(spec: str, timeout: float = REWARD_TIMEOUT) -> Callable[..., Any]:
    """`module:function` (importable from the working folder) or `path/to/file.py:function`; its import runs
    under the same time limit as each call, and may not end the process."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise UserError(f"--reward '{spec}' must be math, exact, module:function or file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise UserError(f"reward file '{module_name}' does not exist")
            loader = importlib.util.spec_from_file_location(f"harness_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(loader)
            call_with_limit(lambda: loader.loader.exec_module(module), timeout)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = call_with_limit(lambda: importlib.import_module(module_name), timeout)
    except UserError:
        raise
    except (RewardTimeout, RewardExit) as err:
        raise UserError(f"importing reward module '{module_name}' {err}") from None
    except Exception as err:  # an import error or one raised while the module runs
        raise UserError(f"cannot import reward module '{module_name}': {type(err).__name__}: {err}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"reward module '{module_name}' has no function '{function_name}'")
    return function


def reward_columns(examples: list[Example]) -> dict[str, list[Any]]:
    """The keyword lists TRL passes a reward function: `prompts`, then every column but the reserved ones."""
    columns: dict[str, list[Any]] = {"prompts": [e.prompt for e in examples]}
    for key in examples[0].item:
        if key not in TRL_RESERVED and key not in ("prompts", "completions"):
            columns[key] = [e.item.get(key) for e in examples]
    return columns


def call_reward_function(function, name: str, completions: list[str], examples: list[Example],
                         timeout: float = REWARD_TIMEOUT) -> list[float]:
    """The function's rewards for `completions`; RewardFunctionError, in one line naming it, if unusable,
    too slow (`timeout` seconds), or when it tries to end the process (sys.exit, KeyboardInterrupt)."""
    columns = reward_columns(examples)

    def call() -> list[Any]:
        values = function(completions=list(completions), **columns)
        if not isinstance(values, Iterable):
            raise RewardFunctionError(f"reward function {name} must return a list of floats, "
                                      f"got {type(values).__name__}: {str(values)[:80]}")
        if isinstance(values, (str, bytes)):  # refused below, by its own type, not as a list of characters
            return values
        return list(values)  # a generator's values are computed here, under the same limit
    try:
        values = call_with_limit(call, timeout)
    except RewardFunctionError:
        raise
    except (RewardTimeout, RewardExit) as err:
        raise RewardFunctionError(f"reward function {name} {err}") from None
    except Exception as err:
        raise RewardFunctionError(f"reward function {name} raised {type(err).__name__}: {err}") from None
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RewardFunctionError(f"reward function {name} must return a list of floats, "
                                  f"got {type(values).__name__}: {str(values)[:80]}") from None
    if len(values) != len(completions):
        raise RewardFunctionError(f"reward function {name} returned {len(values)} values for "
                                  f"{len(completions)} completions; return one float per completion")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise RewardFunctionError(f"reward function {name} returned {bad[0]} for a completion; "
                                  "every reward must be a finite number")
    return values


def math_correct(answer: str, reference: str) -> bool:
    """math-verify's equivalence of the completion's last expression and the reference.

    >>> math_correct("the answer is 0.5", "1/2"), math_correct("18", "19")
    (True, False)
    """
    from math_verify import parse, verify
    return bool(answer.strip()) and verify(parse(reference), parse(answer))


# ---------------------------------------------------------------- the task

class DataTask:
    """A user's prompts and answers behind the Task protocol, with a held-out split from a file or a seeded cut."""

    def __init__(self, name: str, *, prompt_key: str = "prompt", answer_key: str = "answer", eval_file: str = "",
                 eval_size: int = 200, seed: int = 0, reward: str = "math", format_weight: float = 0.1,
                 options: dict[str, Any] | None = None, reward_timeout: float = REWARD_TIMEOUT):
        source = name[len(DATA_PREFIX):]
        options = dict(options or {})
        split, subset = options.get("split", "train"), options.get("subset")
        examples = to_examples(read_rows(source, split, subset), prompt_key, answer_key, source)
        if eval_file:
            held_out = to_examples(read_rows(eval_file, split), prompt_key, answer_key, eval_file)
            held_out_from = eval_file
        elif options.get("eval_split"):
            held_out = to_examples(read_rows(source, options["eval_split"], subset), prompt_key, answer_key,
                                   f"{source} split {options['eval_split']}")
            held_out_from = f"split {options['eval_split']}"
        else:
            if eval_size >= len(examples):
                raise UserError(f"{source} holds {len(examples)} examples: too few to hold out task.eval_size="
                                f"{eval_size}; lower it (--set task.eval_size=N) or give --eval-file")
            order = list(range(len(examples)))
            random.Random(seed).shuffle(order)
            held_out = [examples[i] for i in order[:eval_size]]
            examples = [examples[i] for i in sorted(order[eval_size:])]
            held_out_from = f"seeded cut of {eval_size}"
        held_out_prompts = {e.prompt for e in held_out}
        self.train = [e for e in examples if e.prompt not in held_out_prompts]  # never train on an eval prompt
        if not self.train:
            raise UserError(f"{source} has no training example left once the held-out prompts are removed")
        self.held_out = held_out
        self.name = data_label(name)
        self.seed = seed
        self.format_weight = format_weight
        self.reward_spec = reward or "math"
        self.check = self.reward_spec if self.reward_spec in CHECKS else None
        self.reward_timeout = reward_timeout
        self.reward_function = None if self.check else load_reward_function(self.reward_spec, reward_timeout)
        text = "".join(e.prompt + e.answer for e in self.train + self.held_out)
        self.alphabet = "".join(sorted(set(text)))
        # What shapes a warm-started tiny model (its cache key) and what the lm-eval YAMLs record.
        self.options = {"source": source, "prompt_key": prompt_key, "answer_key": answer_key,
                        "held_out": held_out_from, "reward": self.reward_spec,
                        "fingerprint": fingerprint(self.train + self.held_out), **options}
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.train)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all a run reads
        return self._orders[epoch]

    def train_examples(self, step: int, count: int) -> list[Example]:
        """The prompts of one step: a seeded shuffle per pass over the data, the same for every algorithm."""
        n = len(self.train)
        return [self.train[self._order(i // n)[i % n]] for i in range(step * count, step * count + count)]

    def eval_examples(self) -> list[Example]:
        return list(self.held_out)

    def correct(self, completion: str, example: Example) -> float:
        if self.check == "math":
            return float(math_correct(completion, example.answer))
        return float(completion.strip() == example.answer)

    def reward(self, completion: str, example: Example, finished: bool = True) -> Reward:
        format_score = 1.0 if finished else 0.0
        if self.reward_function is None:
            correct = self.correct(completion, example)
            return Reward(format=format_score, correct=correct, total=correct + self.format_weight * format_score)
        (value,) = call_reward_function(self.reward_function, self.reward_spec, [completion], [example],
                                        self.reward_timeout)
        return Reward(format=format_score, correct=value, total=value)

    def check_reward_function(self) -> None:
        """Call the reward function once on a few held-out examples, before training: one line if it fails."""
        if self.reward_function is None:
            return
        examples = self.held_out[:3]
        try:
            call_reward_function(self.reward_function, self.reward_spec, [e.answer for e in examples], examples,
                                 self.reward_timeout)
        except RewardFunctionError as err:
            raise UserError(str(err)) from None


def load_data_task(name: str, **kwargs: Any) -> DataTask:
    return DataTask(name, **kwargs)
