"""Generation on fake tensors: what `rollout.sample` holds while transformers generates, without data.

`generate` decides when to stop by reading the sampled tokens, and fake tensors hold none. Its
sampling loop (`GenerationMixin._sample`) is followed here with the policy's own forward and
generate's own logits processors: a prefill of the prompt into the KV cache, then one forward per
new token, every completion at full length.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from harness.algorithms.logprobs import autocast


@dataclass(frozen=True)
class Workload:
    """The shapes of one rank's step."""

    rows: int  # completions on this rank
    prompt_length: int  # P, every prompt at full length
    completion_length: int  # T, every completion at full length
    group_size: int  # completions per prompt, grouped contiguously
    # the new tokens generate ran before every row had ended (0: all T); the ids are then widened to T, as a
    # fixed-shape step's rollout widens them (rollout.generate)
    sampled_length: int = 0


def generation_setup(policy, prompt_ids: torch.Tensor, new_tokens: int, sampling: dict[str, Any],
                     token_ids: tuple[int, int], kwargs: dict[str, Any]):
    """(logits processors, stopping criteria) as `generate` builds them for the rollout's sampling config.

    These are transformers' own helpers, the ones `generate` calls (private: a transformers upgrade
    that renames them fails the validation tests, not silently). The special-token tensors are made
    outside the fake mode, as `generate` checks their values.
    """
    from types import SimpleNamespace

    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from transformers.generation import EosTokenCriteria, LogitsProcessorList, MaxLengthCriteria, StoppingCriteriaList

    from harness.train.rollout import sampling_config
    eos_id, pad_id = token_ids
    config = sampling_config(SimpleNamespace(pad_token_id=pad_id, eos_token_id=eos_id), new_tokens,
                             sampling["temperature"], sampling["top_p"])
    config = policy._prepare_generated_length(config, has_default_max_length=False, has_default_min_length=False,
                                              model_input_name="input_ids", input_ids_length=prompt_ids.shape[1],
                                              inputs_tensor=prompt_ids)
    takes_batch_size = "batch_size" in inspect.signature(policy._prepare_special_tokens).parameters  # 5.13 and later
    batch = {"batch_size": prompt_ids.shape[0]} if takes_batch_size else {}
    with unset_fake_temporarily():
        policy._prepare_special_tokens(config, True, device="cpu", **batch)
    processors = policy._get_logits_processor(generation_config=config, input_ids_seq_length=prompt_ids.shape[1],
                                              encoder_input_ids=None, prefix_allowed_tokens_fn=None,
                                              logits_processor=LogitsProcessorList(), device="cpu", model_kwargs=kwargs)
    stopping = StoppingCriteriaList([MaxLengthCriteria(config.max_length), EosTokenCriteria(config._eos_token_tensor)])
    return processors, stopping


@torch.no_grad()
def simulated_sample(policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: int,
                     sampling: dict[str, Any], token_ids: tuple[int, int], autocast_dtype=None) -> torch.Tensor:
    """`rollout.sample` without reading data: transformers' sampling loop (`GenerationMixin._sample`) with
    the policy's own forward, a prefill of the prompt into the KV cache and then one forward per new
    token, for exactly `new_tokens` tokens (generate stops early only by reading the sampled tokens).
    The KV cache, the last position's logits and the logits processors' temporaries are what generate
    holds. A padded prompt batch is assumed (generate drops an all-ones attention mask).
    Returns input_ids `[B, P + T]`."""
    from transformers import DynamicCache
    rows = prompt_ids.shape[0]
    position_ids = prompt_mask.long().cumsum(-1) - 1  # as generate infers them from the attention mask
    forward_parameters = inspect.signature(policy.forward).parameters
    cache_key = "cache" if "cache" in forward_parameters else "past_key_values"  # transformers before 5.2x: the latter
    kwargs: dict[str, Any] = {"attention_mask": prompt_mask, "position_ids": position_ids.masked_fill(prompt_mask == 0, 0),
                              cache_key: DynamicCache(config=policy.config.get_text_config(decoder=True))}
    del position_ids
    if "logits_to_keep" in forward_parameters:
        kwargs["logits_to_keep"] = 1  # generate keeps the last position's logits only
    processors, stopping = generation_setup(policy, prompt_ids, new_tokens, sampling, token_ids, kwargs)
    kwargs["use_cache"] = True
    pad_id = token_ids[1]
    input_ids = prompt_ids
    unfinished = torch.ones(rows, dtype=torch.long)
    last = None
    with autocast(policy, autocast_dtype):
        outputs = policy(**policy.prepare_inputs_for_generation(input_ids, is_first_iteration=True, **kwargs),
                         return_dict=True)
        for step in decode_steps(new_tokens, kwargs[cache_key]):
            if step:
                if last is not None and step > last + 1:
                    input_ids = fast_forward(kwargs, kwargs[cache_key], input_ids, step - last - 1)
                outputs = policy(**policy.prepare_inputs_for_generation(input_ids, next_sequence_length=1, **kwargs),
                                 return_dict=True)
            last = step
            kwargs = policy._update_model_kwargs_for_generation(outputs, kwargs)
            logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)  # [B, V]
            scores = processors(input_ids, logits)
            probs = torch.softmax(scores, dim=-1)  # kept, like generate's, until the next token's replace it
            next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
            next_tokens = next_tokens * unfinished + pad_id * (1 - unfinished)
            input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
            unfinished = unfinished & ~stopping(input_ids, None)
    return input_ids


# Decoding steps run one by one before the rest are skipped to the last (see decode_steps).
FULL_DECODE_STEPS = 3


def decode_steps(new_tokens: int, cache) -> list[int]:
    """The decoding steps to run. Every tensor a decoding step keeps grows by one token per step (the KV
    cache, the ids, the mask) and every other one has the same shape at every step, so the generate
    phase's peak is the prefill's or the last step's: the first steps run one by one, the state the
    skipped ones would leave is made at once (`fast_forward`), and the last step runs. Caches whose
    layers are not plain growing ones (sliding windows) run every step."""
    from transformers.cache_utils import DynamicLayer
    plain = all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))
    if new_tokens <= FULL_DECODE_STEPS + 1 or not plain:
        return list(range(new_tokens))
    return [*range(FULL_DECODE_STEPS), new_tokens - 1]


def fast_forward(kwargs: dict[str, Any], cache, input_ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """The state `tokens` more decoding steps leave: each growing tensor made at its longer length."""
    for layer in cache.layers:
        *lead, length, width = layer.keys.shape
        layer.keys = torch.empty(*lead, length + tokens, width, dtype=layer.keys.dtype)
        layer.values = torch.empty(*lead, length + tokens, layer.values.shape[-1], dtype=layer.values.dtype)
    rows, length = kwargs["attention_mask"].shape
    kwargs["attention_mask"] = kwargs["attention_mask"].new_ones((rows, length + tokens))
    kwargs["position_ids"] = torch.empty(rows, length + tokens, dtype=torch.long)
    return torch.empty(rows, input_ids.shape[1] + tokens, dtype=input_ids.dtype)


def fake_sample(policy, workload: Workload, sampling: dict[str, Any], token_ids: tuple[int, int],
                autocast_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids `[B, P + T]`, prompt attention_mask `[B, P]`), as `rollout.generate`'s generate phase leaves
    them: sampled, then widened to T when sampling stopped early."""
    prompt_ids = torch.empty(workload.rows, workload.prompt_length, dtype=torch.long)  # what encode_prompts makes
    prompt_mask = torch.ones(workload.rows, workload.prompt_length, dtype=torch.long)
    sampled = workload.sampled_length or workload.completion_length
    input_ids = simulated_sample(policy, prompt_ids, prompt_mask, sampled, sampling, token_ids, autocast_dtype)
    if sampled < workload.completion_length:
        input_ids = torch.nn.functional.pad(input_ids, (0, workload.completion_length - sampled), value=token_ids[1])
    return input_ids, prompt_mask
