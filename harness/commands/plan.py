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
from harness.config.schema import WARM_START_CHECK_EVERY, Config
from harness.estimate.preflight import check_setup
from harness.report.stats import (INTERVAL_METHODS, LEVEL, completions_band, detectable_difference, pair_sd,
                                  seeds_needed)
from harness.results.records import Summary

PLAN_VERSION = 2  # 2: one named interval method, resources to the target censored at the budget, memory by regime
# Why the band around 0.5 is as wide as it is (the user may set verdict.band; the plan states it).
BAND_WHY = ("wide enough to hold the model-state ratios that motivated the claim (0.52 without a reference "
            "model and 0.55 with one, for a 7B policy and same-size critic in bf16-mixed AdamW), narrow enough "
            "that a ratio inside it still means GRPO saves {low:.0f}–{high:.0f}% of PPO's memory")


# How a seed that never reaches the target is counted, and what the verdict rests on (saved with the plan).
CENSORING = ("a seed in which an arm never reaches the target is censored at its budget (its whole completions and "
             "training time) and kept, never dropped: its GRPO/PPO ratio is a bound (at least, when GRPO never "
             "reached it; at most, when PPO never did), and a row with such seeds is read as a one-sided bound; a "
             "seed in which neither arm reached it leaves the row without a ratio")
VERDICT_RULE = ("reproduced when quality is not worse and both the training time to the target and memory read as "
                "the claim; not reproduced when quality is worse or either lies outside the band; inconclusive "
                "otherwise, and when memory could not be read (this machine activation-bound and no at-scale "
                "recipe pair)")


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


def get_n(summary: Summary) -> int:
    return (summary.eval.final.n if summary.eval.final else None) or 0


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
    interval = INTERVAL_METHODS[v.interval]
    c_low, c_high = completions_band(v.claim, [low, high])
    return {
        "version": PLAN_VERSION, "level": LEVEL, "algos": list(algos), "seeds": seeds,
        "start": start_text(config, len(validation)),
        "primary": [
            {"key": "quality", "figure": f"final greedy held-out accuracy, {top} − {bottom}, paired by seed",
             "test": f"non-inferiority at δ = {100 * v.margin:.1f} points (not worse when the 95% lower bound > −δ; "
                     f"interval: {interval})"},
            {"key": "compute", "figure": f"{top}/{bottom} training time to the target accuracy, paired by seed, "
                                         "periodic evaluations excluded",
             "test": f"its 95% interval against {v.claim} within {low:.2f}–{high:.2f}"},
            {"key": "memory", "figure": f"{top}/{bottom} peak memory, read by regime: this machine's measured peak "
                                        "when model-state-bound, else the named at-scale recipe pair's estimated "
                                        "per-GPU peak",
             "test": f"against {v.claim} within {low:.2f}–{high:.2f}; with neither, memory is not read"},
        ],
        "secondary": [f"sampled completions to the target (against 1 within {c_low:.2f}–{c_high:.2f}: equal "
                      "sample efficiency)", "peak memory and memory × time to the target on this machine",
                      "the arithmetic model-state ratio", "time per step, throughput",
                      "the other memory measures (RSS, CUDA allocator, NVML), each apart"],
        "margin": v.margin, "target": target, "claim": v.claim, "band": [low, high],
        "completions_band": [c_low, c_high], "interval": v.interval,
        "censoring": CENSORING, "verdict_rule": VERDICT_RULE,
        "band_why": BAND_WHY.format(low=100 * (1 - high), high=100 * (1 - low)),
        "eval": {"prompts": prompts, "requested": config.task.eval_size, "composition": composition(task, test),
                 "distinct": len({e.prompt for e in test}), "validation": len(validation), "task": task.name},
        "spread": spread, "power": v.power, "mdd": None if math.isinf(mdd) else mdd,
        "seeds_needed": seeds_needed(spread["pair_sd"], v.margin, LEVEL, v.power),
    }


def start_text(config, validation_prompts: int) -> str:
    """How the model both arms of a seed start from is made: '' for a Hub model or a local one."""
    model = config.model
    if model.name != "tiny":
        return ""
    rule = (f", then {WARM_START_CHECK_EVERY} at a time until {100 * model.warm_start_until:g}% greedy on the "
            f"validation split (at most {model.warm_start_max_steps})" if model.warm_start_until is not None else "")
    if rule and not validation_prompts:
        rule = f" (model.warm_start_until={model.warm_start_until:g} is off: the task has no validation split)"
    return (f"the tiny model, warm-started per seed (its own initial weights): {model.warm_start_steps} supervised "
            f"steps of {model.warm_start_batch}{rule}; cached")


def target_text(target: dict[str, Any]) -> str:
    if target.get("accuracy"):
        return f"{100 * target['accuracy']:.1f}% held-out accuracy (verdict.target_accuracy)"
    return (f"the start's held-out accuracy + {100 * target['gain']:.0f} points (verdict.target_gain; the start is "
            "the warm-started model both arms of a seed begin from, measured before any training; with several "
            "seeds, the highest of their starts)")


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
        f"  {'target':9s} resources to the target: {target_text(plan['target'])}"
        + (f"; {plan['censoring']}" if plan.get("censoring") else ""),
        f"  {'interval':9s} " + (f"quality: {INTERVAL_METHODS[plan['interval']]} (verdict.interval, named before the "
                                 "run); ratios: paired by seed, a t interval on the log ratios"
                                 if plan.get("interval") in INTERVAL_METHODS else
                                 "none named (a plan saved before plans named one): the paired t over seeds is used"),
        *([f"  {'verdict':9s} {plan['verdict_rule']}"] if plan.get("verdict_rule") else []),
        f"  {'band':9s} {low:.2f}–{high:.2f} around {plan['claim']}: {plan['band_why']}",
        f"  {'eval':9s} {plan['eval']['prompts']:,} {distinct}test prompts{short} ({composition}); "
        f"{plan['eval']['validation']:,} validation prompts for tuning, disjoint from test and training",
        f"  {'seeds':9s} {seeds} per algorithm; arms with the same seed are paired",
        *([f"  {'start':9s} {plan['start']}"] if plan.get("start") else []),
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
    margin, method = plan["margin"], plan.get("interval", "paired_t")
    lines = [f"Simulated comparisons under the plan ({comparisons} each; {design.seeds} seeds × {prompts:,} prompts, "
             f"seed SD {100 * seed_sd:.1f} points, accuracy {100 * spread['accuracy']:.0f}%, δ = {100 * margin:.1f} points, "
             f"interval: {INTERVAL_METHODS[method]})",
             f"  {'GRPO − PPO truth':>18s} {'not worse':>10s} {'inconclusive':>13s} {'worse':>6s} {'coverage':>9s}"]
    for truth in (0.0, -0.03, -margin, -2 * margin):
        r = quality_test(design, truth, margin, comparisons, method=method)
        lines.append(f"  {100 * truth:+16.1f} pts {r['not_worse']:10.1%} {r['inconclusive']:13.1%} {r['worse']:6.1%} "
                     f"{r['coverage']:9.1%}")
    lines.append(f"  'not worse' when the truth is −{200 * margin:.0f} points (type I error of the test): "
                 "the last row's first column; when it is −δ, about 2.5% is expected")
    if plan["seeds"] >= 2 and plan["mdd"] is not None:
        simulated = simulated_detectable_difference(design, plan["mdd"], plan["power"], method=method)
        lines.append(f"  minimum detectable difference: plan {100 * plan['mdd']:.1f} points, "
                     f"simulated {100 * simulated:.1f} points")
    return lines


def arms_plan_lines(config: Config, specs, kl=None) -> list[str]:
    """Each arm's own settings and where each came from, as `harness compare` will apply them."""
    from harness.commands.arm_specs import arm_config, kl_notes
    from harness.commands.terminal import arm_lines
    from harness.config.kl import KLSetting
    kl = kl or KLSetting()
    configs = {s.name: arm_config(config, s, kl) for s in specs}
    lines = [f"Arms: {', '.join(s.name for s in specs)}; KL to the reference: {kl.words()}"]
    lines += arm_lines(specs, configs, config) or ["  every arm as the config sets it: no per-arm settings"]
    return lines + [f"  {note}" for note in kl_notes(specs, kl)]


def plan_command(config: Config, seeds: int, arms, simulate: bool = False, baseline: str | None = None,
                 kl=None) -> int:
    """The analysis plan, then each arm's settings; `arms`: arm specs (harness.commands.arm_specs) or --algos
    items."""
    from harness.commands.arm_specs import check_arm_list, check_baseline, parse_arm_spec
    from harness.results.headline import arm_pair_of
    specs = check_arm_list([parse_arm_spec(a) if isinstance(a, str) else a for a in arms])
    pair = arm_pair_of({s.name: s.algo for s in specs}, check_baseline(specs, baseline))
    plan = make_plan(config, seeds, list(pair) if pair else [s.name for s in specs])
    arm_lines = arms_plan_lines(config, specs, kl)  # each arm's overrides checked before anything is printed
    print("\n".join(analysis_plan_lines(plan)))
    print("\n".join(arm_lines))
    if simulate:
        print("\n".join(simulation_lines(plan)))
    return 0
