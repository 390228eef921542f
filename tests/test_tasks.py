"""Offline reasoning-gym tasks: compact prompts, disjoint splits, and the pure reward."""

import re

import pytest

from harness.tasks.base import Example
from harness.tasks.gym import load_task


@pytest.fixture(scope="module")
def chain_sum():
    return load_task("chain_sum", eval_size=200)


def test_train_and_eval_splits_do_not_overlap(chain_sum):
    eval_prompts = {e.prompt for e in chain_sum.eval_examples()}
    train_prompts = {e.prompt for step in range(20) for e in chain_sum.train_examples(step, 32)}
    assert len(eval_prompts) > 100 and not eval_prompts & train_prompts


def test_the_same_step_gives_the_same_prompts(chain_sum):
    again = load_task("chain_sum", eval_size=200)
    assert chain_sum.train_examples(7, 16) == again.train_examples(7, 16)
    assert chain_sum.train_examples(7, 16) != chain_sum.train_examples(8, 16)


def test_prompts_are_compact_and_in_the_alphabet(chain_sum):
    for example in chain_sum.eval_examples()[:50]:
        assert example.prompt.endswith("=") and set(example.prompt) <= set(chain_sum.alphabet)
        assert eval(example.prompt[:-1]) == int(example.answer)  # "12-40=" -> -28


def test_reward_keeps_format_and_correctness_apart(chain_sum):
    example = Example(prompt="4-1=", answer="3", item={"answer": "3", "metadata": {}})
    right = chain_sum.reward("3", example)
    assert (right.format, right.correct, right.total, right.solved) == (1.0, 1.0, 1.1, True)
    wrong = chain_sum.reward("4", example)
    assert (wrong.format, wrong.correct, wrong.total, wrong.solved) == (1.0, 0.0, 0.1, False)
    garbled = chain_sum.reward("3+", example)  # not a number: no format credit
    assert (garbled.format, garbled.solved) == (0.0, False)
    unfinished = chain_sum.reward("3", example, finished=False)  # right digits, but no EOS
    assert (unfinished.format, unfinished.correct) == (0.0, 1.0)


def test_spell_backward_partial_credit_and_the_overshoot_fix():
    task = load_task("spell_backward", eval_size=20)
    example = next(e for e in task.eval_examples())
    assert task.reward(example.answer, example).solved
    # one wrong last letter: reasoning-gym's partial credit (len - 1) / len, not solved
    almost = example.answer[:-1] + ("a" if example.answer[-1] != "a" else "b")
    n = len(example.answer)
    assert task.reward(almost, example).correct == pytest.approx((n - 1) / n)
    # a 9-letter answer extended by one letter: the float sum overshoots 1 in reasoning-gym
    long = Example(prompt="abcdefghi>", answer="ihgfedcba", item={"answer": "ihgfedcba", "metadata": {}})
    extended = task.reward("ihgfedcbax", long)
    assert extended.correct == 0.8 and not extended.solved


def test_held_out_splits_are_distinct_disjoint_and_cover_every_level():
    task = load_task("chain_sum", eval_size=1000, validation_size=500)
    test, validation = task.eval_examples(), task.validation_examples()
    test_prompts, validation_prompts = {e.prompt for e in test}, {e.prompt for e in validation}
    assert len(test_prompts) == len(test) == 1000 and len(validation_prompts) == len(validation) == 500
    assert not test_prompts & validation_prompts
    train = {e.prompt for step in range(40) for e in task.train_examples(step, 256)}
    assert not train & (test_prompts | validation_prompts)
    # one-digit sums are a small level (10 x 10 x 2 = 200 prompts): each split takes at most 1/8 of it,
    # the two-digit level the rest, so every level is covered and training keeps 150 of the 200
    assert task.composition(test) == {"2 terms of 1 digit": 25, "2 terms of 2 digits": 975}
    assert task.composition(validation)["2 terms of 1 digit"] <= 25
    spell = load_task("spell_backward", eval_size=400, validation_size=0)
    assert spell.composition(spell.eval_examples()) == {f"{n} letters": 100 for n in (3, 4, 5, 6)}
    assert spell.validation_examples() == []


def test_the_test_split_does_not_depend_on_the_validation_size():
    small = load_task("chain_sum", eval_size=100, validation_size=10)
    large = load_task("chain_sum", eval_size=100, validation_size=300)
    assert small.eval_examples() == large.eval_examples()
    assert set(small.validation_examples()) != set(large.validation_examples())


def test_any_reasoning_gym_dataset_by_name_asks_for_a_tagged_answer_and_checks_it_its_way():
    task = load_task("rg:basic_arithmetic", eval_size=8, validation_size=4)
    example = task.eval_examples()[0]
    assert example.prompt.startswith(example.item["question"]) and "<answer>" in example.prompt
    assert task.name == "rg_basic_arithmetic"  # a name files and lm-eval tasks can carry
    right = task.reward(f"thinking... <answer>{example.answer}</answer>", example)
    assert right.correct == 1.0 and right.format == 1.0
    untagged = task.reward(example.answer, example)  # the right number, but not where it was asked for
    assert untagged.correct == 0.0 and untagged.format == 0.0


def test_the_credit_assignment_task_has_long_answers_with_partial_credit():
    task = load_task("spell_backward_long", eval_size=40, validation_size=10)
    lengths = {len(e.answer) for e in task.eval_examples()}
    assert min(lengths) >= 8 and max(lengths) <= 12
    example = task.eval_examples()[0]
    # the leading letters in place earn their share: half of the answer right earns about half the credit
    half = example.answer[: len(example.answer) // 2] + "z" * (len(example.answer) - len(example.answer) // 2)
    partial = task.reward(half, example).correct
    assert 0.3 < partial < 0.8 and task.reward(example.answer, example).correct == 1.0


def test_a_preset_s_generator_options_stay_with_its_task(tmp_path):
    """tiny's chain_sum options (min_digits) would be refused by another task: --task drops them,
    while the task's own options, from any later layer, are kept."""
    from harness.config.load import load_config
    assert load_config("tiny").task.options == {"min_digits": 2}
    assert load_config("tiny", overrides=["task.name=spell_backward"]).task.options == {}
    other = load_config("tiny", overrides=["task.name=spell_backward", "task.options.max_word_len=5"])
    assert other.task.options == {"max_word_len": 5}
    config_file = tmp_path / "c.yaml"
    config_file.write_text("task:\n  name: spell_backward\n  options: {min_word_len: 4}\n")
    assert load_config("tiny", str(config_file)).task.options == {"min_word_len": 4}
    assert load_config("tiny", overrides=["task.name=chain_sum"]).task.options == {"min_digits": 2}
    load_task("spell_backward", eval_size=4, validation_size=2,
              options=load_config("tiny", overrides=["task.name=spell_backward"]).task.options)


# ---------------------------------------------------------------- the scratchpad task

def chain_item(expression: str) -> dict:
    """A hand-written chain_sum item as reasoning-gym writes one."""
    return {"answer": str(eval(expression)), "metadata": {"expression": expression,
                                                         "num_terms": len(expression.split()) // 2 + 1}}


@pytest.fixture(scope="module")
def scratchpad_task():
    return load_task("chain_sum_scratchpad", eval_size=400, validation_size=200)


def test_the_scratchpad_writes_every_partial_sum_then_the_answer():
    from harness.tasks.scratchpad import scratchpad
    # 12+7 = 19; 19-30 = -11; -11+41 = 30
    assert scratchpad("12 + 7 - 30 + 41") == "12+7=19;19-30=-11;-11+41=30;#30"
    # 95-99 = -4; -4-87 = -91; -91-60 = -151; -151+10 = -141; -141-98 = -239: six terms, 52 characters
    assert scratchpad("95 - 99 - 87 - 60 + 10 - 98") == "95-99=-4;-4-87=-91;-91-60=-151;-151+10=-141;-141-98=-239;#-239"
    assert scratchpad("50 + -7 - -3") == "50+-7=43;43--3=46;#46"  # reasoning-gym's allow_negation


def test_the_reward_reads_the_final_answer_alone_and_the_format_the_whole_scratchpad():
    from harness.tasks.scratchpad import scratchpad_reward
    item = chain_item("12 + 7 - 30 + 41")  # 30, three steps
    cases = {  # completion (EOS produced) -> (format, correct)
        "12+7=19;19-30=-11;-11+41=30;#30": (1.0, 1.0),  # worked and right
        "12+7=19;19-30=-12;-12+41=29;#30": (1.0, 1.0),  # wrong steps, right answer: one reward at the end
        "12+7=19;19-30=-11;-11+41=30;#31": (1.0, 0.0),  # right steps, wrong answer: nothing for the steps
        "12+7=19;19-30=-11;-11+41=30;#030": (1.0, 1.0),  # the answer compared as a number, as reasoning-gym does
        "12+7=19;19-30=-11;#30": (0.0, 1.0),  # a step missing: not the scratchpad's shape
        "12+7=19;19-30=-11;-11+41=30;30": (0.0, 0.0),  # no '#': the whole completion is the answer
        "30": (0.0, 1.0),  # the answer alone is right, but no scratchpad
        "12+7=19;19-30=-11;-11+41=30;#130": (1.0, 0.0),  # contains 30: reasoning-gym's partial credit not given
        "": (0.0, 0.0),
    }
    for completion, (form, correct) in cases.items():
        reward = scratchpad_reward(completion, item, format_weight=0.1)
        assert (reward.format, reward.correct) == (form, correct), completion
        assert reward.total == pytest.approx(correct + 0.1 * form) and reward.solved == (correct == 1.0)
    unfinished = scratchpad_reward("12+7=19;19-30=-11;-11+41=30;#30", item, finished=False)
    assert (unfinished.format, unfinished.correct) == (0.0, 1.0)  # cut off before EOS: no format credit


def test_scratchpad_examples_carry_their_worked_target_and_score_it_in_full(scratchpad_task):
    for example in scratchpad_task.eval_examples()[:100]:
        terms = example.item["metadata"]["num_terms"]
        assert 3 <= terms <= 6 and example.prompt.endswith("=") and set(example.prompt) <= set(scratchpad_task.alphabet)
        assert eval(example.prompt[:-1]) == int(example.answer)
        assert example.target.endswith("#" + example.answer) and example.target.count(";") == terms - 1
        assert example.supervised_target == example.target and set(example.target) <= set(scratchpad_task.alphabet)
        # one-digit terms: 7 to 10 characters a step, "#", the answer and EOS: 15 (3 terms) to 51 (6 terms) tokens
        assert 15 <= len(example.target) + 1 <= 51
        reward = scratchpad_task.reward(example.target, example)
        assert (reward.format, reward.correct, reward.total) == (1.0, 1.0, 1.1)
    plain = load_task("chain_sum", eval_size=4, validation_size=0).eval_examples()[0]
    assert plain.target == "" and plain.supervised_target == plain.answer  # the other tasks warm-start on answers


def test_scratchpad_splits_are_disjoint_with_equal_shares_per_number_of_terms(scratchpad_task):
    test, validation = scratchpad_task.eval_examples(), scratchpad_task.validation_examples()
    test_prompts, validation_prompts = {e.prompt for e in test}, {e.prompt for e in validation}
    assert len(test_prompts) == 400 and len(validation_prompts) == 200 and not test_prompts & validation_prompts
    train = {e.prompt for step in range(20) for e in scratchpad_task.train_examples(step, 256)}
    assert len(train) > 4000 and not train & (test_prompts | validation_prompts)
    assert scratchpad_task.composition(test) == {f"{n} terms": 100 for n in (3, 4, 5, 6)}
    assert scratchpad_task.composition(validation) == {f"{n} terms": 50 for n in (3, 4, 5, 6)}


def scratchpad_config(*overrides):
    from harness.config.load import load_config
    return load_config("tiny", overrides=["task.name=chain_sum_scratchpad", "task.eval_size=40",
                                          "task.validation_size=20", *overrides])


FITS = ["rollout.max_new_tokens=52"]  # the longest worked answer of one-digit terms, 51 tokens with EOS, and one more
TWO_DIGITS = ["task.options.min_digits=2", "task.options.max_digits=2"]  # 18-character prompts, answers up to 71 tokens


@pytest.mark.parametrize("overrides, message", [
    ([], "rollout.max_new_tokens=6 cuts the worked answers"),
    ([*FITS, "task.options.max_terms=2"], "max_terms must be >= min_terms"),
    ([*FITS, "task.options.max_term=7"], "unknown option 'task.options.max_term'"),
    ([*FITS, *TWO_DIGITS], "do not fit the tiny model's 64 positions"),
    # the 60 two-digit examples' longest worked answer is 59 tokens with EOS: 56 new tokens fit 96 positions but cut it
    (["model.max_positions=96", "rollout.max_new_tokens=56", *TWO_DIGITS], "rollout.max_new_tokens=56 cuts"),
])
def test_the_scratchpad_task_is_checked_before_a_run(overrides, message):
    from harness import UserError
    from harness.config.checks import check_task
    with pytest.raises(UserError, match=re.escape(message)):
        check_task(scratchpad_config(*overrides))


def test_what_fits_the_raised_positions_passes_and_the_preset_fits():
    from harness.config.checks import check_task
    from harness.config.load import load_config
    check_task(scratchpad_config(*FITS))
    check_task(scratchpad_config("model.max_positions=96", "rollout.max_new_tokens=72", *TWO_DIGITS))
    check_task(load_config("scratchpad"))
    config = scratchpad_config(*FITS, "task.options.max_terms=4")
    check_task(config)  # four terms at most: shorter answers
    assert config.task.options == {"max_terms": 4}


def test_max_positions_reaches_the_model_and_keys_the_cache_only_when_changed():
    from harness.config.derive import make_task
    from harness.config.load import load_config
    from harness.train.models import char_tokenizer, tiny_key, tiny_model
    smoke = load_config("smoke")
    task = make_task(smoke)
    # the key the smoke model was cached under before model.max_positions existed (and the CPU gate's baseline
    # was measured on): a default of 64 must leave every cached model valid
    assert tiny_key(smoke.model, task) == "fe7ef1b42b45"
    wider = smoke.model.model_copy(update={"max_positions": 96})
    assert tiny_key(wider, task) != "fe7ef1b42b45"
    model = tiny_model(wider, char_tokenizer(task.alphabet, 96))
    assert model.config.max_position_embeddings == 96
    # rotary embeddings: more positions add no parameters
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in tiny_model(smoke.model, char_tokenizer(task.alphabet)).parameters())


def test_harness_tasks_lists_the_scratchpad_task(capsys):
    from harness.cli import main
    assert main(["tasks"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("chain_sum_scratchpad"))
    assert "'chain_sum'" in line and "'min_terms': 3" in line and "'max_terms': 6" in line


@pytest.mark.slow  # an arm in a subprocess: a warm start on scratchpads and three RL steps on the smoke-sized model
def test_an_arm_trains_on_the_scratchpad_task_end_to_end(tmp_path):
    import json

    from conftest import harness
    refused = harness("run", "--algo", "grpo", "--preset", "smoke", "--task", "chain_sum_scratchpad",
                      "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "rollout.max_new_tokens=5 cuts the worked answers" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    out = tmp_path / "arm"
    harness("run", "--algo", "grpo", "--preset", "smoke", "--task", "chain_sum_scratchpad",
            "--set", "rollout.max_new_tokens=52", "--set", "run.lm_eval=false", "--out", str(out), check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["task"] == "chain_sum_scratchpad" and summary["steps"] == 3
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 3 and all(s["completions"] for s in steps)
    # the warm start taught worked answers, not chain_sum's few tokens: completions run to tens of tokens
    assert max(s["completion/len_mean"] for s in steps) > 10
    assert all(0.0 <= s["reward/accuracy"] <= 1.0 and 0.0 <= s["reward/format"] <= 1.0 for s in steps)
