"""The report's figures (pandas + seaborn on matplotlib's Agg backend): PNG data URIs in the page, and
PNG and SVG files beside it for slides and papers.

Every figure function takes the loaded Comparison and returns a matplotlib figure, or raises NoData
with the reason the figure cannot be drawn; bands over seeds are the same 95% t-intervals as the tables.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.report.data import HEALTH_METRICS, Arm, Comparison  # noqa: E402
from harness.report.stats import mean_ci, t_quantile  # noqa: E402
from harness.results.headline import PHASES  # noqa: E402
from harness.results.units import MIB  # noqa: E402

WIDTH = 7.2  # inches: the A4 text width at the report's margins
DPI = 150
ALGO_COLORS = {"grpo": "#1f77b4", "ppo": "#d95f02"}
LIVE_CATEGORIES = ["params", "grads", "optimizer", "activations", "temporaries", "kv_cache", "rollout", "other"]


class NoData(Exception):
    """A figure that has nothing to draw; the message says why."""


def algo_palette(algos: list[str]) -> dict[str, str]:
    extra = iter(sns.color_palette("deep", len(algos) + 2).as_hex()[2:])
    return {a: ALGO_COLORS.get(a) or next(extra) for a in algos}


def to_data_uri(fig, folder: Path | None = None, name: str = "") -> str:
    """The figure as a PNG data URI; with `folder`, also written there as NAME.png and NAME.svg."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    if folder is not None:
        from harness.results.io import atomic_write_bytes
        svg = io.BytesIO()
        fig.savefig(svg, format="svg", bbox_inches="tight")
        atomic_write_bytes(folder / f"{name}.png", buffer.getvalue())
        atomic_write_bytes(folder / f"{name}.svg", svg.getvalue())
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def seed_band(curves: list[pd.DataFrame], x: str, y: str, points: int = 80) -> pd.DataFrame:
    """Mean over seeds and its 95% t-band on a shared x grid (seeds interpolated where x differs)."""
    curves = [c.dropna(subset=[x, y]).sort_values(x) for c in curves if x in c and y in c]
    curves = [c for c in curves if len(c)]
    if not curves:
        return pd.DataFrame(columns=[x, "mean", "lo", "hi"])
    xs = [tuple(c[x].to_numpy()) for c in curves]
    if all(v == xs[0] for v in xs):
        grid = np.asarray(xs[0], dtype=float)
    else:
        start, stop = max(c[x].min() for c in curves), min(c[x].max() for c in curves)
        grid = np.linspace(start, stop, points) if stop > start else np.asarray([start], dtype=float)
    values = np.array([np.interp(grid, c[x].to_numpy(float), c[y].to_numpy(float)) for c in curves])
    mean = values.mean(axis=0)
    n = len(curves)
    half = t_quantile(n - 1) * values.std(axis=0, ddof=1) / math.sqrt(n) if n >= 2 else np.zeros_like(mean)
    return pd.DataFrame({x: grid, "mean": mean, "lo": mean - half, "hi": mean + half, "n": n})


def plot_seeds(ax, cmp: Comparison, curves_of, x: str, y: str, palette: dict[str, str]) -> bool:
    """Wall time, where seeds end at different times: a thin line per seed over its whole run, and the
    seed mean with its 95% band over the range every seed covers; failed arms dashed."""
    drawn = False
    for algo in cmp.names:
        ok_curves = []
        for arm in cmp.arms_of(algo):
            curve = curves_of(arm)
            if not (len(curve) and x in curve and y in curve and curve[y].notna().any()):
                continue
            curve = curve.dropna(subset=[x, y])
            ax.plot(curve[x], curve[y], color=palette[algo], linewidth=0.7 if arm.ok else 0.8,
                    alpha=0.45 if arm.ok else 0.9, linestyle="-" if arm.ok else "--",
                    label=None if arm.ok else f"{arm.label} ({arm.status})")
            ok_curves += [curve] if arm.ok else []
            drawn = True
        band = seed_band(ok_curves, x, y)
        if len(band) > 1:
            n = int(band["n"].iloc[0])
            ax.plot(band[x], band["mean"], color=palette[algo], linewidth=1.6,
                    label=f"{algo} ({n} seed{'s' * (n != 1)}; thin: each seed)")
            if n >= 2:
                ax.fill_between(band[x], band["lo"], band["hi"], color=palette[algo], alpha=0.2, linewidth=0)
    return drawn


def plot_band(ax, cmp: Comparison, curves_of, x: str, y: str, palette: dict[str, str]) -> bool:
    """Draw every algorithm's seed band on ax, failed arms as thin dashed lines; False if nothing."""
    drawn = False
    for algo in cmp.names:
        arms = cmp.arms_of(algo)
        band = seed_band([curves_of(a) for a in arms if a.ok], x, y)
        if len(band):
            n = int(band["n"].iloc[0])
            ax.plot(band[x], band["mean"], color=palette[algo], label=f"{algo} ({n} seed{'s' * (n != 1)})",
                    marker="o" if len(band) < 12 else None, markersize=3)
            if n >= 2:
                ax.fill_between(band[x], band["lo"], band["hi"], color=palette[algo], alpha=0.2, linewidth=0)
            drawn = True
        for arm in arms:
            if arm.ok:
                continue
            curve = curves_of(arm)
            if len(curve) and x in curve and y in curve and curve[y].notna().any():
                ax.plot(curve[x], curve[y], linestyle="--", linewidth=1, color=palette[algo],
                        label=f"{arm.label} ({arm.status})")
                drawn = True
    return drawn


def step_curves(arm: Arm) -> pd.DataFrame:
    return arm.steps


SMOOTH = 5  # steps in the rolling mean of the training reward (per-step reward is noisy)


def reward_curves(arm: Arm) -> pd.DataFrame:
    if "reward/mean" not in arm.steps:
        return arm.steps
    steps = arm.steps.copy()
    steps["reward/mean"] = steps["reward/mean"].rolling(SMOOTH, min_periods=1).mean()
    return steps


def eval_curves(arm: Arm) -> pd.DataFrame:
    return arm.eval_curve()


def _finish(ax, xlabel: str, ylabel: str, drawn: bool, empty: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if not drawn:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="#777")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)


def fig_learning(cmp: Comparison) -> str:
    """Reward (train) and held-out accuracy against sampled completions and against wall time."""
    palette = algo_palette(cmp.names)
    fig, axes = plt.subplots(2, 2, figsize=(WIDTH, 5.4), sharey="row")
    for col, (x, xlabel, plot) in enumerate([("completions", "sampled completions", plot_band),
                                             ("wall", "wall time (s)", plot_seeds)]):
        drawn = plot(axes[0, col], cmp, reward_curves, x, "reward/mean", palette)
        _finish(axes[0, col], xlabel, f"training reward ({SMOOTH}-step mean)", drawn, "no steps logged")
        drawn = plot(axes[1, col], cmp, eval_curves, x, "accuracy", palette)
        _finish(axes[1, col], xlabel, "held-out accuracy (greedy)", drawn, "no accuracy measured")
    fig.tight_layout()
    return fig


def live_memory_frame(cmp: Comparison) -> pd.DataFrame:
    """Seed-mean peak bytes of live tensors per (algo, phase, category), from summary.mem.live.phases."""
    rows = []
    for arm in cmp.arms:
        if not arm.ok:
            continue
        for phase, peak in (arm.summary.mem.live.phases or {}).items():
            for category, value in peak.items():
                if category != "total":
                    rows.append({"algo": arm.name, "seed": arm.seed, "phase": phase, "category": category,
                                 "bytes": value})
    frame = pd.DataFrame(rows, columns=["algo", "seed", "phase", "category", "bytes"])
    if frame.empty:
        return frame
    # a category absent from a seed's phase is 0 there, so fill before the mean over seeds
    full = frame.pivot_table(index=["algo", "seed", "phase"], columns="category", values="bytes", fill_value=0)
    return full.groupby(level=["algo", "phase"]).mean().stack().rename("bytes").reset_index()


def measured_memory_frame(cmp: Comparison) -> pd.DataFrame:
    measures = [("mem_rss_net", "RSS peak, net"), ("mem_cuda_allocated", "CUDA allocated peak"),
                ("mem_cuda_reserved", "CUDA reserved peak"), ("mem_nvml_used", "NVML used peak")]
    rows = [{"algo": a.name, "seed": a.seed, "measure": label, "MiB": a.row[key] / MIB}
            for a in cmp.arms if a.ok for key, label in measures if a.row.get(key) is not None]
    return pd.DataFrame(rows, columns=["algo", "seed", "measure", "MiB"])


def t_errorbar(values) -> tuple[float, float]:
    """The bars' interval: memory and throughput are positive, so the log-scale interval of the tables."""
    estimate = mean_ci(list(values), positive=True)
    return (estimate.lo, estimate.hi) if estimate.has_interval else (estimate.mean, estimate.mean)


def fig_memory(cmp: Comparison) -> str:
    """Measured peak of live tensors in each phase of a step, by category (stacked), one bar per
    algorithm; beside it the measured RSS, allocator and NVML peaks (kept apart)."""
    live = live_memory_frame(cmp)
    measured = measured_memory_frame(cmp)
    if live.empty and measured.empty:
        raise NoData("no arm recorded memory")
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    algos = [a for a in cmp.names if not live.empty and a in set(live["algo"])]
    phases = [p for p in PHASES if not live.empty and p in set(live["phase"])]
    categories = [c for c in LIVE_CATEGORIES if not live.empty and c in set(live["category"])]
    colors = dict(zip(categories, sns.color_palette("tab10", len(categories))))
    width = 0.8 / max(len(algos), 1)
    legend = {}
    for a, algo in enumerate(algos):
        for p, phase in enumerate(phases):
            cells = live[(live["algo"] == algo) & (live["phase"] == phase)].set_index("category")["bytes"]
            if cells.empty:
                continue
            x, bottom = p + (a - (len(algos) - 1) / 2) * width, 0.0
            for category in categories:
                height = float(cells.get(category, 0)) / MIB
                if height > 0:
                    legend.setdefault(category, left.bar(x, height, bottom=bottom, width=width * 0.92,
                                                         color=colors[category], edgecolor="white", linewidth=0.4))
                    bottom += height
            left.text(x, bottom, algo, ha="center", va="bottom", fontsize=5, rotation=90)
    left.set_xticks(range(len(phases)), [p.replace("_", " ") for p in phases], rotation=30, ha="right", fontsize=7)
    left.set_ylabel("MiB (measured: live tensors)")
    left.set_title("peak of live tensors per phase (seed mean)", fontsize=9)
    if legend:
        left.legend(legend.values(), legend.keys(), fontsize=6, frameon=False, loc="upper left", ncol=3)
        left.set_ylim(top=left.get_ylim()[1] * 1.35)
    if measured.empty:
        reasons = sorted({a.summary.mem.measured.gpu for a in cmp.arms if a.summary.mem.measured.gpu})
        right.text(0.5, 0.5, "not measured" + ("\n" + "\n".join(reasons) if reasons else ""),
                   ha="center", va="center", transform=right.transAxes, color="#777", fontsize=8)
        right.set_axis_off()
    else:
        palette = algo_palette(cmp.names)
        order = [a for a in cmp.names if a in set(measured["algo"])]
        sns.barplot(data=measured, x="measure", y="MiB", hue="algo", hue_order=order,
                    palette=palette, errorbar=t_errorbar, capsize=0.15, err_kws={"linewidth": 1}, ax=right)
        sns.stripplot(data=measured, x="measure", y="MiB", hue="algo", dodge=True, palette=palette, legend=False,
                      hue_order=[a for a in cmp.names if a in set(measured["algo"])], size=3, color="black",
                      edgecolor="black", linewidth=0.5, ax=right)
        right.set_xlabel("")
        right.set_ylabel("MiB (measured)")
        right.set_title("measured peaks (bars: seed mean, 95% CI; dots: seeds)", fontsize=9)
        right.tick_params(axis="x", labelsize=7)
        right.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def fig_phases(cmp: Comparison) -> str:
    """Seconds per step in each phase, seed means, stacked."""
    rows = [{"algo": a.name, "phase": phase, "s": seconds} for a in cmp.arms if a.ok
            for phase, seconds in (a.row.get("phases_per_step") or {}).items()]
    frame = pd.DataFrame(rows, columns=["algo", "phase", "s"])
    if frame.empty:
        raise NoData("no finished arm recorded phase times")
    means = frame.groupby(["algo", "phase"], as_index=False)["s"].mean()
    phases = sorted(set(means["phase"]), key=lambda p: (PHASES.index(p) if p in PHASES else 99, p))
    colors = dict(zip(phases, sns.color_palette("Set2", len(phases))))
    algos = [a for a in cmp.names if a in set(means["algo"])]
    fig, ax = plt.subplots(figsize=(WIDTH, 0.7 + 0.55 * len(algos)))
    for i, algo in enumerate(algos):
        left = 0.0
        for phase in phases:
            value = means[(means["algo"] == algo) & (means["phase"] == phase)]["s"]
            if value.empty:
                continue
            width = float(value.iloc[0])
            seen = ax.get_legend_handles_labels()[1]
            ax.barh(i, width, left=left, color=colors[phase], label=None if phase in seen else phase,
                    edgecolor="white", linewidth=0.5, height=0.6)
            left += width
        ax.text(left, i, f" {left:.3f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(algos)), algos)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per step (seed mean)")
    ax.set_xlim(right=ax.get_xlim()[1] * 1.12)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, frameon=False, ncol=len(labels), loc="lower center",
              bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def fig_throughput(cmp: Comparison) -> str:
    """Samples and generated tokens per second, per arm, with the seed-mean CI."""
    measures = [("samples_per_s", "sampled completions / s"), ("gen_tokens_per_s", "generated tokens / s (generate phase)")]
    rows = [{"algo": a.name, "seed": a.seed, "measure": label, "value": a.row[key]}
            for a in cmp.arms if a.ok for key, label in measures if a.row.get(key) is not None]
    frame = pd.DataFrame(rows, columns=["algo", "seed", "measure", "value"])
    if frame.empty:
        raise NoData("no finished arm recorded throughput")
    palette = algo_palette(cmp.names)
    order = [a for a in cmp.names if a in set(frame["algo"])]
    fig, axes = plt.subplots(1, len(measures), figsize=(WIDTH, 2.6))
    for ax, (_, label) in zip(axes, measures):
        part = frame[frame["measure"] == label]
        if part.empty:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="#777")
            ax.set_axis_off()
            continue
        sns.barplot(data=part, x="algo", y="value", hue="algo", order=order, hue_order=order, palette=palette,
                    errorbar=t_errorbar, capsize=0.15, err_kws={"linewidth": 1}, legend=False, ax=ax, width=0.6)
        sns.stripplot(data=part, x="algo", y="value", order=order, color="black", size=3, ax=ax)
        ax.set_xlabel("")
        ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def fig_health(cmp: Comparison) -> str:
    """KL, clipping, entropy, length, the critic's fit and GRPO's dead groups against completions."""
    steps = cmp.steps(ok_only=False)
    present = [(key, title) for key, title in HEALTH_METRICS if key in steps and steps[key].notna().any()]
    if not present:
        raise NoData("no training statistics logged")
    palette = algo_palette(cmp.names)
    cols = 3
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 1.95 * rows + 0.3), squeeze=False)
    for ax, (key, title) in zip(axes.flat, present):
        drawn = plot_band(ax, cmp, step_curves, "completions", key, palette)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("sampled completions", fontsize=7)
        ax.set_ylabel("")
        ax.tick_params(labelsize=6)
        if ax.get_legend():
            ax.get_legend().remove()
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#777")
    for ax in list(axes.flat)[len(present):]:
        ax.set_axis_off()
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), fontsize=7, frameon=False, ncol=min(4, len(handles)),
               loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


FIGURES = [
    ("learning", "Reward and held-out accuracy against sampled completions and wall time", fig_learning),
    ("memory", "Memory: peak of live tensors in each phase of a step, and measured peaks", fig_memory),
    ("phases", "Time per step by phase", fig_phases),
    ("throughput", "Throughput", fig_throughput),
    ("health", "Training health over training", fig_health),
]


def render_figures(cmp: Comparison, folder: Path | None = None) -> dict[str, dict[str, str | None]]:
    """{name: {title, uri, missing}}: a figure that cannot be drawn says why instead of failing the report.
    With `folder`, each drawn figure is also written there as NAME.png and NAME.svg."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.95)
    out = {}
    for name, title, draw in FIGURES:
        try:
            out[name] = {"title": title, "uri": to_data_uri(draw(cmp), folder, name), "missing": None}
        except NoData as reason:
            out[name] = {"title": title, "uri": None, "missing": f"not drawn: {reason}"}
        except Exception as err:  # a report with one missing figure beats no report
            plt.close("all")
            out[name] = {"title": title, "uri": None, "missing": f"not drawn: {type(err).__name__}: {err}"}
    return out
