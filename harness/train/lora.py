"""LoRA through peft: the policy's adapters from `model.lora`, and the config TRL's GRPOTrainer is given.

The policy trains adapters on its frozen base; the reference is that base with the adapters off
(`harness.algorithms.adapters.AdaptersOff`), as TRL does, so no reference copy is built.
"""

from __future__ import annotations

import torch

from harness import UserError
from harness.config.schema import LoraSettings


def peft_config(settings: LoraSettings):
    """peft's LoraConfig for `model.lora` (a causal LM's adapters); one clear line without peft."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise UserError("model.lora needs peft: pip install -e '.[lora]'") from None
    targets = settings.target_modules.strip()
    modules = targets if targets == "all-linear" else [name.strip() for name in targets.split(",") if name.strip()]
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=modules, bias="none", task_type="CAUSAL_LM")


def with_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """`model` with trainable adapters on its frozen base (a peft model), or `model` itself when LoRA is off."""
    if not settings.enabled:
        return model
    from peft import get_peft_model
    try:
        wrapped = get_peft_model(model, peft_config(settings))
    except ValueError as err:  # peft names the target modules it could not find
        first = str(err).strip().splitlines()[0]
        raise UserError(f"model.lora.target_modules={settings.target_modules!r}: {first}") from None
    return wrapped.train(model.training)
