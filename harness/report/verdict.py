"""The verdict on the claim, read by the plan fixed before the run (comparison.json "plan").

Primary figures:
- quality: GRPO − PPO final greedy held-out accuracy, paired by seed, a non-inferiority test at the
  plan's margin δ (harness.report.stats.non_inferiority);
- memory: how much of PPO's measured step peak GRPO needs (the CUDA allocator peak on a GPU, else the
  peak of live tensors), with its interval and the configuration it was measured in, read against the
  claim ± the plan's band; the arithmetic model-state ratio beside it, labelled;
- compute: GRPO/PPO training time per step (periodic evaluations excluded), read the same way.
Time to the plan's target accuracy, throughput and the other memory measures are shown, never the verdict.

The verdict's pair is the first GRPO arm against the baseline arm (default: the first PPO arm); every
other arm is set against the same baseline in secondary rows (its paired accuracy difference and cost
ratios), read by the same rules but never the verdict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness.report.content import cell, figure_values, fmt_interval, fmt_points
from harness.report.data import Arm, Comparison, get
from harness.report.stats import (INCONCLUSIVE, NOT_REPRODUCED, NOT_WORSE, REPRODUCED, WORSE, Estimate,
                                  arithmetic, arithmetic_ratio, mean_ci, non_inferiority, paired_difference,
                                  ratio_ci, ratio_reading, verdict, width_in_words)
from harness.results.headline import MEMORY_FIGURES, TIME_FIGURES
from harness.results.units import fmt

# The memory figure the verdict rests on: the CUDA allocator peak where a GPU measured it, else the
# measured step peak of live tensors (the max over the phases of a step).
PRIMARY_MEMORY = ["mem_cuda_allocated", "mem_live_peak"]
# follow from the model sizes (harness.results.records.FIGURES labels them): the same for every seed
ARITHMETIC_KEYS = {key for key, label, _ in MEMORY_FIGURES if label.startswith("arithmetic")}
# Measured figures read against the claim (arithmetic ones are shown, never read).
CLAIM_KEYS = ({key for key, _, _ in MEMORY_FIGURES} - ARITHMETIC_KEYS) | {
    "time_per_step", "wall", "to_target_completions", "to_target_train"}
ROW_NOTES = {
    "mem_model_state": "arithmetic: follows from the model sizes",
    "time_per_step": "training steps only: periodic evaluations and live-tensor tracked steps left out",
    "wall": "training time for the whole budget; periodic evaluations left out",
    "samples_per_s": "higher is better; the claim reads as about 2",
    "gen_tokens_per_s": "higher is better; the claim reads as about 2",
}
PRIMARY_WORDS = {"mem_cuda_allocated": "CUDA allocator peak", "mem_live_peak": "measured step peak of live tensors"}
# What the report assumes for a comparison made before plans were saved with it.
DEFAULT_PLAN = {"margin": 0.05, "claim": 0.5, "band": [0.4, 0.6], "target": None, "recorded": False}


def not_measured_reason(cmp: Comparison, key: str, algo: str) -> str:
    arms = cmp.arms_of(algo)
    if not arms:
        return "no arm"
    if not any(a.ok for a in arms):
        return "no finished arm (" + "; ".join(f"{a.label}: {a.status}" for a in arms) + ")"
    if key.startswith(("mem_cuda", "mem_nvml")):
        reasons = {a.summary.mem.measured.gpu for a in arms} - {None}
        if reasons:
            return "; ".join(sorted(reasons))
    return "not measured"


def plan_of(cmp: Comparison) -> dict[str, Any]:
    """The plan saved with the comparison, or the defaults (flagged) for one made before plans were saved."""
    plan = cmp.plan.plan
    if isinstance(plan, dict):
        return {**DEFAULT_PLAN, **plan, "recorded": True}
    return dict(DEFAULT_PLAN)


# ---------------------------------------------------------------- the target accuracy

def reach(curve, target: float, time_column: str = "train") -> tuple[float, float] | None:
    """(completions, seconds) at the first held-out evaluation that reaches the target accuracy."""
    hits = curve[curve["accuracy"] >= target - 1e-12]
    if hits.empty:
        return None
    first = hits.iloc[0]
    return float(first["completions"]), float(first[time_column])


def target_accuracy(cmp: Comparison, plan: dict[str, Any], override: float | None) -> dict[str, Any]:
    """The accuracy every arm is timed to: fixed by the plan before the run, never picked from results."""
    eval_every = get(cmp.config, "run", "eval_every")
    resolution = (f"held-out accuracy is measured every {eval_every} steps, at the start and at the end"
                  if eval_every else "held-out accuracy is measured only at the start and the end (run.eval_every = 0)")
    bases = [a.row["acc_base"] for a in cmp.arms if a.ok and a.row.get("acc_base") is not None]
    base = max(bases) if bases else None
    rule = plan.get("target") or {}
    if override is not None:
        value, source = override, "set with --target after the run (not part of the plan)"
    elif rule.get("accuracy"):
        value, source = rule["accuracy"], "fixed in the plan before the run (verdict.target_accuracy)"
    elif rule.get("gain") and base is not None:
        value = base + rule["gain"]
        source = (f"fixed in the plan before the run: the shared start ({fmt(base, '%')}, measured before any "
                  f"training) + {100 * rule['gain']:.0f} points (verdict.target_gain)")
    else:
        why = ("no target was fixed before this run (a comparison made before plans were saved): "
               "pass --target to time the arms to an accuracy you choose" if not plan.get("recorded")
               else "no finished arm measured the start accuracy")
        return {"value": None, "text": "—", "source": why, "resolution": resolution, "usable": False, "note": why}
    usable = base is None or value > base + 1e-12
    note = None if usable else f"the target ({fmt(value, '%')}) is not above the start ({fmt(base, '%')}): no learning to time"
    return {"value": value, "text": fmt(value, "%"), "source": source, "resolution": resolution, "usable": usable,
            "note": note}


# ---------------------------------------------------------------- rows of the cost table

def estimate_of(values: list[float], key: str) -> Estimate:
    return arithmetic(values) if key in ARITHMETIC_KEYS else mean_ci(values, positive=True)


def time_note(arms: list[Arm], key: str) -> str | None:
    if key not in ("time_per_step", "wall", "samples_per_s", "to_target_train"):
        return ROW_NOTES.get(key)
    old = [a.label for a in arms if a.time_basis != "train_s"]
    if old:
        which = "these arms" if len(old) == len(arms) else ", ".join(old)
        return f"periodic evaluations included: {which} recorded no time.train_s (older summaries: wall_s used)"
    return ROW_NOTES.get(key) or "periodic held-out evaluations left out"


def ratio_row(cmp: Comparison, plan: dict[str, Any], group: str, key: str, label: str, unit: str,
              arms: dict[str, list[Arm]]) -> dict[str, Any]:
    (top, top_arms), (bottom, bottom_arms) = arms.items()
    top_values, bottom_values = figure_values(top_arms, key), figure_values(bottom_arms, key)
    top_est = estimate_of(top_values, key) if top_values else Estimate(None, note=not_measured_reason(cmp, key, top))
    bottom_est = (estimate_of(bottom_values, key) if bottom_values
                  else Estimate(None, note=not_measured_reason(cmp, key, bottom)))
    ratio = (arithmetic_ratio(top_values, bottom_values) if key in ARITHMETIC_KEYS
             else ratio_ci(top_values, bottom_values))
    if ratio.mean is None and (not top_values or not bottom_values):
        ratio = Estimate(None, note="not measured", kind=ratio.kind)
    claim = key in CLAIM_KEYS
    reading = ratio_reading(ratio, plan["claim"], band_half(plan)) if claim and ratio.mean is not None else "—"
    return {"group": group, "key": key, "label": label, "unit": unit, "top_est": top_est, "bottom_est": bottom_est,
            "top": cell(top_est, unit), "bottom": cell(bottom_est, unit), "ratio": cell(ratio, "ratio"),
            "ratio_est": ratio, "claim": claim, "kind": ratio.kind, "reading": reading, "primary": False,
            "note": time_note(top_arms + bottom_arms, key)}


def band_half(plan: dict[str, Any]) -> float:
    low, high = plan["band"]
    return (high - low) / 2


def target_rows(plan: dict[str, Any], target: dict[str, Any], arms: dict[str, list[Arm]]) -> list[dict[str, Any]]:
    """Sampled completions and training time until the first held-out evaluation at or above the target."""
    (top, top_arms), (bottom, bottom_arms) = arms.items()
    text = target["text"] if target.get("value") is not None else "the target"
    rows = []
    for key, label, unit, field in [("to_target_completions", f"sampled completions to reach {text}", "count", 0),
                                    ("to_target_train", f"training time to reach {text}", "s", 1)]:
        row = {"group": "To the target accuracy", "key": key, "label": label, "unit": unit, "primary": False,
               "claim": True, "note": None, "kind": "measured"}
        if not target.get("usable"):
            blank = Estimate(None, note="no target")
            row.update(top=cell(blank), bottom=cell(blank), ratio=cell(blank), reading="—", ratio_est=blank,
                       top_est=blank, bottom_est=blank, note=target.get("note") or target["source"])
            rows.append(row)
            continue
        values, partial = {}, []
        for algo, algo_arms in arms.items():
            hits = [reach(a.eval_curve(), target["value"]) for a in algo_arms]
            values[algo] = [h[field] for h in hits if h]
            if len(values[algo]) < len(algo_arms):
                partial.append(f"{algo}: {len(values[algo])} of {len(algo_arms)} seeds reached it")
        top_est, bottom_est = mean_ci(values[top], positive=True), mean_ci(values[bottom], positive=True)
        ratio = ratio_ci(values[top], values[bottom])
        means_over = " (means over those that did)" if partial and all(values.values()) else ""
        notes = ["; ".join(partial) + means_over] if partial else []
        if key == "to_target_train":
            notes.append(time_note(top_arms + bottom_arms, key))
        row.update(top=cell(top_est, unit), bottom=cell(bottom_est, unit), ratio=cell(ratio, "ratio"),
                   reading=ratio_reading(ratio, plan["claim"], band_half(plan)) if ratio.mean is not None else "—",
                   ratio_est=ratio, top_est=top_est, bottom_est=bottom_est, note="; ".join(notes) or None)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the primary figures

def quality_section(cmp: Comparison, plan: dict[str, Any], top: str, bottom: str) -> dict[str, Any]:
    """GRPO − PPO final held-out accuracy, paired by seed, read as a non-inferiority test at δ."""
    def by_seed(algo: str, key: str) -> dict[int, Any]:
        finals = {a.seed: a.summary.eval.final for a in cmp.ok_arms(algo) if a.summary.eval.final is not None}
        return {seed: getattr(final, key) for seed, final in finals.items() if getattr(final, key) is not None}
    paired = paired_difference(by_seed(top, "accuracy"), by_seed(bottom, "accuracy"),
                               by_seed(top, "per_prompt"), by_seed(bottom, "per_prompt"))
    estimate, margin = paired["reported"], plan["margin"]
    reading = non_inferiority(estimate, margin)
    return {"estimate": estimate, "paired_t": paired["paired_t"], "bootstrap": paired["bootstrap"], "margin": margin,
            "reading": reading, "text": fmt_points(estimate), "width": width_in_words(estimate, margin),
            "paired_t_text": fmt_points(paired["paired_t"]), "bootstrap_text": fmt_points(paired["bootstrap"])}


def configuration(cmp: Comparison, top: str, bottom: str) -> str:
    """In which configuration the memory was measured, in words."""
    c = cmp.config
    name = get(c, "model", "name") or "—"
    if name == "tiny":
        name = f"the embedded tiny Qwen2 (hidden {get(c, 'model', 'hidden_size')}, {get(c, 'model', 'num_layers')} layers)"
    options = {}
    for algo in (top, bottom):
        arm = next((a for a in cmp.arms_of(algo) if a.config), None)
        options[algo] = (get(arm.config, "derived", "algorithm_options") or {}) if arm else {}
    kl_fields = ("beta", "kl_coef", "kl_loss_coef", "kl_reward_coef")  # any KL term on loads the reference
    kl = {algo: (max(options[algo][f] for f in kl_fields if f in options[algo])
                 if any(f in options[algo] for f in kl_fields) else None) for algo in (top, bottom)}
    with_reference = [algo.upper() for algo, value in kl.items() if value]
    reference = ("a reference model in both arms" if len(with_reference) == 2 else
                 f"a reference model in {with_reference[0]} only" if with_reference else
                 "no reference model" if all(v is not None for v in kl.values()) else "reference model not recorded")
    precision = get(c, "model", "precision") or get(c, "model", "dtype") or "—"  # dtype: older configs
    checkpointing = ", gradient checkpointing" if get(c, "model", "gradient_checkpointing") else ""
    return (f"{name}, {precision}{checkpointing} on {get(c, 'run', 'device') or '—'}, "
            f"{get(c, 'rollout', 'batch_size')} completions per step ({get(c, 'rollout', 'samples_per_prompt')} per "
            f"prompt, up to {get(c, 'rollout', 'max_new_tokens')} new tokens), {get(c, 'optim', 'minibatches')} "
            f"minibatches per step, {reference}")


def peak_phases(arms: list[Arm]) -> str | None:
    phases = Counter(a.row.get("mem_live_peak_phase") for a in arms if a.row.get("mem_live_peak_phase"))
    return phases.most_common(1)[0][0] if phases else None


def memory_section(cmp: Comparison, plan: dict[str, Any], rows: dict[str, dict[str, Any]], top: str,
                   bottom: str) -> dict[str, Any]:
    key = next((k for k in PRIMARY_MEMORY if rows[k]["ratio_est"].mean is not None), None)
    row = rows.get(key) if key else None
    estimate = row["ratio_est"] if row else Estimate(None, note="no memory figure for both algorithms")
    if row:
        row["primary"] = True
    phases = {algo: peak_phases(cmp.ok_arms(algo)) for algo in (top, bottom)}
    return {"key": key, "row": row, "estimate": estimate, "words": PRIMARY_WORDS.get(key, "no memory figure"),
            "reading": ratio_reading(estimate, plan["claim"], band_half(plan)),
            "arithmetic": rows["mem_model_state"]["ratio_est"], "configuration": configuration(cmp, top, bottom),
            "phases": phases if any(phases.values()) else None}


def verdict_section(cmp: Comparison, target: float | None = None) -> dict[str, Any]:
    pair, plan = cmp.pair, plan_of(cmp)
    section: dict[str, Any] = {"pair": pair, "plan": plan, "claim": plan["claim"], "band": plan["band"],
                               "rows": [], "primary": [], "seeds": {}, "rule": rule_lines(plan),
                               "target": target_accuracy(cmp, plan, target)}
    if pair is None:
        section.update(reading=INCONCLUSIVE, quality=None, memory=None, compute=None,
                       sentence="Inconclusive: a verdict needs two algorithms; this comparison ran "
                                f"only {', '.join(cmp.names) or 'none'}.")
        return section
    top, bottom = pair
    arms = {top: cmp.ok_arms(top), bottom: cmp.ok_arms(bottom)}
    section["seeds"] = {top: len(arms[top]), bottom: len(arms[bottom]), "planned": len(cmp.seeds)}
    for group, figures in (("Memory (peak)", MEMORY_FIGURES), ("Time", TIME_FIGURES)):
        for key, label, unit in figures:
            section["rows"].append(ratio_row(cmp, plan, group, key, label, unit, arms))
    section["rows"].extend(target_rows(plan, section["target"], arms))
    rows = {r["key"]: r for r in section["rows"]}
    quality = quality_section(cmp, plan, top, bottom)
    memory = memory_section(cmp, plan, rows, top, bottom)
    compute = {"row": rows["time_per_step"], "estimate": rows["time_per_step"]["ratio_est"],
               "reading": rows["time_per_step"]["reading"] if rows["time_per_step"]["reading"] != "—" else INCONCLUSIVE}
    reading = verdict(memory["reading"], quality["reading"])
    section.update(quality=quality, memory=memory, compute=compute, reading=reading,
                   against=baseline_section(cmp, plan),
                   primary=primary_figures(section, quality, memory, compute, top, bottom),
                   sentence=verdict_sentence(cmp, plan, top, bottom, memory, quality, reading))
    return section


# The cost figures of the secondary rows: each arm against the baseline.
SECONDARY_FIGURES = [("mem_cuda_allocated", "CUDA allocator peak"), ("mem_live_peak", "step peak of live tensors"),
                     ("mem_model_state", "model state (arithmetic)"), ("time_per_step", "time per step"),
                     ("wall", "training time")]


def baseline_section(cmp: Comparison, plan: dict[str, Any]) -> dict[str, Any]:
    """Every arm but the baseline against it: the paired difference in final accuracy (read at the plan's
    margin) and the ratio of each cost figure, with intervals. The verdict's own pair is one of the rows."""
    if cmp.pair is None:
        return {"baseline": None, "rows": [], "columns": []}
    top, base = cmp.pair
    labels = {key: (label, unit) for key, label, unit in MEMORY_FIGURES + TIME_FIGURES}
    rows = []
    for name in cmp.names:
        if name == base:
            continue
        arms = {name: cmp.ok_arms(name), base: cmp.ok_arms(base)}
        quality = quality_section(cmp, plan, name, base)
        ratios = {key: ratio_row(cmp, plan, "", key, labels[key][0], labels[key][1], arms)
                  for key, _ in SECONDARY_FIGURES}
        rows.append({"name": name, "algo": cmp.arm_algos.get(name, name), "verdict": name == top,
                     "seeds": len(arms[name]), "quality": {"value": fmt(quality["estimate"].mean, "pts"),
                                                           "interval": fmt_interval(quality["estimate"], "pts")},
                     "quality_reading": quality["reading"],
                     "ratios": {key: row["ratio"] for key, row in ratios.items()},
                     "readings": {key: row["reading"] for key, row in ratios.items()}})
    columns = [(key, label) for key, label in SECONDARY_FIGURES
               if any(r["ratios"][key]["value"] != "—" for r in rows)]
    return {"baseline": base, "rows": rows, "columns": columns}


def primary_figures(section, quality, memory, compute, top: str, bottom: str) -> list[dict[str, str]]:
    """One line per primary figure: what it is, its value and interval, the method, and its reading."""
    T, B = top.upper(), bottom.upper()
    plan = section["plan"]
    low, high = plan["band"]
    q = quality["estimate"]
    out = [{"name": "quality", "figure": f"final held-out accuracy, {T} − {B} (paired by seed)",
            "value": fmt(q.mean, "pts") if q.mean is not None else "—", "interval": fmt_interval(q, "pts"),
            "method": q.method or q.note or "", "reading": quality["reading"],
            "rule": f"non-inferiority at δ = {100 * quality['margin']:.1f} points: not worse when the lower bound "
                    f"> {-100 * quality['margin']:.1f}"}]
    for name, part, figure in (("memory", memory, f"{T}/{B} {memory['words']}"),
                               ("compute", compute, f"{T}/{B} training time per step")):
        e = part["estimate"]
        method = "; ".join(filter(None, [e.method or e.note, part["row"]["note"] if part["row"] else None]))
        out.append({"name": name, "figure": figure, "value": fmt(e.mean, "ratio"), "interval": fmt_interval(e, "ratio"),
                    "method": method, "reading": part["reading"],
                    "rule": f"about {plan['claim']} when the interval lies within {low:.2f}–{high:.2f}"})
    a = memory["arithmetic"]
    out.append({"name": "arith", "figure": f"{T}/{B} model state (params + grads + optimizer)",
                "value": fmt(a.mean, "ratio"), "interval": "no interval", "method": a.note or "", "reading": "—",
                "rule": "shown beside the measured peak, never the verdict"})
    return out


def verdict_sentence(cmp, plan, top, bottom, memory, quality, reading: str) -> str:
    """The reading in words: how much of PPO's peak GRPO needed, in which configuration, and the quality test."""
    head = {REPRODUCED: "Reproduced", NOT_REPRODUCED: "Not reproduced", INCONCLUSIVE: "Inconclusive"}[reading]
    T, B = top.upper(), bottom.upper()
    low, high = plan["band"]
    e = memory["estimate"]
    if e.mean is None:
        failed = [a for a in cmp.arms if not a.ok]
        why = "; ".join(f"{a.label} {a.status}" + (f": {a.error}" if a.error else "") for a in failed) or "no memory figure"
        mem = f"there is no {T}/{B} memory ratio to set beside the claim ({why})"
    else:
        n = min(len(cmp.ok_arms(top)), len(cmp.ok_arms(bottom)))
        if e.has_interval and e.lo != e.hi:
            interval = f"95% interval {e.lo:.2f}–{e.hi:.2f} over {n} seed{'s' * (n != 1)}"
        elif e.has_interval:
            interval = f"identical over {n} seed{'s' * (n != 1)}"
        else:
            interval = e.note
        phases = memory["phases"]
        where = (f"; the peak fell in {T}'s {phases[top] or '—'} and {B}'s {phases[bottom] or '—'} phase"
                 if phases else "")
        arith = memory["arithmetic"]
        beside = f"; the model-state ratio beside it is {arith.mean:.2f} (arithmetic)" if arith.mean is not None else ""
        mem = (f"{T} needed {e.mean:.2f} of {B}'s {memory['words']} ({interval}{where}) with {memory['configuration']}; "
               f"read against the claim of {plan['claim']} with the plan's band {low:.2f}–{high:.2f}: "
               f"{memory['reading']}{beside}")
    q, margin = quality["estimate"], 100 * quality["margin"]
    if quality["reading"] == NOT_WORSE:
        qual = (f"its final held-out accuracy was not worse than {B}'s by more than the margin of {margin:.1f} points "
                f"({T} − {B}: {quality['text']}, lower bound above −{margin:.1f})")
    elif quality["reading"] == WORSE:
        qual = (f"its final held-out accuracy was worse than {B}'s by more than the margin of {margin:.1f} points "
                f"({T} − {B}: {quality['text']}, upper bound below −{margin:.1f})")
    elif q.has_interval:
        qual = (f"whether its final held-out accuracy is within {margin:.1f} points of {B}'s cannot be told "
                f"({T} − {B}: {quality['text']}; {quality['width']})")
    else:
        qual = f"its final held-out accuracy could not be compared ({q.note or 'not measured'})"
    return f"{head}: {mem}; and {qual}."


def rule_lines(plan: dict[str, Any]) -> list[str]:
    low, high = plan["band"]
    margin = 100 * plan["margin"]
    return [
        f"Quality (non-inferiority, margin δ = {margin:.1f} points, fixed before the run): GRPO − PPO final held-out "
        f"accuracy is 'not worse' only when the lower bound of its 95% interval lies above −{margin:.1f} points, "
        f"'worse' when the upper bound lies below −{margin:.1f}, and 'inconclusive' otherwise. The interval is "
        "paired (the arms of one seed share the start, the prompts and the first rollout): a paired t over the "
        "per-seed differences, and a two-way bootstrap over prompts × seeds; the tighter one is reported.",
        f"A measured GRPO/PPO ratio reads as the claim ({plan['claim']}) when its whole 95% interval lies within "
        f"{low:.2f}–{high:.2f} (the plan's band), as not the claim when its whole interval lies outside, and is "
        "inconclusive otherwise. Arithmetic figures follow from the model sizes: they have no interval and are "
        "shown beside the measured ones, never as the verdict.",
        "The verdict is 'reproduced' when the primary memory ratio reads as the claim and quality is not worse; "
        "'not reproduced' when the memory ratio lies outside the band or quality is worse; 'inconclusive' otherwise.",
    ]


# ---------------------------------------------------------------- the terminal

def terminal_lines(section: dict[str, Any]) -> list[str]:
    """The verdict as `harness compare` prints it: each primary figure with its interval and reading."""
    if section["pair"] is None:
        return [f"verdict: {section['sentence']}"]
    plan = section["plan"]
    target = section["target"]
    head = (f"Verdict: {section['reading'].upper()} (plan: δ = {100 * plan['margin']:.1f} points, claim "
            f"{plan['claim']} within {plan['band'][0]:.2f}–{plan['band'][1]:.2f}"
            + ("" if plan.get("recorded") else "; defaults: no plan was saved with this comparison") + ")")
    lines = [head]
    for p in section["primary"]:
        interval = f" {p['interval']}" if p["interval"].startswith("[") else f" ({p['interval']})"
        lines.append(f"  {p['name']:8s} {p['figure']}: {p['value']}{interval}  {p['reading']}")
        lines.append(f"  {'':8s}   {p['method']}; {p['rule']}")
    quality = section["quality"]
    if quality["reading"] == INCONCLUSIVE and quality["estimate"].has_interval:
        lines.append(f"  {'':8s}   {quality['width']}")
    rows = {r["key"]: r for r in section["rows"]}
    for key in ("to_target_completions", "to_target_train"):
        row = rows[key]
        if row["ratio_est"].mean is not None:
            lines.append(f"  {'target':8s} {row['label']}: GRPO/PPO {row['ratio']['value']} {row['ratio']['interval']}"
                         f"  ({target['source']})")
    reached = any(rows[key]["ratio_est"].mean is not None for key in ("to_target_completions", "to_target_train"))
    if target.get("usable") and not reached:
        lines.append(f"  {'target':8s} {target['text']} held-out accuracy ({target['source']}): "
                     f"{rows['to_target_completions']['note'] or 'not reached by both algorithms'}")
    if not target.get("usable"):
        lines.append(f"  {'target':8s} time to target not read: {target.get('note') or target['source']}")
    lines.append(f"  {section['sentence']}")
    against = section.get("against") or {}
    if len(against.get("rows") or []) > 1:
        lines.append(f"Every arm against {against['baseline']} (secondary; the verdict reads the pair above):")
        for row in against["rows"]:
            ratios = "  ".join(f"{label} {row['ratios'][key]['value']}" for key, label in against["columns"])
            lines.append(f"  {row['name']:14s} accuracy {row['quality']['value']} {row['quality']['interval']}  "
                         f"{row['quality_reading']};  {ratios}")
    return lines
