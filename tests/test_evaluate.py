"""The lm-eval bridge: pass@k and maj@k by hand, answer matching, offline task YAMLs, agreement with
the harness's own greedy accuracy, the plain `lm_eval` command, and `harness eval`'s errors."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys

import pytest
import torch

from harness.cli import main
from harness.config.load import load_config
from harness.results.io import write_yaml
from harness.tasks.base import Example
from harness.tasks.gym import GymTask, load_task, task_names
from harness.tasks.lm_eval import write_local_tasks
from harness.tasks.lm_eval.metrics import canonical_number, majority_vote, sampled_scores
from harness.train.lm_eval_bridge import majority_at_k, pass_at_k, score_policy, score_standard
from harness.train.models import load_policy, resolve_model_path
from harness.train.rollout import completion_mask, decode_completions, greedy_eval, sample

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE)  # before `datasets` reads them at import; the fixture below enforces them too


@pytest.fixture
def offline(monkeypatch):
    """Offline variables set, and every network lookup or connection recorded and refused."""
    import datasets.config
    import huggingface_hub.constants
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("network refused by the test")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise OSError("name lookup refused by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts


@pytest.fixture(scope="module")
def smoke():
    """The smoke preset's warm-started tiny model (cached), its tokenizer and config."""
    config = load_config("smoke")
    task = load_task("chain_sum", eval_size=config.task.eval_size, seed=config.task.seed)
    model, tokenizer = load_policy(resolve_model_path(config.model, task))
    return model, tokenizer, config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smoke):
    """A finished run's folder as `harness run` leaves it: config.yaml and final_model/."""
    model, tokenizer, config = smoke
    folder = tmp_path_factory.mktemp("run")
    model.save_pretrained(folder / "final_model")
    tokenizer.save_pretrained(folder / "final_model")
    write_yaml(folder / "config.yaml", {**config.to_dict(), "algo": "grpo"})
    return folder


# ---------------------------------------------------------------- pass@k and maj@k by hand

def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # c / n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every draw of 3 holds a correct one
    assert pass_at_k(8, 0, 8) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 2)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


# Four problems, four samples each; a tie goes to the answer seen first (lm-eval's majority_vote).
ANSWERS = [["12", "12", "7", "12"],  # majority 12, right;  3 of 4 right
           ["3", "5", "5", "3"],     # tie 3:5 -> 3, wrong;  2 of 4 right
           ["1", "2", "3", "4"],     # all tied -> 1, wrong; 1 of 4 right
           ["9", "9", "9", "9"]]     # majority 9, wrong;   none right
REFERENCES = ["12", "5", "4", "8"]


def test_majority_at_k_matches_hand_computed_values():
    assert majority_vote(["3", "5", "5", "3"]) == "3"
    assert majority_at_k(ANSWERS, REFERENCES) == 0.25  # only problem 1
    assert majority_at_k(ANSWERS, REFERENCES, k=1) == 0.25  # first answers 12, 3, 1, 9
    assert majority_at_k([["3", "5", "5"]], ["5"], k=3) == 1.0  # the third sample breaks the tie


def test_sampled_metric_gives_the_hand_computed_figures():
    # What lm-eval calls once per problem; its mean over the problems is the reported figure.
    rows = [sampled_scores([ref], [answers], ks=[1, 2, 4]) for answers, ref in zip(ANSWERS, REFERENCES)]
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
    assert mean["pass@1"] == pytest.approx((3 / 4 + 2 / 4 + 1 / 4 + 0) / 4)  # 0.375
    # pass@2 per problem: 1 - C(n-c,2)/C(4,2) = 1, 1 - 1/6, 1 - 3/6, 0
    assert mean["pass@2"] == pytest.approx((1 + 5 / 6 + 1 / 2 + 0) / 4)
    assert mean["pass@4"] == pytest.approx(3 / 4)
    assert mean["maj@4"] == pytest.approx(majority_at_k(ANSWERS, REFERENCES)) == 0.25
    assert mean["maj@2"] == pytest.approx(1 / 4)  # 12 | 3 vs 5 -> 3 | 1 vs 2 -> 1 | 9


def test_sharper_policy_raises_maj_at_k_but_not_pass_at_k():
    # DeepSeekMath's finding in miniature: RL moves mass onto an answer the base already sampled.
    base, tuned, reference = ["5", "7", "7", "9"], ["5", "5", "5", "7"], "5"
    before, after = sampled_scores([reference], [base], ks=[4]), sampled_scores([reference], [tuned], ks=[4])
    assert (before["maj@4"], after["maj@4"]) == (0.0, 1.0)
    assert before["pass@4"] == after["pass@4"] == 1.0


# ---------------------------------------------------------------- the same notion of correct

def candidates(answer: str, alphabet: str, rng: random.Random) -> list[str]:
    """Answers a policy might give: the reference in other spellings, near misses, random strings."""
    digits = answer.lstrip("-")
    sign = "-" if answer.startswith("-") else ""
    spelled = [answer, f" {answer} ", f"+{answer}", f"{sign}0{digits}", f"{sign}00{digits}", f"{answer}.0",
               f"{answer}.", f"{answer[:1]},{answer[1:]}", f"{answer}=", f"={answer}", f"-{answer}", f"+-{digits}",
               f"{answer}0", f"{answer}e0", answer.upper(), answer[::-1], "", "-0", "+0", "0", "00", "-.0", ",", "."]
    pool = alphabet + " ,.+-e_"
    return spelled + ["".join(rng.choice(pool) for _ in range(rng.randint(0, 5))) for _ in range(300)]


def yaml_judge(task, folder):
    """Whether the generated greedy YAML counts a completion as correct: its own filters and metric."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.tasks import TaskManager
    local = write_local_tasks(task, folder, max_gen_toks=6, stop=["<eos>"], k=0)
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    loaded = manager.load([local.greedy])["tasks"][local.greedy]
    (ensemble,) = loaded._filters
    kwargs = loaded._metric_fn_kwargs["exact_match"]

    def correct(completion: str, reference: str) -> bool:
        resps = [[completion]]
        for step in ensemble.filters:
            resps = step().apply(resps, [None])
        (answer,) = list(resps)  # take_first leaves one string per document
        return exact_match_hf_evaluate(predictions=[answer], references=[reference], **kwargs)["exact_match"] == 1.0
    return correct


@pytest.mark.slow  # lm-eval
@pytest.mark.parametrize("name", task_names())
def test_the_yaml_counts_as_correct_exactly_what_the_task_counts_as_solved(name, tmp_path, offline):
    task = load_task(name, eval_size=40, seed=0)
    correct = yaml_judge(task, tmp_path)
    rng = random.Random(0)
    solved = 0
    for example in task.eval_examples():
        for completion in candidates(example.answer, task.alphabet, rng):
            harness = task.reward(completion, example).solved
            assert correct(completion, example.answer) == harness, (completion, example.answer)
            solved += harness
    assert solved >= 2 * 40  # at least the reference and its blank-padded spelling, every time


# ---------------------------------------------------------------- offline YAML, agreement

@pytest.mark.slow  # lm-eval
def test_generated_yaml_loads_with_a_fresh_task_manager_offline(tmp_path, smoke, offline, monkeypatch):
    from lm_eval.tasks import TaskManager
    model, tokenizer, config = smoke
    task = load_task("chain_sum", eval_size=12, seed=0)
    local = write_local_tasks(task, tmp_path, max_gen_toks=5, stop=[tokenizer.eos_token], k=4)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {local.greedy, local.sampled} <= set(manager.all_tasks)
    loaded = manager.load([local.greedy, local.sampled])["tasks"]
    greedy, sampled = loaded[local.greedy], loaded[local.sampled]
    docs = list(greedy.test_docs())
    assert [(greedy.doc_to_text(d), greedy.doc_to_target(d)) for d in docs] == \
        [(e.prompt, e.answer) for e in task.eval_examples()]
    assert greedy.config.generation_kwargs == {"until": ["<eos>"], "max_gen_toks": 5, "do_sample": False}
    assert sampled.config.repeats == 4
    # And it runs: in process, seeded, with no network lookup at all; on references that make the model
    # solve a known share (own_answers_as_references), so that the figures below are not all zero.
    examples = own_answers_as_references(task.eval_examples(), greedy_completions(model, tokenizer,
                                                                                  task.eval_examples(), 5))
    monkeypatch.setattr(task, "eval_examples", lambda: list(examples))
    score = score_policy(model, tokenizer, task, k=4, seed=0, max_new_tokens=5, work_dir=tmp_path)
    assert score["n"] == 12 and score["k"] == 4
    # The figures are lm-eval's reading of the samples it wrote: recomputed from them by hand, they agree.
    # Greedy pass@1 is the harness's own greedy accuracy on the same 12 prompts.
    assert score["pass@1"] == greedy_eval(model, tokenizer, task, examples, 5)["accuracy"] > 0
    rows = [json.loads(line) for line in (tmp_path / f"samples_policy_{local.sampled}.jsonl").read_text().splitlines()]
    assert [len(row["answers"]) for row in rows] == [4] * 12
    answers = [[canonical_number(a) for a in row["answers"]] for row in rows]
    targets = [canonical_number(row["target"]) for row in rows]
    pass_k = sum(target in drawn for target, drawn in zip(targets, answers)) / 12
    maj_k = sum(majority_vote(drawn) == target for target, drawn in zip(targets, answers)) / 12
    assert (score["pass@k"], score["maj@k"]) == (pass_k, maj_k) and pass_k > 0
    assert offline == []


def with_reference(example: Example, answer: str) -> Example:
    """The same prompt scored against another reference (the generator's scorer reads item["answer"])."""
    return Example(example.prompt, answer, {**example.item, "answer": answer})


def greedy_completions(model, tokenizer, examples: list[Example], max_new_tokens: int) -> list[str]:
    input_ids, _, prompt_length = sample(model, tokenizer, [e.prompt for e in examples], max_new_tokens, greedy=True)
    mask, _ = completion_mask(input_ids[:, prompt_length:], tokenizer.eos_token_id)
    return decode_completions(tokenizer, input_ids[:, prompt_length:], mask)


def own_answers_as_references(examples: list[Example], completions: list[str]) -> list[Example]:
    """The smoke model solves about 1 chain sum in 200, and two scorers that both said 0 would agree while
    one of them never counted anything correct: every other prompt whose greedy answer is a number gets
    that number as its reference, so that a known share is solved and both scorers must count it."""
    return [with_reference(e, c) if i % 2 == 0 and re.fullmatch(r"-?[1-9]\d*|0", c) else e
            for i, (e, c) in enumerate(zip(examples, completions))]


@pytest.mark.slow  # lm-eval
def test_lm_eval_pass_at_1_equals_the_harness_greedy_accuracy(tmp_path, smoke, offline, monkeypatch):
    """Same policy, same 200 held-out prompts, greedy both ways: same completions, same accuracy (on
    references that make the model solve a known share: own_answers_as_references)."""
    model, tokenizer, config = smoke
    task = load_task("chain_sum", eval_size=200, seed=0)
    completions = greedy_completions(model, tokenizer, task.eval_examples(), config.rollout.max_new_tokens)
    examples = own_answers_as_references(task.eval_examples(), completions)
    relabelled = sum(e.answer != original.answer for e, original in zip(examples, task.eval_examples()))
    assert relabelled >= 50  # the smoke model answers most prompts with a well-formed number
    monkeypatch.setattr(task, "eval_examples", lambda: list(examples))
    harness = greedy_eval(model, tokenizer, task, examples, config.rollout.max_new_tokens)
    assert harness["accuracy"] >= relabelled / 200 > 0  # it solves what it was relabelled to solve

    score = score_policy(model, tokenizer, task, k=0, seed=0, max_new_tokens=config.rollout.max_new_tokens,
                         work_dir=tmp_path, label="base")
    rows = [json.loads(line) for line in (tmp_path / "samples_base_harness_chain_sum.jsonl").read_text().splitlines()]
    assert [row["completions"][0] for row in rows] == completions
    assert score["pass@1"] == harness["accuracy"]
    assert score["n"] == harness["n"] == 200
    assert score["maj@k"] is None and score["pass@k"] is None  # k = 0: greedy only


@pytest.mark.slow  # lm-eval
def test_scoring_is_seeded_and_leaves_training_state_alone(tmp_path, smoke):
    model, tokenizer, config = smoke
    task = load_task("chain_sum", eval_size=16, seed=0)
    model.train()
    rng_before = torch.get_rng_state()
    first = score_policy(model, tokenizer, task, k=4, seed=3, max_new_tokens=5, work_dir=tmp_path)
    second = score_policy(model, tokenizer, task, k=4, seed=3, max_new_tokens=5, work_dir=tmp_path)
    assert first["sampled"] == second["sampled"]
    assert torch.equal(torch.get_rng_state(), rng_before)  # a mid-training eval does not move training's RNG
    assert model.training
    model.eval()


# ---------------------------------------------------------------- standard benchmarks, CLI

@pytest.mark.slow  # lm-eval
def test_a_benchmark_without_its_data_gives_one_line_and_the_run_goes_on(smoke, offline):
    model, tokenizer, _ = smoke
    lines = []
    result = score_standard(model, tokenizer, ["gsm8k"], limit=2, log=lines.append)
    assert result["gsm8k"].startswith("not available: ")
    assert len(lines) == 1 and "gsm8k" in lines[0] and "\n" not in lines[0]


def test_unknown_task_name_gives_one_line_and_exit_status_2(run_dir, capsys):
    assert main(["eval", str(run_dir), "--tasks", "chain_sum,no_such_task"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown task 'no_such_task'" in err and "chain_sum" in err and "spell_backward" in err


def test_eval_of_a_missing_folder_gives_one_line_and_exit_status_2(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


@pytest.mark.slow  # lm-eval
def test_harness_eval_and_plain_lm_eval_agree_on_a_saved_policy(run_dir, smoke, tmp_path, capsys, offline, monkeypatch):
    # `harness eval` writes the prompts and references it scores into the data file plain lm_eval reads
    model, tokenizer, config = smoke
    task = load_task("chain_sum", eval_size=config.task.eval_size, seed=config.task.seed)
    examples = own_answers_as_references(
        task.eval_examples(), greedy_completions(model, tokenizer, task.eval_examples(), config.rollout.max_new_tokens))
    monkeypatch.setattr(GymTask, "eval_examples", lambda self: list(examples))
    assert main(["eval", str(run_dir), "--k", "2", "--limit", "8"]) == 0
    scores = json.loads((run_dir / "lm_eval" / "scores.json").read_text())["scores"]["chain_sum"]
    out = capsys.readouterr().out
    assert scores["pass@1"] > 0  # an agreement on zeros would not show that both count a solved prompt
    assert scores["n"] == 8 and any(line.startswith("chain_sum ") and "pass@1" in line for line in out.splitlines())
    # The command `harness eval` prints, on the same files and the saved model: it carries --limit,
    # so that it scores the same 8 prompts.
    printed = next(line for line in out.splitlines() if line.startswith("rerun with lm_eval: "))
    assert printed == (f"rerun with lm_eval: lm_eval --model hf --model_args pretrained={run_dir / 'final_model'},"
                       f"add_bos_token=False --include_path {run_dir / 'lm_eval'} --tasks harness_chain_sum,"
                       "harness_chain_sum_k2 --device cpu --batch_size 256 --seed 0 --limit 8")
    command = [sys.executable, "-m", *shlex.split(printed.removeprefix("rerun with lm_eval: ")),
               "--output_path", str(tmp_path)]
    env = {**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=tmp_path, timeout=120)
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())["results"]
    assert results["harness_chain_sum"]["exact_match,answer"] == scores["pass@1"]
    assert results["harness_chain_sum_k2"]["maj@2,samples"] == scores["maj@k"]
    assert results["harness_chain_sum_k2"]["pass@2,samples"] == scores["pass@k"]


def test_numbers_are_compared_and_voted_on_by_value():
    # chain_sum's filter writes each number as the reference is written, so "016" and "16" are one vote.
    assert [canonical_number(t) for t in ["016", "+16", "16.0", "1,6", "-0", "-016", "16=", "x"]] == \
        ["16", "16", "16", "16", "0", "-16", "16=", "x"]
    answers = [canonical_number(t) for t in ["016", "7", "+16", "7"]]
    assert majority_vote(answers) == "16"  # 2 votes for 16 against 2 for 7, and 16 came first


def test_standard_task_names_are_found_without_lm_evals_full_index():
    from harness.tasks.lm_eval.standard import standard_task_names, task_families
    names = standard_task_names()
    assert {"gsm8k", "gsm8k_cot", "minerva_math", "minerva_math_algebra", "mmlu"} <= names
    assert "no_such_task" not in names
    assert {"benchmarks", "minerva_math"} <= task_families("minerva_math")  # the group, then its members
