"""The report's "At scale" section: the published setups (recipes) estimated per GPU, and this machine's MFU.

`harness compare` writes at_scale.json into the comparison folder: for each recipe in `estimate.at_scale`
(default verl's GRPO/PPO pair for Qwen2-7B on 8 GPUs), each arm's own step on fake tensors per GPU and by
phase, its fit on named GPUs and its GPU count (estimated), and its FLOPs and roofline GPU time per step
(arithmetic); for a model named there on request, this comparison's own config mapped onto it; and this
machine's measured matmul peak. The report reads that file and the arms' steps only; it never runs an
estimate. This machine's MFU per phase is the phase's FLOPs (arithmetic, from the run's sizes and tokens)
over its measured time and that peak.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.results.units import GIB

PHASE_ORDER = ("generate", "score", "old_logprobs", "ref_logprobs", "values", "advantages", "policy_update",
               "critic_update", "joint_update")
DEVICES = ("h100", "h200", "a100-80", "a100-40", "l40s")


def describe_cell(cell: dict[str, Any], axes: list[str]) -> str:
    return ", ".join(f"{axis.replace('_', ' ')} {cell[axis]}" for axis in axes)


def model_block(name: str, grid: dict[str, Any]) -> dict[str, Any]:
    top, bottom = grid["pair"]
    axes = grid["axes"]
    setup = grid["setup"]
    rows = [{"choices": [cell[a] for a in axes],
             "top": f"{cell['peaks'][top] / GIB:,.1f}", "top_phase": cell["peak_phases"][top],
             "bottom": f"{cell['peaks'][bottom] / GIB:,.1f}", "bottom_phase": cell["peak_phases"][bottom],
             "ratio": f"{cell['ratio']:.3f}"} for cell in grid["cells"]]
    low, high = grid["ratio_range"]
    return {"model": name, "top": top, "bottom": bottom, "axes": [a.replace("_", " ") for a in axes], "rows": rows,
            "low": f"{low:.3f}", "high": f"{high:.3f}", "lowest": describe_cell(grid["lowest"], axes),
            "highest": describe_cell(grid["highest"], axes),
            "setup": (f"{setup['precision']}, {setup['batch']} completions per step of {setup['prompt_length']} "
                      f"prompt + {setup['completion_length']} completion tokens, {setup['rows_per_gpu']} per GPU; "
                      f"rollout engine reserving {grid['reserve']:.0%} of device memory"),
            "notes": grid.get("notes", [])}


def gib(value: float | None) -> str:
    return "—" if not value else f"{value / GIB:,.1f}"


def setup_text(setup: dict[str, Any]) -> str:
    engine = setup.get("rollout_engine")
    text = (f"{setup['model']}, {setup['precision']}, checkpointing {'on' if setup['gradient_checkpointing'] else 'off'}; "
            f"{setup['batch']} completions a step (groups of {setup['group_size']}) of {setup['prompt_length']} + "
            f"{setup['completion_length']} tokens, {setup['rows_per_gpu']} per GPU on {setup['world_size']}; "
            f"{setup['minibatches']} minibatches, micro-batches of {setup['micro_batch_size'] or 'a minibatch'}, "
            f"log-prob passes of {setup['logprob_batch_size'] or 'all'} rows")
    if engine:
        text += f"; rollout engine reserving {engine['reserve']:.0%} ({engine['mode']}, TP {engine.get('tp', 1)})"
    if setup.get("offload"):
        text += f"; offloaded: {', '.join(setup['offload'])}"
    return text


def ratio_text(ratio: dict[str, Any] | None) -> str:
    return "—" if not ratio else f"{ratio['value']:.3f}"


def recipe_block(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """One recipe: its arms by phase per GPU, and the step's figures with their GRPO/PPO ratios."""
    arms = result["arms"]
    algos = list(arms)
    phases = [p for p in PHASE_ORDER if any(p in arm["phases"] for arm in arms.values())]
    by_phase = [{"phase": p, "cells": [gib(arms[a]["phases"].get(p, {}).get("total")) for a in algos],
                 "peak": [p == arms[a]["peak_phase"] for a in algos]} for p in phases]
    ratios = result.get("ratio", {})
    device = next((arm["compute"]["device"] for arm in arms.values() if arm.get("compute")), "—")

    def row(label: str, kind: str, values: list[str], ratio_key: str | None) -> dict[str, Any]:
        return {"label": label, "kind": kind, "cells": values, "ratio": ratio_text(ratios.get(ratio_key))}
    rows = [row("peak per GPU (GiB)", "estimated", [gib(arms[a]["peak"]) for a in algos], "peak"),
            row("model state per GPU (GiB)", "arithmetic", [gib(arms[a]["model_state_total"]) for a in algos],
                "model_state"),
            row("GPUs", "as published", [str(arms[a]["gpus"]) for a in algos], "gpus")]
    for key in DEVICES:
        label = result["devices"][key]["label"]
        rows.append(row(f"fits {label}", "estimated",
                        ["yes" if arms[a]["on_devices"][key]["fits"] else
                         f"no ({gib(arms[a]['on_devices'][key]['peak'])} GiB)" for a in algos], None))
    if all(arm.get("compute") for arm in arms.values()):
        rows += [row("FLOPs per step (PFLOP)", "arithmetic",
                     [f"{arms[a]['compute']['flops_total'] / 1e15:,.1f}" for a in algos], "flops"),
                 row(f"GPU time per step, roofline on {device} (s)", "arithmetic",
                     [f"{arms[a]['compute']['step_seconds']:,.1f}" for a in algos], None),
                 row("GPU-seconds per step", "arithmetic", [f"{arms[a]['compute']['gpu_seconds']:,.0f}" for a in algos],
                     "gpu_seconds")]
    pair = ratios.get("peak")
    recipe = result.get("recipe", {})
    title = recipe.get("title", name) + (f", {recipe['words']}" if recipe.get("words") else "")
    return {"name": name, "title": title, "algos": algos,
            "sources": [f"{a.upper()}: {arms[a].get('recipe', {}).get('source', '—')}" for a in algos],
            "setups": [f"{a.upper()}: {setup_text(arms[a]['setup'])}" for a in algos],
            "by_phase": by_phase, "rows": rows,
            "pair": f"{pair['numerator'].upper()}/{pair['denominator'].upper()}" if pair else None,
            "headline": (f"{pair['numerator'].upper()}/{pair['denominator'].upper()} per-GPU peak "
                         f"{pair['value']:.3f} (estimated)") if pair else None,
            "warnings": result.get("warnings", []), "notes": result.get("notes", [])}


def machine_block(data: dict[str, Any], cmp) -> dict[str, Any] | None:
    """This machine's measured seconds per phase, the phase's FLOPs (arithmetic) and MFU against the measured
    matmul peak, per arm (means over the arms' steps)."""
    machine = data.get("this_machine")
    if not machine or cmp is None:
        return None
    steps = cmp.steps()
    if steps.empty or not any(str(c).startswith("flops/") and c != "flops/step" for c in steps.columns):
        return None
    peak = machine["matmul_peak"]
    rows = []
    for arm in cmp.names:
        own = steps[steps["arm"] == arm]
        for phase in PHASE_ORDER:
            seconds_key, flops_key = f"time/{phase}", f"flops/{phase}"
            if seconds_key not in own or flops_key not in own:
                continue
            seconds, flops = own[seconds_key].mean(), own[flops_key].mean()
            if not seconds or flops != flops:  # a phase this arm does not run
                continue
            world = max([a.summary.world_size or 1 for a in cmp.ok_arms(arm)] or [1])
            rate = flops / seconds
            rows.append({"arm": arm, "phase": phase, "seconds": f"{seconds:.3f}", "flops": f"{flops / 1e9:,.2f}",
                         "rate": f"{rate / 1e9:,.1f}", "mfu": f"{rate / (peak * max(world, 1)):.1%}"})
    return {"peak": f"{peak / 1e9:,.1f}", "dtype": machine["dtype"], "threads": machine.get("threads"), "rows": rows}


def at_scale_section(comparison_dir: Path | str, cmp=None) -> dict[str, Any]:
    """{"recipes", "models", "machine", "world_size", "warnings", "why_not"} from at_scale.json."""
    path = Path(comparison_dir) / "at_scale.json"
    empty = {"recipes": [], "models": [], "machine": None, "world_size": None, "warnings": []}
    if not path.exists():
        return {**empty, "why_not": "not estimated: this comparison has no at_scale.json (estimate.at_scale was off, or "
                                    "it was written before the At scale section existed; harness estimate --recipe "
                                    "NAME gives it)"}
    try:
        data = json.loads(path.read_text())
        recipes = [recipe_block(name, result) for name, result in data.get("recipes", {}).items()]
        models = [model_block(name, grid) for name, grid in data.get("models", {}).items()]
        machine = machine_block(data, cmp)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as err:
        return {**empty, "why_not": f"at_scale.json could not be read ({type(err).__name__})"}
    return {"recipes": recipes, "models": models, "machine": machine, "world_size": data.get("world_size"),
            "warnings": data.get("warnings", []), "why_not": None}


def summary_lines(data: dict[str, Any]) -> list[str]:
    """What `harness compare` prints of at_scale.json: each recipe's ratios, each model's range."""
    lines = []
    for name, result in data.get("recipes", {}).items():
        ratios = result.get("ratio", {})
        parts = [f"{label} {ratios[key]['value']:.3f}" for key, label in
                 (("peak", "per-GPU peak"), ("gpus", "GPUs"), ("flops", "FLOPs"), ("gpu_seconds", "GPU-seconds"))
                 if ratios.get(key)]
        arms = result["arms"]
        peaks = ", ".join(f"{a.upper()} {arm['peak'] / GIB:,.1f} GiB per GPU on {arm['gpus']}" for a, arm in arms.items())
        adapted = (result.get("recipe") or {}).get("words")
        lines.append(f"{name}{' ' + adapted if adapted else ''}: {peaks}" + (f"; GRPO/PPO {', '.join(parts)}" if parts else ""))
    for model, grid in data.get("models", {}).items():
        low, high = grid["ratio_range"]
        lines.append(f"{model} (this comparison's config) {'/'.join(grid['pair'])} from {low:.3f} to {high:.3f}")
    return lines
