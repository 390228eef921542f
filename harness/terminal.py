"""What the harness shows on a terminal: progress bars, the comparison tables, quiet libraries."""

from __future__ import annotations

import os
import time
from typing import Any

from harness.results import MEMORY_FIGURES, TIME_FIGURES, arm_rows, fmt, get_path, ratio_rows


def quiet_libraries() -> None:
    """transformers' info logs and progress bars off; the harness shows its own progress."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


class ArmProgress:
    """A rich progress bar for one arm (warm start, then training)."""

    def __init__(self, label: str):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.label = label
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, phase: str, done: int, total: int, info: dict[str, float]) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(f"{self.label} {phase}", total=total, info="")
        text = "  ".join(f"{k} {v:.3f}" for k, v in info.items())
        self.progress.update(self.tasks[phase], completed=done, info=text)


def print_arm(summary: dict[str, Any], run_dir) -> None:
    """One arm's outcome in a line, and where its folder is."""
    from rich.console import Console
    console = Console()
    if summary["status"] != "ok":
        console.print(f"[red]{summary['algo']} s{summary['seed']}: {summary['status']}: {summary['error']}[/red]")
    else:
        base, final = summary["eval"]["base"]["accuracy"], summary["eval"]["final"]["accuracy"]
        console.print(f"{summary['algo']} s{summary['seed']}: accuracy {base:.1%} -> {final:.1%} in "
                      f"{summary['steps']} steps, {summary['wall_s']:.1f} s")
    console.print(f"results: {run_dir}")


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
        arms.add_row(f"{r['algo']} s{r['seed']}", status, fmt(r["steps"], ""), fmt(r["completions"], ""),
                     fmt(r["wall"], "s"), fmt(r["acc_base"], "%"), fmt(r["acc_final"], "%"),
                     fmt(r.get("acc_delta"), "%"))
    console.print(arms)

    scored = [r for r in rows if isinstance(r["lm_eval_base"], dict) and isinstance(r["lm_eval_final"], dict)]
    if scored:
        k = scored[0]["lm_eval_final"].get("k")
        lm = Table(title=f"lm-eval on held-out prompts: greedy pass@1; maj@{k} and pass@{k} from {k} samples")
        lm.add_column("arm")
        for metric in ("pass@1", "maj@k", "pass@k"):
            lm.add_column(f"{metric.replace('@k', f'@{k}')} start -> end", justify="right")
        for r in scored:
            lm.add_row(f"{r['algo']} s{r['seed']}", *(f"{fmt(r['lm_eval_base'].get(m), '%')} -> "
                                                      f"{fmt(r['lm_eval_final'].get(m), '%')}"
                                                      for m in ("pass@1", "maj@k", "pass@k")))
        console.print(lm)

    memory = Table(title="Memory by model and category (MiB; exact = counted from tensor shapes)")
    memory.add_column("arm")
    for column in ("model", "params", "grads", "optimizer", "total"):
        memory.add_column(column, justify="right" if column != "model" else "left")
    for r in rows:
        for model, sizes in r["models"].items():
            memory.add_row(f"{r['algo']} s{r['seed']}", model, *(fmt(sizes[k], "MiB") for k in ("params", "grads", "optimizer", "total")))
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
        cells = [fmt(r[key], unit) for r in rows] + ([fmt(ratio, "") if ratio else "—"] if ratios else [])
        figures.add_row(label, *cells)
    for phase in phase_names:
        cells = [fmt(r["phases_per_step"].get(phase), "s") for r in rows]
        figures.add_row(f"time per step: {phase}", *cells, *([""] if ratios else []))
    console.print(figures)
    gpu_notes = {(get_path(s, "mem", "measured", "gpu")) for s in summaries if s and get_path(s, "mem", "measured", "gpu")}
    for note in sorted(gpu_notes):
        console.print(f"GPU figures: {note}")
