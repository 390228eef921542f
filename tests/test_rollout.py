"""The shared rollout: masks up to EOS, log-probs aligned with what generate sampled, groups."""

import math

import pytest
import torch
from transformers import GenerationConfig

from harness.algorithms.batch import RolloutBatch
from harness.algorithms.batch import TrainSettings
from harness.algorithms.logprobs import completion_logps, entropy_from_logits, selective_log_softmax
from harness.config.load import load_config
from harness.tasks.gym import load_task
from harness.train.models import load_policy, resolve_model_path
from harness.train.rollout import completion_mask, encode_prompts, generate, greedy_eval, sampling_config


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
        batch = RolloutBatch(ids, torch.cat([prompt_mask, mask.long()], 1), mask, width, torch.zeros(len(rows)), 1)
        return completion_logps(policy, batch)[0]
    alone = logps(["1+2="], "3")[0]
    padded = logps(["1+2=", "10+20="], "3")[0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_greedy_eval_counts_solved_answers(smoke):
    config, task, policy, tokenizer = smoke
    figures = greedy_eval(policy, tokenizer, task, task.eval_examples(), config.rollout.max_new_tokens)
    assert figures["n"] == config.task.eval_size == len(figures["per_prompt"])
    assert sum(figures["per_prompt"]) == round(figures["accuracy"] * figures["n"])
    assert 0 <= figures["accuracy"] <= figures["score"] <= 1 and 0 <= figures["format"] <= 1


def test_selective_log_softmax_equals_log_softmax_and_gather():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    targets = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, targets), expected, atol=1e-6, rtol=0)
    # bf16 logits are upcast row by row: the same figure to bf16's resolution
    torch.testing.assert_close(selective_log_softmax(logits.bfloat16(), targets),
                               torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1),
                               atol=1e-6, rtol=0)
    # entropy: uniform logits over 11 tokens -> log 11
    torch.testing.assert_close(entropy_from_logits(torch.zeros(1, 2, 11)), torch.full((1, 2), math.log(11)))


def test_sampler_scores_equal_the_trainers_old_logps_whatever_the_hub_generation_config(smoke, tmp_path):
    """A Hub model's generation_config (repetition penalty, top-k, ...) must not change what is sampled:
    the logits generate sampled from, after temperature and top-p = 1, are the ones the trainer scores."""
    config, task, policy, tokenizer = smoke
    folder = tmp_path / "model"
    policy.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved = GenerationConfig.from_pretrained(folder)
    saved.update(repetition_penalty=1.3, top_k=3, no_repeat_ngram_size=1, do_sample=True, temperature=0.3)
    saved.save_pretrained(folder)
    model, tok = load_policy(str(folder))
    assert model.hub_generation_config.repetition_penalty == 1.3  # kept for reference, not used
    examples = task.train_examples(0, 4)
    rollout_cfg = config.rollout.model_copy(update={"temperature": 0.7, "samples_per_prompt": 2})
    torch.manual_seed(0)
    rollout = generate(model, None, tok, task, examples, rollout_cfg, TrainSettings(temperature=0.7))
    batch = rollout.batch
    mask = batch.completion_mask.bool()
    prompts = [e.prompt for e in examples for _ in range(2)]
    encoded = encode_prompts(tok, prompts, "cpu")
    model.generation_config = model.hub_generation_config  # as a Hub model arrives, penalties and all

    def sampler_logps(**sampling):
        """generate's processed scores (what it sampled from) at the tokens of `batch`."""
        torch.manual_seed(0)
        out = model.generate(**encoded, output_scores=True, return_dict_in_generate=True, **sampling)
        steps = torch.stack([torch.log_softmax(score.float(), -1) for score in out.scores], 1)  # [B, T, V]
        width = min(steps.shape[1], batch.completion_mask.shape[1])
        targets = batch.input_ids[:, batch.prompt_length:batch.prompt_length + width]
        return out.sequences, steps[:, :width].gather(-1, targets.unsqueeze(-1)).squeeze(-1), width

    # the harness's explicit sampling parameters win over the Hub config: same completions, and the
    # distribution generate sampled from is the one the trainer's old log-probs score
    sequences, picked, width = sampler_logps(generation_config=sampling_config(tok, config.rollout.max_new_tokens, 0.7))
    assert torch.equal(sequences, batch.input_ids)
    torch.testing.assert_close(picked[mask], batch.old_logps[mask], atol=1e-5, rtol=1e-5)
    # the control: the same temperature passed alone leaves the Hub's penalties on, and the scores differ
    _, hub_picked, width = sampler_logps(do_sample=True, temperature=0.7, max_new_tokens=config.rollout.max_new_tokens)
    assert not torch.allclose(hub_picked[mask[:, :width]], batch.old_logps[:, :width][mask[:, :width]], atol=1e-3)


def test_prompts_go_through_the_chat_template_only_when_asked_and_present():
    from harness.train.models import char_tokenizer
    from harness.train.rollout import encode_prompts, use_chat_template
    tokenizer = char_tokenizer("0123456789+=<>")
    use_chat_template(tokenizer, "auto")  # no template: the text as it is
    assert encode_prompts(tokenizer, ["1+2="], "cpu")["input_ids"].tolist() == [tokenizer.encode("1+2=")]
    tokenizer.chat_template = "{% for m in messages %}<{{ m.content }}>{% endfor %}{% if add_generation_prompt %}={% endif %}"
    use_chat_template(tokenizer, "auto")  # one user message, then the generation prompt: "<1+2=>="
    assert encode_prompts(tokenizer, ["1+2="], "cpu")["input_ids"].tolist() == [tokenizer.encode("<1+2=>=")]
    use_chat_template(tokenizer, "none")
    assert encode_prompts(tokenizer, ["1+2="], "cpu")["input_ids"].tolist() == [tokenizer.encode("1+2=")]
