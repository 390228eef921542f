"""`harness estimate`: GRPO vs PPO memory per GPU at any model size, from each arm's own step on fake tensors.

    from harness.commands.estimate import estimate_command
    from harness.config.schema import load_config
    estimate_command(load_config("tiny", overrides=["model.name=Qwen/Qwen2.5-7B", "estimate.world_size=8"]),
                     ["grpo", "ppo"])
"""

from __future__ import annotations

import json
import sys
from typing import Any

from harness.config.schema import Config

GIB, MIB = 2 ** 30, 2 ** 20


def unit_for(values: list[int]) -> tuple[str, int]:
    """GiB for figures of a GiB and more, MiB below."""
    return ("GiB", GIB) if max(values, default=0) >= GIB else ("MiB", MIB)


def size(value: int | None, scale: int) -> str:
    return "—" if not value else f"{value / scale:,.2f}"


def setup_lines(setup: dict[str, Any], grid: bool = False) -> list[str]:
    """What was estimated; for a grid, without the choices the grid varies."""
    engine = setup["rollout_engine"]
    model = f"model {setup['model']} ({setup['source']}); precision {setup['precision']}"
    if not grid:
        model += (f", activation checkpointing {'on' if setup['gradient_checkpointing'] else 'off'}, reward model "
                  f"{setup['reward_model'] or 'none'}")
    gpus = (f"world size {setup['world_size']}: {setup['rows_per_gpu']} completions per GPU; "
            f"optimizer path {setup['optimizer_path']}")
    if engine and not grid:
        gpus += f"; rollout engine reserving {engine['reserve']:.0%} of {engine['device']} memory ({engine['mode']})"
    return [
        model,
        f"per step: {setup['batch']} completions of {setup['prompt_length']} prompt + {setup['completion_length']} "
        f"completion tokens, groups of {setup['group_size']}, {setup['minibatches']} minibatches, micro-batches of "
        f"{setup['micro_batch_size'] or 'a whole minibatch'}, log-prob passes in "
        f"{str(setup['logprob_batch_size']) + ' rows' if setup['logprob_batch_size'] else 'one pass'}",
        gpus,
    ]


def arm_table(algo: str, arm: dict[str, Any], world_size: int):
    from rich.table import Table

    from harness.estimate.estimator import CATEGORIES
    present = [(k, label) for k, label, _ in CATEGORIES if any(row.get(k) for row in arm["phases"].values())]
    unit, scale = unit_for([row["total"] for row in arm["phases"].values()])
    where = "per GPU" if world_size > 1 else "one GPU"
    table = Table(title=f"{algo.upper()}: estimated peak of live tensors per phase, {unit} {where} (* step peak)")
    table.add_column("phase", no_wrap=True)
    for _, label in present:
        table.add_column(label, justify="right")
    table.add_column("total", justify="right", style="bold", no_wrap=True)
    for phase, row in arm["phases"].items():
        mark = "*" if phase == arm["peak_phase"] else ""
        table.add_row(phase + mark, *(size(row.get(k), scale) for k, _ in present), size(row["total"], scale))
    return table


def legend(result: dict[str, Any]) -> str:
    from harness.estimate.estimator import CATEGORIES
    present = {k for arm in result["arms"].values() for row in arm["phases"].values() for k in row}
    return "; ".join(f"{label}: {what}" for k, label, what in CATEGORIES if k in present)


def amount(value: int) -> str:
    unit, scale = unit_for([value])
    return f"{value / scale:,.2f} {unit}"


def fit_table(result: dict[str, Any]):
    from rich.table import Table
    algos = list(result["arms"])
    table = Table(title="Fits on a device? (estimated step peak per GPU, the rollout engine's share of that device included)")
    table.add_column("device")
    for algo in algos:
        table.add_column(algo.upper(), justify="right")
    for key, device in result["devices"].items():
        cells = []
        for algo in algos:
            entry = result["arms"][algo]["on_devices"][key]
            verdict = "[green]fits[/green]" if entry["fits"] else "[red]does not fit[/red]"
            cells.append(f"{entry['peak'] / GIB:,.1f} GiB {verdict}")
        table.add_row(f"{device['label']} ({device['bytes'] / GIB:.0f} GiB)", *cells)
    return table


def state_table(result: dict[str, Any]):
    from rich.table import Table
    rows = [(algo, model, sizes) for algo, arm in result["arms"].items() for model, sizes in arm["model_state"].items()]
    unit, scale = unit_for([sizes["total"] for _, _, sizes in rows])
    where = "per GPU" if result["setup"]["world_size"] > 1 else "one GPU"
    table = Table(title=f"Model state ({unit}, {where}; arithmetic: follows from the sizes)")
    for column in ("arm", "model", "params", "grads", "optimizer", "total"):
        table.add_column(column, justify="left" if column in ("arm", "model") else "right")
    for algo, model, sizes in rows:
        table.add_row(algo, model, *(size(sizes[k], scale) for k in ("params", "grads", "optimizer", "total")))
    return table


def make_console():
    """A rich console; 120 columns when the output is not a terminal (a log, a pipe)."""
    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=120)


def render(result: dict[str, Any], console=None) -> None:
    console = console or make_console()
    for line in setup_lines(result["setup"]):
        console.print(line, markup=False)  # model names and paths are the user's: never markup
    for algo, arm in result["arms"].items():
        console.print(arm_table(algo, arm, result["setup"]["world_size"]))
        took = "from the cache" if arm["cached"] else f"fake step in {arm['seconds']:.0f} s"
        console.print(f"{algo.upper()} step peak (estimated): [bold]{amount(arm['peak'])}[/bold] in "
                      f"{arm['peak_phase']} ({took})")
    peak, state = result["ratio"]["peak"], result["ratio"]["model_state"]
    if peak:
        console.print(f"[bold]{peak['numerator'].upper()}/{peak['denominator'].upper()} step peak (estimated): "
                      f"{peak['value']:.3f}[/bold]; model state (arithmetic): {state['value']:.3f}")
    console.print(f"columns: {legend(result)}")
    console.print(fit_table(result))
    console.print(state_table(result))
    for line in result["notes"]:
        console.print(f"note: {line}", markup=False)


def render_grid(result: dict[str, Any], console=None) -> None:
    from rich.markup import escape
    from rich.table import Table
    console = console or make_console()
    top, bottom = result["pair"]
    for line in setup_lines(result["setup"], grid=True):
        console.print(line, markup=False)
    table = Table(title=f"Sensitivity grid: estimated step peak per GPU (GiB) and {top.upper()}/{bottom.upper()}")
    for axis in result["axes"]:
        table.add_column(axis.replace("_", " "))
    for algo in (top, bottom):
        table.add_column(f"{algo.upper()} peak (phase)", justify="right")
    table.add_column("ratio", justify="right", style="bold")
    for cell in result["cells"]:
        table.add_row(*(escape(str(cell[a])) for a in result["axes"]),
                      *(f"{cell['peaks'][a] / GIB:,.2f} ({cell['peak_phases'][a]})" for a in (top, bottom)),
                      f"{cell['ratio']:.3f}")
    console.print(table)
    low, high = result["ratio_range"]
    describe = lambda cell: ", ".join(f"{a.replace('_', ' ')} {cell[a]}" for a in result["axes"])  # noqa: E731
    console.print(f"[bold]{top.upper()}/{bottom.upper()} step peak ratio (estimated): {low:.3f} to {high:.3f}[/bold] "
                  f"over {len(result['cells'])} configurations")
    console.print(f"  lowest {low:.3f}: {describe(result['lowest'])}", markup=False)
    console.print(f"  highest {high:.3f}: {describe(result['highest'])}", markup=False)
    steps = result["fake_steps"]
    console.print(f"grid: {steps['computed']} fake steps computed, {steps['reused']} reused from the cache, "
                  f"{result['seconds']:.0f} s")
    for line in result["notes"]:
        console.print(f"note: {line}", markup=False)


def progress_line(done: int, total: int, what: str) -> None:
    print(f"grid {done}/{total}: {what}", file=sys.stderr, flush=True)


def estimate_command(config: Config, algos: list[str], grid: bool = False, as_json: bool = False,
                     use_cache: bool = True) -> int:
    """Print the estimate (or the grid) as tables, or as JSON with `as_json`."""
    if grid:
        from harness.estimate.grid import estimate_grid
        result = estimate_grid(config, algos, use_cache, progress=progress_line)
    else:
        from harness.estimate.estimator import estimate
        result = estimate(config, algos, use_cache,
                          progress=lambda line: print(f"estimate: {line}", file=sys.stderr, flush=True))
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif grid:
        render_grid(result)
    else:
        render(result)
    return 0
