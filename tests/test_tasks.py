"""Offline reasoning-gym tasks: compact prompts, disjoint splits, and the pure reward."""

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
