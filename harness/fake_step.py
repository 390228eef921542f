"""One arm's training step on fake tensors: the arm's own code, nothing allocated.

`FakeTensorMode` gives every op its output's shape and dtype without computing or allocating, and
the live-tensor tracker of `harness.memory` records what would be live in each phase. The models are
built on the meta device with the arm's own constructors (`runner.arm_models`: the algorithm, its
critic and optimizers, the frozen reference), then made fake CPU tensors (fake `cuda` tensors fail at
the first kernel in a CPU-only torch build). The step is the arm's: the same log-prob passes
(`rollout.logprob_passes`), the same values, advantages and update loop (`runner.learn`), the same
phase names and categories. Generation alone is simulated (`harness.fake_generation`): transformers'
`generate` reads data to decide when to stop, and fake tensors hold none.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, _RefType

from harness.algorithms.base import RolloutBatch, TrainSettings, autocast
from harness.fake_generation import Workload, fake_sample
from harness.memory import CATEGORIES, LiveTensors, _Category, _LeanTracker
from harness.meter import StepMeter
from harness.models import WEIGHT_DTYPES, enable_gradient_checkpointing
from harness.probes import Probes, model_state_bytes
from harness.rollout import completion_mask, logprob_passes
from harness.arm import arm_models, learn, rank_settings
from harness.distributed import decoder_layers

# Which models run forward (and backward) in each phase: what FSDP gathers there.
PHASE_MODELS = {"generate": ("policy",), "score": ("reward_model",), "old_logprobs": ("policy",),
                "ref_logprobs": ("reference",), "values": ("critic",), "policy_update": ("policy",),
                "critic_update": ("critic",), "joint_update": ("policy", "critic")}
TRAINING_PHASES = ("policy_update", "critic_update", "joint_update")


@dataclass
class FakeStep:
    """What one arm's fake step recorded (full-size tensors; `estimate` turns them into per-GPU figures)."""

    phases: dict[str, dict[str, int]]  # phase -> {category: bytes, "total": bytes} at the weighted peak
    model_state: dict[str, dict[str, int]]  # arithmetic: {model: {params, grads, optimizer, total}}, unsharded
    sharded: dict[str, dict[str, int]]  # the same, per GPU of `world_size`, FSDP2's padding included
    factors: dict[str, float]  # per-GPU share of each model-state category
    gathered: dict[str, int]  # per model: bytes FSDP holds unsharded while it computes (root unit + 2 layers)
    seconds: float


# ---------------------------------------------------------------- the tracker

class _EstimateCategory(_RefType):
    """MemTracker's categories plus the compute-dtype copies autocast makes of trained weights."""

    PARAM = "Parameter"
    BUFFER = "Buffer"
    GRAD = "Gradient"
    ACT = "Activation"
    TEMP = "Temp"
    OPT = "Optstate"
    OTH = "Other"
    ROLLOUT = "Rollout"
    WEIGHT_CAST = "Weight cast"


ESTIMATE_CATEGORIES = {**CATEGORIES, "Weight cast": "weight_casts"}


class _WeightedTracker(_LeanTracker):
    """The lean tracker, with two changes for estimates:

    - autocast's copies of parameters (bf16 weights under bf16-mixed, saved for backward and cached
      while autocast is on) are their own category, `weight_casts`;
    - each phase's peak is taken where the per-GPU total peaks: a weight per category (a GPU holds
      1/N of the model state under FSDP, and no autocast copies), so that the moment kept is the one
      that matters per GPU. With every weight 1 it is the plain peak of `LiveTensors`.
    """

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self._ref_class = _EstimateCategory
        self.weights = weights or {}
        self._weights_by_key: dict = {}

    def _weighted(self, snapshot: dict) -> float:
        if not self.weights:
            return snapshot[_TOTAL_KEY]
        return sum(value * self._key_weight(key) for key, value in snapshot.items() if key != _TOTAL_KEY)

    def _key_weight(self, key) -> float:
        if key not in self._weights_by_key:  # snapshot keys are enum members of several classes: looked up once
            self._weights_by_key[key] = self.weights.get(ESTIMATE_CATEGORIES[getattr(key, "value", key)], 1.0)
        return self._weights_by_key[key]

    def _is_parameter(self, tensor) -> bool:
        for storage in get_untyped_storages(tensor):
            winfo, _ = self._WINFO.get(storage, (None, None))
            if winfo is not None and getattr(winfo.reftype, "value", None) == "Parameter":
                return True
        return False

    def _update_peak_stats(self, peak_state) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            weighted = self._weighted(snapshot)
            if self._peak_mem.get(device, -1) < weighted:
                self._peak_mem[device] = weighted
                self._peak_mem_snap[device] = dict(snapshot)

    def reset_peak(self) -> None:
        self._peak_mem_snap = self.get_tracker_snapshot()
        self._peak_mem = {device: self._weighted(snap) for device, snap in self._peak_mem_snap.items()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self._in_opt:
            category = _Category.OPT
        elif func is torch.ops.aten._to_copy.default and args and self._is_parameter(args[0]):
            category = _EstimateCategory.WEIGHT_CAST
        else:
            category = _Category.TEMP if torch._C._current_graph_task_id() != -1 else _Category.ACT
        for output in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(output, torch.Tensor):
                self._track(category, output)
        self._update_peak_stats(None)
        return result

    def peak(self) -> dict[str, int]:
        out = {"total": 0}
        for snapshot in self._peak_mem_snap.values():
            for key, value in snapshot.items():
                name = "total" if key == _TOTAL_KEY else ESTIMATE_CATEGORIES[getattr(key, "value", key)]
                if value or name == "total":
                    out[name] = out.get(name, 0) + value
        return out


class EstimateTensors(LiveTensors):
    """`LiveTensors` with the weighted tracker above (same phases, same retagging of the rollout)."""

    def __init__(self, trained, frozen, optimizers, weights: dict[str, float] | None = None):
        super().__init__(trained, frozen, optimizers)
        self._tracker = _WeightedTracker(weights)
        self._tracker.track_external(*self._trained, *frozen, *optimizers)


# ---------------------------------------------------------------- building the arm on fake tensors

def meta_policy(model_config, precision: str, checkpointing: bool, name: str):
    """The policy as `models.load_policy` makes it (weight dtype, checkpointing), on the meta device."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):  # on a copy: from_config writes the dtype into the config it is given
        policy = AutoModelForCausalLM.from_config(copy.deepcopy(model_config), dtype=WEIGHT_DTYPES[precision])
    if checkpointing:
        enable_gradient_checkpointing(policy, name)
    return policy.eval()


def meta_reward_model(model_config, dtype: torch.dtype):
    """A learned reward model (a decoder with a scalar head, as TRL and OpenRLHF load one), frozen, on meta."""
    from transformers import AutoModelForSequenceClassification
    facts = {k: v for k, v in model_config.to_dict().items() if k not in ("id2label", "label2id")}
    model_config = model_config.__class__.from_dict({**facts, "num_labels": 1})
    if getattr(model_config, "pad_token_id", None) is None:
        model_config.pad_token_id = 0  # it finds each row's last token through the padding id
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(model_config, dtype=dtype)
    return model.requires_grad_(False).eval()


def materialize(models: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer]) -> None:
    """Meta modules -> fake CPU tensors (inside the active FakeTensorMode), ties restored, optimizers re-pointed.

    `to_empty` gives each module new parameter objects; the optimizers (built on meta by the arm's own
    constructors) are pointed at them, and weight ties that `to_empty` undid are tied again.
    """
    before = [(module, key, param) for model in models for module in model.modules()
              for key, param in module._parameters.items() if param is not None]
    for model in models:
        model.to_empty(device="cpu")
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    new = {id(param): module._parameters[key] for module, key, param in before}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [new[id(param)] for param in group["params"]]


def steady_state(algorithm, foreach: bool) -> None:
    """The state a step starts from after the first: AdamW's moments exist, and no gradients (the
    update frees them after its last optimizer step, as TRL and verl do)."""
    for optimizer in algorithm.optimizers().values():
        for group in optimizer.param_groups:
            group["foreach"] = foreach  # torch picks foreach for CUDA tensors, the per-tensor loop on the CPU
    for model in algorithm.trained_models().values():
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
    for optimizer in algorithm.optimizers().values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- the rollout, on fake tensors

@torch.no_grad()
def reward_scores(reward_model, batch: RolloutBatch, settings: TrainSettings) -> torch.Tensor:
    """A learned reward model's score `[B]` of each full sequence, in no-grad micro-batches."""
    with autocast(reward_model, settings.autocast_dtype):
        return torch.cat([reward_model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits[:, 0]
                          for part in batch.split(settings.logprob_batch_size)]).float()


def simulated_rollout(policy, reference, reward_model, settings: TrainSettings, workload: Workload, meter,
                      sampling: dict[str, Any], token_ids: tuple[int, int], sampler_logps: bool = True) -> RolloutBatch:
    """`rollout.generate` on fake tensors: generate (simulated), score, the sampler's (when the algorithm
    needs them) and the reference's log-probs."""
    eos_id = token_ids[0]
    rows, prompt_length = workload.rows, workload.prompt_length
    with meter.phase("generate"):
        input_ids, prompt_mask = fake_sample(policy, workload, sampling, token_ids, settings.autocast_dtype)
    with meter.phase("score"):
        completion_ids = input_ids[:, prompt_length:]  # [B, T]
        mask, _finished = completion_mask(completion_ids, eos_id)
        batch = RolloutBatch(input_ids=input_ids, attention_mask=torch.cat([prompt_mask, mask.long()], dim=1),
                             completion_mask=mask, prompt_length=prompt_length, group_size=workload.group_size,
                             scores=torch.empty(rows))  # the task's rewards: one float per completion
        if reward_model is not None:
            batch.scores = reward_scores(reward_model, batch, settings)
    logprob_passes(policy, reference, batch, settings, meter, sampler_logps)
    return batch


# ---------------------------------------------------------------- model-state arithmetic per GPU

def shard_bytes(tensor: torch.Tensor, world_size: int) -> int:
    """Bytes of one GPU's shard under FSDP2: dim 0 split in world_size chunks, the last padded."""
    if tensor.dim() == 0 or world_size == 1:
        return tensor.numel() * tensor.element_size()
    rows = math.ceil(tensor.shape[0] / world_size)
    return rows * math.prod(tensor.shape[1:]) * tensor.element_size()


def sharded_state(trained: dict, optimizers: dict, frozen: dict, world_size: int,
                  offloaded: frozenset[str] = frozenset()) -> dict[str, dict[str, int]]:
    """{model: {params, grads, optimizer, total}} on one GPU of `world_size` (arithmetic); an offloaded
    model's shards (FSDP2's CPU offload: run.offload_reference, run.offload_critic) hold none of it."""
    out = {}
    for name, model in {**trained, **frozen}.items():
        share = 0 if name in offloaded else 1
        params = share * sum(shard_bytes(p, world_size) for p in model.parameters())
        grads = share * sum(shard_bytes(p, world_size) for p in model.parameters() if p.requires_grad) if name in trained else 0
        state = optimizers[name].state.values() if name in optimizers else []
        moments = share * sum(shard_bytes(v, world_size) for s in state for v in s.values() if isinstance(v, torch.Tensor))
        out[name] = {"params": params, "grads": grads, "optimizer": moments, "total": params + grads + moments}
    return out


def gathered_bytes(model: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """What FSDP2 holds unsharded while `model` computes, in the compute dtype (its mixed-precision param
    dtype): the root unit (embeddings, final norm, head: not resharded between forward and backward)
    and two decoder layers (the one computing and the one prefetched)."""
    size = torch.tensor([], dtype=compute_dtype).element_size()
    layers = decoder_layers(model)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_layers)
    largest = max((sum(p.numel() for p in layer.parameters()) for layer in layers), default=0)
    return (root + 2 * largest) * size


# ---------------------------------------------------------------- one arm

def fake_step(config, algo: str, policy_config, reward_config, workload: Workload, world_size: int = 1,
              foreach: bool = True, name: str = "model") -> FakeStep:
    """Run one steady-state step of arm `algo` on fake tensors: per-phase peaks by category."""
    started = time.perf_counter()
    precision = config.model.precision
    compute_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    policy = meta_policy(policy_config, precision, config.model.gradient_checkpointing, name)
    # one GPU of `world_size`: its share of the step's sampling slices, as the arm's own process holds it
    settings = rank_settings(config, world_size, 0)
    algorithm, reference = arm_models(config, algo, policy, settings)
    reward_model = meta_reward_model(reward_config, compute_dtype) if reward_config is not None else None
    trained, optimizers = algorithm.trained_models(), algorithm.optimizers()
    frozen = {k: m for k, m in (("reference", reference), ("reward_model", reward_model)) if m is not None}
    with FakeTensorMode(allow_non_fake_inputs=True):
        materialize([*trained.values(), *frozen.values()], list(optimizers.values()))
        steady_state(algorithm, foreach)
        full = model_state_bytes(trained, optimizers, frozen)
        offloaded = frozenset(name for name, flag in (("reference", config.run.offload_reference),
                                                      ("critic", config.run.offload_critic)) if flag and world_size > 1)
        sharded = sharded_state(trained, optimizers, frozen, world_size, offloaded)
        factors = {category: (sum(s[category] for s in sharded.values()) /
                              max(sum(f[category] for f in full.values()), 1))
                   for category in ("params", "grads", "optimizer")}
        weights = {**factors, "weight_casts": 0.0} if world_size > 1 else {}
        live = EstimateTensors(trained.values(), frozen.values(), optimizers.values(), weights)
        meter = StepMeter(Probes("cpu", enabled=False), live)
        sampling = {"temperature": config.rollout.temperature, "top_p": config.rollout.top_p}
        eos = policy_config.eos_token_id
        token_ids = (eos[0] if isinstance(eos, (list, tuple)) else eos or 0, getattr(policy_config, "pad_token_id", None) or 0)
        with meter.step(True):
            batch = simulated_rollout(policy, reference, reward_model, settings, workload, meter, sampling, token_ids,
                                      algorithm.needs_sampler_logps)
            learn(algorithm, batch, meter)
            del batch
        models = {**trained, **frozen}
        gathered = {name: gathered_bytes(model, compute_dtype) for name, model in models.items()} if world_size > 1 else {}
    return FakeStep(phases=meter.tracked_peaks, model_state=full, sharded=sharded, factors=factors,
                    gathered=gathered, seconds=time.perf_counter() - started)

