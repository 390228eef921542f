"""What the readers of results (terminal tables, the report, the CI gate) take from arms' summaries: one row
of headline figures per arm (harness.results.records.FIGURES), which arm every ratio is taken against (the
baseline), which pair the verdict reads, and the ratios.

An arm is named (`arm`: grpo, ppo, ppo-n1, ...) and trains an algorithm (`algo`); summaries written before
arms had names carry the algorithm only, which is then the arm's name."""

from __future__ import annotations

from statistics import mean
from typing import Any

from harness.results.records import FIGURES, Summary

# (key, label, unit) of every figure of the cost tables, in the order tables show them (harness.results.records.FIGURES).
MEMORY_FIGURES = [(f.key, f.label, f.unit) for f in FIGURES if f.group == "memory"]
TIME_FIGURES = [(f.key, f.label, f.unit) for f in FIGURES if f.group == "time"]
# The phases of a step in the order they run; an arm records the ones it has.
PHASES = ["generate", "score", "old_logprobs", "ref_logprobs", "values", "advantages", "policy_update",
          "critic_update", "joint_update"]


def get_path(data: Any, *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where a key is missing."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def as_summary(summary: Summary | dict[str, Any] | None) -> Summary:
    return summary if isinstance(summary, Summary) else Summary.read(summary)


def headline(summary: Summary | dict[str, Any]) -> dict[str, Any]:
    """The figures of one arm that tables, ratios, the report and the CI gate use: every headline figure
    (harness.results.records.FIGURES) by its key, beside the arm's name, status and the tables' details."""
    summary = as_summary(summary)
    phases = summary.mem.live.phases or {}
    row = {"arm": summary.name, "algo": summary.algo, "seed": summary.seed, "status": summary.status,
           "error": summary.error, **{figure.key: figure.read(summary) for figure in FIGURES},
           "mem_live_phases": {phase: peak.get("total") for phase, peak in phases.items()},
           # Training time leaves the periodic held-out evaluations out (time.train_s); older summaries have only
           # the wall time, evaluations included: time_basis says which one the time figures use.
           "time_basis": "train_s" if summary.time.train_s is not None else "wall_s",
           "phases_per_step": summary.time.phases_per_step_s or {},
           "models": summary.mem.arithmetic.models or {},
           "lm_eval_base": summary.eval.lm_eval.base, "lm_eval_final": summary.eval.lm_eval.final}
    if row["acc_base"] is not None and row["acc_final"] is not None:
        row["acc_delta"] = row["acc_final"] - row["acc_base"]
    return row


def arm_pair(algos: list[str]) -> tuple[str, str] | None:
    """(numerator, denominator) of two algorithms: grpo/ppo when both ran, else the first two (harness estimate)."""
    if {"grpo", "ppo"} <= set(algos):
        return "grpo", "ppo"
    return (algos[0], algos[1]) if len(algos) >= 2 else None


def as_arms(arms: dict[str, str] | list[str]) -> dict[str, str]:
    """{arm name: algorithm} in order; a plain list names arms after their algorithms."""
    return dict(arms) if isinstance(arms, dict) else {name: name for name in arms}


def default_baseline(arms: dict[str, str] | list[str]) -> str | None:
    """The arm every ratio is taken against: the first PPO arm, else the first arm."""
    arms = as_arms(arms)
    return next((name for name, algo in arms.items() if algo == "ppo"), next(iter(arms), None))


def arm_pair_of(arms: dict[str, str] | list[str], baseline: str | None = None) -> tuple[str, str] | None:
    """(numerator, baseline) of the verdict's claim: the first GRPO arm against the baseline, else the first
    other arm. grpo,ppo gives ('grpo', 'ppo'); one arm gives None."""
    arms = as_arms(arms)
    baseline = baseline or default_baseline(arms)
    others = [name for name in arms if name != baseline]
    if baseline is None or not others:
        return None
    return next((name for name in others if arms[name] == "grpo"), others[0]), baseline


def arm_rows(summaries: list[Summary | dict[str, Any] | None]) -> list[dict[str, Any]]:
    return [headline(s) for s in summaries if s]


def figure_ratios(rows: list[dict[str, Any]], top: str, bottom: str) -> dict[str, Any]:
    """top/bottom of the seed-mean of every figure both arms have."""
    figures = {}
    for key, label, _ in MEMORY_FIGURES + TIME_FIGURES:
        numerator = [r[key] for r in rows if r["arm"] == top and r[key] is not None]
        denominator = [r[key] for r in rows if r["arm"] == bottom and r[key] is not None]
        if numerator and denominator and mean(denominator):
            figures[key] = {"label": label, "ratio": mean(numerator) / mean(denominator),
                            top: mean(numerator), bottom: mean(denominator)}
    return figures


def accuracy_difference(rows: list[dict[str, Any]], top: str, bottom: str) -> float | None:
    """Mean over the seeds both arms finished of top − bottom final held-out accuracy."""
    finals = {name: {r["seed"]: r["acc_final"] for r in rows if r["arm"] == name and r["acc_final"] is not None}
              for name in (top, bottom)}
    seeds = sorted(set(finals[top]) & set(finals[bottom]))
    return mean(finals[top][s] - finals[bottom][s] for s in seeds) if seeds else None


def ratio_rows(summaries: list[Summary | dict[str, Any] | None], arms: dict[str, str] | list[str],
               baseline: str | None = None) -> dict[str, Any]:
    """Every arm against the baseline: the ratio of seed means of every figure, and the paired difference in final
    accuracy; `numerator`/`denominator`/`figures` hold the verdict's pair (grpo/ppo when both ran)."""
    arms = as_arms(arms)
    pair = arm_pair_of(arms, baseline)
    if pair is None:
        return {}
    numerator, denominator = pair
    rows = [r for r in arm_rows(summaries) if r["status"] == "ok"]
    against = {name: {"algo": algo, "figures": figure_ratios(rows, name, denominator),
                      "acc_final_difference": accuracy_difference(rows, name, denominator)}
               for name, algo in arms.items() if name != denominator}
    return {"numerator": numerator, "denominator": denominator, "baseline": denominator,
            "figures": against[numerator]["figures"], "arms": against}

