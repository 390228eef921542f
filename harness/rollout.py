"""Shared generation and scoring: prompts -> RolloutBatch. The same code serves every algorithm."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from harness.algorithms.base import RolloutBatch, policy_forward
from harness.config import RolloutConfig
from harness.tasks.base import Example, Reward, Task


@dataclass
class Rollout:
    batch: RolloutBatch
    completions: list[str]  # decoded text before EOS
    rewards: list[Reward]


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask `[B, T]` of the tokens up to and including the first EOS, finished `[B]`).

    >>> completion_mask(torch.tensor([[5, 1, 0], [5, 6, 7]]), eos_id=1)[0].tolist()
    [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    """
    is_eos = completion_ids == eos_id
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).float(), is_eos.any(-1)


def use_chat_template(tokenizer, mode: str) -> None:
    """`auto`: prompts go through the tokenizer's chat template, where it has one, as one user message."""
    tokenizer.harness_chat_template = mode == "auto" and bool(getattr(tokenizer, "chat_template", None))


def encode_prompts(tokenizer, prompts: list[str], device) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"
    if getattr(tokenizer, "harness_chat_template", False):
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}


def decode_completions(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    rows = [ids[: int(m.sum())].tolist() for ids, m in zip(completion_ids, mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


@torch.no_grad()
def sample(policy, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids `[B, P + T]`, prompt attention_mask `[B, P]`, P): prompts, then sampled completions."""
    device = next(policy.parameters()).device
    encoded = encode_prompts(tokenizer, prompts, device)
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    output = policy.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **sampling)
    return output, encoded["attention_mask"], encoded["input_ids"].shape[1]


def generate(policy, reference, tokenizer, task: Task, examples: list[Example], cfg: RolloutConfig,
             timer=None) -> Rollout:
    """Sample `samples_per_prompt` completions per example (grouped contiguously) and score them."""
    timer = timer or NoTimer()
    group = [e for e in examples for _ in range(cfg.samples_per_prompt)]
    with timer.phase("generate"):
        input_ids, prompt_mask, prompt_length = sample(policy, tokenizer, [e.prompt for e in group],
                                                       cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    completion_ids = input_ids[:, prompt_length:]  # [B, T]
    mask, finished = completion_mask(completion_ids, tokenizer.eos_token_id)
    with timer.phase("score"):
        texts = decode_completions(tokenizer, completion_ids, mask)
        done = finished.tolist()
        rewards = [task.reward(text, example, finished=d) for text, example, d in zip(texts, group, done)]
    batch = RolloutBatch(input_ids=input_ids, attention_mask=torch.cat([prompt_mask, mask.long()], dim=1),
                         completion_mask=mask, prompt_length=prompt_length,
                         scores=torch.tensor([r.total for r in rewards]), group_size=cfg.samples_per_prompt,
                         old_logps=torch.empty(0))
    with timer.phase("logprobs"), torch.no_grad():
        batch.old_logps = policy_forward(policy, batch)[0]
    if reference is not None:
        with timer.phase("reference"), torch.no_grad():
            batch.ref_logps = policy_forward(reference, batch)[0]
    return Rollout(batch=batch, completions=texts, rewards=rewards)


@torch.no_grad()
def greedy_eval(policy, tokenizer, task: Task, examples: list[Example], max_new_tokens: int,
                batch_size: int = 256) -> dict[str, float]:
    """Greedy held-out figures: accuracy (solved), mean correctness score, well-formed rate."""
    rewards: list[Reward] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        input_ids, _, prompt_length = sample(policy, tokenizer, [e.prompt for e in chunk], max_new_tokens, greedy=True)
        completion_ids = input_ids[:, prompt_length:]
        mask, finished = completion_mask(completion_ids, tokenizer.eos_token_id)
        texts = decode_completions(tokenizer, completion_ids, mask)
        rewards += [task.reward(t, e, finished=d) for t, e, d in zip(texts, chunk, finished.tolist())]
    count = max(len(rewards), 1)
    return {"accuracy": sum(r.solved for r in rewards) / count,
            "score": sum(r.correct for r in rewards) / count,
            "format": sum(r.format for r in rewards) / count,
            "n": len(rewards)}


class NoTimer:
    def phase(self, name):
        return nullcontext()
