"""The sweep's page: validation accuracy against the learning rate (or the first grid field) per arm, the
grid's table and each arm's choice, from sweep.json alone (sweep.html and figures/sweep.png|svg)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from harness import __version__
from harness.results.io import read_json_object

SWEEP_FILE = "sweep.json"


def x_field(grid: dict[str, list[Any]]) -> str:
    """What the figure's x axis shows: the policy learning rate when it is swept, else the first grid field."""
    return "optim.lr" if "optim.lr" in grid else next(iter(grid))


def sweep_frame(data: dict[str, Any]):
    """One row per (point, seed): arm, the x field's value, the other fields as a label, validation accuracy."""
    import pandas as pd
    x = x_field(data["grid"])
    rows = []
    for r in data.get("results") or []:
        others = ", ".join(f"{k}={v}" for k, v in r["setting"].items() if k != x)
        for seed, s in r["seeds"].items():
            if s.get("accuracy") is not None and r["status"] == "ok":
                rows.append({"arm": r["arm"], "line": r["arm"] + (f" ({others})" if others else ""),
                             "x": r["setting"].get(x), "seed": seed, "accuracy": s["accuracy"]})
    return pd.DataFrame(rows, columns=["arm", "line", "x", "seed", "accuracy"])


def sweep_figure(data: dict[str, Any]):
    """Validation accuracy against the x field per arm (seed means; a bar: the seeds' range); None if nothing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    frame = sweep_frame(data)
    if frame.empty or frame["x"].map(lambda v: not isinstance(v, (int, float))).any():
        return None
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.95)
    fig, ax = plt.subplots(figsize=(7.2, 3.2))
    sns.lineplot(data=frame, x="x", y="accuracy", hue="line", marker="o", errorbar=("pi", 100), ax=ax)
    x = x_field(data["grid"])
    if x.endswith("lr") and frame["x"].min() > 0:
        ax.set_xscale("log")
    for best in (data.get("choice") or {}).values():
        if best and x in best["setting"]:
            ax.scatter([best["setting"][x]], [best["validation_accuracy"]], s=120, facecolors="none",
                       edgecolors="black", linewidths=1.2, zorder=5)
    ax.set_xlabel(f"{x} (grid)")
    ax.set_ylabel("greedy accuracy, validation split")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Sweep: validation accuracy per point (circled: each arm's choice)", fontsize=9)
    fig.tight_layout()
    return fig


def write_sweep_report(sweep_dir: Path | str) -> Path:
    """sweep.html (self-contained) and figures/sweep.png|svg of a sweep folder."""
    import jinja2

    from harness.report import TEMPLATES
    from harness.report.figures import to_data_uri
    from harness.results.io import atomic_write_text
    sweep_dir = Path(sweep_dir)
    data = read_json_object(sweep_dir / SWEEP_FILE)
    fig = sweep_figure(data)
    figures = sweep_dir / "figures"
    if fig is not None:
        figures.mkdir(parents=True, exist_ok=True)
    uri = to_data_uri(fig, figures, "sweep") if fig is not None else None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["j2"]),
                             trim_blocks=True, lstrip_blocks=True)
    html = env.get_template("sweep.html.j2").render(
        data=data, name=sweep_dir.resolve().name, figure=uri, x=x_field(data["grid"]),
        css=(TEMPLATES / "report.css").read_text(), version=__version__,
        generated=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    path = sweep_dir / "sweep.html"
    atomic_write_text(path, html)
    return path
