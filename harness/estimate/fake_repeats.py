"""A fake step's shortcuts (`harness.estimate.fake_step`): no-grad forward passes that repeat one another run
once and are replayed, and the update loop's repeated minibatches, epochs and micro-batches are left out. Each
leaves the peak of live tensors what the whole step would reach."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.distributed._tools.mem_tracker import _TOTAL_KEY

from harness.measure.live_tensors import _Category, _LeanTracker


def _diff(a: dict, b: dict) -> dict:
    """b - a per device and key, the total's key included (snapshots of the tracker)."""
    return {d: {k: b[d].get(k, 0) - a.get(d, {}).get(k, 0) for k in {*b[d], *a.get(d, {})}} for d in b}


class RepeatedCalls:
    """No-grad forward passes that repeat one another, run once and replayed after (an estimate's shortcut).

    The log-prob, reference and value passes run the same no-grad forward on equal micro-batches, one after
    another; what each leaves is its output, and between its start and its peak it holds the same tensors
    as the one before. So the first two calls with the same input shapes run (the first warms caches and
    FSDP's lazy state), and from the third on the call is replayed: the tracker's peak is taken at the
    snapshot now plus what the second call held above its start at its peak, and the output is made at
    once with the second's shapes and dtypes. A call whose end is not its start plus its output (it left
    something else alive) is never replayed: every call of that kind then runs."""

    def __init__(self, tracker: _LeanTracker):
        self.tracker = tracker
        self.seen: dict[tuple, int] = {}
        self.learned: dict[tuple, tuple] = {}  # signature -> (rise at the peak, output leaves' shapes/dtypes, tree)
        self.replayed = 0

    @staticmethod
    def signature(function, args, kwargs) -> tuple:
        """The function, the models and every tensor's shape and dtype it is called with (a rollout batch's too)."""
        import dataclasses as dc

        from torch.utils._pytree import tree_flatten
        leaves, _ = tree_flatten((args, kwargs))
        out = [id(function)]
        for x in leaves:
            if dc.is_dataclass(x) and not isinstance(x, type):
                x = [getattr(x, f.name) for f in dc.fields(x)]
            for item in x if isinstance(x, list) else [x]:
                if isinstance(item, torch.Tensor):
                    out.append((tuple(item.shape), item.dtype))
                elif isinstance(item, dict):
                    out.append(tuple((k, tuple(v.shape)) for k, v in item.items() if isinstance(v, torch.Tensor)))
                else:
                    out.append(id(item) if isinstance(item, torch.nn.Module) else repr(item)[:40])
        return tuple(out)

    def call(self, function, *args, **kwargs):
        from torch.utils._pytree import tree_flatten, tree_unflatten
        if torch.is_grad_enabled():
            return function(*args, **kwargs)
        key = self.signature(function, args, kwargs)
        if key in self.learned:
            rise, specs, tree = self.learned[key]
            self.tracker.replay_peak(rise)
            self.replayed += 1
            return tree_unflatten([torch.empty(shape, dtype=dtype) if shape is not None else value
                                   for shape, dtype, value in specs], tree)
        self.seen[key] = self.seen.get(key, 0) + 1
        window = self.tracker.open_window()
        out = function(*args, **kwargs)
        start, peak, end = self.tracker.close_window(window)
        leaves, tree = tree_flatten(out)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        left = {k: v for d in _diff(start, end).values() for k, v in d.items() if v and k != _TOTAL_KEY}
        output_bytes = sum(x.untyped_storage().nbytes() for x in tensors)
        clean = set(left) <= {_Category.ACT} and sum(left.values()) == output_bytes
        if self.seen[key] >= 2 and clean and all(x.is_contiguous() and x.storage_offset() == 0 for x in tensors):
            specs = [(tuple(x.shape), x.dtype, None) if isinstance(x, torch.Tensor) else (None, None, x) for x in leaves]
            self.learned[key] = (_diff(start, peak), specs, tree)
        return out


@contextmanager
def replaying(repeats: RepeatedCalls, *models):
    """The no-grad passes of a fake step through `repeats`: `completion_logps` (old and reference log-probs) and
    the forward of `models` (the critic's values, a reward model's scores)."""
    import harness.algorithms.logprobs as logprobs
    original = logprobs.completion_logps
    logprobs.completion_logps = lambda *args, **kwargs: repeats.call(original, *args, **kwargs)
    models = [m for m in models if m is not None]
    for model in models:
        forward = model.forward
        model.forward = lambda *args, _forward=forward, **kwargs: repeats.call(_forward, *args, **kwargs)
    try:
        yield repeats
    finally:
        logprobs.completion_logps = original
        for model in models:
            del model.forward  # the class's forward again


class _FirstOf(list):
    """A minibatch partition that holds every minibatch's indices (their bytes) but hands out only the first
    `keep`: the minibatches after the second repeat it, as the epochs after the first repeat the first."""

    def __init__(self, items, keep: int):
        super().__init__(items)
        self.keep = keep

    def __iter__(self):
        return iter(list.__getitem__(self, slice(0, self.keep)))


@contextmanager
def repeated_minibatches_skipped():
    """The update loop's minibatches beyond the second, its epochs beyond the first, and each minibatch's
    micro-batches beyond the second, left out of a fake step.

    Every minibatch of an update starts from the same state (no gradients: the loop frees them before each),
    runs micro-batches of the same shapes and ends with an optimizer step over the same tensors; the second
    is the steady one (the first's state may still be warming up, e.g. FSDP's). Minibatch indices are made as
    the real loop makes them, so the rows they hold are counted. Within a minibatch, the first micro-batch's
    backward makes the gradients and the second's adds to them; the third and later start where the second
    started (a micro-batch leaves nothing behind but its statistics, summed in place of the last) and do
    what it did. A micro-batch is a view of the minibatch's rows: the ones left out held no bytes of their own."""
    import harness.algorithms.base as base
    originals = base.sliced_minibatches, base.micro_batches

    def first_two(*args, **kwargs):
        parts = originals[0](*args, **kwargs)
        epoch = kwargs.get("epoch", args[6] if len(args) > 6 else 0)
        return _FirstOf(parts, 0 if epoch else 2)
    base.sliced_minibatches = first_two
    base.micro_batches = lambda minibatch, rows: originals[1](minibatch, rows)[:2]
    try:
        yield
    finally:
        base.sliced_minibatches, base.micro_batches = originals
