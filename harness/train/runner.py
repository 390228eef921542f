"""One (algorithm, seed) arm from start to summary: its folder, its arm driven through the arm interface
(harness.train.arm_interface), every step logged, failures recorded.

`harness compare` starts each arm as its own process (`harness run --run-dir DIR`), or as its own
torchrun job with --nproc-per-node, so that one arm's peak memory, allocator state or crash cannot
touch another's figures.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import UserError, __version__
from harness.config.arm_kinds import arm_class
from harness.config.derive import algorithm_options
from harness.config.schema import Config
from harness.measure.live_tensors import step_peak
from harness.measure.probes import Probes
from harness.results.arm_config import arm_config_dict
from harness.results.io import (append_jsonl, atomic_write_text, keep_files, put_back, read_json_object, read_jsonl,
                                write_json, write_yaml)
from harness.results.records import (ArithmeticMemory, Budget, BudgetUsed, Evals, LiveMemory, LmEvals, MeasuredMemory,
                                     Memory, Summary, Throughput, Times)
from harness.results.step_record import StepRecord
from harness.results.trackers import open_trackers
from harness.train import distributed as ranks_
from harness.train.arm_interface import ArmRunner, Diverged, Progress
from harness.train.checkpoint import RunState
from harness.train.inputs import INPUTS_FILE, record_inputs


RECORDS = ("config.yaml", "env.json", "summary.json", INPUTS_FILE)  # what run_arm writes before the arm starts


def run_name(config: Config, algo: str) -> str:
    return f"{config.task.label}__{algo}__s{config.run.seed}"


def environment(device: str) -> dict[str, Any]:
    import transformers
    env = {"harness": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "device": device}
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
        try:
            import pynvml
            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            env["driver"] = None
    return env


# ---------------------------------------------------------------- the arm's summary

@dataclass
class ArmResult:
    """What an arm left for its summary: its counters, and (when it finished) its final figures."""

    state: RunState = field(default_factory=RunState)
    final_eval: dict[str, Any] | None = None
    final_lm_eval: dict[str, Any] | None = None
    state_bytes: dict[str, dict[str, int]] = field(default_factory=dict)  # arithmetic, per model
    probes: dict[str, Any] = field(default_factory=dict)  # harness.measure.probes.Probes.summary()
    per_rank: list[dict[str, Any]] | None = None  # under torchrun: each rank's live peaks, state bytes, probes
    world_size: int | None = None


def summarize(config: Config, algo: str, result: ArmResult, status: str = "ok", error: str | None = None) -> Summary:
    """The arm's summary.json: the one place it is built."""
    state = result.state
    models = result.state_bytes
    steps = state.step
    untracked = steps - state.tracked_steps
    # Time per step leaves out the steps that carried the live-tensor tracker, unless every step did.
    per_step = ((state.train_s - state.tracked_s) / untracked if untracked else
                state.train_s / steps if steps else None)
    per_rank = result.per_rank
    live_peaks = state.live_peaks
    if per_rank:  # each rank's peaks: the arm's figure is the largest rank's, phase by phase
        live_peaks = {phase: max((r["live"].get(phase) for r in per_rank if r["live"].get(phase)),
                                 key=lambda peak: peak["total"])
                      for phase in {p for r in per_rank for p in r["live"]}}
    peak, peak_phase = step_peak(live_peaks)
    ranks = {"per_rank": [{"peak": step_peak(r["live"])[0], "phases": r["live"]} for r in per_rank]} if per_rank else {}
    return Summary(
        algo=algo, seed=config.run.seed, task=config.task.name, preset=config.preset, model=config.model.name,
        status=status, error=error, world_size=result.world_size or config.world_size,
        budget=Budget(unit=config.budget.unit, total=config.budget.total,
                      used=BudgetUsed(completions=state.completions, tokens=state.tokens, steps=steps)),
        steps=steps, wall_s=state.train_s + state.eval_s,
        eval=Evals(base=state.base_eval, final=result.final_eval,
                   lm_eval=LmEvals(base=state.base_lm_eval, final=result.final_lm_eval)),
        mem=Memory(
            live=LiveMemory(peak=peak if live_peaks else None, peak_phase=peak_phase, phases=live_peaks,
                            tracked_steps=state.tracked_steps, every=config.run.memory_every, **ranks),
            arithmetic=ArithmeticMemory(models=models, model_state_total=sum(row["total"] for row in models.values()),
                                        **({"per_rank": [r["state_bytes"] for r in per_rank]} if per_rank else {})),
            measured=MeasuredMemory(**result.probes)),
        time=Times(train_s=state.train_s, eval_s=state.eval_s, per_step_s=per_step,
                   per_step_excludes_tracked=bool(untracked and state.tracked_steps), phases_s=state.phase_totals,
                   phases_per_step_s={k: v / steps for k, v in state.phase_totals.items()} if steps else {}),
        tput=Throughput(samples_per_s=state.completions / state.train_s if state.train_s else None,
                        gen_tokens_per_s=(state.tokens / state.phase_totals["generate"]
                                          if state.phase_totals.get("generate") else None)))


def write_summary(run_dir: Path, summary: Summary) -> None:
    write_json(Path(run_dir) / "summary.json", summary.to_json())


# ---------------------------------------------------------------- driving an arm

class StepLog:
    """What happens to every step's record, whatever the arm kind: the periodic held-out evaluation, then
    steps.jsonl, the trackers and the progress line (rank 0); Diverged when the step diverged."""

    def __init__(self, arm: ArmRunner, config: Config, run_dir: Path, main: bool, on_step=None,
                 progress: Progress | None = None):
        self.arm, self.config, self.path, self.main = arm, config, Path(run_dir) / "steps.jsonl", main
        self.on_step, self.progress = on_step, progress

    def __call__(self, state: RunState, record: StepRecord) -> None:
        every = self.config.run.eval_every
        if every and state.step % every == 0:
            started = time.perf_counter()
            record.eval = {k: v for k, v in self.arm.evaluate().items() if k != "per_prompt"}
            record.eval_s = time.perf_counter() - started
            state.eval_s += record.eval_s
        if self.main:
            append_jsonl(self.path, record.to_json())
            if self.on_step is not None:
                self.on_step(record)
        if self.progress:
            self.progress("train", state.step, self.config.total_steps(),
                          {"reward": record.reward_mean, "acc": record.reward_accuracy})
        if record.diverged:
            raise Diverged(f"diverged at step {state.step}: {record.diverged}")


def train_arm(arm: ArmRunner, log: StepLog, resume: bool, probes_enabled: bool) -> ArmResult:
    """An arm from its base evaluation (or its checkpoint) to its saved final model."""
    state = arm.resume() if resume else None
    if state is None:
        state = RunState(base_eval=arm.evaluate(), base_lm_eval=arm.lm_eval("base"))
        if log.main:
            log.path.unlink(missing_ok=True)
    probes = Probes(arm.device, enabled=probes_enabled)
    with probes:
        arm.train(state, probes, log)
    final_eval, final_lm_eval = arm.evaluate(), arm.lm_eval("final")
    arm.save_final_model()
    ranks = ranks_.from_env()
    per_rank = ranks_.gather({"live": state.live_peaks, "state_bytes": arm.state_bytes(),
                              "probes": probes.summary()}, ranks) if ranks.active else None
    return ArmResult(state=state, final_eval=final_eval, final_lm_eval=final_lm_eval, state_bytes=arm.state_bytes(),
                     probes=probes.summary(), per_rank=per_rank, world_size=ranks.world)


def run_arm(config: Config, algo: str, run_dir: Path, resume: bool = False, progress=None,
            probes_enabled: bool = True, name: str | None = None) -> Summary:
    """Train one arm and write its folder; a failure is recorded in summary.json, not lost.

    Under torchrun every rank calls this; rank 0 alone writes the files. `name`: the arm's name in its
    comparison, kept in config.yaml beside the algorithm.
    """
    run_dir = Path(run_dir)
    main = ranks_.from_env().main
    recorded = keep_files(run_dir, RECORDS) if main else {}  # put back as they were if the start is refused
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = arm_config_dict(config, algo, name)
        # the algorithm's options with its defaults filled in, so that the run says what it ran
        resolved["derived"]["algorithm_options"] = algorithm_options(config, algo).model_dump()
        write_yaml(run_dir / "config.yaml", resolved)
        write_json(run_dir / "env.json", {**environment(config.run.device), "world_size": config.world_size})
        write_summary(run_dir, Summary(algo=algo, seed=config.run.seed, status="running"))
        if not resume:  # a resume checked them (harness.commands.run.run_folder)
            record_inputs(run_dir, config)
    trackers = open_trackers(config, run_dir) if main else None
    try:
        arm = arm_class(algo)(config, algo, run_dir, progress)
        log = StepLog(arm, config, run_dir, main, trackers.log_step if trackers is not None else None,
                      progress if main else None)
        summary = summarize(config, algo, train_arm(arm, log, resume, probes_enabled))
    except UserError:
        if main:
            put_back(recorded)
        raise
    except Diverged as err:
        summary = summarize(config, algo, ArmResult(_partial_state(run_dir)), "diverged", str(err))
    except torch.OutOfMemoryError as err:
        summary = summarize(config, algo, ArmResult(_partial_state(run_dir)), "oom",
                            f"out of memory at step {_last_step(run_dir) + 1}: {str(err).splitlines()[0]}")
    except Exception as err:  # recorded, so that the other arms of a comparison go on
        if main:  # the whole traceback beside the one-line error, for whoever has to find the cause
            with contextlib.suppress(OSError, UserError):  # a full disk: the summary below says what failed
                atomic_write_text(run_dir / "error.txt", traceback.format_exc())
        last = _last_step(run_dir)
        where = f"at step {last + 1}" if last or (run_dir / "steps.jsonl").exists() else "before the first step"
        summary = summarize(config, algo, ArmResult(_partial_state(run_dir)), "failed",
                            f"failed {where}: {type(err).__name__}: {err}")
    if main:
        write_summary(run_dir, summary)
        trackers.finish(summary)
    ranks_.finish(ranks_.from_env())
    return summary


def record_launch_failure(run_dir: Path, config: Config, code: int, launcher_log: str) -> None:
    """A torchrun job that failed: record which rank died first and how (torchrun's root cause), beside
    whatever rank 0 saw of it (a broken connection, when another rank was killed)."""
    summary = load_summary(run_dir) or Summary()
    rank = ranks_.failed_rank(launcher_log)
    if rank is None:
        if summary.status not in (None, "running"):
            return  # the ranks recorded the failure themselves
        why = f"the torchrun job exited with status {code}"
    else:
        signal = f" (signal {-rank[1]}{': likely the out-of-memory killer' if rank[1] == -9 else ''})" if rank[1] < 0 else ""
        why = f"rank {rank[0]} of {config.world_size} died with exit code {rank[1]}{signal}; the other ranks were stopped"
        if rank[0] == 0 and summary.status not in (None, "running"):
            return  # rank 0 failed and said why
    seen = f" (rank 0 saw: {summary.error})" if summary.status not in (None, "running") and summary.error else ""
    last = _last_step(run_dir)
    write_summary(run_dir, summarize(config, summary.algo or "?", ArmResult(_partial_state(run_dir)),
                                     "failed", f"failed at step {last + 1}: {why}{seen}"))


def _partial_state(run_dir: Path) -> RunState:
    """What the steps written before a failure say (steps and budget used)."""
    rows = read_jsonl(run_dir / "steps.jsonl")
    if not rows:
        return RunState()
    last = StepRecord.read(rows[-1])
    return RunState(step=last.step or 0, completions=last.completions or 0, tokens=last.tokens or 0,
                    train_s=last.train_s or 0.0)


def _last_step(run_dir: Path) -> int:
    rows = read_jsonl(run_dir / "steps.jsonl")
    return (StepRecord.read(rows[-1]).step or 0) if rows else 0


def finished_ok(run_dir: Path) -> bool:
    """Whether the arm's summary says it finished; a damaged summary does not (whoever reads it next says why)."""
    path = Path(run_dir) / "summary.json"
    try:
        return path.exists() and read_json_object(path).get("status") == "ok"
    except UserError:
        return False


def load_summary(run_dir: Path) -> Summary | None:
    """The arm's summary, None when it has none; one line naming a damaged file (UserError)."""
    path = Path(run_dir) / "summary.json"
    return Summary.read(read_json_object(path)) if path.exists() else None
