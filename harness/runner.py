"""One (algorithm, seed) arm: the step loop, its records, checkpoints and resume.

`harness compare` starts each arm as its own process (`harness run --run-dir DIR`), so that one
arm's peak memory, allocator state or crash cannot touch another's figures.
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
from harness.config import Config, algorithm_options, make_task
from harness.io import append_jsonl, read_json, read_jsonl, rewrite_jsonl, write_json
from harness.models import check_device, frozen_copy, load_policy, resolve_model_path
from harness.probes import Probes, SavedActivations, model_flops, model_state_bytes, peak_flops, rollout_tensor_bytes
from harness.rollout import generate, greedy_eval, use_chat_template
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
        self.policy, self.tokenizer = load_policy(model_path, config.model.dtype, config.run.device)
        use_chat_template(self.tokenizer, config.task.chat_template)
        self.policy.eval()
        options = dataclasses.asdict(algorithm_options(config, algo))
        self.algorithm = get_algorithm(algo)(self.policy, None, config.optim, options, seed=config.run.seed)
        self.reference = frozen_copy(self.policy) if self.algorithm.needs_reference else None
        self.algorithm.reference = self.reference
        self.parameter_count = sum(p.numel() for p in self.policy.parameters())
        self.on_step = lambda record: None  # experiment trackers (harness.trackers)

    def _warm_start_progress(self, step: int, total: int, loss: float) -> None:
        if self.progress:
            self.progress("warm start", step, total, {"loss": loss})

    # ------------------------------------------------------------ checkpoints

    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint" / "state.pt"

    def save_checkpoint(self, step: int, counters: dict[str, Any]) -> None:
        state = {"step": step, "counters": counters,
                 "models": {k: m.state_dict() for k, m in self.algorithm.trained_models().items()},
                 "optimizers": {k: o.state_dict() for k, o in self.algorithm.optimizers().items()},
                 "generator": self.algorithm.generator.get_state(),
                 "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
        path = self.checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self) -> tuple[int, dict[str, Any]]:
        state = torch.load(self.checkpoint_path(), weights_only=False)
        for name, model in self.algorithm.trained_models().items():
            model.load_state_dict(state["models"][name])
        for name, optimizer in self.algorithm.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.algorithm.generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return state["step"], state["counters"]

    def save_final_model(self) -> None:
        """The trained policy and its tokenizer as a Hugging Face folder (for `harness eval`, lm_eval)."""
        folder = self.run_dir / "final_model"
        staging = self.run_dir / ".final_model.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.policy.save_pretrained(staging)
        self.tokenizer.save_pretrained(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)

    # ------------------------------------------------------------ the loop

    def evaluate(self) -> dict[str, float]:
        examples = self.task.eval_examples()
        if self.progress:
            self.progress("eval", 0, len(examples), {})
        result = greedy_eval(self.policy, self.tokenizer, self.task, examples, self.config.rollout.max_new_tokens)
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

    def budget_left(self, counters: dict[str, Any], step: int) -> bool:
        budget = self.config.budget
        spent = {"completions": counters["completions"], "tokens": counters["tokens"], "steps": step}[budget.unit]
        return spent < budget.total

    def train(self, resume: bool = False, probes_enabled: bool = True) -> dict[str, Any]:
        config, run_dir = self.config, self.run_dir
        steps_path = run_dir / "steps.jsonl"
        # Everything a resumed run must carry on from lives in counters (saved with each checkpoint).
        step, counters = 0, {"completions": 0, "tokens": 0, "wall": 0.0, "base_eval": None,
                             "phase_totals": {}, "exact_peaks": {"activations": 0, "kv_cache": 0, "logits": 0}}
        if resume and self.checkpoint_path().exists():
            step, counters = self.load_checkpoint()
            rewrite_jsonl(steps_path, [r for r in read_jsonl(steps_path) if r["step"] <= step])
        else:
            steps_path.unlink(missing_ok=True)
        if counters["base_eval"] is None:
            counters["base_eval"] = self.evaluate()
            counters["base_lm_eval"] = self.lm_eval("base")
        total_steps = config.total_steps()
        frozen = {"reference": self.reference} if self.reference is not None else {}
        activations = SavedActivations(list(self.algorithm.trained_models().values()))
        exact_peaks, phase_totals = counters["exact_peaks"], counters["phase_totals"]
        probes = Probes(config.run.device, enabled=probes_enabled)
        started = time.perf_counter() - counters["wall"]
        with probes:
            while step < total_steps and self.budget_left(counters, step):
                step_start = time.perf_counter()
                seed_everything(step_seed(config.run.seed, step))
                examples = self.task.train_examples(step, config.prompts_per_step)
                rollout = generate(self.policy, self.reference, self.tokenizer, self.task, examples,
                                   config.rollout, timer=probes)
                batch = rollout.batch
                with probes.phase("critic" if "critic" in self.algorithm.trained_models() else "advantages"):
                    prepare_stats = self.algorithm.prepare(batch)
                activations.new_step()
                self.algorithm.activation_probe = activations if probes_enabled else None
                with probes.phase("update"):
                    injected_fault(self.algo_name, step + 1)
                    update_stats = self.algorithm.update(batch)
                step_time = time.perf_counter() - step_start
                times = probes.take_step_times()
                for phase, seconds in times.items():
                    phase_totals[phase] = phase_totals.get(phase, 0.0) + seconds
                generated = int(batch.completion_mask.sum().item())
                counters["completions"] += batch.size
                counters["tokens"] += generated
                step += 1
                state_bytes = model_state_bytes(self.algorithm.trained_models(), self.algorithm.optimizers(), frozen)
                sequence_length = batch.input_ids.shape[1]
                rollout_bytes = rollout_tensor_bytes(self.policy.config, batch.size, sequence_length, self.policy.dtype)
                exact_peaks["activations"] = max(exact_peaks["activations"], activations.peak)
                for key, value in rollout_bytes.items():
                    exact_peaks[key] = max(exact_peaks[key], value)
                record = self.step_record(step, counters, rollout, prepare_stats, update_stats, times, step_time,
                                          state_bytes, activations.peak, rollout_bytes, probes)
                if config.run.eval_every and step % config.run.eval_every == 0:
                    record.update({f"eval/{k}": v for k, v in self.evaluate().items()})
                counters["wall"] = time.perf_counter() - started
                record["wall"] = counters["wall"]
                append_jsonl(steps_path, record)
                self.on_step(record)
                if config.run.checkpoint_every and step % config.run.checkpoint_every == 0:
                    self.save_checkpoint(step, counters)
                if self.progress:
                    self.progress("train", step, total_steps, {"reward": record["reward/mean"],
                                                               "acc": record["reward/accuracy"]})
        counters["wall"] = time.perf_counter() - started
        final_eval = self.evaluate()
        final_lm_eval = self.lm_eval("final")
        self.save_final_model()
        return {"steps": step, "counters": counters, "base_eval": counters["base_eval"], "final_eval": final_eval,
                "lm_eval": {"base": counters.get("base_lm_eval"), "final": final_lm_eval},
                "state_bytes": model_state_bytes(self.algorithm.trained_models(), self.algorithm.optimizers(), frozen),
                "exact_peaks": exact_peaks, "phase_totals": phase_totals, "probes": probes.summary(),
                "device_name": probes.device_name()}

    def step_record(self, step, counters, rollout, prepare_stats, update_stats, times, step_time,
                    state_bytes, activation_peak, rollout_bytes, probes) -> dict[str, Any]:
        batch, rewards = rollout.batch, rollout.rewards
        generated = int(batch.completion_mask.sum().item())
        trained_tokens = int(batch.attention_mask.sum().item()) * self.config.optim.epochs
        n_models = len(self.algorithm.trained_models())
        flops = (model_flops(self.parameter_count, int(batch.attention_mask.sum().item()), backward=False)
                 * (2 + (self.reference is not None) + (n_models > 1))  # generate + old logps + ref + critic values
                 + model_flops(self.parameter_count, trained_tokens, backward=True) * n_models)
        record: dict[str, Any] = {
            "step": step, "completions": counters["completions"], "tokens": counters["tokens"],
            "reward/mean": batch.scores.mean().item(), "reward/std": batch.scores.std().item(),
            "reward/accuracy": sum(r.solved for r in rewards) / len(rewards),
            "reward/correct": sum(r.correct for r in rewards) / len(rewards),
            "reward/format": sum(r.format for r in rewards) / len(rewards),
            "completion/len_mean": generated / batch.size,
            "time/step": step_time,
            "tput/gen_tokens_per_s": generated / max(times.get("generate", 0.0), 1e-9),
            "tput/train_tokens_per_s": trained_tokens / max(times.get("update", 0.0), 1e-9),
            "tput/samples_per_s": batch.size / step_time,
            "flops/step": flops,
        }
        peak = peak_flops(probes.device_name(), self.config.model.dtype)
        if peak:
            record["flops/mfu"] = flops / step_time / peak
        record.update({f"loss/{k}": v for k, v in {**prepare_stats, **update_stats}.items()})
        record.update({f"time/{k}": v for k, v in times.items()})
        for model, row in state_bytes.items():
            for category, value in row.items():
                record[f"mem/exact/{model}/{category}"] = value
        record["mem/exact/activations"] = activation_peak
        record.update({f"mem/exact/rollout/{k}": v for k, v in rollout_bytes.items()})
        record.update(probes.step_memory())
        return record


def summarize(config: Config, algo: str, result: dict[str, Any], status: str = "ok", error: str | None = None) -> dict[str, Any]:
    counters = result.get("counters", {})
    state = result.get("state_bytes", {})
    exact = result.get("exact_peaks", {})
    model_total = sum(row["total"] for row in state.values())
    wall = counters.get("wall", 0.0)
    steps = result.get("steps", 0)
    phase_totals = result.get("phase_totals", {})
    summary = {
        "algo": algo, "seed": config.run.seed, "task": config.task.name, "preset": config.preset,
        "model": config.model.name, "status": status, "error": error,
        "budget": {"unit": config.budget.unit, "total": config.budget.total,
                   "used": {"completions": counters.get("completions", 0), "tokens": counters.get("tokens", 0),
                            "steps": steps}},
        "steps": steps, "wall_s": wall,
        "eval": {"base": result.get("base_eval"), "final": result.get("final_eval"),
                 "lm_eval": result.get("lm_eval")},
        "mem": {"exact": {"models": state, "model_state_total": model_total,
                          "activations_peak": exact.get("activations"),
                          "rollout_peak": {k: exact.get(k) for k in ("kv_cache", "logits")},
                          "total": model_total + (exact.get("activations") or 0)},
                "measured": result.get("probes", {})},
        "time": {"total_s": wall, "per_step_s": wall / steps if steps else None,
                 "phases_s": phase_totals,
                 "phases_per_step_s": {k: v / steps for k, v in phase_totals.items()} if steps else {}},
        "tput": {"samples_per_s": counters.get("completions", 0) / wall if wall else None,
                 "gen_tokens_per_s": counters.get("tokens", 0) / phase_totals["generate"] if phase_totals.get("generate") else None},
    }
    return summary


def run_arm(config: Config, algo: str, run_dir: Path, resume: bool = False, progress=None,
            probes_enabled: bool = True) -> dict[str, Any]:
    """Train one arm and write its folder; a failure is recorded in summary.json, not lost."""
    from harness.io import write_yaml
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
        result = arm.train(resume=resume, probes_enabled=probes_enabled)
        summary = summarize(config, algo, result)
    except UserError:
        (run_dir / "summary.json").unlink(missing_ok=True)
        raise
    except torch.OutOfMemoryError as err:
        summary = summarize(config, algo, {"steps": _last_step(run_dir)}, "oom", f"out of memory at step {_last_step(run_dir) + 1}: {str(err).splitlines()[0]}")
    except Exception as err:  # recorded, so that the other arms of a comparison go on
        summary = summarize(config, algo, {"steps": _last_step(run_dir)}, "failed",
                            f"failed at step {_last_step(run_dir) + 1}: {type(err).__name__}: {err}")
    write_json(run_dir / "summary.json", summary)
    trackers.finish(summary)
    return summary


def _last_step(run_dir: Path) -> int:
    rows = read_jsonl(run_dir / "steps.jsonl")
    return rows[-1]["step"] if rows else 0


def load_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    return read_json(path) if path.exists() else None
