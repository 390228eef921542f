"""Headline figures of each arm, GRPO/PPO ratios, and the terminal tables that show them."""

from __future__ import annotations

from statistics import mean
from typing import Any

MIB = 1024 * 1024

# (key, label, unit) of every headline figure, in the order tables show them.
MEMORY_FIGURES = [
    ("mem_exact_total", "exact total (model state + activations)", "MiB"),
    ("mem_model_state", "exact model state (params + grads + optimizer)", "MiB"),
    ("mem_activations", "exact saved activations, peak", "MiB"),
    ("mem_rollout_kv", "exact rollout KV cache, peak", "MiB"),
    ("mem_rollout_logits", "exact rollout logits, peak", "MiB"),
    ("mem_rss_net", "measured RSS peak, net of start", "MiB"),
    ("mem_cuda_allocated", "measured CUDA allocated peak", "MiB"),
    ("mem_cuda_reserved", "measured CUDA reserved peak", "MiB"),
    ("mem_nvml_used", "measured NVML device memory peak", "MiB"),
]
TIME_FIGURES = [
    ("time_per_step", "time per step", "s"),
    ("wall", "wall time", "s"),
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
    models = get_path(summary, "mem", "exact", "models") or {}
    measured = get_path(summary, "mem", "measured") or {}
    row = {
        "algo": summary.get("algo"), "seed": summary.get("seed"), "status": summary.get("status"),
        "error": summary.get("error"), "steps": summary.get("steps"),
        "completions": get_path(summary, "budget", "used", "completions"),
        "acc_base": get_path(summary, "eval", "base", "accuracy"),
        "acc_final": get_path(summary, "eval", "final", "accuracy"),
        "mem_exact_total": get_path(summary, "mem", "exact", "total"),
        "mem_model_state": get_path(summary, "mem", "exact", "model_state_total"),
        "mem_activations": get_path(summary, "mem", "exact", "activations_peak"),
        "mem_rollout_kv": get_path(summary, "mem", "exact", "rollout_peak", "kv_cache"),
        "mem_rollout_logits": get_path(summary, "mem", "exact", "rollout_peak", "logits"),
        "mem_rss_net": measured.get("rss_peak_net"),
        "mem_cuda_allocated": _max_or_none(measured.get("cuda_allocated_peak")),
        "mem_cuda_reserved": _max_or_none(measured.get("cuda_reserved_peak")),
        "mem_nvml_used": get_path(measured, "nvml", "used_peak"),
        "time_per_step": get_path(summary, "time", "per_step_s"),
        "wall": summary.get("wall_s"),
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


def arm_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [headline(s) for s in summaries if s]


def ratio_rows(summaries: list[dict[str, Any]], algos: list[str]) -> dict[str, Any]:
    """numerator/denominator of the seed-mean of every figure (grpo/ppo when both ran)."""
    if len(algos) < 2:
        return {}
    numerator, denominator = ("grpo", "ppo") if {"grpo", "ppo"} <= set(algos) else (algos[0], algos[1])
    rows = [r for r in arm_rows(summaries) if r["status"] == "ok"]
    out: dict[str, Any] = {"numerator": numerator, "denominator": denominator, "figures": {}}
    for key, label, _ in MEMORY_FIGURES + TIME_FIGURES:
        top = [r[key] for r in rows if r["algo"] == numerator and r[key] is not None]
        bottom = [r[key] for r in rows if r["algo"] == denominator and r[key] is not None]
        if top and bottom and mean(bottom):
            out["figures"][key] = {"label": label, "ratio": mean(top) / mean(bottom),
                                   numerator: mean(top), denominator: mean(bottom)}
    return out


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MiB":
        return f"{value / MIB:,.2f}"
    if unit == "%":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:,}"


def render_terminal(summaries: list[dict[str, Any]], algos: list[str], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    rows = arm_rows(summaries)

    arms = Table(title="Arms: what each bought (greedy accuracy on held-out prompts)")
    for column in ("arm", "status", "steps", "completions", "wall s", "acc start", "acc end", "change"):
        arms.add_column(column, justify="right" if column not in ("arm", "status") else "left")
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/red]: {r['error']}"
        arms.add_row(f"{r['algo']} s{r['seed']}", status, _fmt(r["steps"], ""), _fmt(r["completions"], ""),
                     _fmt(r["wall"], "s"), _fmt(r["acc_base"], "%"), _fmt(r["acc_final"], "%"),
                     _fmt(r.get("acc_delta"), "%"))
    console.print(arms)

    scored = [r for r in rows if isinstance(r["lm_eval_base"], dict) and isinstance(r["lm_eval_final"], dict)]
    if scored:
        k = scored[0]["lm_eval_final"].get("k")
        lm = Table(title=f"lm-eval on held-out prompts: greedy pass@1; maj@{k} and pass@{k} from {k} samples")
        lm.add_column("arm")
        for metric in ("pass@1", "maj@k", "pass@k"):
            lm.add_column(f"{metric.replace('@k', f'@{k}')} start -> end", justify="right")
        for r in scored:
            lm.add_row(f"{r['algo']} s{r['seed']}", *(f"{_fmt(r['lm_eval_base'].get(m), '%')} -> "
                                                      f"{_fmt(r['lm_eval_final'].get(m), '%')}"
                                                      for m in ("pass@1", "maj@k", "pass@k")))
        console.print(lm)

    memory = Table(title="Memory by model and category (MiB; exact = counted from tensor shapes)")
    memory.add_column("arm")
    for column in ("model", "params", "grads", "optimizer", "total"):
        memory.add_column(column, justify="right" if column != "model" else "left")
    for r in rows:
        for model, sizes in r["models"].items():
            memory.add_row(f"{r['algo']} s{r['seed']}", model, *(_fmt(sizes[k], "MiB") for k in ("params", "grads", "optimizer", "total")))
    console.print(memory)

    figures = Table(title="Cost per arm (MiB, seconds)")
    figures.add_column("figure")
    for r in rows:
        figures.add_column(f"{r['algo']} s{r['seed']}", justify="right")
    ratios = ratio_rows(summaries, algos)
    if ratios:
        figures.add_column(f"{ratios['numerator']}/{ratios['denominator']}", justify="right", style="bold")
    phase_names = sorted({p for r in rows for p in r["phases_per_step"]})
    for key, label, unit in MEMORY_FIGURES + TIME_FIGURES:
        if all(r[key] is None for r in rows):
            continue
        ratio = get_path(ratios, "figures", key, "ratio") if ratios else None
        cells = [_fmt(r[key], unit) for r in rows] + ([_fmt(ratio, "") if ratio else "—"] if ratios else [])
        figures.add_row(label, *cells)
    for phase in phase_names:
        cells = [_fmt(r["phases_per_step"].get(phase), "s") for r in rows]
        figures.add_row(f"time per step: {phase}", *cells, *([""] if ratios else []))
    console.print(figures)
    gpu_notes = {(get_path(s, "mem", "measured", "gpu")) for s in summaries if s and get_path(s, "mem", "measured", "gpu")}
    for note in sorted(gpu_notes):
        console.print(f"GPU figures: {note}")
