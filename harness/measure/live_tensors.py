"""Peak bytes of live tensors per phase of a step, by category: torch's MemTracker, kept lean.

`torch.distributed._tools.mem_tracker.MemTracker` is a dispatch mode that sees every tensor an op
creates, follows each storage until it is freed, and sorts storages into parameters, buffers,
gradients, activations (made in forward), temporaries (made in backward) and optimizer state. The
same code runs on real tensors (what a run measures) and on fake ones (what `harness estimate`
predicts), and for given shapes it gives the same bytes on every machine: the CI gate compares it
to the byte.

What this subclass changes, and why:
- no per-module statistics: the upstream module hooks refuse a module called twice in one context
  (generate calls the model once per token) and cost most of the tracker's time; "in backward" is
  read from autograd's engine instead;
- the peak is reset at each phase boundary, so each phase keeps its own peak and breakdown;
- a `Rollout` category for the rollout batch's tensors, retagged once the rollout is built;
- an `FSDP` category for what FSDP2's own ops (the `fsdp::` namespace) write: the gathered (unsharded)
  parameters, the all-gather buffer and the reduce-scatter input. Left to MemTracker they would be
  activations or temporaries (and the KV cache in generate), as torch.empty made them in forward or backward.
  Sharded gradients stay temporaries: FSDP2 assigns them to `.grad` directly, past the gradient hooks.
During activation checkpointing's recomputation the recomputed activations count as temporaries;
the totals, which the verdict reads, are unaffected.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterable

import torch
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _RefType

# Our names for MemTracker's categories, in the order tables show them.
CATEGORIES = {"Parameter": "params", "Buffer": "params", "Gradient": "grads", "Optstate": "optimizer",
              "Activation": "activations", "Temp": "temporaries", "Rollout": "rollout", "FSDP": "fsdp_buffers",
              "Other": "other"}
# In the generate phase, what forward creates and keeps is the KV cache (and the sampler's logits).
PHASE_LABELS = {"generate": {"activations": "kv_cache"}}


class _Category(_RefType):
    PARAM = "Parameter"
    BUFFER = "Buffer"
    GRAD = "Gradient"
    ACT = "Activation"
    TEMP = "Temp"
    OPT = "Optstate"
    OTH = "Other"
    ROLLOUT = "Rollout"
    FSDP = "FSDP"


def in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread."""
    return torch._C._current_graph_task_id() != -1


class _Backward:
    """The one thing MemTracker asks its module tracker (`is_bw`), answered without module hooks."""

    parents: tuple = ()

    @property
    def is_bw(self) -> bool:
        return in_backward()

    def register_user_hooks(self, *hooks) -> None:
        pass

    def clear_user_hooks(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _LeanTracker(MemTracker):
    """MemTracker without module hooks, with a peak per phase. Three hooks for a subclass (the estimate's
    tracker): `category_of` (where an op's outputs are filed), `weighted` (the figure a peak maximises) and
    `category_names` (how categories are named in a peak)."""

    category_names = CATEGORIES

    def __init__(self) -> None:
        super().__init__()
        self._ref_class = _Category
        self._mod_tracker = _Backward()

    def category_of(self, func, args) -> _RefType:
        """The category of the tensors an op makes: optimizer state in a step, temporaries in backward,
        activations otherwise."""
        if self._in_opt:
            return _Category.OPT
        return _Category.TEMP if in_backward() else _Category.ACT

    def weighted(self, snapshot: dict) -> float:
        """The figure whose maximum is a phase's peak: the total bytes of a device's snapshot."""
        return snapshot[_TOTAL_KEY]

    def _update_peak_stats(self, peak_state) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            weighted = self.weighted(snapshot)
            if self._peak_mem.get(device, -1) < weighted:
                self._peak_mem[device] = weighted
                self._peak_mem_snap[device] = dict(snapshot)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        category = self.category_of(func, args)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for output in outputs:
            if isinstance(output, torch.Tensor):
                self._track(category, output)
        if getattr(func, "namespace", None) == "fsdp":
            retag_fsdp_buffers(self, result, kwargs)
        self._update_peak_stats(None)
        return result

    def reset_peak(self) -> None:
        self._peak_mem_snap = self.get_tracker_snapshot()
        self._peak_mem = {device: self.weighted(snap) for device, snap in self._peak_mem_snap.items()}

    def peak(self) -> dict[str, int]:
        """The peak since the last reset: {"total": bytes, category: bytes, ...} summed over devices."""
        return by_category(self._peak_mem_snap, self.category_names)


def retag_fsdp_buffers(tracker: MemTracker, result, kwargs) -> None:
    """File the tensors an `fsdp::` op returns or writes (`out=`) under FSDP (they exist before it: torch.empty)."""
    written = kwargs.get("out") if kwargs else None
    for group in (result, written):
        for tensor in group if isinstance(group, (tuple, list)) else (group,):
            if isinstance(tensor, torch.Tensor):
                tracker._update_and_maybe_create_winfos(tensor, _Category.FSDP)


def by_category(snapshot: dict, names: dict[str, str] = CATEGORIES) -> dict[str, int]:
    """A MemTracker snapshot {device: {category: bytes, "Total": bytes}} as {"total": bytes, our_name: bytes}."""
    out = {"total": 0}
    for device_snapshot in snapshot.values():
        for key, value in device_snapshot.items():
            name = "total" if key == _TOTAL_KEY else names[getattr(key, "value", key)]
            if value or name == "total":
                out[name] = out.get(name, 0) + value
    return out


class _NoHook:
    """Stands for the gradient hooks of a frozen parameter (a LoRA base): torch refuses a hook on a tensor
    that needs no gradient, and MemTracker would install one on every parameter of a trained model."""

    def remove(self) -> None:
        pass


class LiveTensors:
    """Per-phase peaks of the live tensors of one arm.

        live = LiveTensors(trained=[policy, critic], frozen=[reference], optimizers=[...])
        with live:                       # one step
            with live.phase("generate"): ...
            live.retag_rollout(batch.tensors())
        live.step_peaks                  # {phase: {"total": bytes, "params": ..., ...}}
    """

    def __init__(self, trained: Iterable[torch.nn.Module] = (), frozen: Iterable[torch.nn.Module] = (),
                 optimizers: Iterable[torch.optim.Optimizer] = (), tracker: _LeanTracker | None = None):
        self._tracker = tracker or _LeanTracker()  # a subclass of it for an estimate (harness.estimate.fake_step)
        self._trained, self._optimizers = list(trained), list(optimizers)
        self._tracker.track_external(*self._trained, *frozen, *self._optimizers)
        self.step_peaks: dict[str, dict[str, int]] = {}

    def __enter__(self) -> LiveTensors:
        self.step_peaks = {}
        self._tracker.__enter__()
        for model in self._trained:  # gradients are tracked from hooks as they are made; exit removes the hooks
            for param in model.parameters():
                if not param.requires_grad:
                    self._tracker._param_to_grad_hook_handles.setdefault(param, (_NoHook(), _NoHook()))
            self._tracker._track_module_params_and_buffers(model, install_grad_hooks=True)
        for optimizer in self._optimizers:  # state made on an untracked step is alive on this one
            self._tracker._track_optimizer_states(_Category.OPT, optimizer)
        return self

    def __exit__(self, *exc) -> None:
        self._tracker.__exit__(*exc)

    @contextmanager
    def phase(self, name: str):
        """Record the peak of live tensors while the block runs (the max over repeats of a phase in a step)."""
        self._tracker.reset_peak()
        try:
            yield
        finally:
            peak = self._tracker.peak()
            for old, new in PHASE_LABELS.get(name, {}).items():
                if old in peak:
                    peak[new] = peak.pop(old)
            if peak["total"] > self.step_peaks.get(name, {}).get("total", -1):
                self.step_peaks[name] = peak

    def retag_rollout(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count these tensors (the rollout batch) as `rollout` from now on."""
        for tensor in tensors:
            if tensor is not None:
                self._tracker._update_and_maybe_create_winfos(tensor, _Category.ROLLOUT)

    def current(self) -> dict[str, int]:
        """Live tensors now, by category."""
        return by_category(self._tracker.get_tracker_snapshot(), self._tracker.category_names)


def step_peak(phase_peaks: dict[str, dict[str, int]]) -> tuple[int, str | None]:
    """(bytes, phase) of the largest phase peak: the step's peak of live tensors."""
    if not phase_peaks:
        return 0, None
    phase = max(phase_peaks, key=lambda name: phase_peaks[name]["total"])
    return phase_peaks[phase]["total"], phase
