"""Each arm's per-GPU figures from its fake step's raw result (pure): the phases one GPU of each group holds
(the policy's, the critic's when it has GPUs of its own, the rollout engine's), the step peak, the model state,
and the fit on each named device. A cached raw result gives the same figures: these functions are not part of
the estimate's code fingerprint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.config.choices import DEVICE_MEMORY_GIB
from harness.estimate.model_specs import ModelSpec
from harness.results.headline import PHASES
from harness.results.units import GIB

if TYPE_CHECKING:
    from harness.config.schema import Config

MODEL_STATE = ("params", "grads", "optimizer")


@dataclass
class Plan:
    """What an estimate runs: the model, one GPU's workload, and how its figures are read."""

    model: ModelSpec
    reward_model: ModelSpec | None
    world_size: int
    batch_rows: int  # completions per step, all GPUs together
    workload: Any  # fake_generation.Workload of one GPU
    reserve: float  # the rollout engine's share of device memory (0: none)
    engine: str  # resident | asleep
    device: str  # a key of DEVICE_MEMORY_GIB
    cuda_optimizer: bool = True  # AdamW's foreach path, which torch takes for CUDA tensors
    critic_gpus: int = 0  # GPUs of the critic and the reward model's own (0: the policy's)
    engine_gpus: int = 0  # GPUs of the rollout engine's own (0: colocated)


# ---------------------------------------------------------------- per-GPU figures (pure)

def elsewhere_models(plan: Plan) -> tuple[str, ...]:
    """The models on GPUs of their own: the critic and the reward model, with estimate.critic_gpus."""
    return ("critic", "reward_model") if plan.critic_gpus else ()


# Phases whose compute runs on the critic's GPUs when it has its own (the score phase: the reward model's).
CRITIC_PHASES = ("score", "values", "critic_update")


def _cells(row: dict[str, int], keep=None, drop=()) -> dict[str, int]:
    return {k: v for k, v in row.items() if k not in ("total", "offloaded", *drop) and (keep is None or k in keep)}


def _with_total(cells: dict[str, int]) -> dict[str, int]:
    return {**cells, "total": sum(cells.values())}


def per_gpu(raw: dict[str, Any], group: str = "policy", separate_engine: bool = False) -> dict[str, dict[str, int]]:
    """{phase: {category: bytes, total}} on one GPU of `group`: the fake step's figures (rank 0's under FSDP2 above
    world size 1), less the shards of offloaded models, which live in CPU memory.

    With the critic (and reward model) on GPUs of their own, the fake step filed their state apart
    (`elsewhere_*`): the policy's GPUs hold their own state and the rollout through the critic's phases, and
    the compute of the others; the critic's GPUs the reverse. With the engine on GPUs of its own, the policy's
    GPUs do not generate: their generate phase holds their state."""
    elsewhere = ("elsewhere_params", "elsewhere_optimizer")
    out = {}
    for phase, row in raw["phases"].items():
        critic_phase = phase in CRITIC_PHASES
        if group == "policy":
            if critic_phase and any(row.get(k) for k in elsewhere):
                cells = _cells(row, keep=("params", "optimizer", "rollout"))
            elif phase == "generate" and separate_engine:
                cells = _cells(row, keep=MODEL_STATE)
            else:
                cells = _cells(row, drop=elsewhere)
        else:  # the critic's GPUs
            own = {"params": row.get("elsewhere_params", 0), "optimizer": row.get("elsewhere_optimizer", 0)}
            if critic_phase or phase == "advantages":
                cells = {**_cells(row, drop=(*MODEL_STATE, *elsewhere)), **own}
            else:
                cells = {**own, "rollout": row.get("rollout", 0)}
            cells = {k: v for k, v in cells.items() if v}
        out[phase] = _with_total(cells)
    return out


def with_engine(phases: dict[str, dict[str, int]], engine_bytes: int, engine: str) -> dict[str, dict[str, int]]:
    """Phases with a colocated rollout engine's reservation. The engine generates: in the generate phase the
    GPU holds the model state and the engine; resident, it keeps its reservation through training too."""
    if not engine_bytes:
        return phases
    out = {}
    for phase, row in phases.items():
        if phase == "generate":
            cells = {k: v for k, v in row.items() if k in (*MODEL_STATE, "rollout")}
            cells["rollout_engine"] = engine_bytes
        elif engine == "resident":
            cells = {**{k: v for k, v in row.items() if k != "total"}, "rollout_engine": engine_bytes}
        else:
            cells = {k: v for k, v in row.items() if k != "total"}
        out[phase] = {**cells, "total": sum(cells.values())}
    return out


def step_peak(phases: dict[str, dict[str, int]]) -> tuple[int, str]:
    phase = max(phases, key=lambda name: phases[name]["total"])
    return phases[phase]["total"], phase


def device_bytes(device: str) -> int:
    return DEVICE_MEMORY_GIB[device][1] * GIB


def ordered(phases: dict[str, Any]) -> dict[str, Any]:
    return {p: phases[p] for p in sorted(phases, key=lambda p: PHASES.index(p) if p in PHASES else len(PHASES))}


def gpu_groups(plan: Plan, has_critic: bool) -> dict[str, int]:
    """{"policy", "critic", "engine": GPUs each group holds}; 0 where a group has no GPUs of its own."""
    return {"policy": plan.world_size,
            "critic": plan.critic_gpus if plan.critic_gpus and (has_critic or plan.reward_model) else 0,
            "engine": plan.engine_gpus}


def group_figures(raw: dict[str, Any], plan: Plan, gpus: dict[str, int], memory: int) -> dict[str, dict[str, Any]]:
    """Each GPU group's per-GPU phases and step peak, the rollout engine reserving its share of `memory` bytes."""
    engine_bytes = round(plan.reserve * memory)
    out = {}
    for group in ("policy", "critic"):
        if not gpus[group]:
            continue
        phases = per_gpu(raw, group, separate_engine=bool(gpus["engine"]))
        if group == "policy" and not gpus["engine"]:
            phases = with_engine(phases, engine_bytes, plan.engine)
        phases = ordered(phases)
        peak, peak_phase = step_peak(phases)
        out[group] = {"gpus": gpus[group], "phases": phases, "peak": peak, "peak_phase": peak_phase}
    if gpus["engine"]:
        out["engine"] = {"gpus": gpus["engine"], "peak": engine_bytes, "peak_phase": "generate"}
    return out


def state_by_group(state: dict[str, dict[str, int]], plan: Plan) -> dict[str, dict[str, dict[str, int]]]:
    """The arithmetic model state of one GPU of each group: {group: {model: bytes}}."""
    elsewhere = elsewhere_models(plan)
    return {"policy": {m: row for m, row in state.items() if m not in elsewhere},
            "critic": {m: row for m, row in state.items() if m in elsewhere}}


def arm_figures(raw: dict[str, Any], plan: Plan, config: Config | None = None, algo: str | None = None,
                has_critic: bool | None = None) -> dict[str, Any]:
    """One arm's per-GPU phases (of the policy's GPUs; each GPU group's under `groups`), step peak, model state,
    GPU count, its peak on each named device, and (with `config`) its FLOPs and roofline time per step."""
    if has_critic is None:
        has_critic = "critic" in raw["model_state"]
    gpus = gpu_groups(plan, has_critic)
    groups = group_figures(raw, plan, gpus, device_bytes(plan.device))
    main = groups["policy"]
    states = state_by_group(raw["model_state"], plan)
    on_devices = {}
    for device in DEVICE_MEMORY_GIB:
        peaks = {g: row["peak"] for g, row in group_figures(raw, plan, gpus, device_bytes(device)).items()}
        on_devices[device] = {"peak": max(peaks.values()), "peaks": peaks,
                              "fits": max(peaks.values()) <= device_bytes(device)}
    figures = {"phases": main["phases"], "peak": main["peak"], "peak_phase": main["peak_phase"],
               "model_state": raw["model_state"],
               "model_state_total": sum(row["total"] for row in states["policy"].values()),
               "model_state_all_gpus": sum(sum(row["total"] for row in states[g].values()) * gpus[g]
                                           for g in ("policy", "critic") if gpus[g] or g == "policy"),
               "groups": groups, "gpus": sum(gpus.values()), "gpu_groups": gpus, "on_devices": on_devices,
               "seconds": raw["seconds"], "cached": raw.get("cached", False)}
    if config is not None:
        from harness.estimate.compute import step_compute
        from harness.estimate.devices import gpu
        figures["compute"] = step_compute(config, plan, has_critic, list(raw["phases"]), gpus, gpu(plan.device))
    return figures
