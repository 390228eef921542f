"""The verdict on the claim, read by the plan fixed before the run (comparison.json "plan").

It rests on three readings:
- quality: GRPO − PPO final greedy held-out accuracy, paired by seed, a non-inferiority test at the plan's
  margin δ with the one interval method the plan names (harness.report.stats.non_inferiority);
- compute: GRPO/PPO training time to the plan's target accuracy, paired by seed, a seed that never
  reached the target censored at its budget (harness.report.resources), read against the claim's band;
- memory, read by regime: this machine's measured peak when it is model-state-bound, else the named
  at-scale recipe pair's estimated per-GPU peak; with neither, memory is not read and the verdict is at
  best inconclusive. The arithmetic model-state ratio is shown beside them, never read.
Completions to the target (read against 1), peak memory and memory × time to the target, time per step,
throughput and every other memory measure are shown, never the verdict.

The verdict's pair is the first GRPO arm against the baseline arm (default: the first PPO arm); every
other arm is set against the same baseline in secondary rows (its paired accuracy difference and cost
ratios), read by the same rules but never the verdict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness.report.content import cell, figure_values, fmt_interval, fmt_points
from harness.report.data import Arm, Comparison, get
from harness.report.resources import (is_deterministic, memory_rows, regime_of, target_rows, verdict_memory)
from harness.report.stats import (INCONCLUSIVE, INTERVAL_METHODS, NOT_REPRODUCED, NOT_WORSE, PAIRED_T, REPRODUCED,
                                  WORSE, Estimate, arithmetic, arithmetic_ratio, band_reading, claim_verdict,
                                  completions_band, mean_ci, non_inferiority, paired_difference, paired_ratio,
                                  width_in_words)
from harness.results.headline import MEMORY_FIGURES, TIME_FIGURES
from harness.results.units import fmt

ARITHMETIC_KEYS = {"mem_model_state"}  # follows from the model sizes: the same for every seed
# Measured figures of the cost table read against the claim: time. Memory is read by regime (MEMORY_GROUP).
CLAIM_KEYS = {"time_per_step", "wall"}
ROW_NOTES = {
    "mem_model_state": "arithmetic: follows from the model sizes",
    "time_per_step": "training steps only: periodic evaluations and live-tensor tracked steps left out",
    "wall": "training time for the whole budget; periodic evaluations left out",
    "samples_per_s": "higher is better; the claim reads as about 2",
    "gen_tokens_per_s": "higher is better; the claim reads as about 2",
}
# What the report assumes for a comparison made before plans were saved with it.
DEFAULT_PLAN = {"margin": 0.05, "claim": 0.5, "band": [0.4, 0.6], "target": None, "interval": "paired_t",
                "recorded": False}


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
    """The plan saved with the comparison, or the defaults (flagged) for one made before plans were saved; a
    plan saved before plans named their interval method gets the paired t, flagged (`interval_flag`)."""
    saved = cmp.plan.plan
    recorded = isinstance(saved, dict)
    plan = {**DEFAULT_PLAN, **(saved if recorded else {}), "recorded": recorded}
    plan.setdefault("completions_band", list(completions_band(plan["claim"], plan["band"])))
    named = recorded and saved.get("interval") in INTERVAL_METHODS
    plan["interval"] = saved["interval"] if named else "paired_t"
    made = "a plan saved before plans named one" if recorded else "a comparison without a saved plan"
    plan["interval_flag"] = None if named else f"no interval method was named before the run ({made}): the {PAIRED_T} is used"
    return plan


# ---------------------------------------------------------------- the target accuracy

def target_accuracy(cmp: Comparison, plan: dict[str, Any], override: float | None) -> dict[str, Any]:
    """The accuracy every arm is timed to: fixed by the plan before the run, never picked from results."""
    eval_every = get(cmp.config, "run", "eval_every")
    resolution = (f"held-out accuracy is measured every {eval_every} steps, at the start and at the end: a "
                  "target is reached at the first evaluation at or above it" if eval_every else
                  "held-out accuracy is measured only at the start and the end (run.eval_every = 0)")
    bases = [a.row["acc_base"] for a in cmp.arms if a.ok and a.row.get("acc_base") is not None]
    base = max(bases) if bases else None
    spread = f"the highest of the seeds' starts ({fmt(base, '%')})" if len(set(bases)) > 1 else \
        f"the shared start ({fmt(base, '%')})"
    rule = plan.get("target") or {}
    if override is not None:
        value, source = override, "set with --target after the run (not part of the plan)"
    elif rule.get("accuracy"):
        value, source = rule["accuracy"], "fixed in the plan before the run (verdict.target_accuracy)"
    elif rule.get("gain") and base is not None:
        value = base + rule["gain"]
        source = (f"fixed in the plan before the run: {spread}, measured before any training, "
                  f"+ {100 * rule['gain']:.0f} points (verdict.target_gain)")
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

def by_seed(arms: list[Arm], key: str) -> dict[int, float]:
    return {a.seed: a.row[key] for a in arms if a.row.get(key) is not None}


def estimate_of(values: list[float], key: str, deterministic: bool = False) -> Estimate:
    if key in ARITHMETIC_KEYS:
        return arithmetic(values)
    if deterministic and values:
        return Estimate(values[0], n=len(values), deterministic=True, note="deterministic: the same on every seed")
    return mean_ci(values, positive=True)


def time_note(arms: list[Arm], key: str) -> str | None:
    if key not in ("time_per_step", "wall", "samples_per_s", "to_target_train"):
        return ROW_NOTES.get(key)
    old = [a.label for a in arms if a.time_basis != "train_s"]
    if old:
        which = "these arms" if len(old) == len(arms) else ", ".join(old)
        return f"periodic evaluations included: {which} recorded no time.train_s (older summaries: wall_s used)"
    return ROW_NOTES.get(key) or "periodic held-out evaluations left out"


def paired_figure_ratio(top_arms: list[Arm], bottom_arms: list[Arm], key: str, deterministic: bool) -> Estimate:
    """GRPO/PPO of one headline figure, paired by seed (the geometric mean of the per-seed ratios)."""
    top, bottom = by_seed(top_arms, key), by_seed(bottom_arms, key)
    if key in ARITHMETIC_KEYS:
        return arithmetic_ratio(list(top.values()), list(bottom.values()))
    seeds = sorted(set(top) & set(bottom))
    if not seeds:
        return Estimate(None, note="not measured" if not top or not bottom else "no seed finished in both arms")
    if any(bottom[s] == 0 for s in seeds):
        return Estimate(None, n=len(seeds), note="the denominator is zero")
    estimate = paired_ratio([top[s] / bottom[s] for s in seeds], deterministic)
    unpaired = sorted((set(top) | set(bottom)) - set(seeds))
    if unpaired:
        estimate.note = "; ".join(filter(None, [estimate.note, f"seeds {unpaired} left out: finished in one arm only"]))
    return estimate


def ratio_row(cmp: Comparison, plan: dict[str, Any], group: str, key: str, label: str, unit: str,
              arms: dict[str, list[Arm]]) -> dict[str, Any]:
    (top, top_arms), (bottom, bottom_arms) = arms.items()
    deterministic = is_deterministic(arms, key)
    top_values, bottom_values = figure_values(top_arms, key), figure_values(bottom_arms, key)
    top_est = (estimate_of(top_values, key, deterministic) if top_values
               else Estimate(None, note=not_measured_reason(cmp, key, top)))
    bottom_est = (estimate_of(bottom_values, key, deterministic) if bottom_values
                  else Estimate(None, note=not_measured_reason(cmp, key, bottom)))
    ratio = paired_figure_ratio(top_arms, bottom_arms, key, deterministic)
    if ratio.mean is None and (not top_values or not bottom_values):
        ratio = Estimate(None, note="not measured", kind=ratio.kind)
    claim = key in CLAIM_KEYS
    reading = band_reading(ratio, *plan["band"]) if claim and ratio.mean is not None else "—"
    note = time_note(top_arms + bottom_arms, key)
    if key.startswith("mem_") and key not in ARITHMETIC_KEYS:
        note = "; ".join(filter(None, [note, "read by regime (Memory, read by regime), not against the band"]))
    return {"group": group, "key": key, "label": label, "unit": unit, "top_est": top_est, "bottom_est": bottom_est,
            "top": cell(top_est, unit), "bottom": cell(bottom_est, unit), "ratio": cell(ratio, "ratio"),
            "ratio_est": ratio, "claim": claim, "kind": ratio.kind, "reading": reading, "primary": False,
            "note": note}


# ---------------------------------------------------------------- the primary figures

def quality_section(cmp: Comparison, plan: dict[str, Any], top: str, bottom: str) -> dict[str, Any]:
    """GRPO − PPO final held-out accuracy, paired by seed, read as a non-inferiority test at δ with the
    interval method the plan named before the run."""
    def by_seed(algo: str, key: str) -> dict[int, Any]:
        finals = {a.seed: a.summary.eval.final for a in cmp.ok_arms(algo) if a.summary.eval.final is not None}
        return {seed: getattr(final, key) for seed, final in finals.items() if getattr(final, key) is not None}
    paired = paired_difference(by_seed(top, "accuracy"), by_seed(bottom, "accuracy"),
                               by_seed(top, "per_prompt"), by_seed(bottom, "per_prompt"), method=plan["interval"])
    estimate, margin = paired["reported"], plan["margin"]
    reading = non_inferiority(estimate, margin)
    return {"estimate": estimate, "paired_t": paired["paired_t"], "bootstrap": paired["bootstrap"], "margin": margin,
            "reading": reading, "text": fmt_points(estimate), "width": width_in_words(estimate, margin),
            "method": INTERVAL_METHODS[plan["interval"]], "flag": plan.get("interval_flag")}


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
    regime = regime_of(arms)
    to_target = target_rows(plan, section["target"], arms, regime, time_note(arms[top] + arms[bottom], "to_target_train"))
    by_key = {r["key"]: r for r in to_target}
    memory_group = memory_rows(cmp.dir, plan, arms, regime)
    memory = {**verdict_memory(memory_group, regime), "rows": memory_group, "regime": regime,
              "configuration": configuration(cmp, top, bottom),
              "phases": {algo: peak_phases(arms[algo]) for algo in (top, bottom)}}
    if not any(memory["phases"].values()):
        memory["phases"] = None
    if memory["row"] is not None:
        memory["row"]["primary"] = True
    compute = {"row": by_key["to_target_train"], "estimate": by_key["to_target_train"]["ratio_est"],
               "reading": by_key["to_target_train"]["reading"]}
    compute["row"]["primary"] = True
    for group, figures in (("Memory (peak)", MEMORY_FIGURES), ("Time", TIME_FIGURES)):
        for key, label, unit in figures:
            section["rows"].append(ratio_row(cmp, plan, group, key, label, unit, arms))
    section["rows"] += to_target + memory_group
    quality = quality_section(cmp, plan, top, bottom)
    reading = claim_verdict(quality["reading"], compute["reading"], memory["reading"])
    section.update(quality=quality, memory=memory, compute=compute, reading=reading,
                   against=baseline_section(cmp, plan),
                   primary=primary_figures(section, quality, to_target, memory_group, top, bottom),
                   sentence=verdict_sentence(cmp, plan, section["target"], top, bottom, memory, compute, quality,
                                             reading))
    return section


# The cost figures of the secondary rows: each arm against the baseline.
SECONDARY_FIGURES = [("mem_cuda_allocated", "CUDA allocator peak"), ("mem_live_peak", "step peak of live tensors"),
                     ("mem_model_state", "model state (arithmetic)"), ("time_per_step", "time per step"),
                     ("wall", "training time")]


def baseline_section(cmp: Comparison, plan: dict[str, Any]) -> dict[str, Any]:
    """Every arm but the baseline against it: the paired difference in final accuracy (read at the plan's
    margin) and the ratio of each cost figure paired by seed, with intervals. The verdict's own pair is one of the rows."""
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


BOUND_TEXT = {"at least": "at least ", "at most": "at most "}


def band_text(band: list[float]) -> str:
    return f"{band[0]:.2f}–{band[1]:.2f}"


def primary_figures(section, quality, to_target, memory_group, top: str, bottom: str) -> list[dict[str, Any]]:
    """One line per figure the verdict shows: what it is, its value and interval, the method, its reading, and
    whether the verdict rests on it (`verdict`)."""
    T, B = top.upper(), bottom.upper()
    plan = section["plan"]
    q = quality["estimate"]
    method = "; ".join(filter(None, [q.method if q.has_interval else None, quality["flag"]]))
    out = [{"name": "quality", "figure": f"final held-out accuracy, {T} − {B} (paired by seed)",
            "value": fmt(q.mean, "pts") if q.mean is not None else "—", "interval": fmt_interval(q, "pts"),
            "method": method, "reading": quality["reading"], "verdict": True,
            "rule": f"non-inferiority at δ = {100 * quality['margin']:.1f} points: not worse when the lower bound "
                    f"> {-100 * quality['margin']:.1f}"}]
    names = {"to_target_completions": "samples", "to_target_train": "compute", "to_target_memory": "peak mem",
             "to_target_memory_time": "mem × time", "memory_model_state": "arith", "memory_at_scale": "at scale",
             "memory_machine": "machine"}
    for row in to_target + memory_group:
        if row["key"] == "to_target_memory":
            continue  # the same figure as this machine's peak, below
        e = row["ratio_est"]
        against = {"memory_model_state": "shown, never the verdict",
                   "to_target_completions": f"about 1 when the interval lies within {band_text(row['band'])}",
                   "memory_machine": f"against {band_text(row['band'])} only when model-state-bound",
                   "to_target_memory_time": f"against {band_text(row['band'])} only when model-state-bound",
                   "memory_at_scale": f"about {plan['claim']} when within {band_text(row['band'])}; the verdict's "
                                      "memory unless this machine is model-state-bound",
                   }.get(row["key"], f"about {plan['claim']} when the interval lies within {band_text(row['band'])}")
        out.append({"name": names[row["key"]], "figure": f"{T}/{B} {row['label']}", "value": row["ratio"]["value"],
                    "interval": row["ratio"]["interval"] if e.has_interval else (e.note or "no interval"),
                    "method": "; ".join(filter(None, [e.method, row.get("note")])), "reading": row["reading"],
                    "rule": against, "verdict": bool(row.get("primary"))})
    return out


def memory_words(memory: dict[str, Any], T: str, B: str, plan: dict[str, Any]) -> str:
    row = memory["row"]
    if row is None:
        return memory["why"]
    e = row["ratio_est"]
    if row["key"] == "memory_at_scale":
        return (f"at scale, {T} needs {e.mean:.2f} of {B}'s per-GPU step peak ({e.note}; {memory['why']}): "
                f"{row['reading']} against {band_text(plan['band'])}")
    interval = (f"95% interval {e.lo:.2f}–{e.hi:.2f}" if e.has_interval else e.note or "no interval")
    return (f"on this machine {T} needed {BOUND_TEXT.get(e.bound, '')}{e.mean:.2f} of {B}'s measured peak "
            f"({interval}; {memory['regime']['text']}) with {memory['configuration']}: {row['reading']} against "
            f"{band_text(plan['band'])}")



def verdict_sentence(cmp, plan, target, top, bottom, memory, compute, quality, reading: str) -> str:
    """The reading in words: the quality test, the training time to the target, and memory by regime."""
    head = {REPRODUCED: "Reproduced", NOT_REPRODUCED: "Not reproduced", INCONCLUSIVE: "Inconclusive"}[reading]
    T, B = top.upper(), bottom.upper()
    q, margin = quality["estimate"], 100 * quality["margin"]
    if quality["reading"] == NOT_WORSE:
        qual = (f"{T}'s final held-out accuracy was not worse than {B}'s by more than the margin of {margin:.1f} "
                f"points ({T} − {B}: {quality['text']}, lower bound above −{margin:.1f})")
    elif quality["reading"] == WORSE:
        qual = (f"{T}'s final held-out accuracy was worse than {B}'s by more than the margin of {margin:.1f} points "
                f"({T} − {B}: {quality['text']}, upper bound below −{margin:.1f})")
    elif q.has_interval:
        qual = (f"whether {T}'s final held-out accuracy is within {margin:.1f} points of {B}'s cannot be told "
                f"({T} − {B}: {quality['text']}; {quality['width']})")
    else:
        failed = [a for a in cmp.arms if not a.ok]
        why = "; ".join(f"{a.label} {a.status}" + (f": {a.error}" if a.error else "") for a in failed)
        qual = f"{T}'s final held-out accuracy could not be compared ({why or q.note or 'not measured'})"
    e = compute["estimate"]
    if not target.get("usable"):
        comp = f"the training time to a target accuracy was not read ({target.get('note') or target['source']})"
    elif e.mean is None:
        comp = f"the training time to reach {target['text']} has no ratio ({e.note})"
    else:
        interval = f"95% interval {e.lo:.2f}–{e.hi:.2f}" if e.has_interval else e.note or "no interval"
        comp = (f"{T} needed {BOUND_TEXT.get(e.bound, '')}{e.mean:.2f} of {B}'s training time to reach {target['text']} "
                f"(paired by seed, {interval}): {compute['reading']} against {band_text(plan['band'])}")
    return f"{head}: {qual}; {comp}; memory: {memory_words(memory, T, B, plan)}."


def rule_lines(plan: dict[str, Any]) -> list[str]:
    low, high = plan["band"]
    margin = 100 * plan["margin"]
    c_low, c_high = plan["completions_band"]
    interval = INTERVAL_METHODS[plan["interval"]]
    return [
        f"Quality (non-inferiority, margin δ = {margin:.1f} points, fixed before the run): GRPO − PPO final held-out "
        f"accuracy is 'not worse' only when the lower bound of its 95% interval lies above −{margin:.1f} points, "
        f"'worse' when the upper bound lies below −{margin:.1f}, and 'inconclusive' otherwise. The interval is the one "
        f"the plan names: the {interval}, paired (the arms of one seed share the warm start, the prompts and the first "
        "rollout)" + (f"; {plan['interval_flag']}" if plan.get("interval_flag") else "") + ".",
        "Resources to the target accuracy, GRPO/PPO paired by seed (the geometric mean of the per-seed ratios, a t "
        "interval on their logs): a seed in which an arm never reached the target is censored at its budget and "
        "kept, which makes its ratio a bound (at least, when GRPO never reached it; at most, when PPO never did); "
        "a row with bounds is read one-sided, and a seed in which neither arm reached the target leaves no ratio. "
        f"Completions to the target are read against 1 within {c_low:.2f}–{c_high:.2f} (the claim predicts equal "
        f"sample efficiency); training time, peak memory and memory × time against {plan['claim']} within "
        f"{low:.2f}–{high:.2f}.",
        "A ratio reads as the claim when its whole 95% interval lies within the band, as not the claim when its whole "
        "interval lies outside, and is inconclusive otherwise. Arithmetic, estimated and deterministic figures have "
        "no interval and are read by their value.",
        "Memory is read by regime: this machine's measured peak only when it is model-state-bound (model state at "
        "least half of the peak phase), else the estimated per-GPU peak of the named at-scale recipe pair; with "
        "neither, memory is not read. The model-state ratio is arithmetic: shown, never read.",
        "The verdict is 'reproduced' when quality is not worse and both the training time to the target and memory "
        "read as the claim; 'not reproduced' when quality is worse or either lies outside the band; 'inconclusive' "
        "otherwise (memory not read included).",
    ]


# ---------------------------------------------------------------- the terminal

def terminal_lines(section: dict[str, Any]) -> list[str]:
    """The verdict as `harness compare` prints it: each figure with its interval and reading; '*' marks the
    readings the verdict rests on."""
    if section["pair"] is None:
        return [f"verdict: {section['sentence']}"]
    plan, target = section["plan"], section["target"]
    head = (f"Verdict: {section['reading'].upper()} (plan: δ = {100 * plan['margin']:.1f} points, claim "
            f"{plan['claim']} within {band_text(plan['band'])}, interval: {INTERVAL_METHODS[plan['interval']]}"
            + (" (not named in the plan)" if plan.get("interval_flag") else "")
            + ("" if plan.get("recorded") else "; defaults: no plan was saved with this comparison") + ")")
    lines = [head]
    if target.get("usable"):
        lines.append(f"  {'target':10s} {target['text']} held-out accuracy, {target['source']}; {target['resolution']}; "
                     "a seed that never reaches it is censored at its budget, never dropped")
    else:
        lines.append(f"  {'target':10s} resources to a target not read: {target.get('note') or target['source']}")
    for p in section["primary"]:
        interval = f" {p['interval']}" if p["interval"].startswith("[") else f" ({p['interval']})"
        mark = "*" if p["verdict"] else " "
        lines.append(f" {mark}{p['name']:10s} {p['figure']}: {p['value']}{interval}  {p['reading']}")
        if p["method"] or p["rule"]:
            lines.append(f"  {'':10s}   {'; '.join(filter(None, [p['method'], p['rule']]))}")
    quality = section["quality"]
    if quality["reading"] == INCONCLUSIVE and quality["estimate"].has_interval:
        lines.append(f"  {'':10s}   {quality['width']}")
    lines.append(f"  {section['sentence']}")
    against = section.get("against") or {}
    if len(against.get("rows") or []) > 1:
        lines.append(f"Every arm against {against['baseline']} (secondary; the verdict reads the pair above):")
        for row in against["rows"]:
            ratios = "  ".join(f"{label} {row['ratios'][key]['value']}" for key, label in against["columns"])
            lines.append(f"  {row['name']:14s} accuracy {row['quality']['value']} {row['quality']['interval']}  "
                         f"{row['quality_reading']};  {ratios}")
    return lines
