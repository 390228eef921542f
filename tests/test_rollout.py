"""The shared rollout: masks up to EOS, log-probs aligned with what generate sampled, groups."""

import pytest
import torch

from harness.algorithms.base import RolloutBatch, policy_forward
from harness.config import load_config
from harness.models import load_policy, resolve_model_path
from harness.rollout import completion_mask, generate, greedy_eval
from harness.tasks.gym import load_task


@pytest.fixture(scope="module")
def smoke():
    config = load_config("smoke")
    task = load_task("chain_sum", eval_size=config.task.eval_size)
    policy, tokenizer = load_policy(resolve_model_path(config.model, task))
    return config, task, policy, tokenizer


def test_completion_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 1, 4, 1]])
    mask, finished = completion_mask(ids, eos_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]


def test_groups_are_contiguous_and_logps_match_generate(smoke):
    config, task, policy, tokenizer = smoke
    examples = task.train_examples(0, 3)
    torch.manual_seed(0)
    rollout = generate(policy, None, tokenizer, task, examples, config.rollout)
    batch, group = rollout.batch, config.rollout.samples_per_prompt
    assert batch.size == 3 * group and batch.group_size == group and batch.ref_logps is None
    prompts = tokenizer.batch_decode(batch.input_ids[:, : batch.prompt_length], skip_special_tokens=True)
    assert prompts == [e.prompt for e in examples for _ in range(group)]
    # the scores are the task's reward of each decoded completion
    _, finished = completion_mask(batch.input_ids[:, batch.prompt_length:], tokenizer.eos_token_id)
    grouped = [e for e in examples for _ in range(group)]
    for text, score, example, done in zip(rollout.completions, batch.scores.tolist(), grouped, finished.tolist()):
        assert score == pytest.approx(task.reward(text, example, finished=done).total)
    # masked positions are padding, unmasked ones are the sampled tokens up to EOS
    completion = batch.input_ids[:, batch.prompt_length:]
    assert (completion[batch.completion_mask == 0] == tokenizer.pad_token_id).all()
    # re-scoring the same sequences gives the same log-probs: old_logps are those of the sampler
    again, _ = policy_forward(policy, batch)
    torch.testing.assert_close(again * batch.completion_mask, batch.old_logps * batch.completion_mask)
    assert (batch.old_logps[batch.completion_mask.bool()] <= 0).all()


def test_left_padding_does_not_change_log_probs(smoke):
    _, task, policy, tokenizer = smoke
    # "1+2=" alone and the same prompt left-padded beside a longer one give the same answer log-probs
    def logps(prompts, answer):
        rows = [tokenizer.encode(p) for p in prompts]
        width = max(map(len, rows))
        answer_ids = tokenizer.encode(answer) + [tokenizer.eos_token_id]
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r + answer_ids for r in rows])
        prompt_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        mask = torch.ones(len(rows), len(answer_ids))
        batch = RolloutBatch(ids, torch.cat([prompt_mask, mask.long()], 1), mask, width, torch.zeros(len(rows)), 1, None)
        return policy_forward(policy, batch)[0]
    alone = logps(["1+2="], "3")[0]
    padded = logps(["1+2=", "10+20="], "3")[0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_greedy_eval_counts_solved_answers(smoke):
    config, task, policy, tokenizer = smoke
    figures = greedy_eval(policy, tokenizer, task, task.eval_examples(), config.rollout.max_new_tokens)
    assert figures["n"] == config.task.eval_size
    assert 0 <= figures["accuracy"] <= figures["score"] <= 1 and 0 <= figures["format"] <= 1


def test_prompts_go_through_the_chat_template_only_when_asked_and_present():
    from harness.models import char_tokenizer
    from harness.rollout import encode_prompts, use_chat_template
    tokenizer = char_tokenizer("0123456789+=<>")
    use_chat_template(tokenizer, "auto")  # no template: the text as it is
    assert encode_prompts(tokenizer, ["1+2="], "cpu")["input_ids"].tolist() == [tokenizer.encode("1+2=")]
    tokenizer.chat_template = "{% for m in messages %}<{{ m.content }}>{% endfor %}{% if add_generation_prompt %}={% endif %}"
    use_chat_template(tokenizer, "auto")  # one user message, then the generation prompt: "<1+2=>="
    assert encode_prompts(tokenizer, ["1+2="], "cpu")["input_ids"].tolist() == [tokenizer.encode("<1+2=>=")]
    use_chat_template(tokenizer, "none")
    assert encode_prompts(tokenizer, ["1+2="], "cpu")["input_ids"].tolist() == [tokenizer.encode("1+2=")]
