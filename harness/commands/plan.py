"""`harness plan`: the analysis plan of a comparison, fixed before it runs and saved with it.

The plan names the primary figures, the non-inferiority margin δ, the target accuracy that arms are
timed to, the band around the claimed ratio and why, the eval set, and the minimum detectable
difference that the chosen seeds and eval size give, so that a user can choose them to reach δ.

    from harness.commands.plan import make_plan, analysis_plan_lines
    from harness.config.schema import load_config
    print("\n".join(analysis_plan_lines(make_plan(load_config("tiny"), seeds=3))))
"""

from __future__ import annotations

import math
from typing import Any

from harness import UserError
from harness.config.derive import make_task
from harness.config.schema import Config
from harness.estimate.preflight import check_setup
from harness.report.stats import LEVEL, detectable_difference, pair_sd, seeds_needed

PLAN_VERSION = 1
# Why the band around 0.5 is as wide as it is (the user may set verdict.band; the plan states it).
BAND_WHY = ("wide enough to hold the model-state ratios that motivated the claim (0.52 without a reference "
            "model and 0.55 with one, for a 7B policy and same-size critic in bf16-mixed AdamW), narrow enough "
            "that a ratio inside it still means GRPO saves {low:.0f}–{high:.0f}% of PPO's memory")


def pilot_spread(folder: str, prompts: int) -> dict[str, Any]:
    """The SD of one seed's GRPO − PPO final accuracy, from a finished comparison's paired seeds."""
    from harness.report.data import load_comparison
    cmp = load_comparison(folder)
    if cmp.pair is None:
        raise UserError(f"pilot {folder} ran only {', '.join(cmp.algos)}: a pilot needs two algorithms")
    top, bottom = cmp.pair
    finals = {algo: {a.seed: a.row["acc_final"] for a in cmp.ok_arms(algo) if a.row.get("acc_final") is not None}
              for algo in (top, bottom)}
    seeds = sorted(set(finals[top]) & set(finals[bottom]))
    if len(seeds) < 2:
        raise UserError(f"pilot {folder} has {len(seeds)} seed(s) finished in both arms; a spread needs at least 2 "
                        "(run it with --seeds 3)")
    differences = [finals[top][s] - finals[bottom][s] for s in seeds]
    mean = sum(differences) / len(differences)
    variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
    pilot_prompts = max((get_n(a.summary) for a in cmp.arms if a.ok), default=0) or prompts
    accuracy = sum(v for f in finals.values() for v in f.values()) / sum(len(f) for f in finals.values())
    note = f"{len(seeds)} paired seeds at {pilot_prompts} prompts ({len(seeds) - 1} df: the SD itself is uncertain)"
    if prompts < pilot_prompts:
        # fewer prompts than the pilot: add the binomial variance the smaller eval set adds to each arm
        variance += 2 * accuracy * (1 - accuracy) * (1 / prompts - 1 / pilot_prompts)
        note += f"; binomial variance added for {prompts} prompts"
    elif prompts > pilot_prompts:
        note += f"; not reduced for {prompts} prompts (the pilot cannot tell eval noise from seed spread)"
    return {"source": "pilot", "pilot": str(folder), "pair_sd": math.sqrt(variance), "accuracy": accuracy,
            "seeds": len(seeds), "prompts": pilot_prompts, "note": note}


def get_n(summary: dict[str, Any]) -> int:
    return ((summary.get("eval") or {}).get("final") or {}).get("n") or 0


def assumed_spread(config: Config, prompts: int) -> dict[str, Any]:
    v = config.verdict
    p = v.expected_accuracy
    return {"source": "assumption", "pair_sd": pair_sd(v.seed_sd, p, prompts), "accuracy": p, "seed_sd": v.seed_sd,
            "binomial_se": math.sqrt(p * (1 - p) / prompts),
            "note": (f"stated assumption: each arm's accuracy = truth + a seed effect (SD {100 * v.seed_sd:.1f} points, "
                     f"verdict.seed_sd) + binomial eval noise at {100 * p:.0f}% accuracy (verdict.expected_accuracy), "
                     "independent between the arms (pairing usually correlates them, which only narrows the "
                     "interval); a pilot comparison replaces this: --pilot DIR")}


def composition(task, examples) -> dict[str, int]:
    """Test prompts per difficulty level (a task without levels: one)."""
    return task.composition(examples) if hasattr(task, "composition") else {"all": len(examples)}


def make_plan(config: Config, seeds: int, algos: list[str] | tuple[str, ...] = ("grpo", "ppo")) -> dict[str, Any]:
    """The plan for `seeds` seeds per algorithm of this config; one clear line if something is wrong."""
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    check_setup(config)
    v = config.verdict
    task = make_task(config)
    test = task.eval_examples()
    validation = getattr(task, "validation_examples", list)()  # a data task (data:FILE) has none yet
    prompts = len(test)
    spread = pilot_spread(v.pilot, prompts) if v.pilot else assumed_spread(config, prompts)
    mdd = detectable_difference(spread["pair_sd"], seeds, LEVEL, v.power)
    low, high = v.claim - v.band, v.claim + v.band
    target = {"accuracy": v.target_accuracy} if v.target_accuracy > 0 else {"gain": v.target_gain}
    top, bottom = (a.upper() for a in (list(algos) + ["", ""])[:2])
    return {
        "version": PLAN_VERSION, "level": LEVEL, "algos": list(algos), "seeds": seeds,
        "primary": [
            {"key": "quality", "figure": f"final greedy held-out accuracy, {top} − {bottom}, paired by seed",
             "test": f"non-inferiority at δ = {100 * v.margin:.1f} points (not worse when the 95% lower bound > −δ)"},
            {"key": "memory", "figure": f"{top}/{bottom} measured step peak (CUDA allocator on a GPU, else live "
                                        "tensors)",
             "test": f"its 95% interval against {v.claim} within {low:.2f}–{high:.2f}; the arithmetic model-state "
                     "ratio shown beside it"},
            {"key": "compute", "figure": f"{top}/{bottom} training time per step, periodic evaluations excluded",
             "test": f"its 95% interval against {v.claim} within {low:.2f}–{high:.2f}"},
        ],
        "secondary": ["sampled completions and training time to the target accuracy", "throughput",
                      "the other memory measures (RSS, CUDA allocator, NVML), each apart"],
        "margin": v.margin, "target": target, "claim": v.claim, "band": [low, high],
        "band_why": BAND_WHY.format(low=100 * (1 - high), high=100 * (1 - low)),
        "eval": {"prompts": prompts, "requested": config.task.eval_size, "composition": composition(task, test),
                 "distinct": len({e.prompt for e in test}), "validation": len(validation), "task": task.name},
        "spread": spread, "power": v.power, "mdd": None if math.isinf(mdd) else mdd,
        "seeds_needed": seeds_needed(spread["pair_sd"], v.margin, LEVEL, v.power),
    }


def target_text(target: dict[str, Any]) -> str:
    if target.get("accuracy"):
        return f"{100 * target['accuracy']:.1f}% held-out accuracy (verdict.target_accuracy)"
    return (f"the shared start's held-out accuracy + {100 * target['gain']:.0f} points (verdict.target_gain; the "
            "start is the warm-started model every arm begins from, measured before any training)")


def analysis_plan_lines(plan: dict[str, Any]) -> list[str]:
    """The plan as `harness plan` and the start of `harness compare` print it."""
    margin, seeds, spread = 100 * plan["margin"], plan["seeds"], plan["spread"]
    low, high = plan["band"]
    composition = ", ".join(f"{level}: {count:,}" for level, count in plan["eval"]["composition"].items())
    short = (f" (asked for {plan['eval']['requested']:,}: the generator has no more distinct prompts)"
             if plan["eval"]["prompts"] < plan["eval"]["requested"] else "")
    repeated = plan["eval"]["prompts"] - plan["eval"].get("distinct", plan["eval"]["prompts"])
    distinct = "distinct " if not repeated else f"({repeated:,} repeated) "
    lines = ["Analysis plan (fixed before the run, saved in comparison.json)"]
    for i, figure in enumerate(plan["primary"]):
        lines.append(f"  {'primary' if i == 0 else '':9s} {figure['key']}: {figure['figure']}: {figure['test']}")
    lines += [
        f"  {'target':9s} time to target: {target_text(plan['target'])}",
        f"  {'band':9s} {low:.2f}–{high:.2f} around {plan['claim']}: {plan['band_why']}",
        f"  {'eval':9s} {plan['eval']['prompts']:,} {distinct}test prompts{short} ({composition}); "
        f"{plan['eval']['validation']:,} validation prompts for tuning, disjoint from test and training",
        f"  {'seeds':9s} {seeds} per algorithm; arms with the same seed are paired",
        f"  {'spread':9s} SD of one seed's GRPO − PPO accuracy: {100 * spread['pair_sd']:.1f} points; {spread['note']}",
    ]
    power = f"{100 * plan['power']:.0f}% power, 95% interval, paired t with {seeds - 1} df"
    if plan["mdd"] is None:
        lines.append(f"  {'power':9s} no minimum detectable difference with one seed: quality will read inconclusive")
    else:
        lines.append(f"  {'power':9s} minimum detectable difference: {100 * plan['mdd']:.1f} points ({power})")
    needed = plan["seeds_needed"]
    if plan["mdd"] is not None and plan["mdd"] <= plan["margin"]:
        lines.append(f"  {'':9s} {seeds} seeds resolve the margin of {margin:.1f} points")
    elif needed:
        lines.append(f"  {'':9s} the margin of {margin:.1f} points needs {needed} seeds at this eval size "
                     f"(harness compare --seeds {needed})")
    else:
        lines.append(f"  {'':9s} the margin of {margin:.1f} points is out of reach of 200 seeds at this eval size")
    return lines


def simulation_lines(plan: dict[str, Any], comparisons: int = 200) -> list[str]:
    """Simulated comparisons under the plan's model: the quality test's readings, coverage and power."""
    from harness.report.simulate import Design, quality_test, simulated_detectable_difference
    spread, prompts = plan["spread"], plan["eval"]["prompts"]
    binomial = spread["accuracy"] * (1 - spread["accuracy"]) / prompts
    seed_sd = math.sqrt(max(0.0, spread["pair_sd"] ** 2 / 2 - binomial))
    design = Design(seeds=max(plan["seeds"], 2), prompts=prompts, seed_sd=seed_sd, accuracy=spread["accuracy"])
    margin = plan["margin"]
    lines = [f"Simulated comparisons under the plan ({comparisons} each; {design.seeds} seeds × {prompts:,} prompts, "
             f"seed SD {100 * seed_sd:.1f} points, accuracy {100 * spread['accuracy']:.0f}%, δ = {100 * margin:.1f} points)",
             f"  {'GRPO − PPO truth':>18s} {'not worse':>10s} {'inconclusive':>13s} {'worse':>6s} {'coverage':>9s}"]
    for truth in (0.0, -0.03, -margin, -2 * margin):
        r = quality_test(design, truth, margin, comparisons)
        lines.append(f"  {100 * truth:+16.1f} pts {r['not_worse']:10.1%} {r['inconclusive']:13.1%} {r['worse']:6.1%} "
                     f"{r['coverage']:9.1%}")
    lines.append(f"  'not worse' when the truth is −{200 * margin:.0f} points (type I error of the test): "
                 "the last row's first column; when it is −δ, about 2.5% is expected")
    if plan["seeds"] >= 2 and plan["mdd"] is not None:
        simulated = simulated_detectable_difference(design, plan["mdd"], plan["power"])
        lines.append(f"  minimum detectable difference: plan {100 * plan['mdd']:.1f} points, "
                     f"simulated {100 * simulated:.1f} points")
    return lines


def plan_command(config: Config, seeds: int, arms: list, simulate: bool = False) -> int:
    """`harness plan`: the plan of a comparison of these arms (specs or --algos items, as compare takes them)."""
    from harness.commands.arm_specs import ArmSpec, arm_config, check_arm_list, check_baseline, parse_arm_spec
    from harness.results.headline import arm_pair_of
    specs = check_arm_list([a if isinstance(a, ArmSpec) else parse_arm_spec(a) for a in arms])
    for spec in specs:
        arm_config(config, spec)  # each arm's overrides checked, as compare checks them
    pair = arm_pair_of({s.name: s.algo for s in specs}, check_baseline(specs, None))
    plan = make_plan(config, seeds, list(pair) if pair else [s.name for s in specs])
    print("\n".join(analysis_plan_lines(plan)))
    if simulate:
        print("\n".join(simulation_lines(plan)))
    return 0
