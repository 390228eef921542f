"""What the report says: the verdict, accuracy, training health and method, as plain data for the template."""

from __future__ import annotations

from typing import Any

from harness.report.data import Arm, Comparison, get
from harness.report.stats import (BAND, CLAIM, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, RULE, Estimate,
                                  difference_ci, mean_ci, quality_reading, ratio_ci, ratio_reading, verdict)
from harness.tables import MEMORY_FIGURES, TIME_FIGURES

MIB = 1024 * 1024
# The memory figure the verdict rests on: the allocator peak where a GPU measured it, else the exact total.
PRIMARY_MEMORY = ["mem_cuda_allocated", "mem_exact_total"]
EXACT_KEYS = {"mem_model_state"}  # counted from shapes and dtypes only: identical for every seed
SHARED_KEYS = {"mem_rollout_kv", "mem_rollout_logits"}  # the shared rollout path: equal in every arm by design
CLAIM_KEYS = ({key for key, _, _ in MEMORY_FIGURES} - SHARED_KEYS) | {"time_per_step", "wall", "to_target_completions",
                                                                       "to_target_wall"}
ROW_NOTES = {
    "mem_rollout_kv": "the shared rollout path: equal by design",
    "mem_rollout_logits": "the shared rollout path: equal by design",
    "time_per_step": "wall time / steps; periodic held-out evaluations included",
    "wall": "the whole budget; periodic held-out evaluations included",
    "samples_per_s": "higher is better; the claim reads as about 2",
    "gen_tokens_per_s": "higher is better; the claim reads as about 2",
}
HEALTH = [
    ("loss/kl", "KL to reference (k3)", "{:.4g}"),
    ("loss/approx_kl", "approx. KL, old to new policy", "{:.3g}"),
    ("loss/clipfrac", "clip fraction", "{:.3f}"),
    ("loss/entropy", "entropy (nats/token)", "{:.3f}"),
    ("completion/len_mean", "completion length (tokens)", "{:.2f}"),
    ("loss/grad_norm", "gradient norm", "{:.3f}"),
    ("loss/value_loss", "PPO: value loss", "{:.4g}"),
    ("loss/explained_variance", "PPO: explained variance", "{:.3f}"),
    ("loss/zero_adv_frac", "GRPO: share of groups with zero reward spread", "{:.3f}"),
]
LM_EVAL_METRICS = ["pass@1", "maj@k", "pass@k"]


# ---------------------------------------------------------------- formatting

def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "MiB":
        return f"{value / MIB:,.3f}" if abs(value) < 10 * MIB else f"{value / MIB:,.1f}"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "pts":
        return f"{100 * value:+.1f} pts"
    if unit == "ratio":
        return f"{value:.3f}"
    if unit == "count":
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def fmt_interval(estimate: Estimate, unit: str = "") -> str:
    """'[lo, hi]', or why there is no interval; differences in accuracy ('pts') in signed points."""
    if estimate.mean is None:
        return estimate.note or "not measured"
    if estimate.has_interval and estimate.lo != estimate.hi:
        if unit == "pts":
            return f"[{100 * estimate.lo:+.1f}, {100 * estimate.hi:+.1f}]"
        return f"[{fmt(estimate.lo, unit)}, {fmt(estimate.hi, unit)}]"
    if estimate.has_interval:
        return "no spread over seeds"
    return estimate.note or ""


def fmt_points(estimate: Estimate) -> str:
    if estimate.mean is None:
        return "—"
    interval = fmt_interval(estimate, "pts")
    return fmt(estimate.mean, "pts") + (f" {interval}" if interval.startswith("[") else f", {interval}")


def cell(estimate: Estimate, unit: str = "") -> dict[str, str]:
    """A table cell: the seed mean and, below it, its 95% interval or why there is none."""
    return {"value": fmt(estimate.mean, unit), "interval": fmt_interval(estimate, unit)}


# ---------------------------------------------------------------- arms

def arm_table(cmp: Comparison) -> list[dict[str, Any]]:
    rows = []
    for arm in cmp.arms:
        r = arm.row
        logged = int(arm.steps["step"].iloc[-1]) if "step" in arm.steps and len(arm.steps) else None
        rows.append({"label": arm.label, "status": arm.status, "ok": arm.ok, "error": arm.error,
                     "steps": fmt(r.get("steps") if r.get("steps") is not None else logged),
                     "completions": fmt(r.get("completions")), "wall": fmt(r.get("wall")),
                     "acc_base": fmt(r.get("acc_base"), "%"), "acc_final": fmt(r.get("acc_final"), "%"),
                     "dir": arm.dir.name})
    return rows


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

def figure_values(arms: list[Arm], key: str) -> list[float]:
    return [a.row[key] for a in arms if a.row.get(key) is not None]


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


PRIMARY_WORDS = {"mem_cuda_allocated": "CUDA allocator peak", "mem_exact_total": "exact model state + saved activations"}


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


# ---------------------------------------------------------------- accuracy

def accuracy_section(cmp: Comparison) -> dict[str, Any]:
    rows = []
    for algo in cmp.algos:
        arms = cmp.ok_arms(algo)
        base, final = figure_values(arms, "acc_base"), figure_values(arms, "acc_final")
        change = [a.row["acc_final"] - a.row["acc_base"] for a in arms
                  if a.row.get("acc_final") is not None and a.row.get("acc_base") is not None]
        n_eval = {get(a.summary, "eval", "final", "n") for a in arms} - {None}
        rows.append({"algo": algo, "seeds": len(arms), "base": cell(mean_ci(base), "%"),
                     "final": cell(mean_ci(final), "%"), "change": cell(mean_ci(change), "pts"),
                     "n": ", ".join(str(n) for n in sorted(n_eval)) or "—"})
    return {"rows": rows, **lm_eval_section(cmp)}


def lm_eval_section(cmp: Comparison) -> dict[str, Any]:
    """lm-evaluation-harness scores before and after (summary.eval.lm_eval), seed means with intervals."""
    rows, ks, n = [], set(), set()
    extra: dict[str, dict[str, Any]] = {}  # standard benchmarks by name: {(algo, when): [metrics, ...]} or why not
    for algo in cmp.algos:
        arms = cmp.ok_arms(algo)
        for when in ("base", "final"):
            scores = [s for s in (get(a.summary, "eval", "lm_eval", when) for a in arms) if isinstance(s, dict)]
            ks |= {s.get("k") for s in scores} - {None}
            n |= {s.get("n") for s in scores} - {None}
            rows.append({"algo": algo, "when": "before" if when == "base" else "after", "scored": len(scores),
                         "metrics": [cell(mean_ci([s.get(m) for s in scores]), "%") for m in LM_EVAL_METRICS]})
            for score in scores:
                for name, result in (score.get("extra") or {}).items():
                    entry = extra.setdefault(name, {"why_not": None, "cells": {}})
                    if isinstance(result, dict) and isinstance(result.get("results"), dict) and result["results"]:
                        metrics = result["results"].get(name) or next(iter(result["results"].values()))
                        entry["cells"].setdefault((algo, when), []).append(metrics)
                    else:
                        entry["why_not"] = str(result)
    present = any(r["scored"] for r in rows)
    k = "/".join(str(v) for v in sorted(ks)) or "k"
    labels = [m.replace("@k", f"@{k}") for m in LM_EVAL_METRICS]
    why_not = None
    if not present:
        off = [a for a in cmp.arms if a.config and get(a.config, "run", "lm_eval") is False]
        why_not = ("not measured: run.lm_eval was off in these arms" if off else
                   "not measured: these arms recorded no lm-eval results (summary.eval.lm_eval)")
    return {"lm_eval": rows if present else None, "lm_metrics": labels, "lm_why_not": why_not,
            "lm_n": ", ".join(str(v) for v in sorted(n)) or "—", "lm_k": k, "lm_extra": extra_tables(cmp, extra)}


def extra_tables(cmp: Comparison, extra: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    tables = []
    for name, entry in extra.items():
        metrics = list(dict.fromkeys(m for values in entry["cells"].values() for v in values for m in v))
        rows = []
        for algo in cmp.algos:
            for when in ("base", "final"):
                values = entry["cells"].get((algo, when), [])
                if values:
                    rows.append({"algo": algo, "when": "before" if when == "base" else "after",
                                 "metrics": [cell(mean_ci([v.get(m) for v in values])) for m in metrics]})
        tables.append({"name": name, "metrics": metrics, "rows": rows, "why_not": None if rows else entry["why_not"]})
    return tables


# ---------------------------------------------------------------- training health

def health_section(cmp: Comparison) -> list[dict[str, Any]]:
    """Per metric and algorithm: the mean over training and the last step, seed means with intervals."""
    rows = []
    for key, label, _ in HEALTH:
        cells = {}
        for algo in cmp.algos:
            arms = [a for a in cmp.ok_arms(algo) if key in a.steps and a.steps[key].notna().any()]
            if not arms:
                cells[algo] = None
                continue
            over = mean_ci([float(a.steps[key].mean()) for a in arms])
            last = mean_ci([float(a.steps[key].dropna().iloc[-1]) for a in arms])
            cells[algo] = {"mean": cell(over), "last": cell(last)}
        if any(cells.values()):
            rows.append({"key": key, "label": label, "cells": cells})
    return rows


# ---------------------------------------------------------------- method

def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def algorithm_defaults(algo: str) -> dict[str, Any]:
    """The algorithm's option defaults (dataclass <Class>Config beside its class), for the side-by-side."""
    import dataclasses
    try:
        from algorithms import get_algorithm
        cls = get_algorithm(algo)
        module = __import__(cls.__module__, fromlist=["_"])
        config_cls = getattr(module, f"{cls.__name__}Config", None)
        if config_cls is None or not dataclasses.is_dataclass(config_cls):
            return {}
        return dataclasses.asdict(config_cls())
    except Exception:
        return {}


def config_section(cmp: Comparison) -> dict[str, Any]:
    """The resolved config of each algorithm's first arm, side by side; differing fields marked."""
    columns, flat = [], {}
    for algo in cmp.algos:
        arms = cmp.arms_of(algo)
        arm = next((a for a in arms if a.config), None)
        config = dict(arm.config) if arm else {}
        options = {**algorithm_defaults(algo), **(get(config, "algorithms", algo) or {})}
        config.pop("algorithms", None)
        flat_config = flatten(config)
        flat_config.update({f"algorithm.{k}": v for k, v in options.items()})
        columns.append(f"{algo} ({arm.label})" if arm else algo)
        flat[algo] = flat_config
    keys = list(dict.fromkeys(k for algo in cmp.algos for k in flat[algo]))
    differing, shared = [], []
    for key in keys:
        values = [str(flat[algo].get(key, "—")) for algo in cmp.algos]
        if len(set(values)) > 1:
            differing.append({"key": key, "values": values})
        else:
            shared.append({"key": key, "value": values[0]})
    return {"columns": columns, "differing": differing, "shared": shared}


def environment_section(cmp: Comparison) -> list[dict[str, Any]]:
    keys = list(dict.fromkeys(k for a in cmp.arms for k in a.env))
    rows = []
    for key in keys:
        values = {a.label: a.env.get(key) for a in cmp.arms if a.env}
        distinct = {str(v) for v in values.values()}
        if len(distinct) == 1:
            rows.append({"key": key, "value": next(iter(distinct)), "per_arm": None})
        else:
            rows.append({"key": key, "value": None, "per_arm": [f"{label}: {v}" for label, v in values.items()]})
    return rows


def method_section(cmp: Comparison) -> dict[str, Any]:
    budget = cmp.plan.get("budget") or {}
    return {"fairness": cmp.plan.get("fairness") or [], "budget": budget, "config": config_section(cmp),
            "environment": environment_section(cmp), "config_hash": cmp.plan.get("config_hash"),
            "preset": cmp.plan.get("preset"), "task": cmp.plan.get("task"), "model": cmp.plan.get("model")}
