"""What the harness shows on a terminal: progress bars, the comparison tables, quiet libraries."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from harness.results.headline import MEMORY_FIGURES, TIME_FIGURES, arm_rows, as_arms, get_path, ratio_rows
from harness.results.records import ComparisonPlan, Summary
from harness.results.units import duration, fmt


def quiet_libraries() -> None:
    """transformers' info logs and progress bars off; the harness shows its own progress."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


PROGRESS_SECONDS = 5.0  # a plain progress line per phase at most this often ($HARNESS_PROGRESS_SECONDS)


def progress_seconds() -> float:
    """$HARNESS_PROGRESS_SECONDS (default PROGRESS_SECONDS); one line (UserError) when it is not seconds."""
    from harness import UserError
    text = os.environ.get("HARNESS_PROGRESS_SECONDS")
    if text is None:
        return PROGRESS_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"HARNESS_PROGRESS_SECONDS={text!r} must be seconds between progress lines, 0 or more")
    return value


class PlainProgress:
    """Progress for a log file or a CI console: a plain line per phase every few seconds, and at its end.

        grpo s0 train: step 12/60 (20%)  reward 0.512  acc 0.250  elapsed 24 s  ETA 1 min 36 s
    """

    def __init__(self, label: str, every: float | None = None, stream=None):
        self.label = label
        self.every = progress_seconds() if every is None else every
        self.stream = stream or sys.stdout
        self.started: dict[str, float] = {}  # phase -> when it began (the previous update of any phase)
        self.printed: dict[str, float] = {}  # phase -> when its last line was printed
        self.last_event = time.monotonic()

    def __call__(self, phase: str, done: int, total: int, info: dict[str, float]) -> None:
        now = time.monotonic()
        if done == 0:  # a phase that starts (again: each evaluation counts from zero)
            self.started[phase] = now
        start = self.started.setdefault(phase, self.last_event)
        self.last_event = now
        if done < total and now - self.printed.get(phase, -math.inf) < self.every:
            return
        self.printed[phase] = now
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else None
        share = f" ({done / total:.0%})" if total else ""
        values = "".join(f"  {k} {v:.3f}" for k, v in info.items())
        print(f"{self.label} {phase}: {done}/{total}{share}{values}  elapsed {duration(elapsed)}  "
              f"ETA {duration(eta)}", file=self.stream, flush=True)


class ArmProgress:
    """One arm's progress (warm start, training, evaluation): a rich bar on a terminal, plain lines elsewhere."""

    def __init__(self, label: str, plain: bool | None = None):
        self.label = label
        self.plain = PlainProgress(label) if (not sys.stdout.isatty() if plain is None else plain) else None
        self.tasks: dict[str, Any] = {}
        if self.plain:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 transient=False)

    def __enter__(self):
        if not self.plain:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if not self.plain:
            self.progress.stop()

    def __call__(self, phase: str, done: int, total: int, info: dict[str, float]) -> None:
        if self.plain:
            return self.plain(phase, done, total, info)
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(f"{self.label} {phase}", total=total, info="")
        text = "  ".join(f"{k} {v:.3f}" for k, v in info.items())
        self.progress.update(self.tasks[phase], completed=done, info=text)


def print_arm(summary: Summary, run_dir, name: str | None = None) -> None:
    """One arm's outcome in a line, and where its folder is; `name`: the arm's (default its algorithm)."""
    from rich.console import Console
    from rich.markup import escape
    console = Console()
    label = escape(f"{name or summary.algo} s{summary.seed}")
    if not summary.ok:  # an error's text is anyone's (a reward function's, gloo's '[/path]'): escaped
        console.print(f"[red]{label}: {escape(str(summary.status))}: {escape(str(summary.error))}[/red]")
    else:
        base, final = summary.eval.base.accuracy, summary.eval.final.accuracy
        console.print(f"{label}: accuracy {fmt(base, '%')} -> {fmt(final, '%')} in "
                      f"{summary.steps} steps, {summary.wall_s:.1f} s")
    console.print(f"results: {run_dir}", markup=False)


def render_terminal(summaries: list[Summary | None], arms: dict[str, str] | list[str], console=None,
                    baseline: str | None = None) -> None:
    """The comparison's tables: what each arm bought, lm-eval, memory by model, cost per arm with the verdict
    pair's ratio, and (more than two arms) every arm against the baseline."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    console = console or Console()
    rows = arm_rows(summaries)
    arms = as_arms(arms)

    table = Table(title="Arms: what each bought (greedy accuracy on held-out prompts)")
    for column in ("arm", "status", "steps", "completions", "wall s", "acc start", "acc end", "change"):
        table.add_column(column, justify="right" if column not in ("arm", "status") else "left")
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"[red]{escape(str(r['status']))}[/red]: {escape(str(r['error']))}"
        table.add_row(f"{r['arm']} s{r['seed']}", status, fmt(r["steps"]), fmt(r["completions"]),
                     fmt(r["wall"], "s"), fmt(r["acc_base"], "%"), fmt(r["acc_final"], "%"),
                     fmt(r.get("acc_delta"), "%"))
    console.print(table)

    scored = [r for r in rows if isinstance(r["lm_eval_base"], dict) and isinstance(r["lm_eval_final"], dict)]
    if scored:
        k = scored[0]["lm_eval_final"].get("k")
        lm = Table(title=f"lm-eval on held-out prompts: greedy pass@1; maj@{k} and pass@{k} from {k} samples")
        lm.add_column("arm")
        for metric in ("pass@1", "maj@k", "pass@k"):
            lm.add_column(f"{metric.replace('@k', f'@{k}')} start -> end", justify="right")
        for r in scored:
            lm.add_row(f"{r['arm']} s{r['seed']}", *(f"{fmt(r['lm_eval_base'].get(m), '%')} -> "
                                                      f"{fmt(r['lm_eval_final'].get(m), '%')}"
                                                      for m in ("pass@1", "maj@k", "pass@k")))
        console.print(lm)

    memory = Table(title="Memory by model and category (MiB; exact = counted from tensor shapes)")
    memory.add_column("arm")
    for column in ("model", "params", "grads", "optimizer", "total"):
        memory.add_column(column, justify="right" if column != "model" else "left")
    for r in rows:
        for model, sizes in r["models"].items():
            sizes_mib = (fmt(sizes[k], "MiB") for k in ("params", "grads", "optimizer", "total"))
            memory.add_row(f"{r['arm']} s{r['seed']}", model, *sizes_mib)
    console.print(memory)

    figures = Table(title="Cost per arm (MiB, seconds)")
    figures.add_column("figure")
    for r in rows:
        figures.add_column(f"{r['arm']} s{r['seed']}", justify="right")
    ratios = ratio_rows(summaries, arms, baseline)
    if ratios:
        figures.add_column(f"{ratios['numerator']}/{ratios['denominator']}", justify="right", style="bold")
    phase_names = sorted({p for r in rows for p in r["phases_per_step"]})
    for key, label, unit in MEMORY_FIGURES + TIME_FIGURES:
        if all(r[key] is None for r in rows):
            continue
        ratio = get_path(ratios, "figures", key, "ratio") if ratios else None
        cells = [fmt(r[key], unit) for r in rows] + ([fmt(ratio, "ratio") if ratio else "—"] if ratios else [])
        figures.add_row(label, *cells)
    for phase in phase_names:
        cells = [fmt(r["phases_per_step"].get(phase), "s") for r in rows]
        figures.add_row(f"time per step: {phase}", *cells, *([""] if ratios else []))
    console.print(figures)
    if ratios and len(ratios["arms"]) > 1:
        console.print(baseline_table(ratios))
    gpu_notes = {s.mem.measured.gpu for s in summaries if s and s.mem.measured.gpu}
    for note in sorted(gpu_notes):
        console.print(f"GPU figures: {note}", markup=False)


BASELINE_COLUMNS = [("mem_live_peak", "live peak"), ("mem_model_state", "model state (arith.)"),
                    ("mem_cuda_allocated", "CUDA alloc."), ("time_per_step", "time/step"), ("wall", "train time")]


def baseline_table(ratios: dict[str, Any]):
    """One row per arm against the baseline: ratios of seed means, and the final accuracy difference."""
    from rich.table import Table
    base = ratios["baseline"]
    keys = [(k, label) for k, label in BASELINE_COLUMNS if any(k in a["figures"] for a in ratios["arms"].values())]
    table = Table(title=f"Every arm against the baseline {base} (ratio of seed means; accuracy: paired difference)")
    table.add_column("arm")
    for _, label in keys:
        table.add_column(f"{label} /{base}", justify="right")
    table.add_column(f"acc end − {base}", justify="right")
    for name, against in ratios["arms"].items():
        cells = [fmt(get_path(against, "figures", k, "ratio"), "ratio") for k, _ in keys]
        difference = against["acc_final_difference"]
        marker = " (verdict)" if name == ratios["numerator"] else ""
        table.add_row(f"{name}{marker}", *cells, "—" if difference is None else f"{100 * difference:+.1f} pts")
    return table


def past_arm_seconds(results_dir: Path | str, config_hash: str) -> dict[str, list[float]]:
    """{arm: [seconds, ...]} of finished arms of earlier comparisons of the same config, each timed from
    its env.json (written as the arm starts) to its summary.json (written as it ends)."""
    import json
    seconds: dict[str, list[float]] = {}
    for plan_path in Path(results_dir).glob("*/comparison.json"):
        try:
            plan = ComparisonPlan.model_validate(json.loads(plan_path.read_text()))
            if plan.config_hash != config_hash:
                continue
            for arm in plan.arms:
                folder = plan_path.parent / arm.dir
                if Summary.read(json.loads((folder / "summary.json").read_text())).ok:
                    took = (folder / "summary.json").stat().st_mtime - (folder / "env.json").stat().st_mtime
                    seconds.setdefault(arm.arm or arm.algo, []).append(took)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return seconds


def expected_time(results_dir: Path | str, config_hash: str, arms: list[str]) -> str:
    past = past_arm_seconds(results_dir, config_hash)
    if not all(past.get(algo) for algo in arms):
        return "no earlier run of this config to go by; each arm's progress shows its ETA"
    total = sum(sum(past[algo]) / len(past[algo]) for algo in arms)
    runs = sum(len(v) for v in past.values())
    return f"about {duration(total)} (from {runs} finished arm{'s' * (runs != 1)} of this config in {results_dir})"


def plan_lines(config, arms, seeds: list[int], comparison_dir: Path, trackers: list[str], baseline: str | None = None,
               kl=None, arm_configs: dict[str, Any] | None = None) -> list[str]:
    """What a comparison is about to do, printed before the first arm starts (and kept in CI logs).

    `arms`: arm specs (harness.commands.arm_specs.ArmSpec) or algorithm names; `arm_configs`: each arm's config by name."""
    names = [getattr(a, "name", a) for a in arms]
    runs = [name for _ in seeds for name in names]
    seed_text = ", ".join(map(str, seeds))
    steps = config.total_steps()
    lm_eval = (f"lm-eval on the base and final policy: greedy pass@1, maj@{config.run.lm_eval_k} and "
               f"pass@{config.run.lm_eval_k}" if config.run.lm_eval and config.run.lm_eval_k
               else "lm-eval on the base and final policy: greedy pass@1" if config.run.lm_eval else "lm-eval: off")
    lines = [
        f"plan: {len(runs)} arms = {', '.join(names)} x {len(seeds)} seed{'s' * (len(seeds) != 1)} ({seed_text}), "
        "one after another, each in its own process",
        f"  model {config.model.name} on {config.run.device}; task {config.task.name} "
        f"({config.task.eval_size} held-out prompts)",
        f"  budget per arm: {config.budget.total} {config.budget.unit}"
        + (f" = {steps} steps of {config.completions_per_step} completions ({config.prompts_per_step} prompts x "
           f"{config.rollout.samples_per_prompt})" if config.budget.unit == "completions" else ""),
    ]
    lines += arm_lines(arms, arm_configs or {}, config)
    if baseline:
        lines.append(f"  ratios against the baseline arm: {baseline}")
    if kl is not None:
        lines.append(f"  KL to the reference: {kl.words()}")
        from harness.commands.arm_specs import kl_notes
        lines += [f"  {note}" for note in kl_notes(arms, kl)]
    lines += [
        f"  {lm_eval}",
        f"  trackers: {', '.join(trackers) if trackers else 'none (--report-to trackio,tensorboard,... to add)'}",
        f"  expected time: {expected_time(config.run.results_dir, config.hash(), runs)}",
        f"  folder: {comparison_dir}",
    ]
    return lines


def arm_lines(arms, arm_configs: dict[str, Any], config) -> list[str]:
    """Each arm's own settings and where each came from (the preset's per-arm settings and their provenance,
    your --set, your --algos variant), its prompts per step where its group size differs, a critic's warm-up."""
    from harness.commands.arm_specs import setting_lines
    lines = []
    for arm in arms:
        name = getattr(arm, "name", arm)
        own = arm_configs.get(name)
        notes = []
        if own is not None and own.prompts_per_step != config.prompts_per_step:
            notes.append(f"{own.prompts_per_step} prompts x {own.rollout.samples_per_prompt} per step, "
                         f"{own.total_steps()} steps")
        warmup = (own.algorithms.get("ppo", {}).get("critic_warmup_steps", 0)
                  if own is not None and getattr(arm, "algo", name) == "ppo" else 0)
        if warmup:
            notes.append(f"critic warm-up: the first {warmup} steps ({warmup * own.completions_per_step} completions, "
                         "counted in the budget) train the critic only")
        sources = [] if isinstance(arm, str) else setting_lines(arm)  # arm: an ArmSpec, or an algorithm's name
        if any(getattr(a, "preset", None) for a in arms) and getattr(arm, "preset", "") is None:
            sources.append(f"not tuned: the preset has no arm_settings for {arm.algo}; the preset's shared values")
        if notes or sources:
            lines.append(f"  arm {name} ({getattr(arm, 'algo', name)})" + "".join(f"; {note}" for note in notes))
            lines += [f"    {line}" for line in sources]
    return lines
