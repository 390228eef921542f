"""The report's "At scale" section: what this comparison's config predicts for real models.

`harness compare` writes at_scale.json into the comparison folder: `harness estimate`'s sensitivity
grid for the models named in `estimate.at_scale`, each arm's own step run on fake tensors. The
report reads that file only; it never runs an estimate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.results.units import GIB


def describe_cell(cell: dict[str, Any], axes: list[str]) -> str:
    return ", ".join(f"{axis.replace('_', ' ')} {cell[axis]}" for axis in axes)


def model_block(name: str, grid: dict[str, Any]) -> dict[str, Any]:
    top, bottom = grid["pair"]
    axes = grid["axes"]
    setup = grid["setup"]
    rows = [{"choices": [cell[a] for a in axes],
             "top": f"{cell['peaks'][top] / GIB:,.1f}", "top_phase": cell["peak_phases"][top],
             "bottom": f"{cell['peaks'][bottom] / GIB:,.1f}", "bottom_phase": cell["peak_phases"][bottom],
             "ratio": f"{cell['ratio']:.3f}"} for cell in grid["cells"]]
    low, high = grid["ratio_range"]
    return {"model": name, "top": top, "bottom": bottom, "axes": [a.replace("_", " ") for a in axes], "rows": rows,
            "low": f"{low:.3f}", "high": f"{high:.3f}", "lowest": describe_cell(grid["lowest"], axes),
            "highest": describe_cell(grid["highest"], axes),
            "setup": (f"{setup['precision']}, {setup['batch']} completions per step of {setup['prompt_length']} "
                      f"prompt + {setup['completion_length']} completion tokens, {setup['rows_per_gpu']} per GPU; "
                      f"rollout engine reserving {grid['reserve']:.0%} of device memory"),
            "notes": grid.get("notes", [])}


def at_scale_section(comparison_dir: Path | str) -> dict[str, Any]:
    """{"models": [...], "world_size", "why_not"} from at_scale.json; why_not says why there is none."""
    path = Path(comparison_dir) / "at_scale.json"
    if not path.exists():
        return {"models": [], "world_size": None,
                "why_not": "not estimated: this comparison has no at_scale.json (estimate.at_scale was off, or it "
                           "was written before the At scale grid existed; harness estimate --grid gives it)"}
    try:
        data = json.loads(path.read_text())
        models = [model_block(name, grid) for name, grid in data["models"].items()]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as err:
        return {"models": [], "world_size": None, "why_not": f"at_scale.json could not be read ({type(err).__name__})"}
    return {"models": models, "world_size": data.get("world_size"), "why_not": None}
