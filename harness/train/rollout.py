"""Shared generation and scoring: prompts -> RolloutBatch. The same code serves every algorithm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from harness.algorithms.base import NoMeter
from harness.algorithms.batch import RolloutBatch, TrainSettings
from harness.algorithms.logprobs import autocast, batched_logps
from harness.algorithms.ops import distributed
from harness.config.schema import RolloutConfig
from harness.tasks.base import Example, Reward, Task


@dataclass
class Rollout:
    batch: RolloutBatch | None  # what the update trains on (None: no group had any reward spread)
    completions: list[str]  # decoded text before EOS, of every completion sampled
    rewards: list[Reward]  # of every completion sampled
    sampled: int = 0  # completions sampled (more than the batch holds when groups were dropped)
    generated_tokens: int = 0  # tokens sampled, EOS included
    rounds: int = 1  # sampling rounds it took

    def __post_init__(self):
        if self.batch is not None:
            self.sampled = self.sampled or self.batch.size
            self.generated_tokens = self.generated_tokens or int(self.batch.completion_mask.sum().item())


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


def encode_prompts(tokenizer, prompts: list[str], device, width: int = 0) -> dict[str, torch.Tensor]:
    """Token ids and attention mask `[B, P]`, left-padded to the longest prompt, or to `width` when wider."""
    tokenizer.padding_side = "left"
    if getattr(tokenizer, "harness_chat_template", False):
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    left = width - encoded["input_ids"].shape[1]
    if left > 0:  # masked positions, as a shorter prompt's padding already is
        encoded = {"input_ids": torch.nn.functional.pad(encoded["input_ids"], (left, 0), value=tokenizer.pad_token_id),
                   "attention_mask": torch.nn.functional.pad(encoded["attention_mask"], (left, 0), value=0)}
    return {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}


def decode_completions(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Text before EOS. A model padded past its tokenizer (vocab_pad_to) may sample a row the tokenizer
    has no token for: it reads as U+FFFD, which no answer contains."""
    vocabulary = len(tokenizer)
    rows = [ids[: int(m.sum())].tolist() for ids, m in zip(completion_ids, mask)]
    texts = tokenizer.batch_decode([[i for i in row if i < vocabulary] for row in rows], skip_special_tokens=True)
    return [text + "\ufffd" if any(i >= vocabulary for i in row) else text for text, row in zip(texts, rows)]


def sampling_config(tokenizer, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                    greedy: bool = False) -> GenerationConfig:
    """Explicit sampling parameters, every logits processor off: the sampler's distribution is the
    policy's softmax(logits / temperature), truncated by top-p only, which the trainer's log-probs assume.

    transformers fills any field left None from the model's own generation_config (a Hub model may set
    repetition_penalty, top_k, no_repeat_ngram_size, ...): `sample` hides that config while it
    generates, and the fields that matter are set to their neutral values here as well.
    """
    # Values that turn a processor off; where only None does (min_p, suppress_tokens), the model's own
    # config, hidden by `sample`, cannot fill the field in either.
    neutral = dict(top_k=0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
                   encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
                   min_length=0, min_new_tokens=0, length_penalty=1.0, renormalize_logits=False, num_beams=1,
                   num_return_sequences=1)
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, **neutral, **sampling)


@torch.no_grad()
def sample(policy, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, greedy: bool = False, autocast_dtype=None,
           synced: bool = False, prompt_width: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids `[B, P + T]`, prompt attention_mask `[B, P]`, P): prompts (left-padded to at least
    `prompt_width`), then sampled completions."""
    device = next(policy.parameters()).device
    encoded = encode_prompts(tokenizer, prompts, device, prompt_width)
    config = sampling_config(tokenizer, max_new_tokens, temperature, top_p, greedy)
    hub_config = policy.generation_config
    policy.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    try:
        with autocast(policy, autocast_dtype):
            # synced: every rank of a sharded model runs the same number of forwards, until all have finished
            output = policy.generate(**encoded, generation_config=config, synced_gpus=synced)
    finally:
        policy.generation_config = hub_config
    return output, encoded["attention_mask"], encoded["input_ids"].shape[1]


def generate(policy, reference, tokenizer, task: Task, examples: list[Example], cfg: RolloutConfig,
             settings: TrainSettings | None = None, meter=None, sampler_logps: bool = True,
             pad_to: tuple[int, int] | None = None) -> Rollout:
    """Sample `samples_per_prompt` completions per example (grouped contiguously), score them, and
    compute the sampler's (unless `sampler_logps` is off) and the reference's log-probs in no-grad micro-batches.

    `pad_to` (prompt tokens, completion tokens): prompts are left-padded to the first before sampling and the
    scored batch is widened to both before any log-prob pass (pad_batch), so that what a live-tensor tracked
    step measures does not depend on how long this step's prompts and completions happened to be. Padding is
    masked: what is sampled, and every loss, is what it would be unpadded."""
    meter = meter or NoMeter()
    settings = settings or TrainSettings(temperature=cfg.temperature)
    group = [e for e in examples for _ in range(cfg.samples_per_prompt)]
    with meter.phase("generate"):
        input_ids, prompt_mask, prompt_length = sample(policy, tokenizer, [e.prompt for e in group],
                                                       cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                                       autocast_dtype=settings.autocast_dtype, synced=distributed(),
                                                       prompt_width=pad_to[0] if pad_to else 0)
    with meter.phase("score"):
        completion_ids = input_ids[:, prompt_length:]  # [B, T]
        mask, finished = completion_mask(completion_ids, tokenizer.eos_token_id)
        texts = decode_completions(tokenizer, completion_ids, mask)
        rewards = [task.reward(text, example, finished=done) for text, example, done in zip(texts, group, finished.tolist())]
        batch = RolloutBatch(input_ids=input_ids, attention_mask=torch.cat([prompt_mask, mask.long()], dim=1),
                             completion_mask=mask, prompt_length=prompt_length, group_size=cfg.samples_per_prompt,
                             scores=torch.tensor([r.total for r in rewards], device=input_ids.device))
        if pad_to is not None:  # completions to the full length (prompts were padded before sampling)
            batch = pad_batch(batch, prompt_length, max(pad_to[1], mask.shape[1]), tokenizer.pad_token_id)
    logprob_passes(policy, reference, batch, settings, meter, sampler_logps)
    return Rollout(batch=batch, completions=texts, rewards=rewards)


def logprob_passes(policy, reference, batch: RolloutBatch, settings: TrainSettings, meter,
                   sampler_logps: bool = True) -> None:
    """The sampler's log-probs of a scored batch (unless the algorithm does not need them), and the
    reference's when there is one (no-grad micro-batches)."""
    if sampler_logps:
        with meter.phase("old_logprobs"):
            batch.old_logps = batched_logps(policy, batch, settings)
    if reference is not None:
        with meter.phase("ref_logprobs"):
            batch.ref_logps = batched_logps(reference, batch, settings)


@torch.no_grad()
def greedy_eval(policy, tokenizer, task: Task, examples: list[Example], max_new_tokens: int,
                batch_size: int = 256, autocast_dtype=None) -> dict:
    """Greedy held-out figures: accuracy (solved), mean correctness score, well-formed rate, and
    per_prompt: 1 where the prompt was solved, in the order of `examples` (paired analyses need it)."""
    rewards: list[Reward] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        input_ids, _, prompt_length = sample(policy, tokenizer, [e.prompt for e in chunk], max_new_tokens,
                                             greedy=True, autocast_dtype=autocast_dtype, synced=distributed())
        completion_ids = input_ids[:, prompt_length:]
        mask, finished = completion_mask(completion_ids, tokenizer.eos_token_id)
        texts = decode_completions(tokenizer, completion_ids, mask)
        rewards += [task.reward(t, e, finished=d) for t, e, d in zip(texts, chunk, finished.tolist())]
    count = max(len(rewards), 1)
    return {"accuracy": sum(r.solved for r in rewards) / count,
            "score": sum(r.correct for r in rewards) / count,
            "format": sum(r.format for r in rewards) / count,
            "n": len(rewards), "per_prompt": [int(r.solved) for r in rewards]}


PER_TOKEN = ("completion_mask", "old_logps", "ref_logps", "advantages", "values", "returns")  # [B, T] fields


def pad_batch(batch: RolloutBatch, prompt: int, completion: int, pad_id: int) -> RolloutBatch:
    """The batch widened to `prompt` prompt tokens (padded on the left) and `completion` completion tokens
    (on the right). The new positions are masked out (pad ids, attention and completion masks 0), as the
    padding of a shorter prompt or completion already is: position ids follow the attention mask, and every
    loss and statistic reads completion tokens through the mask, so the training math is unchanged.

    >>> b = RolloutBatch(input_ids=torch.tensor([[7, 8, 9]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
    ...                  completion_mask=torch.ones(1, 1), prompt_length=2, scores=torch.zeros(1), group_size=1)
    >>> wide = pad_batch(b, 3, 2, pad_id=0)
    >>> wide.input_ids.tolist(), wide.attention_mask.tolist(), wide.completion_mask.tolist(), wide.prompt_length
    ([[0, 7, 8, 9, 0]], [[0, 1, 1, 1, 0]], [[1.0, 0.0]], 3)
    """
    left, right = prompt - batch.prompt_length, completion - batch.completion_mask.shape[1]
    if left < 0 or right < 0:
        raise ValueError(f"cannot pad a batch of {batch.prompt_length} + {batch.completion_mask.shape[1]} tokens "
                         f"to {prompt} + {completion}")
    if left == right == 0:
        return batch
    pad = torch.nn.functional.pad
    fields = {"input_ids": pad(batch.input_ids, (left, right), value=pad_id),
              "attention_mask": pad(batch.attention_mask, (left, right), value=0), "scores": batch.scores}
    for name in PER_TOKEN:
        if getattr(batch, name) is not None:
            fields[name] = pad(getattr(batch, name), (0, right), value=0)
    return RolloutBatch(**fields, prompt_length=prompt, group_size=batch.group_size, extras=dict(batch.extras))


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """The rows of several rollout batches in one: prompts re-padded on the left, completions on the right."""
    if len(batches) == 1:
        return batches[0]
    prompt = max(b.prompt_length for b in batches)
    completion = max(b.completion_mask.shape[1] for b in batches)
    wide = [pad_batch(b, prompt, completion, pad_id) for b in batches]
    merged = {name: torch.cat([getattr(b, name) for b in wide]) for name in ("input_ids", "attention_mask", "scores")}
    for name in PER_TOKEN:
        if getattr(batches[0], name) is not None:
            merged[name] = torch.cat([getattr(b, name) for b in wide])
    return RolloutBatch(**merged, prompt_length=prompt, group_size=batches[0].group_size)


def generate_with_spread(policy, reference, tokenizer, task: Task, prompts_for_round, groups: int,
                         max_rounds: int, cfg: RolloutConfig, settings: TrainSettings, meter=None,
                         sampler_logps: bool = True, pad_to: tuple[int, int] | None = None) -> Rollout:
    """DAPO's dynamic sampling: sample round after round (`prompts_for_round(r)` gives round r's prompts),
    keep the groups whose rewards are not all equal, until `groups` are kept or `max_rounds` ran.

    Every completion sampled is in `sampled`, `rewards` and `generated_tokens` (it counts against the
    budget); the batch holds the kept groups only, at most `groups` of them.
    """
    kept: list[RolloutBatch] = []
    texts, rewards, sampled, tokens, count = [], [], 0, 0, 0
    for round_index in range(max_rounds):
        rollout = generate(policy, reference, tokenizer, task, prompts_for_round(round_index), cfg, settings, meter,
                           sampler_logps, pad_to)
        texts += rollout.completions
        rewards += rollout.rewards
        sampled += rollout.sampled
        tokens += rollout.generated_tokens
        grouped = rollout.batch.scores.view(-1, cfg.samples_per_prompt)
        spread = (grouped.max(dim=1).values > grouped.min(dim=1).values).nonzero().flatten()[: groups - count]
        if len(spread):
            rows = (spread.unsqueeze(-1) * cfg.samples_per_prompt + torch.arange(cfg.samples_per_prompt)).flatten()
            kept.append(rollout.batch.select(rows))
            count += len(spread)
        if count >= groups:
            break
    batch = concat_batches(kept, tokenizer.pad_token_id) if kept else None
    return Rollout(batch=batch, completions=texts, rewards=rewards, sampled=sampled, generated_tokens=tokens,
                   rounds=round_index + 1)
