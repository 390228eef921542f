"""Bring your own task: rows from JSONL, Parquet or a saved dataset, the held-out split, TRL-style reward
functions and their failures, math-verify, and the lm-eval rule that judges answers as the reward does."""

from __future__ import annotations

import json

import pytest

from harness import UserError
from harness.cli import main
from harness.tasks.data import RewardFunctionError, data_label, load_data_task
from harness.tasks.lm_eval import MATH_RULE, answer_rule
from harness.tasks.lm_eval.metrics import answer_match, sampled_scores

REWARDS = '''
calls = []

def exact(completions, answer, **kwargs):
    calls.append({"completions": completions, "answer": answer, **kwargs})
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def boom(completions, **kwargs):
    raise ValueError("no reward today")

def short(completions, **kwargs):
    return [1.0]

def nan(completions, **kwargs):
    return [float("nan")] * len(completions)

def words(completions, **kwargs):
    return "high"
'''


def write_rows(path, count=60):
    # "a+b=" with its sum, and an extra column a reward function can read
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b), "level": a % 3}
            for a, b in ((i % 17, i // 17 + 3 * (i % 5)) for i in range(count))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "user_rewards.py").write_text(REWARDS)
    rows = write_rows(tmp_path / "sums.jsonl")
    return tmp_path, rows


def make(path, **kwargs):
    defaults = {"prompt_key": "question", "answer_key": "answer", "eval_size": 10, "seed": 0}
    return load_data_task(f"data:{path}", **{**defaults, **kwargs})


def test_label_is_the_file_stem_or_the_dataset_name():
    assert data_label("data:/x/my sums.v2.jsonl") == "my_sums_v2"
    assert data_label("data:openai/gsm8k") == "gsm8k"


def test_a_seeded_cut_holds_out_eval_size_prompts_never_trained_on(data):
    folder, rows = data
    task = make(folder / "sums.jsonl")
    held_out = {e.prompt for e in task.eval_examples()}
    seen = {e.prompt for step in range(10) for e in task.train_examples(step, 8)}
    assert len(task.eval_examples()) == 10 and not held_out & seen
    assert len(task.train) == len({r["question"] for r in rows}) - 10  # every other distinct prompt trains
    # the same seed cuts the same way; another seed cuts another way
    assert make(folder / "sums.jsonl").eval_examples() == task.eval_examples()
    assert make(folder / "sums.jsonl", seed=1).eval_examples() != task.eval_examples()
    # one pass over the data (50 examples = 6 steps of 8 and 2 more) shows every training example once
    first_epoch = [e.prompt for step in range(7) for e in task.train_examples(step, 8)][:len(task.train)]
    assert sorted(first_epoch) == sorted(e.prompt for e in task.train)
    assert task.train_examples(3, 8) == make(folder / "sums.jsonl").train_examples(3, 8)
    assert set(task.alphabet) == set("0123456789+=")  # the tiny model's characters come from the data


def test_eval_file_parquet_and_a_saved_dataset_read_the_same_examples(data):
    import datasets
    import pandas as pd
    folder, rows = data
    pd.DataFrame(rows).to_parquet(folder / "sums.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "saved"))
    write_rows(folder / "held.jsonl", count=5)
    jsonl = make(folder / "sums.jsonl", eval_file=str(folder / "held.jsonl"))
    assert [e.prompt for e in jsonl.eval_examples()] == ["0+0=", "1+3=", "2+6=", "3+9=", "4+12="]
    assert jsonl.options["held_out"] == str(folder / "held.jsonl")
    for other in (folder / "sums.parquet", folder / "saved"):
        task = make(other)
        assert task.eval_examples() == make(folder / "sums.jsonl").eval_examples()
        assert task.train_examples(2, 8) == make(folder / "sums.jsonl").train_examples(2, 8)


@pytest.mark.parametrize("name, kwargs, message", [
    ("data:nope.jsonl", {}, "data file 'nope.jsonl' does not exist"),
    ("data:SUMS", {"prompt_key": "prompt"}, "has no column 'prompt' (--prompt-key); columns: question, answer, level"),
    ("data:SUMS", {"eval_size": 60}, "holds 60 examples: too few to hold out task.eval_size=60"),
    ("data:SUMS", {"reward": "user_rewards:nope"}, "reward module 'user_rewards' has no function 'nope'"),
    ("data:SUMS", {"reward": "no_such_module:fn"}, "cannot import reward module 'no_such_module'"),
    ("data:SUMS", {"reward": "exact"}, None),
    ("data:nobody/no-such-dataset", {}, "dataset 'nobody/no-such-dataset' (split 'train') could not be read "
                                        "from the local datasets cache"),
])
def test_bad_data_gets_one_line(data, name, kwargs, message):
    folder, _ = data
    name = name.replace("SUMS", str(folder / "sums.jsonl"))
    if message is None:
        make(name.removeprefix("data:"), **kwargs)
        return
    with pytest.raises(UserError) as err:
        load_data_task(name, **{"prompt_key": "question", "answer_key": "answer", "eval_size": 10, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_reward_function_gets_trls_keywords_and_its_value_is_the_reward(data):
    import user_rewards
    folder, _ = data
    task = make(folder / "sums.jsonl", reward="user_rewards:exact")
    example = task.eval_examples()[0]
    right = task.reward(example.answer, example)
    assert (right.total, right.correct, right.solved) == (1.0, 1.0, True)
    wrong = task.reward("x", example, finished=False)
    assert (wrong.total, wrong.solved, wrong.format) == (0.0, False, 0.0)
    # TRL's keywords: completions, prompts, and every column but `prompt` as lists
    assert user_rewards.calls[0] == {"completions": [example.answer], "answer": [example.answer],
                                     "prompts": [example.prompt], "question": [example.prompt],
                                     "level": [example.item["level"]]}


def test_math_verify_checks_answers_when_no_function_is_given(data):
    folder, _ = data
    task = make(folder / "sums.jsonl", reward="math", format_weight=0.1)
    example = task.eval_examples()[0]
    spoken = task.reward(f"the answer is {example.answer}", example)
    assert (spoken.correct, spoken.total) == (1.0, 1.1)  # 1 + 0.1 x finished
    assert task.reward(str(int(example.answer) + 1), example).correct == 0.0
    assert make(folder / "sums.jsonl", reward="exact").reward(f"the answer is {example.answer}", example).correct == 0.0
    # lm-eval judges a math data task with math-verify too, so pass@1 is the held-out accuracy
    assert answer_rule(task) == MATH_RULE
    assert answer_match(["1/2"], ["0.5"], verifier="math") == {"exact_match": 1.0}
    assert answer_match(["1/2"], ["0.5"]) == {"exact_match": 0.0}  # exact: the text differs
    # 2 samples, one right: pass@1 = 1/2, pass@2 = 1; the first sample's vote (a tie) is the wrong one
    assert sampled_scores(["4"], [["five", "4.0"]], ks=(1, 2), verifier="math") == \
        {"pass@1": 0.5, "maj@1": 0.0, "pass@2": 1.0, "maj@2": 0.0}


@pytest.mark.parametrize("function, message", [
    ("boom", "reward function user_rewards:boom raised ValueError: no reward today"),
    ("short", "reward function user_rewards:short returned 1 values for 3 completions; return one float per completion"),
    ("nan", "reward function user_rewards:nan returned nan for a completion; every reward must be a finite number"),
    ("words", "reward function user_rewards:words must return a list of floats, got str: high"),
])
def test_a_broken_reward_function_is_named_in_one_line(data, function, message):
    folder, _ = data
    task = make(folder / "sums.jsonl", reward=f"user_rewards:{function}")
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        task.check_reward_function()  # before training: a user error
    example = task.eval_examples()[0]
    if function != "short":  # a single completion: one value is the right length
        with pytest.raises(RewardFunctionError, match=f"reward function user_rewards:{function}"):
            task.reward("1", example)  # during training: the arm's recorded failure


@pytest.mark.parametrize("reward, message", [
    ("user_rewards:boom", "reward function user_rewards:boom raised ValueError: no reward today"),
    ("user_rewards:nan", "reward function user_rewards:nan returned nan"),
])
def test_the_command_stops_before_any_folder_with_exit_2(data, capsys, reward, message):
    folder, _ = data
    code = main(["compare", "--preset", "smoke", "--task", f"data:{folder / 'sums.jsonl'}", "--prompt-key", "question",
                 "--reward", reward, "--set", "task.eval_size=10", "--results-dir", str(folder / "results")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (folder / "results").exists()


def test_long_examples_do_not_fit_the_tiny_model(data, capsys):
    folder, _ = data
    (folder / "long.jsonl").write_text(json.dumps({"prompt": "1+" * 40 + "1=", "answer": "41"}) + "\n" * 2 +
                                       "".join(json.dumps({"prompt": f"{i}=", "answer": str(i)}) + "\n" for i in range(20)))
    code = main(["compare", "--preset", "smoke", "--task", "data:long.jsonl", "--set", "task.eval_size=5"])
    err = capsys.readouterr().err
    assert code == 2 and "prompts of up to 82 characters" in err and "64 positions" in err


def test_relative_data_and_reward_files_are_saved_as_absolute_paths(data):
    from harness.config.load import load_config
    folder, _ = data
    config = load_config("smoke", overrides=["task.name=data:sums.jsonl", "task.reward=user_rewards.py:exact",
                                             "task.eval_file=sums.jsonl"])
    assert config.task.name == f"data:{folder / 'sums.jsonl'}" and config.task.label == "sums"
    assert config.task.reward == f"{folder / 'user_rewards.py'}:exact"
    assert config.task.eval_file == str(folder / "sums.jsonl")
    task = make(folder / "sums.jsonl", reward=config.task.reward)  # the function, read from the file's path
    example = task.eval_examples()[0]
    assert task.reward(example.answer, example).total == 1.0 and task.reward("x", example).total == 0.0
