"""One (algorithm, seed) arm: the step loop, its records, checkpoints and resume.

`harness compare` starts each arm as its own process (`harness run --run-dir DIR`), so that one
arm's peak memory, allocator state or crash cannot touch another's figures.

A step: sample and score (the shared rollout), the sampler's and the reference's log-probs, the
critic's values where the algorithm has a critic, advantages, then the algorithm's update; every
phase is timed, and on tracked steps the peak of live tensors is recorded per phase.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import UserError, __version__
from harness.algorithms import get_algorithm
from harness.checkpoint import RunState, load_checkpoint, save_checkpoint
from harness.config import Config, algorithm_options, make_task, train_settings
from harness.io import append_jsonl, read_json, read_jsonl, rewrite_jsonl, write_json, write_yaml
from harness.memory import LiveTensors, step_peak
from harness.meter import StepMeter, is_tracked_step, non_finite, step_flops, step_record, to_floats
from harness.models import WEIGHT_DTYPES, check_device, frozen_copy, load_policy, resolve_model_path
from harness.probes import Probes, model_state_bytes
from harness.rollout import generate, generate_with_spread, greedy_eval, use_chat_template
from harness.trackers import open_trackers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: the same for every algorithm at the same (seed, step)."""
    return seed * 1_000_003 + step


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


def injected_fault(algo: str, step: int) -> None:
    """Test hook: HARNESS_INJECT_FAULT=ALGO:STEP:oom|error makes that arm fail at that step."""
    spec = os.environ.get("HARNESS_INJECT_FAULT", "")
    if spec.count(":") == 2:
        target, at, kind = spec.split(":")
        if target == algo and int(at) == step:
            if kind == "oom":
                raise torch.OutOfMemoryError("injected: tried to allocate 1.00 GiB")
            raise RuntimeError("injected failure")


# Dynamic sampling refills a step's batch from prompts drawn at these step indices and beyond: far past
# any RL step and past the warm start's (10 million), so no arm's own prompts are reused.
REFILL_STEPS = 20_000_000


class Diverged(Exception):
    """A step produced a non-finite loss, gradient norm or log-prob."""


class Arm:
    """Everything one arm holds while it trains."""

    def __init__(self, config: Config, algo: str, run_dir: Path, progress=None):
        self.config, self.algo_name, self.run_dir = config, algo, Path(run_dir)
        self.progress = progress
        check_device(config.run.device)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.task = make_task(config)
        model_path = resolve_model_path(config.model, self.task, progress=self._warm_start_progress)
        seed_everything(config.run.seed)
        self.policy, self.tokenizer = load_policy(model_path, config.model.precision, config.run.device,
                                                  config.model.gradient_checkpointing)
        use_chat_template(self.tokenizer, config.task.chat_template)
        self.policy.eval()
        self.settings = train_settings(config)
        self.algorithm = get_algorithm(algo)(self.policy, algorithm_options(config, algo), self.settings,
                                             seed=config.run.seed)
        # A frozen reference is stored in the compute dtype: bf16 under bf16-mixed (2 bytes per parameter).
        reference_dtype = torch.bfloat16 if config.model.precision != "fp32" else WEIGHT_DTYPES["fp32"]
        self.reference = frozen_copy(self.policy, reference_dtype) if self.algorithm.needs_reference else None
        self.model_sizes = {name: sum(p.numel() for p in model.parameters())
                            for name, model in self.algorithm.trained_models().items()}
        self.on_step = lambda record: None  # experiment trackers (harness.trackers)

    def _warm_start_progress(self, step: int, total: int, loss: float) -> None:
        if self.progress:
            self.progress("warm start", step, total, {"loss": loss})

    def frozen_models(self) -> dict[str, torch.nn.Module]:
        return {"reference": self.reference} if self.reference is not None else {}

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """Arithmetic: bytes of parameters, gradients and optimizer state of each model, from their sizes."""
        return model_state_bytes(self.algorithm.trained_models(), self.algorithm.optimizers(), self.frozen_models())

    # ------------------------------------------------------------ files

    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint" / "state.pt"

    def save_final_model(self) -> None:
        """The trained policy and its tokenizer as a Hugging Face folder (for `harness eval`, lm_eval)."""
        folder = self.run_dir / "final_model"
        staging = self.run_dir / ".final_model.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.policy.save_pretrained(staging)
        self.tokenizer.save_pretrained(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        examples = self.task.eval_examples()
        if self.progress:
            self.progress("eval", 0, len(examples), {})
        result = greedy_eval(self.policy, self.tokenizer, self.task, examples, self.config.rollout.max_new_tokens,
                             autocast_dtype=self.settings.autocast_dtype)
        if self.progress:
            self.progress("eval", len(examples), len(examples), {"acc": result["accuracy"]})
        return result

    def lm_eval(self, label: str) -> dict[str, Any] | None:
        """lm-evaluation-harness scores (greedy pass@1, maj@k, pass@k) of the policy as it is now."""
        run = self.config.run
        if not run.lm_eval:
            return None
        from harness.evaluate import score_policy
        extra = [name.strip() for name in run.eval_tasks.split(",") if name.strip()]
        return score_policy(self.policy, self.tokenizer, self.task, k=run.lm_eval_k, seed=run.seed,
                            max_new_tokens=self.config.rollout.max_new_tokens, work_dir=self.run_dir / "lm_eval",
                            temperature=self.config.rollout.temperature, top_p=self.config.rollout.top_p,
                            label=label, extra_tasks=extra, log=lambda line: None, progress=self.progress)

    # ------------------------------------------------------------ the loop

    def budget_left(self, state: RunState) -> bool:
        budget = self.config.budget
        spent = {"completions": state.completions, "tokens": state.tokens, "steps": state.step}[budget.unit]
        return spent < budget.total and state.step < self.config.total_steps()

    def train(self, resume: bool = False, probes_enabled: bool = True) -> dict[str, Any]:
        config, steps_path = self.config, self.run_dir / "steps.jsonl"
        state = RunState()
        if resume and self.checkpoint_path().exists():
            state = load_checkpoint(self.checkpoint_path(), self.algorithm)
            rewrite_jsonl(steps_path, [r for r in read_jsonl(steps_path) if r["step"] <= state.step])
        else:
            steps_path.unlink(missing_ok=True)
        if state.base_eval is None:
            state.base_eval = self.evaluate()
            state.base_lm_eval = self.lm_eval("base")
        live = None
        if probes_enabled and config.run.memory_every:
            live = LiveTensors(self.algorithm.trained_models().values(), self.frozen_models().values(),
                               self.algorithm.optimizers().values())
        probes = Probes(config.run.device, enabled=probes_enabled)
        meter = StepMeter(probes, live)
        with probes:
            while self.budget_left(state):
                record = self.train_step(state, meter, probes)
                if config.run.eval_every and state.step % config.run.eval_every == 0:
                    started = time.perf_counter()
                    record.update({f"eval/{k}": v for k, v in self.evaluate().items() if k != "per_prompt"})
                    record["time/eval"] = time.perf_counter() - started
                    state.eval_s += record["time/eval"]
                append_jsonl(steps_path, record)
                self.on_step(record)
                if record.get("diverged"):
                    raise Diverged(f"diverged at step {state.step}: {record['diverged']}")
                if config.run.checkpoint_every and state.step % config.run.checkpoint_every == 0:
                    save_checkpoint(self.checkpoint_path(), state, self.algorithm)
                if self.progress:
                    self.progress("train", state.step, config.total_steps(),
                                  {"reward": record["reward/mean"], "acc": record["reward/accuracy"]})
        final_eval = self.evaluate()
        final_lm_eval = self.lm_eval("final")
        self.save_final_model()
        return {"state": state, "final_eval": final_eval, "final_lm_eval": final_lm_eval,
                "state_bytes": self.state_bytes(), "probes": probes.summary(), "device_name": probes.device_name()}

    def rollout(self, step: int, meter: StepMeter):
        """The step's prompts, sampled and scored, with the sampler's and the reference's log-probs."""
        config = self.config
        examples = self.task.train_examples(step, config.prompts_per_step)
        if not self.algorithm.filters_groups:
            return generate(self.policy, self.reference, self.tokenizer, self.task, examples, config.rollout,
                            self.settings, meter)
        rounds = self.algorithm.options.max_generation_rounds

        def prompts(round_index: int):
            # the first round draws the step's prompts, as every arm does; refills come from their own stream
            return examples if round_index == 0 else self.task.train_examples(
                REFILL_STEPS + step * rounds + round_index, config.prompts_per_step)
        return generate_with_spread(self.policy, self.reference, self.tokenizer, self.task, prompts,
                                    config.prompts_per_step, rounds, config.rollout, self.settings, meter)

    def train_step(self, state: RunState, meter: StepMeter, probes: Probes) -> dict[str, Any]:
        """One rollout batch and the algorithm's update on it; the step's record."""
        config, algorithm = self.config, self.algorithm
        started = time.perf_counter()
        seed_everything(step_seed(config.run.seed, state.step))
        tracked = is_tracked_step(state.step, config.run.memory_every, config.total_steps())
        stats: dict[str, Any] = {}
        with meter.step(tracked):
            rollout = self.rollout(state.step, meter)
            batch = rollout.batch
            if batch is not None:  # None: dynamic sampling found no group with a reward spread
                meter.retag_rollout(batch)
                if algorithm.uses_critic:
                    with meter.phase("values"):
                        algorithm.compute_values(batch)
                with meter.phase("advantages"):
                    stats.update(algorithm.prepare(batch))
                meter.retag_rollout(batch)
                injected_fault(self.algo_name, state.step + 1)
                stats.update(algorithm.update(batch, meter))
        step_time = time.perf_counter() - started
        times = probes.take_step_times()
        stats = to_floats(stats)
        logps_ok = batch is None or bool(torch.isfinite(batch.old_logps[batch.completion_mask.bool()]).all())
        state.step += 1
        state.completions += rollout.sampled
        state.tokens += rollout.generated_tokens
        state.train_s += step_time
        if meter.tracked_peaks:
            state.tracked_steps += 1
            state.tracked_s += step_time
        for phase, seconds in times.items():
            state.phase_totals[phase] = state.phase_totals.get(phase, 0.0) + seconds
        for phase, peak in meter.tracked_peaks.items():
            if peak["total"] > state.live_peaks.get(phase, {}).get("total", -1):
                state.live_peaks[phase] = peak
        trained_tokens = int(batch.attention_mask.sum().item()) if batch is not None else 0
        flops = step_flops(self.model_sizes, trained_tokens, config.optim.epochs, self.reference is not None)
        record = step_record(state.step, state, rollout, stats, times, step_time, flops, probes.device_name(),
                             config.model.precision, self.state_bytes(), meter.tracked_peaks, probes.step_memory())
        record["train_s"], record["wall"] = state.train_s, state.train_s + state.eval_s
        if algorithm.filters_groups:  # dynamic sampling: what was sampled, what was kept, in how many rounds
            record.update({"rollout/sampled": rollout.sampled, "rollout/rounds": rollout.rounds,
                           "rollout/kept": batch.size if batch is not None else 0})
        problem = non_finite(stats) or (None if logps_ok else "the sampler's log-probs hold a non-finite value")
        if problem:
            record["diverged"] = problem
        return record


# ---------------------------------------------------------------- the arm's summary

def summarize(config: Config, algo: str, result: dict[str, Any], status: str = "ok", error: str | None = None) -> dict[str, Any]:
    state: RunState = result.get("state") or RunState()
    models = result.get("state_bytes", {})
    model_total = sum(row["total"] for row in models.values())
    steps = state.step
    untracked = steps - state.tracked_steps
    # Time per step leaves out the steps that carried the live-tensor tracker, unless every step did.
    per_step = ((state.train_s - state.tracked_s) / untracked if untracked else
                state.train_s / steps if steps else None)
    peak, peak_phase = step_peak(state.live_peaks)
    summary = {
        "algo": algo, "seed": config.run.seed, "task": config.task.name, "preset": config.preset,
        "model": config.model.name, "status": status, "error": error,
        "budget": {"unit": config.budget.unit, "total": config.budget.total,
                   "used": {"completions": state.completions, "tokens": state.tokens, "steps": steps}},
        "steps": steps, "wall_s": state.train_s + state.eval_s,
        "eval": {"base": state.base_eval, "final": result.get("final_eval"),
                 "lm_eval": {"base": state.base_lm_eval, "final": result.get("final_lm_eval")}},
        "mem": {
            "live": {"peak": peak if state.live_peaks else None, "peak_phase": peak_phase,
                     "phases": state.live_peaks, "tracked_steps": state.tracked_steps,
                     "every": config.run.memory_every},
            "arithmetic": {"models": models, "model_state_total": model_total},
            "measured": result.get("probes", {}),
        },
        "time": {"train_s": state.train_s, "eval_s": state.eval_s, "per_step_s": per_step,
                 "per_step_excludes_tracked": bool(untracked and state.tracked_steps),
                 "phases_s": state.phase_totals,
                 "phases_per_step_s": {k: v / steps for k, v in state.phase_totals.items()} if steps else {}},
        "tput": {"samples_per_s": state.completions / state.train_s if state.train_s else None,
                 "gen_tokens_per_s": (state.tokens / state.phase_totals["generate"]
                                      if state.phase_totals.get("generate") else None)},
    }
    return summary


def run_arm(config: Config, algo: str, run_dir: Path, resume: bool = False, progress=None,
            probes_enabled: bool = True) -> dict[str, Any]:
    """Train one arm and write its folder; a failure is recorded in summary.json, not lost."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config.to_dict()
    # the algorithm's options with its defaults filled in, so that the run says what it ran
    resolved["derived"]["algorithm_options"] = dataclasses.asdict(algorithm_options(config, algo))
    write_yaml(run_dir / "config.yaml", {**resolved, "algo": algo})
    write_json(run_dir / "env.json", environment(config.run.device))
    write_json(run_dir / "summary.json", {"algo": algo, "seed": config.run.seed, "status": "running"})
    trackers = open_trackers(config, run_dir)
    arm = None
    try:
        arm = Arm(config, algo, run_dir, progress)
        arm.on_step = trackers.log_step
        summary = summarize(config, algo, arm.train(resume=resume, probes_enabled=probes_enabled))
    except UserError:
        (run_dir / "summary.json").unlink(missing_ok=True)
        raise
    except Diverged as err:
        summary = summarize(config, algo, {"state": _partial_state(run_dir)}, "diverged", str(err))
    except torch.OutOfMemoryError as err:
        summary = summarize(config, algo, {"state": _partial_state(run_dir)}, "oom",
                            f"out of memory at step {_last_step(run_dir) + 1}: {str(err).splitlines()[0]}")
    except Exception as err:  # recorded, so that the other arms of a comparison go on
        last = _last_step(run_dir)
        where = f"at step {last + 1}" if last or (run_dir / "steps.jsonl").exists() else "before the first step"
        summary = summarize(config, algo, {"state": _partial_state(run_dir)}, "failed",
                            f"failed {where}: {type(err).__name__}: {err}")
    write_json(run_dir / "summary.json", summary)
    trackers.finish(summary)
    return summary


def _partial_state(run_dir: Path) -> RunState:
    """What the steps written before a failure say (steps and budget used)."""
    rows = read_jsonl(run_dir / "steps.jsonl")
    if not rows:
        return RunState()
    last = rows[-1]
    return RunState(step=last["step"], completions=last["completions"], tokens=last["tokens"],
                    train_s=last.get("train_s", 0.0))


def _last_step(run_dir: Path) -> int:
    rows = read_jsonl(run_dir / "steps.jsonl")
    return rows[-1]["step"] if rows else 0


def load_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    return read_json(path) if path.exists() else None
