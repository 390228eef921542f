"""LoRA adapters (peft) as the shared loop sees them: which parameters train, which state a checkpoint keeps,
the base model with adapters off, and a second adapter switched on by name.

A model without adapters trains every parameter and saves its whole state, as before. A peft model trains
its active adapter only; its frozen base is neither in the optimizer nor in a checkpoint. Peft's own
switches (`disable_adapter`, `set_adapter`) also flip `requires_grad` of the adapters they turn off; with two
adapters trained on one base (the policy's and the critic's) that would stop one from learning, so the
flags are put back as they were after each switch.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

POLICY_ADAPTER = "default"  # peft's name for the first adapter
CRITIC_ADAPTER = "critic"  # the critic's adapter on the policy's base (critic_base: shared)


def is_lora(model: nn.Module) -> bool:
    """Whether `model` is a peft model (adapters on a frozen base)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def adapter_modules(model: nn.Module, adapter: str) -> list[nn.Module]:
    """The modules of one adapter (lora_A, lora_B, dropout of each wrapped layer), in module order."""
    found = []
    for layer in tuner_layers(model):
        for name in (*layer.adapter_layer_names, "lora_dropout"):
            entries = getattr(layer, name, None)
            if entries is not None and adapter in entries and isinstance(entries[adapter], nn.Module):
                found.append(entries[adapter])
    return found


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    return [p for module in adapter_modules(model, adapter) for p in module.parameters()]


def trained_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the model's optimizer trains: every parameter of a model without adapters; a peft model's active
    adapter; a model that says (`trained_parameters()`, the critic) its own list."""
    own = getattr(model, "trained_parameters", None)
    if callable(own):
        return own()
    if is_lora(model):
        return adapter_parameters(model, model.active_adapter)
    return list(model.parameters())


def uses_adapters(model: nn.Module) -> bool:
    """Whether any part of `model` is a frozen base under adapters (its checkpoint keeps the trained part only)."""
    return bool(tuner_layers(model))


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of `model`: its whole state without adapters; with them, the trained parameters
    only (adapters, value head), not the frozen base that the run loads again from the model's folder."""
    if not uses_adapters(model):
        return model.state_dict()
    trained = {id(p) for p in trained_parameters(model)}
    return {name: p.detach() for name, p in model.named_parameters(remove_duplicate=False) if id(p) in trained}


def load_trained_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The inverse of `trained_state_dict`; a key of the trained part that is missing is an error."""
    if not uses_adapters(model):
        model.load_state_dict(state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = {id(p) for p in trained_parameters(model)}
    names = {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in trained}
    lost = sorted(set(missing) & names)
    if lost or unexpected:
        raise RuntimeError(f"adapter state does not match the model: missing {lost[:3]}, unexpected {unexpected[:3]}")


@contextmanager
def _grad_flags_kept(model: nn.Module):
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def adapters_off(model: nn.Module):
    """The base model: peft's `disable_adapter()` (TRL's reference under LoRA), trainable flags kept."""
    with _grad_flags_kept(model), model.disable_adapter():
        yield model


@contextmanager
def adapter_on(model: nn.Module, adapter: str, training: bool | None = None):
    """`adapter` active instead of the current one (multi-adapter peft's `set_adapter`), trainable flags kept.
    `training`: the model's mode meanwhile (the critic's, whose passes run the policy's modules: activation
    checkpointing and adapter dropout act in training mode only), put back after."""
    previous, was_training = model.active_adapter, model.training
    with _grad_flags_kept(model):
        model.set_adapter(adapter)
    if training is not None:
        model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)
        with _grad_flags_kept(model):
            model.set_adapter(previous)


class AdaptersOff(nn.Module):
    """The reference under LoRA: the policy's own base with its adapters switched off. No weights of its own:
    `parameters()` are the policy's (for the device and dtype), and nothing is copied, sharded or counted."""

    shares_policy = True

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        # the policy's forward takes logits_to_keep (peft passes it on): algorithms.logprobs asks this cache
        self._harness_logits_to_keep = True

    def forward(self, **inputs):
        with adapters_off(self.policy):
            return self.policy(**inputs)


def shares_policy(model: nn.Module | None) -> bool:
    """Whether `model` is a view of the policy (the reference under LoRA), not a model of its own."""
    return bool(getattr(model, "shares_policy", False))


def strip_adapters(module: nn.Module) -> nn.Module:
    """`module` with every peft-wrapped layer replaced by its base layer, in place (on a copy of the policy's
    decoder: the critic's own base, without the policy's adapters)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, name, child.get_base_layer())
    return module


def lora_settings(model: nn.Module):
    """The policy's LoRA config (peft's LoraConfig), to give the critic the same adapters."""
    return model.peft_config[POLICY_ADAPTER]
