"""The verdict on the claim: GRPO/PPO ratios of every headline figure with 95% intervals, time to a
target accuracy, and a one-sentence reading by the rule in harness.report.stats."""

from __future__ import annotations

from typing import Any

from harness.report.content import cell, figure_values, fmt, fmt_interval, fmt_points
from harness.report.data import Arm, Comparison, get
from harness.report.stats import (BAND, CLAIM, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, RULE, Estimate,
                                  difference_ci, mean_ci, quality_reading, ratio_ci, ratio_reading, verdict)
from harness.results import MEMORY_FIGURES, TIME_FIGURES

# The memory figure the verdict rests on: the allocator peak where a GPU measured it, else the step peak
# of live tensors (the max over the phases of a step).
PRIMARY_MEMORY = ["mem_cuda_allocated", "mem_live_peak"]
EXACT_KEYS = {"mem_model_state"}  # arithmetic: follows from the model sizes, identical for every seed
CLAIM_KEYS = {key for key, _, _ in MEMORY_FIGURES} | {"time_per_step", "wall", "to_target_completions", "to_target_wall"}
ROW_NOTES = {
    "mem_model_state": "arithmetic: follows from the model sizes",
    "time_per_step": "training steps only: periodic evaluations and live-tensor tracked steps left out",
    "wall": "training time for the whole budget; periodic evaluations left out",
    "samples_per_s": "higher is better; the claim reads as about 2",
    "gen_tokens_per_s": "higher is better; the claim reads as about 2",
}


def not_measured_reason(cmp: Comparison, key: str, algo: str) -> str:
    arms = cmp.arms_of(algo)
    if not arms:
        return "no arm"
    if not any(a.ok for a in arms):
        return "no finished arm (" + "; ".join(f"{a.label}: {a.status}" for a in arms) + ")"
    if key.startswith(("mem_cuda", "mem_nvml")):
        reasons = {get(a.summary, "mem", "measured", "gpu") for a in arms}
        reasons = {r for r in reasons if isinstance(r, str)}
        if reasons:
            return "; ".join(sorted(reasons))
    return "not measured"


# ---------------------------------------------------------------- target accuracy

def reach(curve, target: float) -> tuple[float, float] | None:
    """(completions, wall) at the first held-out evaluation that reaches target accuracy."""
    hits = curve[curve["accuracy"] >= target - 1e-12]
    if hits.empty:
        return None
    first = hits.iloc[0]
    return float(first["completions"]), float(first["wall"])


def target_accuracy(cmp: Comparison, target: float | None) -> dict[str, Any]:
    """The accuracy every arm is timed to: given, or the lowest final accuracy of any finished arm."""
    finals = [(a.row["acc_final"], a.label) for a in cmp.arms if a.ok and a.row.get("acc_final") is not None]
    bases = [a.row["acc_base"] for a in cmp.arms if a.ok and a.row.get("acc_base") is not None]
    eval_every = get(cmp.config, "run", "eval_every")
    resolution = (f"held-out accuracy is measured every {eval_every} steps, at the start and at the end"
                  if eval_every else "held-out accuracy is measured only at the start and the end (run.eval_every = 0)")
    if target is not None:
        source = "set with --target"
    elif finals:
        target, label = min(finals)
        source = f"the lowest final held-out accuracy of any finished arm ({label}), so that every arm reaches it"
    else:
        return {"value": None, "text": "—", "source": "no finished arm measured accuracy", "resolution": resolution,
                "usable": False, "note": None}
    base = max(bases) if bases else None
    usable = base is None or target > base + 1e-12
    note = None if usable else (f"the target ({fmt(target, '%')}) is not above the start ({fmt(base, '%')}): "
                                "no learning to time")
    return {"value": target, "text": fmt(target, "%"), "source": source, "resolution": resolution,
            "usable": usable, "note": note}


# ---------------------------------------------------------------- the verdict

def verdict_section(cmp: Comparison, target: float | None = None) -> dict[str, Any]:
    pair = cmp.pair
    section: dict[str, Any] = {"claim": CLAIM, "band": BAND, "rule": RULE, "rows": [], "pair": pair, "compute": [],
                               "primary": None, "seeds": {}, "quality": Estimate(None), "quality_reading": "unknown",
                               "quality_text": "—"}
    target_info = target_accuracy(cmp, target)
    section["target"] = target_info
    if pair is None:
        section.update(reading=INCONCLUSIVE, sentence="Inconclusive: a verdict needs two algorithms; this comparison ran "
                       f"only {', '.join(cmp.algos) or 'none'}.")
        return section
    top, bottom = pair
    top_arms, bottom_arms = cmp.ok_arms(top), cmp.ok_arms(bottom)
    section["seeds"] = {top: len(top_arms), bottom: len(bottom_arms), "planned": len(cmp.seeds)}

    for group, figures in (("Memory (peak)", MEMORY_FIGURES), ("Time", TIME_FIGURES)):
        for key, label, unit in figures:
            section["rows"].append(ratio_row(cmp, group, key, label, unit, top_arms, bottom_arms, top, bottom))
    section["rows"].extend(target_rows(target_info, {top: top_arms, bottom: bottom_arms}))

    primary_key = next((k for k in PRIMARY_MEMORY if figure_values(top_arms, k) and figure_values(bottom_arms, k)), None)
    primary = next((r for r in section["rows"] if r["key"] == primary_key), None)
    memory = primary["ratio_est"] if primary else Estimate(None, note="no memory figure for both algorithms")
    difference = difference_ci(figure_values(top_arms, "acc_final"), figure_values(bottom_arms, "acc_final"))
    reading = verdict(memory, difference)
    if primary:
        primary["primary"] = True
    section["compute"] = compute_lines(section, top, bottom)
    section.update(primary=primary, quality=difference, quality_reading=quality_reading(difference),
                   quality_text=fmt_points(difference), reading=reading,
                   sentence=verdict_sentence(cmp, top, bottom, primary, memory, difference, reading))
    return section


def compute_lines(section: dict[str, Any], top: str, bottom: str) -> list[str]:
    """Beside the verdict: time per step, and what reaching the target accuracy took."""
    rows = {r["key"]: r for r in section["rows"]}
    T, B = top.upper(), bottom.upper()

    def ratio(key: str) -> str:
        est = rows[key]["ratio_est"]
        interval = fmt_interval(est, "ratio")
        return f"{est.mean:.2f}× {B}'s ({interval if interval.startswith('[') else interval}; {rows[key]['reading']})"
    lines = []
    if rows["time_per_step"]["ratio_est"].mean is not None:
        lines.append(f"Compute: {T}'s time per step was {ratio('time_per_step')}.")
    if rows["to_target_completions"]["ratio_est"].mean is not None:
        lines.append(f"To reach {section['target']['text']} held-out accuracy, {T} needed "
                     f"{ratio('to_target_completions')} sampled completions"
                     + (f" and {ratio('to_target_wall')} wall time" if rows["to_target_wall"]["ratio_est"].mean is not None
                        else "") + ".")
    return lines


def target_rows(target_info: dict[str, Any], arms: dict[str, list[Arm]]) -> list[dict[str, Any]]:
    """Sampled completions and wall time until the first held-out evaluation at or above the target."""
    (top, top_arms), (bottom, bottom_arms) = arms.items()
    text = target_info.get("text") or "the target"
    rows = []
    for key, label, unit, field in [("to_target_completions", f"sampled completions to reach {text}", "count", 0),
                                    ("to_target_wall", f"wall time to reach {text}", "s", 1)]:
        row = {"group": "To the target accuracy", "key": key, "label": label, "unit": unit, "primary": False,
               "claim": True, "note": None}
        if not target_info.get("usable"):
            blank = Estimate(None, note="no target")
            row.update(top=cell(blank), bottom=cell(blank), ratio=cell(blank), reading="—", ratio_est=blank,
                       top_est=blank, bottom_est=blank, note=target_info.get("note") or target_info["source"])
            rows.append(row)
            continue
        values, partial = {}, []
        for algo, algo_arms in arms.items():
            hits = [reach(a.eval_curve(), target_info["value"]) for a in algo_arms]
            values[algo] = [h[field] for h in hits if h]
            if len(values[algo]) < len(algo_arms):
                partial.append(f"{algo}: {len(values[algo])} of {len(algo_arms)} seeds reached it")
        top_est, bottom_est = mean_ci(values[top]), mean_ci(values[bottom])
        ratio = ratio_ci(values[top], values[bottom])
        row.update(top=cell(top_est, unit), bottom=cell(bottom_est, unit), ratio=cell(ratio, "ratio"),
                   reading=ratio_reading(ratio), ratio_est=ratio, top_est=top_est, bottom_est=bottom_est,
                   note="; ".join(partial) + " (means over those that did)" if partial else None)
        rows.append(row)
    return rows


def ratio_row(cmp: Comparison, group: str, key: str, label: str, unit: str, top_arms, bottom_arms, top,
              bottom) -> dict[str, Any]:
    exact = key in EXACT_KEYS
    top_values, bottom_values = figure_values(top_arms, key), figure_values(bottom_arms, key)
    top_est = mean_ci(top_values, exact=exact) if top_values else Estimate(None, note=not_measured_reason(cmp, key, top))
    bottom_est = (mean_ci(bottom_values, exact=exact) if bottom_values
                  else Estimate(None, note=not_measured_reason(cmp, key, bottom)))
    ratio = ratio_ci(top_values, bottom_values, exact=exact)
    if ratio.mean is None and (not top_values or not bottom_values):
        ratio = Estimate(None, note="not measured")
    claim = key in CLAIM_KEYS
    return {"group": group, "key": key, "label": label, "unit": unit, "top_est": top_est, "bottom_est": bottom_est,
            "top": cell(top_est, unit), "bottom": cell(bottom_est, unit), "ratio": cell(ratio, "ratio"),
            "ratio_est": ratio, "claim": claim,
            "reading": ratio_reading(ratio) if claim and ratio.mean is not None else "—", "primary": False,
            "note": ROW_NOTES.get(key)}


PRIMARY_WORDS = {"mem_cuda_allocated": "CUDA allocator peak", "mem_live_peak": "measured step peak of live tensors"}


def verdict_sentence(cmp, top, bottom, primary, memory: Estimate, difference: Estimate, reading: str) -> str:
    """The one-sentence reading: the primary memory ratio beside the claim, and the quality check."""
    head = {REPRODUCED: "Reproduced", NOT_REPRODUCED: "Not reproduced", INCONCLUSIVE: "Inconclusive"}[reading]
    T, B = top.upper(), bottom.upper()
    n = min(len(cmp.ok_arms(top)), len(cmp.ok_arms(bottom)))
    if primary is None or memory.mean is None:
        failed = [a for a in cmp.arms if not a.ok]
        why = "; ".join(f"{a.label} {a.status}" + (f": {a.error}" if a.error else "") for a in failed) or "no memory figure"
        return f"{head}: there is no {T}/{B} memory ratio to set beside the claim ({why})."
    if memory.has_interval and memory.lo != memory.hi:
        interval = f"95% interval {memory.lo:.2f}–{memory.hi:.2f} over {n} seed{'s' * (n != 1)}"
    elif memory.has_interval:
        interval = f"identical over {n} seed{'s' * (n != 1)}"
    else:
        interval = memory.note
    quality = {"not worse": f"its final held-out accuracy was not worse ({T} − {B}: {fmt_points(difference)})",
               "worse": f"its final held-out accuracy was worse ({T} − {B}: {fmt_points(difference)})",
               "unknown": f"its final held-out accuracy could not be compared ({difference.note or 'not measured'})",
               }[quality_reading(difference)]
    return (f"{head}: on this setup {T} needed {memory.mean:.2f} of {B}'s peak memory by "
            f"{PRIMARY_WORDS.get(primary['key'], primary['label'])} ({interval}; the claim is ≈ {CLAIM}, read as "
            f"{BAND[0]}–{BAND[1]}), and {quality}.")
