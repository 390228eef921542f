"""One arm's training step on fake tensors: the arm's own code, nothing allocated.

`FakeTensorMode` gives every op its output's shape and dtype without computing or allocating, and
the live-tensor tracker of `harness.measure.live_tensors` records what would be live in each phase. The models are
built on the meta device with the arm's own constructors (`runner.arm_models`: the algorithm, its
critic and optimizers, the frozen reference), then made fake CPU tensors (fake `cuda` tensors fail at
the first kernel in a CPU-only torch build). The step is the arm's: the same log-prob passes
(`rollout.logprob_passes`), the same values, advantages and update loop (`runner.learn`), the same
phase names and categories. Generation alone is simulated (`harness.estimate.fake_generation`): transformers'
`generate` reads data to decide when to stop, and fake tensors hold none.

At a world size N > 1 the step is rank 0's of an arm under torchrun: a fake process group of N ranks
(torch's `fake` backend: collectives do nothing) and the arm's own FSDP2 sharding
(`harness.train.distributed.shard`: each decoder layer, then the root), so that the shards, the gathered
layers, the all-gather and reduce-scatter buffers and the moments they are freed are FSDP2's own. Its
buffers' lifetimes are Python references, the same on every device and backend (gloo on the CPU, NCCL
on GPUs); what a backend allocates inside its collectives (NCCL's channels) is no tensor, and neither
the estimate nor the live-tensor measurement counts it.
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, _RefType

from harness.algorithms.adapters import shares_policy
from harness.algorithms.batch import RolloutBatch, TrainSettings
from harness.algorithms.logprobs import autocast, logprob_rows
from harness.estimate.fake_generation import Workload, fake_sample
from harness.estimate.fake_repeats import RepeatedCalls, repeated_minibatches_skipped, replaying
from harness.measure.live_tensors import CATEGORIES, LiveTensors, _Category, _LeanTracker
from harness.measure.probes import Probes, model_state_bytes
from harness.measure.step_meter import StepMeter
from harness.train.arm import arm_models, learn, rank_settings
from harness.train.distributed import model_sharding, shard
from harness.train.lora import with_lora
from harness.train.models import WEIGHT_DTYPES, enable_gradient_checkpointing
from harness.train.rollout import completion_mask, logprob_passes


@dataclass
class FakeStep:
    """What one arm's fake step recorded, on one GPU of `world_size` (`estimate` turns it into figures)."""

    phases: dict[str, dict[str, int]]  # phase -> {category: bytes, "total": bytes} at the (weighted) peak
    model_state: dict[str, dict[str, int]]  # arithmetic: {model: {params, grads, optimizer, total}} of this GPU's shards
    seconds: float


# ---------------------------------------------------------------- the tracker

# The live-tensor tracker's categories (derived, so that one added there reaches the estimate too) plus
# the compute-dtype copies autocast makes of trained weights, the shards of models offloaded to CPU
# memory (weight 0: not on the GPU), and the parameters and AdamW state of models on GPUs of their own
# (the critic and a reward model beside OpenRLHF's actor), which the estimate files apart per GPU group.
_EstimateCategory = _RefType("_EstimateCategory", [(c.name, c.value) for c in _Category]
                             + [("WEIGHT_CAST", "Weight cast"), ("OFFLOADED", "Offloaded"),
                                ("ELSEWHERE_PARAMS", "Elsewhere parameter"), ("ELSEWHERE_OPT", "Elsewhere optstate")])


ESTIMATE_CATEGORIES = {**CATEGORIES, "Weight cast": "weight_casts", "Offloaded": "offloaded",
                       "Elsewhere parameter": "elsewhere_params", "Elsewhere optstate": "elsewhere_optimizer"}


class _WeightedTracker(_LeanTracker):
    """The live-tensor tracker of a run, through its hooks, with three changes for estimates:

    - autocast's copies of parameters (bf16 weights under bf16-mixed, saved for backward and cached
      while autocast is on) are their own category, `weight_casts`;
    - an optimizer step's tensors are filed where its state lives (`stepping`: offloaded, elsewhere);
    - each phase's peak is taken where the GPU's total peaks: a weight per category (0 for the shards
      of an offloaded model, which live in CPU memory), so that the moment kept is the one that
      matters on the GPU. With every weight 1 it is the plain peak of `LiveTensors`.
    """

    category_names = ESTIMATE_CATEGORIES

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.stepping = None  # the category of an optimizer step's tensors, when not the GPU's (see EstimateTensors)
        self.optimizer_categories: dict[int, Any] = {}  # id(optimizer) -> where its state lives, when not the GPU
        self._ref_class = _EstimateCategory
        self.weights = weights or {}
        self._weights_by_key: dict = {}

    def weighted(self, snapshot: dict) -> float:
        if not self.weights:
            return snapshot[_TOTAL_KEY]
        return sum(value * self._key_weight(key) for key, value in snapshot.items() if key != _TOTAL_KEY)

    def _key_weight(self, key) -> float:
        if key not in self._weights_by_key:  # snapshot keys are enum members of several classes: looked up once
            self._weights_by_key[key] = self.weights.get(ESTIMATE_CATEGORIES[getattr(key, "value", key)], 1.0)
        return self._weights_by_key[key]

    def category_of(self, func, args):
        if self._in_opt:
            return self.stepping or _Category.OPT
        if func is torch.ops.aten._to_copy.default and args and self._is_parameter(args[0]):
            return _EstimateCategory.WEIGHT_CAST
        return super().category_of(func, args)

    def _track_optimizer_states(self, reftype, optimizer) -> None:
        # MemTracker files an optimizer's state again after each step: an offloaded one's stays offloaded
        super()._track_optimizer_states(self.optimizer_categories.get(id(optimizer), reftype), optimizer)

    def _is_parameter(self, tensor) -> bool:
        for storage in get_untyped_storages(tensor):
            winfo, _ = self._WINFO.get(storage, (None, None))
            if winfo is not None and getattr(winfo.reftype, "value", None) == "Parameter":
                return True
        return False

    # ------------------------------------------------------------ windows and replays (see `RepeatedCalls`)

    def open_window(self) -> tuple:
        """Start measuring one call: (the phase's peak so far, the snapshot now); the peak restarts from now."""
        saved = (dict(self._peak_mem), {d: dict(s) for d, s in self._peak_mem_snap.items()})
        start = {d: dict(s) for d, s in self._curr_mem_snap.items()}
        self.reset_peak()
        return saved, start

    def close_window(self, window: tuple) -> tuple[dict, dict, dict]:
        """(start, the call's peak snapshot, end) of a window; the phase's peak is the larger of both again."""
        (saved_peak, saved_snap), start = window
        call_snap = {d: dict(s) for d, s in self._peak_mem_snap.items()}
        end = {d: dict(s) for d, s in self._curr_mem_snap.items()}
        for device, value in saved_peak.items():
            if value >= self._peak_mem.get(device, -1):
                self._peak_mem[device], self._peak_mem_snap[device] = value, saved_snap[device]
        return start, call_snap, end

    def replay_peak(self, rise: dict) -> None:
        """A call's peak again, from now: the snapshot now plus `rise` ({device: {key: bytes}}, what the call
        held above its start at its peak), kept when it is the phase's peak."""
        for device, deltas in rise.items():
            now = self._curr_mem_snap.get(device, {})
            candidate = {key: now.get(key, 0) + deltas.get(key, 0) for key in {*now, *deltas}}
            weighted = self.weighted(candidate)
            if self._peak_mem.get(device, -1) < weighted:
                self._peak_mem[device], self._peak_mem_snap[device] = weighted, candidate


class EstimateTensors(LiveTensors):
    """`LiveTensors` with the weighted tracker above (same phases, same retagging of the rollout); the
    parameters and optimizer state of `offloaded` models are filed as `offloaded` (weight 0), those of
    `elsewhere` models (on GPUs of their own) as `elsewhere_params` and `elsewhere_optimizer`."""

    def __init__(self, trained, frozen, optimizers, offloaded: tuple = (), elsewhere: tuple = (),
                 weigh_offloaded: bool = True):
        super().__init__(trained, frozen, optimizers,
                         _WeightedTracker({"offloaded": 0.0} if offloaded and weigh_offloaded else {}))
        self._offloaded = offloaded  # (model, its optimizer or None)
        self._elsewhere = elsewhere
        self._hooks: list = []

    def retag_fsdp(self, tensors) -> None:
        """File these tensors (a frozen model's gathered parameters) as FSDP2's buffers."""
        for tensor in tensors:
            self._tracker._update_and_maybe_create_winfos(tensor, _Category.FSDP)

    def __enter__(self) -> EstimateTensors:
        super().__enter__()  # files every parameter and moment again: the tagged ones are retagged after it
        retag = self._tracker._update_and_maybe_create_winfos
        # an offloaded model's buffers stay on the GPU (CPUOffloadPolicy moves parameters); elsewhere, all of it
        for models, params, moments, buffers in (
                (self._elsewhere, _EstimateCategory.ELSEWHERE_PARAMS, _EstimateCategory.ELSEWHERE_OPT, True),
                (self._offloaded, _EstimateCategory.OFFLOADED, _EstimateCategory.OFFLOADED, False)):
            for model, optimizer in models:
                for tensor in [*model.parameters(), *(model.buffers() if buffers else ())]:
                    retag(tensor, params)
                for state in optimizer.state.values() if optimizer else ():
                    for value in state.values():
                        if isinstance(value, torch.Tensor):
                            retag(value, moments)
                if optimizer is not None:  # its step's temporaries are where its state is
                    self._tracker.optimizer_categories[id(optimizer)] = moments
                    self._hooks += [optimizer.register_step_pre_hook(lambda *_, c=moments: self._stepping(c)),
                                    optimizer.register_step_post_hook(lambda *_: self._stepping(None))]
        for model, _ in self._offloaded:  # FSDP2 moves each gradient shard to CPU memory as it is reduced
            for param in model.parameters():
                if param.requires_grad:
                    self._hooks.append(param.register_post_accumulate_grad_hook(
                        lambda p: retag(p.grad, _EstimateCategory.OFFLOADED)))
        return self

    def _stepping(self, category) -> None:
        self._tracker.stepping = category

    def __exit__(self, *exc) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        super().__exit__(*exc)


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


def _local(tensors):
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


@contextmanager
def adam_on_local_shards():
    """AdamW's math on the local shards of FSDP2's DTensors, in this process only.

    Each rank's AdamW step works on its own shards: DTensor's foreach ops run the same kernels on the
    local tensors (and make outputs of the same sizes), but their sharding propagation takes about a
    second per op on fake tensors. Unwrapped, the step's tensors and temporaries are the same, and a
    fake step of a 7B model is minutes shorter."""
    import torch.optim.adam as adam
    originals = {name: getattr(adam, name) for name in ("_multi_tensor_adam", "_single_tensor_adam")}

    def unwrapped(function):
        def run(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *args, **kwargs):
            return function(_local(params), _local(grads), _local(exp_avgs), _local(exp_avg_sqs),
                            _local(max_exp_avg_sqs), _local(state_steps), *args, **kwargs)
        return run
    for name, function in originals.items():
        setattr(adam, name, unwrapped(function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(adam, name, function)


def steady_state(algorithm, foreach: bool) -> None:
    """The state a step starts from after the first: AdamW's moments exist, and no gradients (the
    update frees them after its last optimizer step, as TRL and verl do)."""
    for optimizer in algorithm.optimizers().values():
        for group in optimizer.param_groups:
            group["foreach"] = foreach  # torch picks foreach for CUDA tensors, the per-tensor loop on the CPU
    for optimizer in algorithm.optimizers().values():  # what each optimizer trains (under LoRA: the adapters)
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
    for optimizer in algorithm.optimizers().values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def gather_frozen(models: list[torch.nn.Module]) -> None:
    """A frozen model that FSDP2 does not reshard after forward (`run.shard_reference=grad_optim`) stays gathered
    from its first forward on: it has no backward to reshard it. From the second step on, every phase holds it."""
    from torch.distributed.fsdp import FSDPModule
    for model in models:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.unshard()


# ---------------------------------------------------------------- the rollout, on fake tensors

@torch.no_grad()
def reward_scores(reward_model, batch: RolloutBatch, settings: TrainSettings) -> torch.Tensor:
    """A learned reward model's score `[B]` of each full sequence, in no-grad micro-batches."""
    with autocast(reward_model, settings.autocast_dtype):
        return torch.cat([reward_model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits[:, 0]
                          for part in batch.split(logprob_rows(settings, batch.size))]).float()


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


# ---------------------------------------------------------------- FSDP2 on a fake process group

@contextmanager
def fake_ranks(world_size: int):
    """Rank 0 of `world_size` processes, in this one: torch's `fake` process-group backend (collectives
    do nothing, tensors keep their shapes) under a CPU device mesh. Yields the mesh (None for one process)."""
    if world_size == 1:
        yield None
        return
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    if dist.is_initialized():
        raise RuntimeError("an estimate at a world size above 1 needs a process without a process group")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=dist.HashStore())
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


def shard_arm(algorithm, frozen: dict[str, torch.nn.Module], run, precision: str, mesh) -> None:
    """FSDP2 over every model of the arm as `Arm.shard` does (the optimizers rebuilt over the shards), each
    with its configured sharding and offload, on the meta device; frozen models (reference, reward model)
    too. The fake device is the CPU, where an offloaded shard stays where it is: `EstimateTensors` files it
    apart instead."""
    algorithm.shard_models(lambda name, model: shard(model, precision, mesh=mesh, **model_sharding(run, name)))
    for name, model in frozen.items():
        shard(model, precision, mesh=mesh, **model_sharding(run, name))


# ---------------------------------------------------------------- one arm

def fake_step(config, algo: str, policy_config, reward_config, workload: Workload, world_size: int = 1,
              foreach: bool = True, name: str = "model", elsewhere: tuple[str, ...] = (),
              shortcuts: bool = True, weigh_offloaded: bool = True) -> FakeStep:
    """Run one steady-state step of arm `algo` on fake tensors, as rank 0 of `world_size` runs it (FSDP2
    over a fake process group above 1): per-phase peaks by category. `elsewhere`: models (critic,
    reward_model) on GPUs of their own, whose state is filed apart (see `EstimateTensors`). `shortcuts`:
    repeated no-grad passes replayed and repeated minibatches left out (`RepeatedCalls`,
    `repeated_minibatches_skipped`: the same peaks, minutes shorter at scale). `weigh_offloaded=False` takes each
    phase's peak where the total with the offloaded shards peaks, as a CPU run (where they are live) measures it."""
    started = time.perf_counter()
    precision = config.model.precision
    compute_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    with fake_ranks(world_size) as mesh:
        policy = with_lora(meta_policy(policy_config, precision, config.model.gradient_checkpointing, name),
                           config.model.lora)  # LoRA: adapters on the meta base, as the arm wraps its policy
        # one GPU of `world_size`: its share of the step's sampling slices, as the arm's own process holds it
        settings = rank_settings(config, world_size, 0)
        algorithm, reference = arm_models(config, algo, policy, settings)
        reward_model = meta_reward_model(reward_config, compute_dtype) if reward_config is not None else None
        frozen = {k: m for k, m in (("reference", reference), ("reward_model", reward_model))
                  if m is not None and not shares_policy(m)}  # under LoRA the reference is the policy's base
        if mesh is not None:
            shard_arm(algorithm, frozen, config.run, precision, mesh)
        trained, optimizers = algorithm.trained_models(), algorithm.optimizers()
        models = {**trained, **frozen}
        offloaded = [m for m in models if mesh is not None and model_sharding(config.run, m)["offload"]]
        elsewhere = [m for m in elsewhere if m in models and m not in offloaded]
        with FakeTensorMode(allow_non_fake_inputs=True), adam_on_local_shards():
            materialize([*trained.values(), *frozen.values()], list(optimizers.values()))
            steady_state(algorithm, foreach)
            state = model_state_bytes(trained, optimizers, frozen)
            for model in offloaded:  # its shards are in CPU memory (FSDP2's CPUOffloadPolicy)
                state[model] = dict.fromkeys(state[model], 0)
            live = EstimateTensors(trained.values(), frozen.values(), optimizers.values(),
                                   tuple((models[m], optimizers.get(m)) for m in offloaded),
                                   tuple((models[m], optimizers.get(m)) for m in elsewhere), weigh_offloaded)
            meter = StepMeter(Probes("cpu", enabled=False), live)
            sampling = {"temperature": config.rollout.temperature, "top_p": config.rollout.top_p}
            eos = policy_config.eos_token_id
            token_ids = (eos[0] if isinstance(eos, (list, tuple)) else eos or 0,
                         getattr(policy_config, "pad_token_id", None) or 0)
            repeats = RepeatedCalls(live._tracker)
            shortcut = ((replaying(repeats, trained.get("critic"), reward_model), repeated_minibatches_skipped())
                        if shortcuts else ())
            gathered = [models[m] for m in frozen if mesh is not None and model_sharding(config.run, m)["sharding"] != "full"]
            gather_frozen(gathered)
            with meter.step(True), ExitStack() as stack:
                for context in shortcut:
                    stack.enter_context(context)
                for model in gathered:  # as a run's tracker files them from the second step on
                    live.retag_fsdp([*model.parameters()])
                batch = simulated_rollout(policy, reference, reward_model, settings, workload, meter, sampling, token_ids,
                                          algorithm.needs.sampler_logps)
                learn(algorithm, batch, meter)
                del batch
    return FakeStep(phases=meter.tracked_peaks, model_state=state, seconds=time.perf_counter() - started)
