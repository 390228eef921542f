"""`harness bench trl`: our GRPO arm against TRL's GRPOTrainer (the trl-grpo arm) on one fixed workload.

The workload of issue 14: 64 completions per step, G = 8, 4 new tokens, beta 0.04, one optimizer step
per rollout, evaluation off; on the tiny model, and on the same body with Qwen2.5's 151,936 vocabulary
rows, where the log-prob path dominates. Runs alternate between the two arms, each in its own process
as `harness compare` runs them; the output is the median step time of each (the first step of each run
left out), their ratio, the median time per phase, each side's peak of live tensors, and the machine's
load: step times taken while other work runs are noisy, and the line says so.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import UserError
from harness.results.io import read_json, read_jsonl, write_json, write_yaml
from harness.results.records import Summary

# One fixed workload (issue 14): 64 completions per step, G = 8, 4 new tokens, beta 0.04, one optimizer
# step per rollout, evaluation and checkpoints off; live tensors tracked on the second step only (the
# tracker slows the ops it sees), the steps after it timed. --set flags apply over it.
TRL_WORKLOAD = ["rollout.batch_size=64", "rollout.samples_per_prompt=8", "rollout.max_new_tokens=4",
                "algorithms.grpo.beta=0.04", "algorithms.trl-grpo.beta=0.04", "optim.minibatches=1", "optim.epochs=1",
                "optim.micro_batch_size=0", "rollout.logprob_batch_size=0", "run.eval_every=0", "run.lm_eval=false",
                "run.checkpoint_every=0", "run.memory_every=100000"]
QWEN25_VOCAB = 151_936  # rows of Qwen2.5's embedding and LM head
BENCH_ARMS = ("grpo", "trl-grpo")
TARGET_TIME_RATIO = 0.5  # ours <= 0.5 x TRL's step time, both workloads
PROFILE_LINES = 10


def trl_workloads(config) -> dict[str, Any]:
    """{name: config}: the tiny model as configured, and the same body with Qwen2.5's vocabulary rows."""
    from harness.config.load import copy_config
    realistic = copy_config(config)
    if not hasattr(realistic.model, "vocab_pad_to"):
        return {"tiny": config}
    realistic.model.vocab_pad_to = QWEN25_VOCAB
    return {"tiny": config, "realistic-vocab": realistic}


def run_bench_arm(config, algo: str, run_dir: Path, profile: Path | None = None) -> Summary:
    """One arm in its own process, as `harness compare` runs it: its summary; a failure raises.

    With `profile`, the process runs under pyinstrument and its text report is written there.
    """
    write_yaml(run_dir / "config.yaml", {**config.to_dict(), "algo": algo})
    command = [sys.executable, "-m", "harness", "run", "--run-dir", str(run_dir)]
    if profile is not None:
        # flat: each function's own time, as a share of the run (torch ops count to the Python line that calls them)
        command = [sys.executable, "-m", "pyinstrument", "--renderer", "text", "-p", "flat=true",
                   "-p", "time=percent_of_total", "--outfile", str(profile), "-m", "harness", "run", "--run-dir", str(run_dir)]
    done = subprocess.run(command, capture_output=True, text=True)
    summary = Summary.read(read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {})
    if done.returncode != 0 or not summary.ok:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench arm {algo} failed: {summary.error or tail[0]}")
    return summary


def timed_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The steps that time fairly: not the first (it warms caches), not those under the live-tensor tracker."""
    return [row for row in read_jsonl(run_dir / "steps.jsonl")[1:] if not row.get("mem/tracked")]


def step_times(run_dir: Path) -> list[float]:
    return [row["time/step"] for row in timed_rows(run_dir)]


def phase_times(run_dir: Path) -> dict[str, list[float]]:
    """Seconds per phase of the timed steps: {phase: [seconds, ...]}."""
    out: dict[str, list[float]] = {}
    for row in timed_rows(run_dir):
        for key, value in row.items():
            if key.startswith("time/") and key != "time/step":
                out.setdefault(key.removeprefix("time/"), []).append(value)
    return out


def live_peak(summary: Summary) -> int | None:
    """The measured step peak of live tensors (summary mem.live.peak), where the arm recorded one."""
    return summary.mem.live.peak


def bench_trl(config, repeats: int, workloads: list[str], echo=print, profile_dir: Path | None = None) -> dict[str, Any]:
    """Our GRPO arm against trl-grpo, alternating runs in one sitting: median step times, their ratio and peaks."""
    from harness.train.models import prepare_model
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="harness-bench-trl-") as scratch:
        for name, workload in trl_workloads(config).items():
            if name not in workloads:
                continue
            prepare_model(workload)
            times: dict[str, list[float]] = {algo: [] for algo in BENCH_ARMS}
            phases: dict[str, dict[str, list[float]]] = {algo: {} for algo in BENCH_ARMS}
            peaks: dict[str, list[int]] = {algo: [] for algo in BENCH_ARMS}
            for repeat in range(repeats):
                order = BENCH_ARMS if repeat % 2 == 0 else BENCH_ARMS[::-1]
                for algo in order:
                    run_dir = Path(scratch) / f"{name}-{repeat}-{algo}"
                    summary = run_bench_arm(workload, algo, run_dir)
                    times[algo] += step_times(run_dir)
                    for phase, seconds in phase_times(run_dir).items():
                        phases[algo].setdefault(phase, []).extend(seconds)
                    if live_peak(summary) is not None:
                        peaks[algo].append(live_peak(summary))
                    echo(f"  {name} repeat {repeat + 1}/{repeats} {algo:8s}: median step "
                         f"{statistics.median(step_times(run_dir)) * 1000:.1f} ms")
            row = {"median_step_s": {algo: statistics.median(times[algo]) for algo in BENCH_ARMS},
                   "steps_each": len(times["grpo"]),
                   "median_phase_s": {algo: {phase: statistics.median(seconds) for phase, seconds in phases[algo].items()}
                                      for algo in BENCH_ARMS},
                   "live_peak": {algo: max(peaks[algo]) if peaks[algo] else None for algo in BENCH_ARMS}}
            row["time_ratio"] = row["median_step_s"]["grpo"] / row["median_step_s"]["trl-grpo"]
            if all(row["live_peak"].values()):
                row["peak_ratio"] = row["live_peak"]["grpo"] / row["live_peak"]["trl-grpo"]
            if profile_dir is not None:
                row["profiles"] = {}
                for algo in BENCH_ARMS:
                    path = profile_dir / f"{name}-{algo}.txt"
                    run_bench_arm(workload, algo, Path(scratch) / f"{name}-profile-{algo}", profile=path)
                    row["profiles"][algo] = str(path)
            results[name] = row
    return results


def top_of_profile(path: Path, lines: int = PROFILE_LINES) -> list[str]:
    """The first lines of a flat pyinstrument profile: the functions that took most of the run."""
    rows = [line.strip() for line in path.read_text().splitlines() if line.strip()[:1].isdigit() and "%" in line]
    return rows[:lines]


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f}"


def machine_load() -> float:
    return os.getloadavg()[0]


def bench_trl_command(config, repeats: int, workloads: list[str], out: Path | None = None,
                      profile_dir: Path | None = None) -> int:
    """`harness bench trl`: print our GRPO's and TRL's median step time, their ratio and live-tensor peaks."""
    cores = os.cpu_count() or 1
    print(f"bench trl: preset {config.preset}, model {config.model.name}, {config.rollout.batch_size} completions per "
          f"step, G = {config.rollout.samples_per_prompt}, {config.rollout.max_new_tokens} new tokens, beta "
          f"{config.algorithms.get('grpo', {}).get('beta')}, {config.optim.minibatches * config.optim.epochs} optimizer "
          f"step(s) per rollout, {config.total_steps()} steps per run, {repeats} repeats of each arm, alternating, "
          f"each run in its own process (the first step of each run left out)")
    if profile_dir is not None:
        import importlib.util
        if importlib.util.find_spec("pyinstrument") is None:
            raise UserError("--profile needs pyinstrument: pip install 'rl-harness[profile]'")
        profile_dir.mkdir(parents=True, exist_ok=True)
    load_before = machine_load()
    unknown = sorted(set(workloads) - {"tiny", "realistic-vocab"})
    if unknown:
        raise UserError(f"unknown bench workload(s) {', '.join(unknown)}; valid: tiny, realistic-vocab")
    results = bench_trl(config, repeats, workloads, profile_dir=profile_dir)
    for name in workloads:
        if name not in results:
            print(f"{name}: not run: this version's model config has no vocab_pad_to")
    load_after = machine_load()
    print(f"{'workload':16s} {'grpo ms':>9s} {'trl ms':>9s} {'grpo/trl':>9s}  target <= {TARGET_TIME_RATIO}")
    for name, row in results.items():
        step = row["median_step_s"]
        met = "met" if row["time_ratio"] <= TARGET_TIME_RATIO else "missed"
        print(f"{name:16s} {step['grpo'] * 1000:9.1f} {step['trl-grpo'] * 1000:9.1f} {row['time_ratio']:9.3f}  {met}"
              f"  (median over {row['steps_each']} steps each; measured)")
    for name, row in results.items():
        by_phase = row["median_phase_s"]
        names = sorted(set(by_phase["grpo"]) | set(by_phase["trl-grpo"]))
        print(f"{name:16s} median ms per phase: " + ", ".join(
            f"{phase} {fmt_ms(by_phase['grpo'].get(phase))} / {fmt_ms(by_phase['trl-grpo'].get(phase))}" for phase in names)
            + " (grpo / trl-grpo)")
    for name, row in results.items():
        peak = row["live_peak"]
        if all(peak.values()):
            met = "met" if row["peak_ratio"] <= 1 else "missed"
            print(f"{name:16s} peak of live tensors (measured): grpo {peak['grpo'] / 2**20:,.2f} MiB, trl-grpo "
                  f"{peak['trl-grpo'] / 2**20:,.2f} MiB, ratio {row['peak_ratio']:.3f} (target <= 1: {met})")
        else:
            print(f"{name:16s} peak of live tensors: not recorded by "
                  f"{', '.join(a for a, v in peak.items() if v is None)}")
        for algo, path in row.get("profiles", {}).items():
            print(f"{name:16s} profile of {algo} (pyinstrument, own time as a share of the whole run): {path}")
            for line in top_of_profile(Path(path)):
                print(f"    {line}")
    busy = max(load_before, load_after) > 0.5 * cores
    print(f"machine load (1-min average) {load_before:.2f} before, {load_after:.2f} after on {cores} cores"
          + (": others were running, the step times are noisy; rerun on a quiet machine" if busy else ""))
    if out is not None:
        write_json(out, {"workload": TRL_WORKLOAD, "repeats": repeats, "load": [load_before, load_after],
                         "cores": cores, "results": results})
        print(f"bench trl: {out}")
    return 0
