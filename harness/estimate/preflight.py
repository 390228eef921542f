"""Checks before a run starts: a rough memory check (refuse a run that cannot fit, rather than let it swap
or hang), and a writable model cache where the tiny model is still to be built.

The memory check counts only what a run cannot do without (a lower bound): the trained models'
state, and the larger of the generation KV cache and the log-prob pass's logits over the rollout
batch. A run that passes may still not fit; one that fails certainly does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import UserError
from harness.config.arm_kinds import algorithm_of, check_kind_options
from harness.config.checks import check_task
from harness.config.derive import algorithm_options, logprob_rows, make_task, train_settings
from harness.results.trackers import check_trackers
from harness.results.units import GIB

if TYPE_CHECKING:
    from harness.config.schema import Config

# (bytes per weight, per activation) of each model.precision: bf16-mixed keeps fp32 weights, computes in bf16
PRECISION_BYTES = {"fp32": (4, 4), "bf16-mixed": (4, 2), "bf16": (2, 2)}


@dataclass
class Shape:
    """What the estimate needs to know of a decoder-only model."""
    parameters: int
    vocab: int
    layers: int
    kv_width: int  # key/value heads x head width


def tiny_shape(hidden: int, layers: int, vocab: int) -> Shape:
    """The embedded Qwen2 (harness.train.models.tiny_model): tied embeddings, MLP width 4 x hidden.

    Per layer: q, k, v, o projections 4 h^2 (+3 h biases), MLP 3 x h x 4h = 12 h^2, two norms 2 h.
    >>> tiny_shape(128, 4, 16).parameters
    1053312
    """
    per_layer = 16 * hidden * hidden + 5 * hidden
    return Shape(parameters=layers * per_layer + vocab * hidden + hidden, vocab=vocab, layers=layers,
                 kv_width=hidden)


def hub_shape(config: Any) -> Shape:
    """A transformers config's model, roughly (attention + gated MLP + embeddings)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    embeddings = config.vocab_size * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return Shape(parameters=layers * (attention + 3 * hidden * inter) + embeddings, vocab=config.vocab_size,
                 layers=layers, kv_width=kv_heads * head_dim)


def lower_bound_bytes(shape: Shape, precision: str, trained_models: int, frozen_models: int, batch: int,
                      logprob_rows: int, prompt_tokens: int, new_tokens: int) -> dict[str, int]:
    """Bytes a step cannot do without.

    model_state: weights, gradients and AdamW's two moments of each trained model (4 x the weights),
    weights of each frozen one. kv_cache: keys and values of every layer for the whole batch at full
    length (generation is not split). logprobs: one no-grad pass of `logprob_rows` rows, whose logits
    at the completion positions come in the compute precision, then in float32 as log-softmax.

    >>> lower_bound_bytes(Shape(parameters=10, vocab=16, layers=2, kv_width=8), "fp32", 2, 1, batch=4,
    ...                   logprob_rows=2, prompt_tokens=3, new_tokens=5)
    {'model_state': 360, 'kv_cache': 4096, 'logprobs': 1280}
    """
    weight, compute = PRECISION_BYTES[precision]
    weights = shape.parameters * weight
    return {"model_state": 4 * weights * trained_models + weights * frozen_models,  # 4*40*2 + 40
            "kv_cache": 2 * shape.layers * batch * (prompt_tokens + new_tokens) * shape.kv_width * compute,  # 2*2*4*8*8*4
            "logprobs": logprob_rows * new_tokens * shape.vocab * (compute + 4)}  # 2*5*16*8


def available_bytes(device: str) -> tuple[int, str]:
    """(bytes free for the run, where): the machine's available memory, or the GPU's free memory."""
    if device.startswith("cuda"):
        import torch
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"{device} has"
    import psutil
    return psutil.virtual_memory().available, "this machine has"


def model_shape(name: str, tiny: tuple[int, int], vocab: int) -> Shape | None:
    """The shape of the policy: the tiny model from its config, any other from a config.json found
    offline (a local folder, or the Hugging Face cache); None when it cannot be known here."""
    if name == "tiny":
        return tiny_shape(tiny[0], tiny[1], vocab)
    try:
        from transformers import AutoConfig
        return hub_shape(AutoConfig.from_pretrained(name, local_files_only=True))
    except Exception:  # not downloaded yet, or not a decoder config: nothing to estimate from
        return None


def check_memory(shape: Shape | None, precision: str, device: str, trained_models: int, frozen_models: int,
                 batch: int, logprob_rows: int, prompt_tokens: int, new_tokens: int) -> None:
    """One line (UserError) when the run's lower bound exceeds the memory available to it."""
    if shape is None:
        return
    need = lower_bound_bytes(shape, precision, trained_models, frozen_models, batch, logprob_rows, prompt_tokens,
                             new_tokens)
    total = need["model_state"] + max(need["kv_cache"], need["logprobs"])
    free, where = available_bytes(device)
    if total > free:
        rollout = max(("kv_cache", "logprobs"), key=need.get)
        raise UserError(
            f"this run needs at least {total / GIB:.1f} GiB ({need['model_state'] / GIB:.1f} GiB of model state, "
            f"{need[rollout] / GIB:.1f} GiB of rollout {'KV cache' if rollout == 'kv_cache' else 'logits'} for "
            f"rollout.batch_size={batch}) but {where} {free / GIB:.1f} GiB available; lower rollout.batch_size, "
            f"rollout.max_new_tokens or rollout.logprob_batch_size")


def check_run_memory(config: Config, options: list, task) -> None:
    """check_memory for a config: its algorithms' models, its rollout batch, its task's longest prompt."""
    trained = max((2 if hasattr(o, "critic_lr") else 1 for o in options), default=1)  # PPO trains a critic
    frozen = int(any(getattr(o, name, 0) for o in options  # a KL term on: the reference model is loaded
                     for name in ("beta", "kl_coef", "kl_loss_coef", "kl_reward_coef")))
    characters = max((len(example.prompt) for example in task.eval_examples()), default=0)
    # one token per character for the tiny model's tokenizer; a subword tokenizer takes fewer
    prompt_tokens = characters if config.model.name == "tiny" else characters // 4
    # the tiny model's vocabulary: the task's characters and pad, eos, unk, or model.vocab_pad_to rows
    vocab = max(len(set(task.alphabet)) + 3, config.model.vocab_pad_to)
    shape = model_shape(config.model.name, (config.model.hidden_size, config.model.num_layers), vocab)
    batch, rows = config.rollout.batch_size, logprob_rows(config)
    if config.model.logprob_chunk:  # the LM head's logits a chunk of positions at a time: about that many rows' worth
        rows = min(rows, max(1, config.model.logprob_chunk // config.rollout.max_new_tokens))
    check_memory(shape, config.model.precision, config.run.device, trained, frozen, batch, rows, prompt_tokens,
                 config.rollout.max_new_tokens)


def check_model_cache(config: Config, task) -> None:
    """The tiny model is built into the cache on first use: the cache must then be writable."""
    from harness.results.io import check_writable
    from harness.train.models import cache_dir, tiny_folder
    if config.model.name == "tiny" and not (tiny_folder(config.model, task, config.run.seed) / "config.json").exists():
        check_writable(cache_dir(), "the model cache ($HARNESS_CACHE)")


def check_setup(config: Config, algos: list[str] = ()) -> None:
    """Everything that can be checked before a folder is written: task and its options, model path,
    device, algorithm options, the model cache, and whether the run can fit in memory."""
    from harness.train.models import check_device, check_model_name
    check_model_name(config.model.name)
    if config.model.name != "tiny" and not Path(config.model.name).expanduser().exists():
        from harness.train.hub import check_hub_model
        check_hub_model(config.model.name)
    check_task(config)
    check_trackers(config.run.report_to)
    check_device(config.run.device)
    if config.rollout.backend == "vllm":
        raise UserError("rollout.backend=vllm is not available in this version: generation runs through "
                        "transformers (rollout.backend=hf) on every device")
    task = make_task(config)
    check_model_cache(config, task)
    check_chunked_head(config)
    check_algorithms_fit(config, algos, task)


def check_chunked_head(config: Config) -> None:
    """model.logprob_chunk on a model that scales its logits after the LM head: one line (where its config.json
    is here to read; the arm refuses it at its first log-prob pass otherwise)."""
    if not config.model.logprob_chunk or config.model.name == "tiny":
        return
    from harness.algorithms.chunked_head import chunked_head_refusal
    try:
        from transformers import AutoConfig
        model_config = AutoConfig.from_pretrained(config.model.name, local_files_only=True)
    except Exception:  # not downloaded yet: the arm checks the model it loads
        return
    refusal = chunked_head_refusal(model_config)
    if refusal:
        raise UserError(refusal)


def check_algorithms_fit(config: Config, algos, task=None) -> None:
    """Each algorithm's options under this config, its group size, what a cross-check's trainer can do, and
    whether the run can fit in memory: the part of check_setup that differs between the arms of a comparison."""
    from harness.algorithms import get_algorithm
    options = []
    for algo in algos:
        options.append(algorithm_options(config, algo))
        needed = get_algorithm(algorithm_of(algo)).declare_needs(options[-1], train_settings(config)).min_group_size
        if config.rollout.samples_per_prompt < needed:
            raise UserError(f"{algo} compares completions within a group: rollout.samples_per_prompt="
                            f"{config.rollout.samples_per_prompt} needs to be at least {needed}")
        check_kind_options(algo, options[-1])
    check_run_memory(config, options, task if task is not None else make_task(config))

