"""Load the policy, reference and critic; build the embedded tiny model and its tokenizer.

The tiny model is a real `transformers` Qwen2 causal LM built from a config, with a
character-level `PreTrainedTokenizerFast`, so lm-eval, TRL and `generate` use it unchanged. It is
warm-started by a short supervised pass on the task's own (prompt, answer) pairs and cached by the
hash of everything that determines its weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

from harness import UserError
from harness.algorithms.logprobs import checkpointing_on
from harness.config.schema import TINY_POSITIONS, WARM_START_CHECK_EVERY, config_hash
from harness.tasks.base import Task

if TYPE_CHECKING:
    from harness.config.schema import ModelConfig

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# The dtype weights are stored in: bf16-mixed keeps fp32 master weights (and so fp32 AdamW state).
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16-mixed": torch.float32, "bf16": torch.bfloat16}


def cache_dir() -> Path:
    """$HARNESS_CACHE, else $XDG_CACHE_HOME/rl-harness, else ~/.cache/rl-harness."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rl-harness"


def char_tokenizer(alphabet: str, positions: int = TINY_POSITIONS) -> PreTrainedTokenizerFast:
    """One token per character of `alphabet`, plus pad, eos and unk; `positions`: the model's context."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *sorted(set(alphabet))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left", model_max_length=positions)


def tiny_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A Qwen2 of the configured width and depth; with `vocab_pad_to`, embedding and LM head have that
    many rows (a real model's vocabulary) while the tokenizer keeps the task's characters."""
    config = Qwen2Config(
        vocab_size=max(len(tokenizer), cfg.vocab_pad_to), hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id)
    return Qwen2ForCausalLM(config)


def supervised_batch(tokenizer, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded prompt + answer + EOS; labels only on the answer and EOS tokens."""
    rows = [(tokenizer.encode(p), tokenizer.encode(a) + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers)]
    width = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (p, a) in enumerate(rows):
        ids = p + a
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        attention_mask[i, width - len(ids):] = 1
        labels[i, width - len(a):] = torch.tensor(a)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "position_ids": position_ids}


def warm_start(model, tokenizer, task: Task, cfg: ModelConfig, seed: int, progress=None, accurate_enough=None
               ) -> list[float]:
    """A short supervised pass on generated pairs, stopped early so that RL has room to improve.

    `accurate_enough()`: asked at warm_start_steps and every WARM_START_CHECK_EVERY steps after, up to
    warm_start_max_steps; the pass stops at the first yes (without it, at warm_start_steps)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.warm_start_lr)
    most = cfg.warm_start_steps if accurate_enough is None else max(cfg.warm_start_steps, cfg.warm_start_max_steps)
    losses = []
    model.train()
    for step in range(most):
        # Steps from 10 million on, far past any RL step: the warm start draws other items than the arms.
        examples = task.train_examples(10_000_000 + step, cfg.warm_start_batch)
        batch = supervised_batch(tokenizer, [e.prompt for e in examples], [e.supervised_target for e in examples])
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, most, loss.item())
        past = step + 1 - cfg.warm_start_steps
        if accurate_enough is not None and past >= 0 and past % WARM_START_CHECK_EVERY == 0:
            model.eval()
            if accurate_enough():
                break
            model.train()
    model.eval()
    return losses


def validation_examples(task: Task) -> list:
    """The task's validation split ([] for a data task, or validation_size 0)."""
    return getattr(getattr(task, "whole_task", task), "validation_examples", list)()


def validation_accuracy(model, tokenizer, task: Task) -> Callable[[], float]:
    """A reader of greedy accuracy on the task's validation split (the longest answer plus EOS as the token
    limit), its prompts and limit made once for every check."""
    from harness.train.rollout import greedy_eval
    examples = validation_examples(task)
    longest = max(len(tokenizer.encode(e.supervised_target)) for e in examples) + 1
    return lambda: greedy_eval(model, tokenizer, task, examples, longest)["accuracy"]


def supervised_warm_start(model, tokenizer, task: Task, cfg: ModelConfig, seed: int, progress=None) -> dict:
    """The warm start with its stopping rule (cfg.warm_start_until), and what it did: steps and, under the rule,
    the validation accuracy at each check. A task without a validation split stops at warm_start_steps."""
    if cfg.warm_start_until is None or not validation_examples(task):  # no split to read: the plain warm start
        return {"steps": len(warm_start(model, tokenizer, task, cfg, seed, progress)),
                **({} if cfg.warm_start_until is None else {"rule": "off: the task has no validation split"})}
    accuracy, checks = validation_accuracy(model, tokenizer, task), []

    def accurate_enough() -> bool:
        checks.append(accuracy())
        return checks[-1] >= cfg.warm_start_until

    steps = len(warm_start(model, tokenizer, task, cfg, seed, progress, accurate_enough))
    return {"steps": steps, "validation_accuracy": checks[-1], "reached": checks[-1] >= cfg.warm_start_until,
            "validation_checks": checks}


def tiny_key(cfg: ModelConfig, task: Task, seed: int = 0) -> str:
    fields = {k: getattr(cfg, k) for k in ("hidden_size", "num_layers", "num_heads", "warm_start_steps",
                                           "warm_start_batch", "warm_start_lr", "vocab_pad_to")}
    if cfg.warm_start_until is not None:  # keyed only when set, as max_positions below
        fields.update(warm_start_until=cfg.warm_start_until, warm_start_max_steps=cfg.warm_start_max_steps)
    if cfg.max_positions != TINY_POSITIONS:  # keyed only when changed: models cached before the field stay valid
        fields["max_positions"] = cfg.max_positions
    if seed:  # seed 0 keeps the key it always had, so its cached warm start (and the CI gate's run) stay as they were
        fields["warm_start_seed"] = seed
    # The warm-start pairs skip the held-out prompts, so the held-out splits are part of what shapes the weights;
    # a view that evaluates on the validation split (run.eval_split) warm-starts from the same weights.
    task = getattr(task, "whole_task", task)
    validation = getattr(task, "validation_examples", list)()
    return config_hash({"model": fields, "task": task.name, "alphabet": task.alphabet,
                        "options": getattr(task, "options", {}), "seed": getattr(task, "seed", 0),
                        "eval_size": len(task.eval_examples()), "validation_size": len(validation), "version": 2})


def tiny_folder(cfg: ModelConfig, task: Task, seed: int = 0) -> Path:
    """Where the warm-started tiny model of this config, task and training seed is cached (config.json inside
    once built)."""
    return cache_dir() / f"tiny-{task.name}-{tiny_key(cfg, task, seed)}"


# The padded model (vocab_pad_to) starts from the warm-started unpadded one; this many more supervised
# steps on it teach it to put no probability on the extra rows (their logits fall as Adam pushes them).
PAD_WARM_START_STEPS, PAD_WARM_START_BATCH = 100, 32


@torch.no_grad()
def padding_mass(model, tokenizer, task: Task, rows: int = 64) -> float:
    """Mean probability the model gives the rows past the tokenizer's vocabulary, at the first answer token."""
    examples = task.eval_examples()[:rows]
    batch = supervised_batch(tokenizer, [e.prompt for e in examples], [e.supervised_target for e in examples])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[:, -1]
    return torch.softmax(logits.float(), -1)[:, len(tokenizer):].sum(-1).mean().item()


def build_or_load_tiny(cfg: ModelConfig, task: Task, progress=None, seed: int = 0) -> Path:
    """The cached warm-started tiny model's folder for training seed `seed`, built (atomically) when missing.

    Each seed has its own warm start (its own initial weights, the same supervised pairs), so that the
    intervals over seeds include the spread of the initial model; both arms of a seed share it. Seed 0's
    is the one every seed used before.

    With `vocab_pad_to`, the unpadded model is built (or found) first, its embedding and LM head are
    padded to that many rows, and a short supervised pass teaches it to give the new rows no mass;
    the mass left on them is written to warm_start.json beside the weights.
    """
    folder = tiny_folder(cfg, task, seed)
    if (folder / "config.json").exists():
        return folder
    tokenizer = char_tokenizer(task.alphabet, cfg.max_positions)
    notes: dict[str, object] = {"seed": seed}
    if cfg.vocab_pad_to > len(tokenizer):
        unpadded = build_or_load_tiny(cfg.model_copy(update={"vocab_pad_to": 0}), task, progress, seed)
        model = AutoModelForCausalLM.from_pretrained(unpadded)
        torch.manual_seed(seed)
        model.resize_token_embeddings(cfg.vocab_pad_to, mean_resizing=False)
        pad_cfg = cfg.model_copy(update={"warm_start_steps": PAD_WARM_START_STEPS, "warm_start_batch": PAD_WARM_START_BATCH,
                                         "warm_start_until": None})
        notes["padding_mass_before"] = padding_mass(model, tokenizer, task)
        warm_start(model, tokenizer, task, pad_cfg, seed=seed + 1, progress=progress)
        notes.update(padded_rows=cfg.vocab_pad_to - len(tokenizer), padding_mass_after=padding_mass(model, tokenizer, task))
    else:
        torch.manual_seed(seed)  # the initial weights: the seed's own
        model = tiny_model(cfg, tokenizer)
        notes.update(supervised_warm_start(model, tokenizer, task, cfg, seed=seed, progress=progress))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "warm_start.json").write_text(json.dumps(notes, indent=2) + "\n")
    try:
        staging.rename(folder)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def prepare_model(config, open_progress=None) -> None:
    """Build (or find) the warm-started tiny model of config.run.seed once, before any arm starts its clock.

    `open_progress()`: a context manager that yields a `progress(phase, step, steps, stats)` callback, opened
    only when the model has to be built (a Hub model needs nothing here)."""
    if config.model.name != "tiny":
        return
    from harness.config.derive import make_task
    task = make_task(config)
    if (tiny_folder(config.model, task, config.run.seed) / "config.json").exists():
        return
    with (open_progress or contextlib.nullcontext)() as progress, torch_threads(config.run.threads):
        report = progress and (lambda step, steps, loss: progress("warm start", step, steps, {"loss": loss}))
        build_or_load_tiny(config.model, task, progress=report, seed=config.run.seed)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to `threads` (run.threads) for the block, as the arms set them: two jobs of one
    thread each side by side on two cores would otherwise run four threads there, each several times slower."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA GPU is visible here; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UserError(f"unknown device '{device}'; valid: cpu, cuda, cuda:N")


def check_model_name(name: str) -> None:
    """'tiny', a Hub name such as Qwen/Qwen2.5-0.5B-Instruct, or a local folder with config.json."""
    if name == "tiny":
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"model path '{name}' has no config.json: not a saved Hugging Face model")
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model path '{name}' does not exist; use 'tiny' or a Hub name or local folder")


def resolve_model_path(cfg: ModelConfig, task: Task, progress=None, seed: int = 0) -> str:
    """The model's folder or Hub name; the tiny model's warm start of training seed `seed`, built when missing."""
    check_model_name(cfg.name)
    if cfg.name == "tiny":
        return str(build_or_load_tiny(cfg, task, progress, seed))
    path = Path(cfg.name).expanduser()
    return str(path) if path.exists() else cfg.name  # a local folder, else a Hub name


def load_policy(path: str, precision: str = "fp32", device: str = "cpu", gradient_checkpointing: bool = False):
    """(model, tokenizer) from a saved folder or the Hub; one clear line when it cannot be had.

    The model's own generation_config (a Hub model may set repetition_penalty, top_k, ...) is kept
    as `hub_generation_config` and replaced by one that holds only the special tokens: the harness
    samples with explicit parameters.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=WEIGHT_DTYPES[precision])
    except Exception as err:  # a missing file (OSError), damaged weights (safetensors' error), a bad config.json, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model '{path}': {first}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.hub_generation_config = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                               bos_token_id=model.generation_config.bos_token_id)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model, path)
    return model.to(device), tokenizer


def enable_gradient_checkpointing(model, name: str = "the model") -> None:
    """transformers' activation checkpointing (non-reentrant), or one clear line if the model has none."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"model.gradient_checkpointing: {name} ({type(model).__name__}) does not support "
                        "gradient checkpointing; set it to false")
    checkpointing_on(model)


def frozen_copy(model, dtype: torch.dtype | None = None):
    """The reference policy: same weights (in `dtype` if given), no gradients, eval mode."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference.to(dtype) if dtype is not None else reference
