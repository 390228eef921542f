"""The verdict's resource rows: what each arm spent to reach the plan's target accuracy, and memory read
by the regime it was measured in.

To the target (paired by seed, harness.report.stats.censored_paired_ratio): sampled completions, training
time (periodic evaluations left out), peak memory and memory × time (GiB × s of the memory peak over the
time to the target), each to the first held-out evaluation at or above the target. A seed in which an
arm never reached the target is censored at its budget (its whole completions and training time) and kept:
its ratio is a bound, and so is the row's. Completions to the target are read against 1 (the claim, the same
quality for half the resources, predicts equal sample efficiency), the others against the claim's band.

Memory, read by regime, three rows: model state (arithmetic: it follows from the model sizes); the
per-GPU step peak of a named at-scale recipe pair (estimated on fake tensors by `harness estimate`, read
from at_scale.json); and this machine's measured peak (the CUDA allocator, else NVML, else live tensors),
labelled with its regime: the share of activations (with temporaries, KV cache and the rollout batch)
against model state (parameters, gradients, optimizer state, FSDP's gathered parameters) in the phase of
the peak. A 1M-parameter model is activation-bound: its peak says little about a 7B model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.report.content import cell, fmt, fmt_interval
from harness.report.data import Arm
from harness.report.stats import (AT_LEAST, AT_MOST, ESTIMATED, INCONCLUSIVE, Estimate, ToTarget, arithmetic,
                                  arithmetic_ratio, band_reading, censored_paired_ratio, mean_ci)
from harness.results.units import GIB

# This machine's memory figure, in order of preference: what the device's allocator saw, else the device's
# own count, else the live tensors (the only memory figure a CPU run measures exactly).
MACHINE_MEMORY = [("mem_cuda_allocated", "CUDA allocator peak"), ("mem_nvml_used", "NVML device memory peak"),
                  ("mem_live_peak", "live-tensor step peak")]
# What scales with the model rather than with the batch; every other category of a phase scales with the batch.
MODEL_STATE_CATEGORIES = ("params", "grads", "optimizer", "fsdp_buffers")
BOUND_SIGN = {AT_LEAST: "≥ ", AT_MOST: "≤ "}
TARGET_GROUP, MEMORY_GROUP = "To the target accuracy", "Memory, read by regime"


# ---------------------------------------------------------------- to the target

def reach(curve, target: float, time_column: str = "train") -> tuple[float, float] | None:
    """(completions, seconds) at the first held-out evaluation that reaches the target accuracy."""
    hits = curve[curve["accuracy"] >= target - 1e-12]
    if hits.empty:
        return None
    first = hits.iloc[0]
    return float(first["completions"]), float(first[time_column])


def spent_to_target(arm: Arm, target: float, memory_key: str | None) -> dict[str, ToTarget]:
    """One arm's completions, training seconds, peak memory (bytes) and memory × time (GiB·s) to the target;
    when it never reached it, its whole budget (censored: it would have needed more)."""
    curve = arm.eval_curve()
    hit = reach(curve, target)
    if hit is not None:
        completions, seconds = hit
    else:
        completions = arm.row.get("completions") or (float(curve["completions"].iloc[-1]) if len(curve) else 0.0)
        seconds = arm.row.get("wall") or (float(curve["train"].iloc[-1]) if len(curve) else 0.0)
    spent = {"to_target_completions": ToTarget(float(completions), hit is not None),
             "to_target_train": ToTarget(float(seconds), hit is not None)}
    peak = arm.row.get(memory_key) if memory_key else None
    if peak:  # a peak does not accumulate: the run's peak is what reaching the target needed, reached or not
        spent["to_target_memory"] = ToTarget(float(peak), True)
        spent["to_target_memory_time"] = ToTarget(peak / GIB * seconds, hit is not None)
    return spent


def machine_memory(arms: dict[str, list[Arm]]) -> tuple[str, str] | None:
    """(headline key, words) of the first memory figure of MACHINE_MEMORY that every finished arm of both has."""
    for key, words in MACHINE_MEMORY:
        if all(algo_arms and all(a.row.get(key) for a in algo_arms) for algo_arms in arms.values()):
            return key, words
    return None


def is_deterministic(arms: dict[str, list[Arm]], key: str | None) -> bool:
    """The live-tensor peak is a function of the shapes alone: identical on every seed of each arm, it is
    deterministic (tracked steps padded to fixed shapes) and has no interval."""
    if key != "mem_live_peak":
        return False
    return all(len({a.row.get(key) for a in algo_arms}) == 1 for algo_arms in arms.values())


def machine_peak(arms: dict[str, list[Arm]]) -> dict[str, Any]:
    """This machine's measured peak (MACHINE_MEMORY), GRPO/PPO paired by seed: a peak does not accumulate, so
    it is the same whether or when the target was reached. Deterministic (no interval) when it is the
    live-tensor peak and identical on every seed."""
    (top, top_arms), (bottom, bottom_arms) = arms.items()
    memory = machine_memory(arms)
    if memory is None:
        blank = Estimate(None, note="not measured")
        return {"key": None, "words": "no memory figure", "ratio_est": blank, "top_est": blank, "bottom_est": blank,
                "note": "no memory figure measured in both arms"}
    key, words = memory
    deterministic = is_deterministic(arms, key)
    values = {algo: {a.seed: ToTarget(float(a.row[key]), True) for a in algo_arms} for algo, algo_arms in arms.items()}
    ratio, per_seed = censored_paired_ratio(values[top], values[bottom], deterministic)

    def arm_estimate(algo_values: list[float]) -> Estimate:
        if deterministic:
            return Estimate(algo_values[0], n=len(algo_values), deterministic=True, note="deterministic: the same "
                            "on every seed")
        return mean_ci(algo_values, positive=True)
    return {"key": key, "words": words, "ratio_est": ratio, "per_seed": per_seed,
            "top_est": arm_estimate([v.value for v in values[top].values()]),
            "bottom_est": arm_estimate([v.value for v in values[bottom].values()]), "note": None}


def arm_cell(values: list[ToTarget], unit: str) -> tuple[Estimate, dict[str, str]]:
    """An arm's seed mean; when a seed never reached the target it counts at its budget and the mean is a bound."""
    estimate = mean_ci([v.value for v in values], positive=True)
    missed = sum(not v.reached for v in values)
    if not missed:
        return estimate, cell(estimate, unit)
    estimate.bound = AT_LEAST
    text = f"{len(values) - missed} of {len(values)} seeds reached it; the others at their budget"
    return estimate, {"value": BOUND_SIGN[AT_LEAST] + fmt(estimate.mean, unit), "interval": text}


def ratio_cell(estimate: Estimate) -> dict[str, str]:
    return {"value": BOUND_SIGN.get(estimate.bound, "") + fmt(estimate.mean, "ratio"),
            "interval": fmt_interval(estimate, "ratio")}


def per_seed_text(per_seed: dict[int, tuple[float, str]]) -> str:
    """'s0 0.83, s1 ≥ 1.20' (a censored seed's bound marked)."""
    return ", ".join(f"s{s} {BOUND_SIGN.get(kind, '')}{'?' if kind == 'unknown' else f'{ratio:.2f}'}"
                     for s, (ratio, kind) in per_seed.items())


def target_rows(plan: dict[str, Any], target: dict[str, Any], arms: dict[str, list[Arm]],
                regime: dict[str, Any], time_note: str | None) -> list[dict[str, Any]]:
    """The four rows to the plan's target, GRPO/PPO paired by seed, censored seeds kept at their budget."""
    (top, top_arms), (bottom, bottom_arms) = arms.items()
    memory = machine_memory(arms)
    memory_key, memory_words = memory if memory else (None, "no memory figure")
    text = target["text"] if target.get("value") is not None else "the target"
    specs = [("to_target_completions", f"sampled completions to reach {text}", "count", plan["completions_band"],
              "against 1: the claim predicts equal sample efficiency"),
             ("to_target_train", f"training time to reach {text}", "s", plan["band"], time_note),
             ("to_target_memory", f"peak memory to reach {text} ({memory_words})", "MiB", plan["band"],
              "a peak does not accumulate: each seed counts at its run's peak, reached or not"),
             ("to_target_memory_time", f"memory × time to reach {text} ({memory_words} × training time)", "GiB·s",
              plan["band"], None)]
    rows = []
    for key, label, unit, band, note in specs:
        row = {"group": TARGET_GROUP, "key": key, "label": label, "unit": unit, "primary": False, "claim": True,
               "kind": "measured", "band": list(band), "memory_words": memory_words}
        if not target.get("usable"):
            blank = Estimate(None, note="no target")
            rows.append({**row, "top": cell(blank), "bottom": cell(blank), "ratio": cell(blank), "reading": "—",
                         "ratio_est": blank, "top_est": blank, "bottom_est": blank,
                         "note": target.get("note") or target["source"]})
            continue
        spent = {algo: {a.seed: spent_to_target(a, target["value"], memory_key) for a in algo_arms}
                 for algo, algo_arms in arms.items()}
        values = {algo: {seed: s[key] for seed, s in by_seed.items() if key in s} for algo, by_seed in spent.items()}
        if not values[top] or not values[bottom]:
            blank = Estimate(None, note="not measured")
            rows.append({**row, "top": cell(blank), "bottom": cell(blank), "ratio": cell(blank), "reading": "—",
                         "ratio_est": blank, "top_est": blank, "bottom_est": blank,
                         "note": "no memory figure measured in both arms"})
            continue
        if key == "to_target_memory":  # the run's peak, as this machine's row below
            peak = machine_peak(arms)
            ratio, per_seed = peak["ratio_est"], peak["per_seed"]
            top_est, bottom_est = peak["top_est"], peak["bottom_est"]
            top_cell, bottom_cell = cell(top_est, unit), cell(bottom_est, unit)
        else:
            ratio, per_seed = censored_paired_ratio(values[top], values[bottom])
            top_est, top_cell = arm_cell(list(values[top].values()), unit)
            bottom_est, bottom_cell = arm_cell(list(values[bottom].values()), unit)
        reading = band_reading(ratio, *band) if ratio.mean is not None else INCONCLUSIVE
        notes = [note, f"per seed: {per_seed_text(per_seed)}"]
        if key in ("to_target_memory", "to_target_memory_time") and not regime["read"]:
            reading = "—"
            notes.insert(0, f"{regime['text']}: not read against the band (memory is read by regime)")
        rows.append({**row, "top": top_cell, "bottom": bottom_cell, "ratio": ratio_cell(ratio), "ratio_est": ratio,
                     "top_est": top_est, "bottom_est": bottom_est, "reading": reading,
                     "note": "; ".join(filter(None, notes))})
    return rows


# ---------------------------------------------------------------- memory by regime

def phase_regime(arm: Arm) -> tuple[str, float] | None:
    """(phase, share of model state) of the arm's live-tensor peak, from its per-phase categories."""
    live = arm.summary.mem.live
    phase = live.peak_phase
    categories = (live.phases or {}).get(phase) or {}
    total = categories.get("total") or sum(v for k, v in categories.items() if k != "total" and isinstance(v, int))
    if not phase or not total:
        return None
    state = sum(categories.get(k) or 0 for k in MODEL_STATE_CATEGORIES)
    return phase, state / total


def regime_of(arms: dict[str, list[Arm]]) -> dict[str, Any]:
    """This machine's regime: activation-bound when activations (with temporaries, KV cache and the rollout)
    outweigh model state in the peak phase of every arm, model-state-bound when model state does in every arm.
    `read`: whether this machine's memory figures speak to the claim (model-state-bound only)."""
    shares = {}
    for algo, algo_arms in arms.items():
        found = [r for r in (phase_regime(a) for a in algo_arms) if r]
        if found:
            shares[algo] = (found[0][0], sum(share for _, share in found) / len(found))
    if len(shares) < len(arms):
        return {"bound": None, "read": False, "shares": shares,
                "text": "regime unknown: no live-tensor categories recorded for both algorithms"}
    activation = {algo: 1 - share for algo, (_, share) in shares.items()}
    if all(a > 0.5 for a in activation.values()):
        bound, words = "activation-bound", "activations " + ", ".join(
            f"{100 * a:.0f}% of {algo.upper()}'s peak ({shares[algo][0]})" for algo, a in activation.items())
    elif all(a <= 0.5 for a in activation.values()):
        bound, words = "model-state-bound", "model state " + ", ".join(
            f"{100 * (1 - a):.0f}% of {algo.upper()}'s peak ({shares[algo][0]})" for algo, a in activation.items())
    else:
        bound, words = "mixed", ", ".join(f"activations {100 * a:.0f}% of {algo.upper()}'s peak"
                                          for algo, a in activation.items())
    return {"bound": bound, "read": bound == "model-state-bound", "shares": shares, "text": f"{bound}: {words}"}


def recipe_pairs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The GRPO/PPO recipe pairs at_scale.json holds under "recipes" (a list, or a dict by name), each as
    {"names", "pair", "top", "bottom", "ratio", "world_size"} with per-GPU peaks in bytes. An entry is either
    {"names": [...], "pair": [numerator, denominator], "peaks": {algo: bytes}, "ratio", "world_size"} or the
    result of `harness estimate --recipe A,B` ({"arms": {algo: {"peak", "recipe": {"name"}}}, "ratio": {"peak":
    {"value", "numerator", "denominator"}}}). Entries of any other shape are skipped."""
    entries = data.get("recipes") or []
    entries = list(entries.values()) if isinstance(entries, dict) else list(entries)
    pairs = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        ratio = entry.get("ratio")
        if isinstance(ratio, dict):  # an estimate result
            peak = ratio.get("peak") or {}
            pair = [peak.get("numerator"), peak.get("denominator")]
            arms = entry.get("arms") or {}
            peaks = {algo: (arms.get(algo) or {}).get("peak") for algo in pair}
            names = list(dict.fromkeys(((arms.get(algo) or {}).get("recipe") or {}).get("name") for algo in pair))
            ratio = peak.get("value")
        else:
            pair, peaks, names = entry.get("pair") or [], entry.get("peaks") or {}, entry.get("names") or []
        if len(pair) == 2 and isinstance(ratio, (int, float)) and ratio > 0 and all(names):
            pairs.append({"names": [str(n) for n in names], "pair": pair, "top": peaks.get(pair[0]),
                          "bottom": peaks.get(pair[1]), "ratio": float(ratio),
                          "adapted": str((entry.get("recipe") or {}).get("words") or ""),
                          "world_size": entry.get("world_size") or (entry.get("setup") or {}).get("world_size")})
    return pairs


def at_scale_memory(comparison_dir: Path, algos: tuple[str, str]) -> dict[str, Any]:
    """The estimated per-GPU peak ratio of the first recipe pair of these algorithms (numerator, denominator) in
    at_scale.json, or why there is none."""
    path = Path(comparison_dir) / "at_scale.json"
    if not path.exists():
        return {"estimate": Estimate(None, note="no at_scale.json (estimate.at_scale was off)", kind=ESTIMATED),
                "names": [], "why_not": "no at_scale.json in this comparison (estimate.at_scale was off)"}
    try:
        data = json.loads(path.read_text())
        pairs = recipe_pairs(data) if isinstance(data, dict) else []
    except (OSError, ValueError) as err:
        why = f"at_scale.json could not be read ({type(err).__name__})"
        return {"estimate": Estimate(None, note=why, kind=ESTIMATED), "names": [], "why_not": why}
    pairs = [p for p in pairs if tuple(p["pair"]) == tuple(algos)]
    if not pairs:
        own = "; ".join(f"{model}: {grid['ratio_range'][0]:.3f}–{grid['ratio_range'][1]:.3f} for this comparison's "
                        "own setup (see At scale)" for model, grid in (data.get("models") or {}).items()
                        if isinstance(grid, dict) and grid.get("ratio_range"))
        why = "at_scale.json holds no recipe pair of published setups" + (f" ({own}, not a published stack)"
                                                                        if own else "")
        return {"estimate": Estimate(None, note=why, kind=ESTIMATED), "names": [], "why_not": why}
    first = pairs[0]
    gpus = f", per GPU of {first['world_size']}" if first.get("world_size") else ", per GPU"
    adapted = f" {first['adapted']}" if first.get("adapted") else ""
    note = f"estimated, {' + '.join(first['names'])}{adapted}{gpus} (harness estimate on fake tensors)"
    if len(pairs) > 1:
        note += f"; {len(pairs) - 1} more pair{'s' * (len(pairs) > 2)} in At scale"
    return {"estimate": Estimate(first["ratio"], n=1, note=note, kind=ESTIMATED), "names": first["names"],
            "top": first["top"], "bottom": first["bottom"], "why_not": None}


def memory_rows(comparison_dir: Path, plan: dict[str, Any], arms: dict[str, list[Arm]],
                regime: dict[str, Any]) -> list[dict[str, Any]]:
    """Model state (arithmetic), the named at-scale stacks (estimated) and this machine's peak (measured, its
    regime named), GRPO/PPO: `arms` maps each of the two arm names to its finished arms."""
    (top, top_arms), (bottom, bottom_arms) = arms.items()
    low, high = plan["band"]
    state = {algo: [a.row["mem_model_state"] for a in algo_arms if a.row.get("mem_model_state")]
             for algo, algo_arms in arms.items()}
    state_ratio = arithmetic_ratio(state[top], state[bottom])
    rows = [{"group": MEMORY_GROUP, "key": "memory_model_state", "regime": "model state",
             "label": "model state (params + grads + optimizer), arithmetic", "unit": "MiB", "kind": "arithmetic",
             "top_est": arithmetic(state[top]), "bottom_est": arithmetic(state[bottom]), "ratio_est": state_ratio,
             "reading": "—", "note": None}]
    algos = tuple(next((a.algo for a in algo_arms), name) for name, algo_arms in arms.items())
    scale = at_scale_memory(comparison_dir, algos)
    estimate = scale["estimate"]
    rows.append({"group": MEMORY_GROUP, "key": "memory_at_scale", "regime": "at scale",
                 "label": f"per-GPU step peak at scale ({estimate.note if estimate.mean is not None else 'estimated'})",
                 "unit": "GiB", "kind": ESTIMATED,
                 "top_est": Estimate(scale.get("top") and scale["top"] / GIB, kind=ESTIMATED),
                 "bottom_est": Estimate(scale.get("bottom") and scale["bottom"] / GIB, kind=ESTIMATED),
                 "ratio_est": estimate, "reading": band_reading(estimate, low, high) if estimate.mean else "—",
                 "note": scale["why_not"], "names": scale["names"]})
    machine = machine_peak(arms)
    estimate = machine["ratio_est"]
    read = regime["read"] and estimate.mean is not None
    rows.append({"group": MEMORY_GROUP, "key": "memory_machine", "regime": "this machine",
                 "label": f"this machine's peak, measured ({machine['words']})", "unit": "MiB", "kind": "measured",
                 "top_est": machine["top_est"], "bottom_est": machine["bottom_est"], "ratio_est": estimate,
                 "reading": band_reading(estimate, low, high) if read else "—",
                 "note": machine["note"] or regime["text"] + ("" if read else ": never read against the band by itself")})
    for row in rows:
        row.update(primary=False, claim=row["reading"] != "—", band=[low, high],
                   top=cell(row["top_est"], row["unit"]), bottom=cell(row["bottom_est"], row["unit"]),
                   ratio=ratio_cell(row["ratio_est"]) if row["ratio_est"].mean is not None else cell(row["ratio_est"]))
    return rows


def verdict_memory(rows: list[dict[str, Any]], regime: dict[str, Any]) -> dict[str, Any]:
    """The memory row the verdict reads: this machine's measured peak when it is model-state-bound (the regime
    the claim is about), else the named at-scale pair's estimated per-GPU peak, else none (memory not read)."""
    by_key = {r["key"]: r for r in rows}
    machine, scale = by_key["memory_machine"], by_key["memory_at_scale"]
    if regime["read"] and machine["ratio_est"].mean is not None:
        return {"row": machine, "reading": machine["reading"], "why": f"this machine is {regime['bound']}"}
    if scale["ratio_est"].mean is not None:
        why = (f"this machine is {regime['text']}" if regime["bound"] else regime["text"])
        return {"row": scale, "reading": scale["reading"], "why": f"{why}; the named at-scale stacks are read"}
    return {"row": None, "reading": None,
            "why": f"memory not read: this machine's peak is {regime['text']}, and {scale['note']}"}
