"""What the report says besides the verdict: formatting, arms, accuracy, training health and method,
as plain data for the template (the verdict is harness.report.verdict)."""

from __future__ import annotations

from typing import Any

from harness import UserError
from harness.report.data import HEALTH_METRICS, Arm, Comparison, get
from harness.report.stats import Estimate, mean_ci
from harness.results.units import fmt

UNIT = (0.0, 1.0)  # an accuracy's interval is clipped to what an accuracy can be
LM_EVAL_METRICS = ["pass@1", "maj@k", "pass@k"]


# ---------------------------------------------------------------- formatting

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


def rank_section(cmp: Comparison) -> list[dict[str, Any]]:
    """Memory per rank of the arms that ran across processes (measured live-tensor peak, arithmetic model state)."""
    rows = []
    for arm in cmp.arms:
        live = arm.summary.mem.live.per_rank or []
        state = arm.summary.mem.arithmetic.per_rank or []
        for rank, peak in enumerate(live):
            models = state[rank] if rank < len(state) else {}
            rows.append({"label": arm.label, "world": arm.summary.world_size, "rank": rank,
                         "peak": fmt(peak.get("peak"), "MiB"),
                         "state": fmt(sum(row.get("total", 0) for row in models.values()), "MiB")})
    return rows


def figure_values(arms: list[Arm], key: str) -> list[float]:
    """One headline figure (harness.results.headline.headline key) of each arm that has it."""
    return [a.row[key] for a in arms if a.row.get(key) is not None]


# ---------------------------------------------------------------- accuracy

def accuracy_section(cmp: Comparison) -> dict[str, Any]:
    rows = []
    for algo in cmp.names:
        arms = cmp.ok_arms(algo)
        base, final = figure_values(arms, "acc_base"), figure_values(arms, "acc_final")
        change = [a.row["acc_final"] - a.row["acc_base"] for a in arms
                  if a.row.get("acc_final") is not None and a.row.get("acc_base") is not None]
        n_eval = {a.summary.eval.final.n for a in arms if a.summary.eval.final} - {None}
        rows.append({"algo": algo, "seeds": len(arms), "base": cell(mean_ci(base, bounds=UNIT), "%"),
                     "final": cell(mean_ci(final, bounds=UNIT), "%"), "change": cell(mean_ci(change), "pts"),
                     "n": ", ".join(str(n) for n in sorted(n_eval)) or "—"})
    return {"rows": rows, **lm_eval_section(cmp)}


def lm_eval_section(cmp: Comparison) -> dict[str, Any]:
    """lm-evaluation-harness scores before and after (summary.eval.lm_eval), seed means with intervals."""
    rows, ks, n = [], set(), set()
    extra: dict[str, dict[str, Any]] = {}  # standard benchmarks by name: {(algo, when): [metrics, ...]} or why not
    for algo in cmp.names:
        arms = cmp.ok_arms(algo)
        for when in ("base", "final"):
            scores = [s for s in (getattr(a.summary.eval.lm_eval, when) for a in arms) if isinstance(s, dict)]
            ks |= {s.get("k") for s in scores} - {None}
            n |= {s.get("n") for s in scores} - {None}
            rows.append({"algo": algo, "when": "before" if when == "base" else "after", "scored": len(scores),
                         "metrics": [cell(mean_ci([s.get(m) for s in scores], bounds=UNIT), "%")
                                     for m in LM_EVAL_METRICS]})
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
        for algo in cmp.names:
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
    for key, label in HEALTH_METRICS:
        cells = {}
        for algo in cmp.names:
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


def config_section(cmp: Comparison) -> dict[str, Any]:
    """The resolved config of each arm's first seed, side by side; differing fields marked."""
    columns, flat = [], {}
    for algo in cmp.names:
        arms = cmp.arms_of(algo)
        arm = next((a for a in arms if a.config), None)
        config = dict(arm.config) if arm else {}
        # The options the arm ran with, defaults filled in, as its config.yaml recorded them.
        options = (get(config, "derived", "algorithm_options")
                   or get(config, "algorithms", cmp.arm_algos.get(algo, algo)) or {})
        config.pop("algorithms", None)
        # another library's settings (derived.trl) have a section of their own: see cross_check_section
        config["derived"] = {k: v for k, v in (config.get("derived") or {}).items()
                             if k not in ("algorithm_options", "trl")}
        flat_config = flatten(config)
        flat_config.update({f"algorithm.{k}": v for k, v in options.items()})
        columns.append(f"{algo} ({arm.label})" if arm else algo)
        flat[algo] = flat_config
    keys = list(dict.fromkeys(k for algo in cmp.names for k in flat[algo]))
    differing, shared = [], []
    for key in keys:
        values = [str(flat[algo].get(key, "—")) for algo in cmp.names]
        if len(set(values)) > 1:
            differing.append({"key": key, "values": values})
        else:
            shared.append({"key": key, "value": values[0]})
    return {"columns": columns, "differing": differing, "shared": shared}


def cross_check_section(cmp: Comparison) -> list[dict[str, Any]]:
    """Arms trained by TRL's GRPOTrainer: the GRPOConfig fields set explicitly and what could not be matched,
    as each arm's config.yaml recorded them (derived.trl)."""
    out = []
    for algo in cmp.names:
        arm = next((a for a in cmp.arms_of(algo) if get(a.config, "derived", "trl")), None)
        if arm is None:
            continue
        trl = get(arm.config, "derived", "trl")
        out.append({"algo": algo, "version": trl.get("version"), "not_matched": trl.get("not_matched") or [],
                    "settings": sorted(flatten(trl.get("grpo_config") or {}).items())})
    return out


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


def warmup_completions(arm: Arm) -> tuple[int, int]:
    """(steps, sampled completions) an arm spent training its critic alone (PPO's critic warm-up): the steps
    that logged loss/policy_frozen, each step's completions taken from the cumulative count."""
    if "loss/policy_frozen" not in arm.steps or "completions" not in arm.steps:
        return 0, 0
    spent = arm.steps["completions"].diff().fillna(arm.steps["completions"])
    frozen = arm.steps["loss/policy_frozen"].fillna(0) > 0
    return int(frozen.sum()), int(spent[frozen].sum())


CRITIC_BASE_WORDS = {
    "separate": "adapters and a value head on its own frozen copy of the base",
    "shared": "a second adapter and a value head on the policy's frozen base",
}


def weights_text(config: dict[str, Any], algo: str) -> str:
    """What an arm trains, from its resolved config: every weight, or LoRA adapters on a frozen base (and, for
    PPO, which base its critic's adapters sit on: the report says which critic mode it measured)."""
    from harness.config.arm_kinds import algorithm_of
    lora = get(config, "model", "lora") or {}
    if not lora.get("rank"):
        return "every weight (full fine-tuning)"
    text = (f"LoRA adapters, rank {lora['rank']}, alpha {lora.get('alpha')}, on {lora.get('target_modules')}; "
            "the reference is the policy's base with its adapters off")
    if algorithm_of(algo) == "ppo":
        base = (get(config, "derived", "algorithm_options") or {}).get("critic_base", "separate")
        text += f"; critic ({base}): {CRITIC_BASE_WORDS.get(base, base)}"
    return text


def arms_section(cmp: Comparison) -> list[dict[str, Any]]:
    """Each arm: its algorithm, overrides, prompts per step, what it trains (every weight or LoRA adapters, and
    its critic's base) and what its critic's warm-up spent of the budget."""
    rows = []
    for spec in cmp.specs:
        arms = cmp.arms_of(spec["name"])
        config = next((a.config for a in arms if a.config), {})
        finished = [(a.label, *warmup_completions(a)) for a in arms if a.ok]
        planned = (get(config, "derived", "algorithm_options") or {}).get("critic_warmup_steps") or 0
        if any(steps for _, steps, _ in finished):
            warmup = "; ".join(f"{label}: {steps} steps, {spent:,} completions" for label, steps, spent in finished)
        else:
            warmup = f"{planned} steps planned; no finished arm logged them" if planned else "—"
        rows.append({"name": spec["name"], "algo": spec["algo"], "baseline": spec["name"] == cmp.baseline,
                     "overrides": settings_text(spec),
                     "prompts": get(config, "derived", "prompts_per_step"),
                     "group": get(config, "rollout", "samples_per_prompt"), "warmup": warmup,
                     "weights": weights_text(config, spec["algo"]) if config else "—"})
    return rows


def settings_text(spec: dict[str, Any]) -> str:
    """The arm's own settings and where each came from (comparison.json's `settings`: the preset's per-arm
    settings with their provenance, your --set, your --algos variant), or its overrides in a comparison from
    before settings were recorded."""
    from harness.config.arm_settings import grouped_lines
    if not spec.get("settings"):
        return ", ".join(f"{k}={v}" for k, v in spec["overrides"].items()) or "none"
    return "; ".join(grouped_lines(spec["settings"]))


def kl_words(cmp: Comparison) -> str:
    """The comparison's KL setting (--kl, --kl-coef) in words; native for one made before it was saved."""
    from harness.config.kl import KLSetting
    saved = cmp.plan.kl or {}
    try:
        return KLSetting(saved.get("mode") or "native", saved.get("coef")).words()
    except UserError:
        return f"not readable in comparison.json: {saved!r}"


def method_section(cmp: Comparison) -> dict[str, Any]:
    plan = cmp.plan
    return {"fairness": plan.fairness or [], "budget": plan.budget, "config": config_section(cmp),
            "arms": arms_section(cmp), "kl": kl_words(cmp), "baseline": cmp.baseline,
            "cross_checks": cross_check_section(cmp),
            "environment": environment_section(cmp), "config_hash": plan.config_hash,
            "preset": plan.preset, "task": plan.task, "model": plan.model}
