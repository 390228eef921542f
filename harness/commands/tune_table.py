"""What `harness tune` shows and writes from its tune.json: the validation table per arm, where each chosen value
sits on its axis, the validation curves, and the preset with each arm's chosen settings and their provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.config.arm_settings import SECTION
from harness.results.io import atomic_write_text


def short(field: str) -> str:
    """'algorithms.ppo.critic_warmup_steps' -> 'critic_warmup_steps'."""
    return field.rsplit(".", 1)[-1]


def value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def table_rows(plan: dict[str, Any], arm: str) -> tuple[list[str], list[list[str]]]:
    """One arm's points as a table: header and rows (point, why, each axis, validation accuracy, time)."""
    fields = [a["field"] for a in plan["axes"][arm]["axes"]]
    result = plan["arms"][arm]
    chosen = (result.get("choice") or {}).get("index")
    header = ["point", "why", *map(short, fields), "validation", "time"]
    rows = []
    for p in result["points"]:
        why = p["why"] + (f" {short(p['axis'])}" if p.get("axis") else "")
        score = "failed: " + p["status"] if p["score"] is None else f"{p['score']:.1%}"
        if p["index"] == chosen:
            score = f"**{score}** (chosen)"
        seconds = p.get("seconds")
        rows.append([f"t{p['index']}", why, *(value_text(p["setting"][f]) for f in fields), score,
                     f"{seconds:.0f} s" if seconds else "—"])
    return header, rows


def markdown_table(plan: dict[str, Any], arm: str) -> str:
    header, rows = table_rows(plan, arm)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def caption(plan: dict[str, Any], arm: str) -> str:
    result, budget = plan["arms"][arm], plan["budget"]
    spent = len(result["points"])
    converged = f", converged after {spent}" if result.get("converged") else ""
    return (f"{arm}: greedy accuracy on the validation split ({plan['validation_prompts']} prompts) after "
            f"{budget['steps']} steps ({budget['total']} {budget['unit']}), seed {plan['seed']}, KL {plan['kl']['mode']}; "
            f"{spent} of {plan['points']} points{converged}")


def edge_lines(plan: dict[str, Any], arm: str) -> list[str]:
    lines = []
    for edge in plan["arms"][arm].get("edges") or []:
        near = " and ".join(f"{value_text(edge[side])} {side}" for side in ("below", "above") if edge[side] is not None)
        notes = [f"probed {near}"] * bool(near) + [edge["note"]] * bool(edge["note"])
        if not edge.get("final", True):
            others = ", ".join(f"{short(k)}={value_text(v)}" for k, v in edge["with"].items())
            notes = [f"{'; '.join(notes)}, with {others}",
                     "not probed again at the chosen values of the other axes (the budget ran out)"]
        lines.append(f"  {edge['field']}={value_text(edge['value'])}: {edge['status']} ({'; '.join(notes)})")
    return lines


def curve_lines(plan: dict[str, Any]) -> list[str]:
    curves = plan.get("curves") or {}
    lines = []
    for arm, entry in (curves.get("arms") or {}).items():
        points = ", ".join(f"{step}: {accuracy:.1%}" for step, accuracy in entry["curve"])
        lines.append(f"  {arm} validation curve (step: accuracy): {points}")
        plateau = entry.get("plateau")
        if plateau and plateau["flat"]:
            lines.append(f"    never rises a binomial SE ({plateau['se']:.1%}) above its start: no step budget "
                         "follows from it")
        elif plateau:
            rising = "; still rising at its end: a longer --curve-steps may move it" if plateau["rising"] else ""
            lines.append(f"    stops rising at step {plateau['step']} (its 3-point moving mean first within one "
                         f"binomial SE, {plateau['se']:.1%}, of the best, {plateau['best']:.1%} at step "
                         f"{plateau['best_step']}){rising}")
    if curves.get("arms") and not curves.get("steps"):
        lines.append("  no curve rose: the preset keeps its budget")
    if curves.get("steps"):
        budget = curves.get("budget")
        lines.append(f"  suggested budget: {curves['steps']} steps, where the slower arm's curve stops rising"
                     + (f" = {budget['total']} {budget['unit']}" if budget else ""))
    return lines


def print_tune(plan: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table
    console = Console() if sys.stdout.isatty() else Console(width=200)
    for arm in plan["arms"]:
        header, rows = table_rows(plan, arm)
        table = Table(title=caption(plan, arm), title_justify="left")
        for column in header:
            table.add_column(column, justify="left" if column in ("point", "why") else "right")
        for row in rows:
            chosen = "(chosen)" in row[-2]
            table.add_row(*(cell.replace("**", "") for cell in row), style="bold" if chosen else None)
        console.print(table)
        console.print("\n".join([f"{arm}: where each chosen value sits on its axis"] + edge_lines(plan, arm)))
    lines = curve_lines(plan)
    if lines:
        console.print("\n".join(["Validation curves of the choices"] + lines))


def provenance(plan: dict[str, Any], arm: str, tune_dir: Path) -> str:
    result, choice = plan["arms"][arm], plan["arms"][arm]["choice"]
    chosen = result["points"][choice["index"]]
    return (f"{plan['command']}: the best of {len(result['points'])} points on the validation split "
            f"({choice['score']:.1%} of {chosen['n']} prompts after {plan['budget']['steps']} steps, seed "
            f"{plan['seed']}, --kl {plan['kl']['mode']}); every point in {tune_dir / 'tune.json'} and in the "
            "header of the preset it wrote")


def arm_entries(plan: dict[str, Any], tune_dir: Path) -> dict[str, Any]:
    """Each arm's arm_settings entry: the chosen values of its axes over what its preset entry set besides."""
    entries = {}
    for spec in plan["arm_specs"]:
        arm = spec["name"]
        carried = (spec.get("preset_settings") or {}).get("set") or {}
        chosen = plan["arms"][arm]["choice"]["setting"]
        entries[arm] = {"set": {**{k: v for k, v in carried.items() if k not in chosen}, **chosen},
                        "kl": plan["kl"]["mode"], "provenance": provenance(plan, arm, tune_dir)}
    return entries


def header_lines(plan: dict[str, Any], tune_dir: Path) -> list[str]:
    lines = [f"tuned by harness tune from preset {plan['preset']}: each arm's settings chosen on the validation split",
             f"command: {plan['command']}", f"folder: {tune_dir} (tune.json: every point)",
             "search: coordinate-wise from the preset's settings, the same point budget and per-point budget per arm, "
             "under the comparison's KL regime (harness.commands.tune_search)", ""]
    for arm in plan["arms"]:
        lines += [caption(plan, arm), *markdown_table(plan, arm).splitlines(), *edge_lines(plan, arm), ""]
    curves = plan.get("curves") or {}
    if curves.get("arms"):
        use = "budget.total below comes from them" if curves.get("budget") else "the budget below is the preset's"
        lines += [f"validation curves of the choices ({use}):", *curve_lines(plan)]
    return lines


def preset_text(plan: dict[str, Any], tune_dir: Path) -> str:
    """The written preset: the header as comments, the starting preset's sections (with --config and --set), the
    budget the curves suggest when they ran, and the arm_settings."""
    data = {k: v for k, v in plan["preset_data"].items() if k not in ("preset", SECTION)}
    budget = (plan.get("curves") or {}).get("budget")
    if budget:
        data["budget"] = {**(data.get("budget") or {}), "unit": budget["unit"], "total": budget["total"]}
    header = "\n".join(f"# {line}".rstrip() for line in header_lines(plan, tune_dir))
    body = yaml.safe_dump(data, sort_keys=False)
    settings = yaml.safe_dump({SECTION: arm_entries(plan, tune_dir)}, sort_keys=False, width=120)
    return f"{header}\n{body}{settings}"


def write_preset(plan: dict[str, Any], tune_dir: Path) -> Path:
    path = Path(plan["write_to"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, preset_text(plan, tune_dir))
    return path
