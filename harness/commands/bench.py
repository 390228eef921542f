"""`harness bench probes`: what the measured probes cost, as a ratio of step time (target < 2%).

Runs the same arm with probes on and off, alternating so that drift in the machine's speed hits
both sides alike, and compares the median step time of each side.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from harness.io import read_jsonl
from harness.runner import run_arm


def step_times(run_dir: Path) -> list[float]:
    return [row["time/step"] for row in read_jsonl(run_dir / "steps.jsonl")][1:]  # the first step warms caches


def bench_probes(config, algo: str, repeats: int, echo=print) -> dict[str, float]:
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as scratch:
        for repeat in range(repeats):
            order = (True, False) if repeat % 2 == 0 else (False, True)
            for enabled in order:
                run_dir = Path(scratch) / f"{repeat}-{'on' if enabled else 'off'}"
                summary = run_arm(config, algo, run_dir, probes_enabled=enabled)
                if summary["status"] != "ok":
                    raise RuntimeError(f"bench arm failed: {summary['error']}")
                times[enabled] += step_times(run_dir)
                echo(f"  repeat {repeat + 1}/{repeats} probes {'on ' if enabled else 'off'}: "
                     f"median step {statistics.median(step_times(run_dir)) * 1000:.1f} ms")
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {"median_step_on_s": on, "median_step_off_s": off, "overhead": on / off - 1,
            "steps_each": len(times[True])}


def bench_probes_command(config, algo: str, repeats: int) -> int:
    """`harness bench probes`: print the median step time with probes on and off, and the overhead."""
    config.run.lm_eval, config.run.eval_every = False, 0  # time the training steps alone
    print(f"bench probes: preset {config.preset}, {algo}, {config.total_steps()} steps per run, {repeats} repeats "
          "(lm-eval and periodic evals off)")
    result = bench_probes(config, algo, repeats)
    verdict = "within" if result["overhead"] < 0.02 else "ABOVE"
    print(f"median step time: probes on {result['median_step_on_s'] * 1000:.2f} ms, "
          f"off {result['median_step_off_s'] * 1000:.2f} ms over {result['steps_each']} steps each")
    print(f"probe overhead: {result['overhead']:+.2%} of step time ({verdict} the 2% target)")
    return 0
