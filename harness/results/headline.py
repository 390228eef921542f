"""The contract between the writers of results (the runner) and their readers (terminal tables, the
report, the CI gate): the headline figures of an arm's summary.json, their labels and units, which arm
every ratio is taken against (the baseline) and which pair the verdict reads, and how figures are formatted.

An arm is named (`arm`: grpo, ppo, ppo-n1, ...) and trains an algorithm (`algo`); summaries written before
arms had names carry the algorithm only, which is then the arm's name."""

from __future__ import annotations

from statistics import mean
from typing import Any

MIB = 1024 * 1024

# (key, label, unit) of every headline figure, in the order tables show them. Each label says whether
# the figure is measured or arithmetic (follows from the model sizes).
MEMORY_FIGURES = [
    ("mem_live_peak", "measured: step peak of live tensors (max over phases)", "MiB"),
    ("mem_model_state", "arithmetic: model state (params + grads + optimizer)", "MiB"),
    ("mem_rss_net", "measured: RSS peak, net of start", "MiB"),
    ("mem_cuda_allocated", "measured: CUDA allocated peak", "MiB"),
    ("mem_cuda_reserved", "measured: CUDA reserved peak", "MiB"),
    ("mem_nvml_used", "measured: NVML device memory peak", "MiB"),
]
# The phases of a step in the order they run; an arm records the ones it has.
PHASES = ["generate", "score", "old_logprobs", "ref_logprobs", "values", "advantages", "policy_update",
          "critic_update", "joint_update"]
TIME_FIGURES = [
    ("time_per_step", "measured: time per step (tracked steps and evaluations left out)", "s"),
    ("wall", "measured: training time for the budget (evaluations left out)", "s"),
    ("samples_per_s", "samples / s", "1/s"),
    ("gen_tokens_per_s", "generated tokens / s", "1/s"),
]


def get_path(data: Any, *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where a key is missing."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _max_or_none(values: Any) -> float | None:
    if not isinstance(values, dict) or not values:
        return None
    return max(values.values())


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of one arm that tables, ratios, the report and the CI gate use."""
    models = get_path(summary, "mem", "arithmetic", "models") or {}
    measured = get_path(summary, "mem", "measured") or {}
    phases = get_path(summary, "mem", "live", "phases") or {}
    # Training time leaves the periodic held-out evaluations out (time.train_s); older summaries have only
    # the wall time, evaluations included: time_basis says which one the time figures use.
    train_s = get_path(summary, "time", "train_s")
    row = {
        "arm": summary.get("arm") or summary.get("algo"), "algo": summary.get("algo"), "seed": summary.get("seed"),
        "status": summary.get("status"),
        "error": summary.get("error"), "steps": summary.get("steps"),
        "completions": get_path(summary, "budget", "used", "completions"),
        "acc_base": get_path(summary, "eval", "base", "accuracy"),
        "acc_final": get_path(summary, "eval", "final", "accuracy"),
        "mem_live_peak": get_path(summary, "mem", "live", "peak"),
        "mem_live_peak_phase": get_path(summary, "mem", "live", "peak_phase"),
        "mem_live_phases": {phase: row.get("total") for phase, row in phases.items()},
        "mem_model_state": get_path(summary, "mem", "arithmetic", "model_state_total"),
        "mem_rss_net": measured.get("rss_peak_net"),
        "mem_cuda_allocated": _max_or_none(measured.get("cuda_allocated_peak")),
        "mem_cuda_reserved": _max_or_none(measured.get("cuda_reserved_peak")),
        "mem_nvml_used": get_path(measured, "nvml", "used_peak"),
        "time_basis": "train_s" if train_s is not None else "wall_s",
        "time_per_step": get_path(summary, "time", "per_step_s"),
        "wall": train_s if train_s is not None else summary.get("wall_s"),
        "eval_s": get_path(summary, "time", "eval_s"),
        "samples_per_s": get_path(summary, "tput", "samples_per_s"),
        "gen_tokens_per_s": get_path(summary, "tput", "gen_tokens_per_s"),
        "phases_per_step": get_path(summary, "time", "phases_per_step_s") or {},
        "models": models,
        "lm_eval_base": get_path(summary, "eval", "lm_eval", "base"),
        "lm_eval_final": get_path(summary, "eval", "lm_eval", "final"),
    }
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


def arm_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def ratio_rows(summaries: list[dict[str, Any]], arms: dict[str, str] | list[str],
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


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MiB":
        return f"{value / MIB:,.2f}"
    if unit == "%":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:,}"
