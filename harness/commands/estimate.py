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
from harness.results.units import GIB, MIB


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
        f"{setup['micro_batch_size'] or 'a whole minibatch'}, log-prob passes of {setup['logprob_batch_size']} rows"
        f"{', the LM head ' + str(setup['logprob_chunk']) + ' positions at a time' if setup.get('logprob_chunk') else ''}",
        gpus,
    ]


def arm_table(algo: str, arm: dict[str, Any], world_size: int, where: str | None = None):
    from rich.table import Table

    from harness.estimate.estimator import CATEGORIES
    present = [(k, label) for k, label, _ in CATEGORIES if any(row.get(k) for row in arm["phases"].values())]
    unit, scale = unit_for([row["total"] for row in arm["phases"].values()])
    where = where or ("per GPU" if world_size > 1 else "one GPU")
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


def flop_unit(value: float) -> tuple[str, float]:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= scale:
            return unit, scale
    return "MFLOP", 1e6


def compute_table(result: dict[str, Any]):
    """FLOPs and roofline seconds per phase of each arm (arithmetic)."""
    from rich.table import Table
    arms = {algo: arm["compute"] for algo, arm in result["arms"].items() if arm.get("compute")}
    if not arms:
        return None
    device = next(iter(arms.values()))["device"]
    unit, scale = flop_unit(max(c["flops_total"] for c in arms.values()))
    table = Table(title=f"Compute per step (arithmetic): FLOPs of the whole arm, roofline seconds on {device}")
    table.add_column("phase")
    for algo in arms:
        table.add_column(f"{algo.upper()} {unit}", justify="right")
        table.add_column(f"{algo.upper()} s", justify="right")
    phases = list(dict.fromkeys(p for c in arms.values() for p in c["flops"]))
    for phase in phases:
        cells = []
        for c in arms.values():
            cells += [f"{c['flops'][phase] / scale:,.1f}" if phase in c["flops"] else "—",
                      f"{c['seconds'][phase]:,.3g}" if phase in c["seconds"] else "—"]
        table.add_row(phase, *cells)
    cells = []
    for c in arms.values():
        cells += [f"{c['flops_total'] / scale:,.1f}", f"{c['step_seconds']:,.3g}"]
    table.add_row("step", *cells, style="bold")
    return table


def group_lines(algo: str, arm: dict[str, Any]) -> list[str]:
    """The GPUs an arm holds, by group, and each group's peak per GPU."""
    groups = arm.get("groups", {})
    parts = []
    for name, label in (("policy", "policy (and reference)"), ("critic", "critic and reward model"),
                        ("engine", "rollout engine")):
        if name in groups:
            g = groups[name]
            parts.append(f"{label}: {g['gpus']} GPU{'s' if g['gpus'] != 1 else ''} at {amount(g['peak'])} each")
    return [f"{algo.upper()} holds {arm['gpus']} GPUs: " + "; ".join(parts)] if len(parts) > 1 else []


RATIO_LABELS = [("peak", "step peak per GPU (estimated)"), ("model_state", "model state per GPU (arithmetic)"),
                ("gpus", "GPUs"), ("flops", "FLOPs per step (arithmetic)"),
                ("gpu_seconds", "GPU-seconds per step (arithmetic, roofline)")]


def ratio_lines(result: dict[str, Any]) -> list[str]:
    """One line per GRPO/PPO ratio, labelled estimated or arithmetic."""
    ratios = result["ratio"]
    return [f"{ratios[key]['numerator'].upper()}/{ratios[key]['denominator'].upper()} {label}: "
            f"[bold]{ratios[key]['value']:.3f}[/bold]" for key, label in RATIO_LABELS if ratios.get(key)]


def render(result: dict[str, Any], console=None) -> None:
    console = console or make_console()
    arms = result["arms"]
    same_setup = all(arm["setup"] == result["setup"] for arm in arms.values())
    if same_setup:
        for line in setup_lines(result["setup"]):
            console.print(line, markup=False)  # model names and paths are the user's: never markup
    for algo, arm in arms.items():
        if arm.get("recipe"):
            recipe = arm["recipe"]
            console.print(f"[bold]{algo.upper()}[/bold]: recipe {recipe['name']}, from {recipe['source']}", highlight=False)
        if not same_setup:
            for line in setup_lines(arm["setup"]):
                console.print(f"  {line}", markup=False)
        console.print(arm_table(algo, arm, arm["setup"]["world_size"]))
        if "critic" in arm.get("groups", {}):
            console.print(arm_table(algo, {**arm["groups"]["critic"]}, arm["setup"]["world_size"],
                                    where="per GPU of the critic and reward model"))
        took = "from the cache" if arm["cached"] else f"fake step in {arm['seconds']:.0f} s"
        console.print(f"{algo.upper()} step peak (estimated): [bold]{amount(arm['peak'])}[/bold] per GPU in "
                      f"{arm['peak_phase']}; {arm['gpus']} GPUs ({took})")
        for line in group_lines(algo, arm):
            console.print(line)
    for line in ratio_lines(result):
        console.print(line)
    console.print(f"columns: {legend(result)}")
    console.print(fit_table(result))
    console.print(state_table(result))
    table = compute_table(result)
    if table is not None:
        console.print(table)
    for line in result.get("warnings", []):
        console.print(f"[bold red]warning:[/bold red] {line}")
    for line in result["notes"]:
        console.print(f"note: {line}", markup=False)


def render_fit(fit: dict[str, Any], console=None) -> None:
    from rich.table import Table
    console = console or make_console()
    table = Table(title=f"Fit search on {fit['device']['label']} ({fit['device']['bytes'] / GIB:.0f} GiB): estimated, "
                        "each answer confirmed by a fake step")
    for column in ("arm", "micro-batch per GPU", "rollout rows per GPU", "fewest GPUs"):
        table.add_column(column, justify="left" if column == "arm" else "right")

    def cell(entry: dict[str, Any], total: str | None = None) -> str:
        value = entry.get(total) if total else entry["value"]
        written = entry.get("as_written_total") if total else entry["as_written"]
        return f"{value if value is not None else 'none fits'} (as written {written})"
    for algo, arm in fit["arms"].items():
        table.add_row(algo.upper(), cell(arm["micro_batch_size"]), cell(arm["rollout_rows_per_gpu"]),
                      cell(arm["gpus"], "total"))
    console.print(table)
    for algo, arm in fit["arms"].items():
        for knob, entry in arm.items():
            if entry.get("why"):
                console.print(f"{algo.upper()} {knob.replace('_', ' ')}: {entry['why']}")


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


def fit_progress(line: str) -> None:
    print(f"fit: {line}", file=sys.stderr, flush=True)


def estimate_progress(line: str) -> None:
    print(f"estimate: {line}", file=sys.stderr, flush=True)


def show(result: dict[str, Any], as_json: bool, fit: dict[str, Any] | None = None) -> None:
    if as_json:
        print(json.dumps({**result, **({"fit": fit} if fit else {})}, indent=2, default=str))
        return
    console = make_console()
    render(result, console)
    if fit:
        render_fit(fit, console)


def estimate_command(config: Config, algos: list[str], grid: bool = False, as_json: bool = False,
                     use_cache: bool = True, fit: str | None = None, grid_axes: str | None = None) -> int:
    """Print the estimate (or the grid) as tables, or as JSON with `as_json`; with `fit` (a GPU), the fit search."""
    if grid:
        from harness.estimate.grid import estimate_grid, parse_axes
        result = estimate_grid(config, algos, use_cache, progress=progress_line, axes=parse_axes(grid_axes))
        print(json.dumps(result, indent=2, default=str)) if as_json else render_grid(result)
        return 0
    from harness.estimate.estimator import estimate
    device = parse_fit(fit)
    result = estimate(config, algos, use_cache, progress=estimate_progress)
    show(result, as_json, run_fit(dict.fromkeys(algos, config), device, use_cache))
    return 0


def parse_fit(fit: str | None):
    from harness.estimate.devices import parse_gpu
    return parse_gpu(fit) if fit else None


def run_fit(configs: dict[str, Config], device, use_cache: bool) -> dict[str, Any] | None:
    if device is None:
        return None
    from harness.estimate.fit import fit_search
    return fit_search(configs, device, use_cache, progress=fit_progress)


def recipe_command(names: str, preset: str, config_file: str | None, overrides: list[str],
                   algos: list[str] | None = None, fit: str | None = None, as_json: bool = False,
                   use_cache: bool = True) -> int:
    """`harness estimate --recipe NAME[,NAME]`: each arm of the recipes with its own config (the recipe's fields
    over the preset, --set over those), estimated side by side; the ratios when a GRPO and a PPO arm are there."""
    from harness.estimate.estimator import estimate_arms
    from harness.estimate.recipes import parse_recipes, recipe_arms, recipe_configs
    recipes = parse_recipes(names)
    device = parse_fit(fit)
    configs = recipe_configs(recipes, preset, config_file, overrides, algos)
    sources = {algo: {"name": recipe.name, "title": recipe.title, "source": recipe.source_line(algo)}
               for algo, (recipe, _) in recipe_arms(recipes, list(configs)).items()}
    result = estimate_arms(configs, use_cache, progress=estimate_progress, recipes=sources)
    if len(recipes) > 1 and result["ratio"].get("peak"):
        result["notes"].append(f"the arms come from different setups ({', '.join(r.name for r in recipes)}): their "
                               "ratio compares those setups, not the algorithms alone")
    show(result, as_json, run_fit(configs, device, use_cache))
    return 0
