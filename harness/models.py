"""Load the policy, reference and critic; build the embedded tiny model and its tokenizer.

The tiny model is a real `transformers` Qwen2 causal LM built from a config, with a
character-level `PreTrainedTokenizerFast`, so lm-eval, TRL and `generate` use it unchanged. It is
warm-started by a short supervised pass on the task's own (prompt, answer) pairs and cached by the
hash of everything that determines its weights.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from harness import UserError
from harness.io import config_hash
from harness.tasks.base import Task

if TYPE_CHECKING:
    from harness.config import ModelConfig

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_POSITIONS = 64  # the tiny model's context: one position per character of prompt and completion


def cache_dir() -> Path:
    """$HARNESS_CACHE, else $XDG_CACHE_HOME/rl-harness, else ~/.cache/rl-harness."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rl-harness"


def char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of `alphabet`, plus pad, eos and unk."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *sorted(set(alphabet))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left", model_max_length=TINY_POSITIONS)


def tiny_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=TINY_POSITIONS, tie_word_embeddings=True,
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


def warm_start(model, tokenizer, task: Task, cfg: ModelConfig, seed: int, progress=None) -> list[float]:
    """A short supervised pass on generated pairs, stopped early so that RL has room to improve."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.warm_start_lr)
    losses = []
    model.train()
    for step in range(cfg.warm_start_steps):
        # Steps from 10 million on, far past any RL step: the warm start draws other items than the arms.
        examples = task.train_examples(10_000_000 + step, cfg.warm_start_batch)
        batch = supervised_batch(tokenizer, [e.prompt for e in examples], [e.answer for e in examples])
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, cfg.warm_start_steps, loss.item())
    model.eval()
    return losses


def tiny_key(cfg: ModelConfig, task: Task) -> str:
    fields = {k: getattr(cfg, k) for k in ("hidden_size", "num_layers", "num_heads", "warm_start_steps",
                                           "warm_start_batch", "warm_start_lr")}
    # The warm-start pairs skip the held-out prompts, so the eval split is part of what shapes the weights.
    return config_hash({"model": fields, "task": task.name, "alphabet": task.alphabet,
                        "options": getattr(task, "options", {}), "seed": getattr(task, "seed", 0),
                        "eval_size": len(task.eval_examples()), "version": 1})


def tiny_folder(cfg: ModelConfig, task: Task) -> Path:
    """Where the warm-started tiny model of this config and task is cached (config.json inside once built)."""
    return cache_dir() / f"tiny-{task.name}-{tiny_key(cfg, task)}"


def build_or_load_tiny(cfg: ModelConfig, task: Task, progress=None) -> Path:
    """The cached warm-started tiny model's folder, built (atomically) when missing."""
    folder = tiny_folder(cfg, task)
    if (folder / "config.json").exists():
        return folder
    tokenizer = char_tokenizer(task.alphabet)
    torch.manual_seed(0)
    model = tiny_model(cfg, tokenizer)
    warm_start(model, tokenizer, task, cfg, seed=0, progress=progress)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


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


def resolve_model_path(cfg: ModelConfig, task: Task, progress=None) -> str:
    check_model_name(cfg.name)
    if cfg.name == "tiny":
        return str(build_or_load_tiny(cfg, task, progress))
    path = Path(cfg.name).expanduser()
    return str(path) if path.exists() else cfg.name  # a local folder, else a Hub name


def load_policy(path: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) from a saved folder or the Hub; one clear line when it cannot be had."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model '{path}': {first}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def frozen_copy(model):
    """The reference policy: same weights, no gradients, eval mode."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
