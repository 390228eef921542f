"""Fit search: on a named GPU, the largest per-GPU micro-batch and rollout batch each arm fits, and the fewest
GPUs it needs for its config as written (`harness estimate ... --fit H100-80GB`).

Every answer is a fake step's: a search probes the config at a second value of the knob it turns, reads
each phase's peak per GPU as an affine function of that knob (of the micro-batch rows, of the rollout rows
per GPU, of 1 / the GPU count: the shapes that grow with it grow linearly, the rest stays), predicts the
best value that fits, and runs a fake step there to confirm it, stepping back until one fits. The knob's
values are those the arm's own checks accept (micro-batches that divide a GPU's minibatch, batches of
whole groups per sampling slice, GPU counts the batch splits over). A colocated engine's reservation is
the device's share (`estimate.rollout_reserve`); engines on GPUs of their own keep their count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import UserError
from harness.config.load import copy_config
from harness.config.schema import Config
from harness.estimate.devices import Gpu
from harness.estimate.estimator import check_world, plan_estimate, run_arms, spread_over_gpus
from harness.estimate.gpu_figures import gpu_groups, group_figures

MAX_CONFIRM = 3  # fake steps that confirm (or step back from) a prediction, per knob
MAX_GPUS = 1024


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def micro_candidates(config: Config) -> list[int]:
    """Micro-batch sizes that divide one GPU's minibatch."""
    rows = config.rollout.batch_size // config.estimate.world_size // config.optim.minibatches
    return _divisors(rows)


def rows_candidates(config: Config, limit: int = 512) -> list[int]:
    """Rollout batches (all GPUs together) whose GPU share splits into whole groups, minibatches and the
    micro-batch, up to four times the batch as written (at most `limit` of them)."""
    unit = config.estimate.world_size * config.rollout.samples_per_prompt
    top = max(4 * config.rollout.batch_size // unit, 1)
    out = [unit * k for k in range(1, min(top, limit) + 1) if _valid(config, batch=unit * k)]
    return sorted({*out, config.rollout.batch_size})


def world_candidates(config: Config) -> list[int]:
    """GPU counts the config's batch splits over (whole groups per GPU, the micro-batch per GPU as written)."""
    return [n for n in range(1, min(config.rollout.batch_size, MAX_GPUS) + 1) if _valid(config, world=n)]


def _variant(config: Config, micro: int | None = None, batch: int | None = None, world: int | None = None) -> Config:
    out = copy_config(config)
    if micro is not None:
        out.optim.micro_batch_size = micro
    if batch is not None:
        out.rollout.batch_size = batch
    if world is not None:
        out.estimate.world_size = world
        if out.estimate.critic_gpus:
            out.estimate.critic_gpus = world
    return out


def _valid(config: Config, **change) -> bool:
    variant = _variant(config, **change)
    try:
        check_world(variant, variant.estimate.world_size)
    except UserError:
        return False
    micro = variant.optim.micro_batch_size
    per_gpu = variant.rollout.batch_size // variant.estimate.world_size // variant.optim.minibatches
    return not micro or per_gpu % micro == 0


def _groups(raw, plan, has_critic: bool, device: Gpu) -> dict[str, Any]:
    return group_figures(raw, plan, gpu_groups(plan, has_critic), device.memory)


def _phase_peaks(raw: dict[str, Any], plan, has_critic: bool, device: Gpu) -> dict[tuple[str, str], int]:
    """{(group, phase): per-GPU total} on `device`, its engine's reservation included."""
    out = {}
    for group, figures in _groups(raw, plan, has_critic, device).items():
        for phase, row in figures.get("phases", {"generate": {"total": figures["peak"]}}).items():
            out[group, phase] = row["total"]
    return out


def _peak(raw, plan, has_critic: bool, device: Gpu) -> int:
    return max(figures["peak"] for figures in _groups(raw, plan, has_critic, device).values())


def _predict(points: list[tuple[float, dict]], x: float) -> float:
    """The larger of each (group, phase)'s affine fit through two points, at x."""
    (x0, p0), (x1, p1) = points
    best = 0.0
    for key in p0:
        if key in p1 and x1 != x0:
            slope = (p1[key] - p0[key]) / (x1 - x0)
            best = max(best, p0[key] + slope * (x - x0))
        else:
            best = max(best, p0[key])
    return best


def search(config: Config, algo: str, has_critic: bool, device: Gpu, knob: str, candidates: list[int],
           largest: bool, use_cache: bool, memo: dict, progress) -> dict[str, Any]:
    """The best of `candidates` (largest or smallest) whose estimated step peak fits `device`, confirmed by a fake step."""
    transform = (lambda v: 1 / v) if knob == "world" else float  # noqa: E731
    as_written = {"micro": config.optim.micro_batch_size, "batch": config.rollout.batch_size,
                  "world": config.estimate.world_size}[knob]
    if not candidates:
        return {"value": None, "as_written": as_written, "why": "no value passes the arm's checks"}

    def probe(value: int):
        variant = spread_over_gpus(_variant(config, **{knob: value}))
        plan = plan_estimate(variant)
        raw = run_arms([(variant, algo, plan)], use_cache, memo, progress)[0]
        return plan, raw

    base_plan, base_raw = probe(as_written if as_written in candidates else candidates[0])
    base_x = as_written if as_written in candidates else candidates[0]
    others = [c for c in candidates if c != base_x]
    if not others:
        fits = _peak(base_raw, base_plan, has_critic, device) <= device.memory
        return {"value": base_x if fits else None, "as_written": as_written, "confirmed": True,
                "peak": _peak(base_raw, base_plan, has_critic, device)}
    second = min(others, key=lambda c: abs(transform(c) - transform(base_x)))
    second_plan, second_raw = probe(second)
    points = [(transform(base_x), _phase_peaks(base_raw, base_plan, has_critic, device)),
              (transform(second), _phase_peaks(second_raw, second_plan, has_critic, device))]
    order = sorted(candidates, reverse=largest)
    predicted = [c for c in order if _predict(points, transform(c)) <= device.memory]
    tried = []
    for value in predicted[:MAX_CONFIRM]:
        plan, raw = probe(value)
        peak = _peak(raw, plan, has_critic, device)
        tried.append(value)
        if peak <= device.memory:
            return {"value": value, "as_written": as_written, "confirmed": True, "peak": peak, "tried": tried}
    why = ("no value fits, by the affine prediction from two fake steps" if not predicted
           else f"the predicted values {tried} do not fit when estimated")
    return {"value": None, "as_written": as_written, "why": why, "tried": tried}


def fit_arm(config: Config, algo: str, device: Gpu, use_cache: bool = True, progress=None) -> dict[str, Any]:
    """One arm's fit search: micro-batch, rollout batch and GPU count."""
    from harness.config.derive import algorithm_needs
    memo: dict = {}
    config = spread_over_gpus(config)
    has_critic = algorithm_needs(config, algo).critic
    world = config.estimate.world_size
    micro = search(config, algo, has_critic, device, "micro", micro_candidates(config), True, use_cache, memo, progress)
    batch = search(config, algo, has_critic, device, "batch", rows_candidates(config), True, use_cache, memo, progress)
    gpus = search(config, algo, has_critic, device, "world", world_candidates(config), False, use_cache, memo, progress)
    found = None
    if gpus["value"]:
        found = gpu_groups(plan_estimate(spread_over_gpus(_variant(config, world=gpus["value"]))), has_critic)
    written = gpu_groups(plan_estimate(config), has_critic)
    return {"micro_batch_size": micro,
            "rollout_rows_per_gpu": {**batch, "value": batch["value"] // world if batch["value"] else None,
                                     "as_written": config.rollout.batch_size // world, "batch": batch["value"]},
            "gpus": {**gpus, "total": sum(found.values()) if found else None, "as_written_total": sum(written.values())}}


def fit_search(configs: dict[str, Config], device: Gpu, use_cache: bool = True,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per arm: the largest micro-batch and rollout batch per GPU that fit `device`, the fewest GPUs (JSON-able).
    Arms of big models search side by side in worker processes, as `run_arms` runs their fake steps."""
    import os

    from harness.estimate.compute import parameter_count
    from harness.estimate.estimator import PARALLEL_FROM
    from harness.estimate.model_specs import resolve_model
    big = all(parameter_count(resolve_model(c.model.name, c).config) >= PARALLEL_FROM for c in configs.values())
    limit = int(os.environ.get("HARNESS_ESTIMATE_WORKERS") or 0) or os.cpu_count() or 1
    workers = min(len(configs), limit) if big else 1
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        if progress:
            progress(f"{', '.join(configs)}: fit searches in {workers} processes")
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {algo: pool.submit(fit_arm, config, algo, device, use_cache) for algo, config in configs.items()}
            out = {algo: future.result() for algo, future in futures.items()}
    else:
        out = {algo: fit_arm(config, algo, device, use_cache, progress) for algo, config in configs.items()}
    return {"device": {"key": device.key, "label": device.label, "bytes": device.memory}, "arms": out}
