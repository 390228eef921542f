"""Model configs for `harness estimate`: the architecture of a model without its weights.

`--model` takes a Hub name, a local folder, a config.json, or `tiny` (the config's embedded model).
The config.json facts of Qwen2.5 0.5B to 72B and Llama-3.1 8B and 70B ship in `known_models/`
(sizes, heads, vocabulary, tied embeddings, context): they answer for those Hub names without asking
the Hub. Any other Hub name is read from the local Hugging Face cache, or from the Hub when it answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import UserError

KNOWN_DIR = Path(__file__).parent / "known_models"


@dataclass
class ModelSpec:
    name: str  # as the user gave it
    source: str  # where the architecture came from, in words
    config: Any  # a transformers PretrainedConfig

    @property
    def max_positions(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)


def known_models() -> dict[str, Path]:
    """{Hub name: shipped config.json facts}, e.g. 'Qwen/Qwen2.5-7B'."""
    return {path.stem.replace("__", "/"): path for path in sorted(KNOWN_DIR.glob("*.json"))}


def known_path(name: str) -> Path | None:
    """The shipped facts for a Hub name, matched without case and with or without its organisation."""
    wanted = name.strip().lower()
    for hub_name, path in known_models().items():
        if wanted in (hub_name.lower(), hub_name.split("/")[1].lower()):
            return path
    return None


def config_from_dict(facts: dict[str, Any], where: str):
    """A transformers config from config.json facts; one line when transformers cannot build it."""
    from transformers import AutoConfig
    model_type = facts.get("model_type")
    if not model_type:
        raise UserError(f"{where} has no model_type: not a transformers config.json")
    check_sizes(facts, where)
    try:
        config = AutoConfig.for_model(model_type, **{k: v for k, v in facts.items() if k != "model_type"})
    except Exception as err:  # ValueError, TypeError, huggingface_hub's strict validation of a field's type, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{where}: transformers cannot build model_type '{model_type}' ({first[:160]}); "
                        "give a config.json of a causal language model transformers knows") from None
    return causal_lm(config, where)


# The sizes of a config.json that shape tensors: each a whole number of at least 1 where it is given.
DIMENSIONS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "vocab_size", "head_dim", "max_position_embeddings")


def causal_lm(config, where: str):
    """`config` if transformers has a causal language model for its type and its sizes are sizes; one line otherwise."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{where}: transformers has no causal language model for model_type '{config.model_type}'; "
                        "give the config of a causal language model")
    check_sizes({name: getattr(config, name, None) for name in DIMENSIONS}, where)
    return config


def check_sizes(facts: dict[str, Any], where: str) -> None:
    """Each size of DIMENSIONS that `facts` gives, a whole number of at least 1 (one line otherwise)."""
    for name in DIMENSIONS:
        value = facts.get(name)
        if value is not None and (type(value) is not int or value < 1):
            raise UserError(f"{where}: {name} must be a whole number of at least 1, got {value!r}")


def read_config_file(path: Path):
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as a config.json: {err}") from None
    if not isinstance(facts, dict):
        raise UserError(f"{path} does not hold a config.json object")
    return config_from_dict(facts, str(path))


def hub_config(name: str):
    """A Hub model's config from the local cache, or from the Hub when it answers; one line otherwise."""
    from harness.train.hub import CONFIG_FILE, cached, hub_reachable
    known = ", ".join(known_models())
    if not cached(name, CONFIG_FILE) and not hub_reachable():
        raise UserError(f"unknown model '{name}': not a shipped config ({known}), not a local folder or config.json, "
                        "not in the local Hugging Face cache, and the Hub cannot be reached; give a config.json")
    from transformers import AutoConfig
    try:
        return causal_lm(AutoConfig.from_pretrained(name), f"model '{name}'")
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read the config of model '{name}': {first[:200]}") from None


def tiny_config(config):
    """The architecture of the config's embedded tiny model (its vocabulary comes from the task's alphabet)."""
    import torch

    from harness.config.derive import make_task
    from harness.train.models import char_tokenizer, tiny_model
    tokenizer = char_tokenizer(make_task(config).alphabet)
    with torch.device("meta"):
        return tiny_model(config.model, tokenizer).config


def resolve_model(name: str, config) -> ModelSpec:
    """The architecture `name` stands for: tiny, a local folder or config.json, a shipped Hub name, or the Hub."""
    if name == "tiny":
        return ModelSpec(name, "the embedded tiny model of this config", tiny_config(config))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model folder '{name}' has no config.json")
        return ModelSpec(name, f"{path / 'config.json'}", read_config_file(path / "config.json"))
    if path.is_file():
        return ModelSpec(name, str(path), read_config_file(path))
    if name.startswith((".", "/", "~")) or name.endswith(".json"):
        raise UserError(f"model path '{name}' does not exist; give a Hub name, a model folder or a config.json")
    shipped = known_path(name)
    if shipped is not None:
        hub_name = shipped.stem.replace("__", "/")
        return ModelSpec(hub_name, f"shipped config.json facts of {hub_name}", read_config_file(shipped))
    return ModelSpec(name, f"{name} (Hugging Face config)", hub_config(name))
