"""What every arm kind that trains a Hugging Face policy on our task shares, whoever runs its step.

Our loop (harness.train.arm.Arm) and TRL's GRPOTrainer (harness.crosscheck.trl.arm.TRLArm) both start the
same way (the task, the warm-started policy, its tokenizer and chat template, the run's seed), evaluate
and save the same way, and close each step the same way: the counters added up and the step's record
made, in `close_step`, the one place a step record (harness.results.step_record.StepRecord) is built.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config.derive import make_task, train_settings
from harness.config.schema import Config
from harness.measure.live_tensors import step_peak
from harness.measure.probes import Probes, peak_flops
from harness.measure.step_meter import non_finite
from harness.results.io import atomic_folder
from harness.results.step_record import StepRecord
from harness.train import distributed as ranks_
from harness.train.arm_interface import ArmRunner, Progress
from harness.train.checkpoint import RunState
from harness.train.models import check_device, load_policy, resolve_model_path
from harness.train.rollout import Rollout, greedy_eval, use_chat_template


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: the same for every algorithm at the same (seed, step)."""
    return seed * 1_000_003 + step


@contextmanager
def eval_mode(model: torch.nn.Module):
    """The model in eval mode (no dropout) for a while, then back in the mode it was in."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


class PolicyArm(ArmRunner):
    """An arm that trains one policy on the config's task; subclasses say how a step runs (`train`)."""

    def __init__(self, config: Config, algo: str, run_dir: Path, progress: Progress | None = None,
                 distributed: bool = False, gradient_checkpointing: bool = False):
        """`distributed`: join the torchrun job this process belongs to (else one process)."""
        self.config, self.algo_name, self.run_dir = config, algo, Path(run_dir)
        check_device(config.run.device)
        self.ranks = ranks_.init(config.run.device) if distributed else ranks_.Ranks()
        self.device = ranks_.rank_device(config.run.device, self.ranks)
        self.progress = progress if self.ranks.main else None
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.task = make_task(config)
        self.model_path = resolve_model_path(config.model, self.task, progress=self._warm_start_progress,
                                             seed=config.run.seed)  # this seed's warm start
        seed_everything(config.run.seed)
        self.policy, self.tokenizer = load_policy(self.model_path, config.model.precision, self.device,
                                                  gradient_checkpointing)
        use_chat_template(self.tokenizer, config.task.chat_template)
        self.policy.eval()
        self.autocast_dtype = train_settings(config).autocast_dtype

    def _warm_start_progress(self, step: int, total: int, loss: float) -> None:
        if self.progress:
            self.progress("warm start", step, total, {"loss": loss})

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, Any]:
        """Greedy held-out figures on the test split, in eval mode."""
        examples = self.task.eval_examples()
        if self.progress:
            self.progress("eval", 0, len(examples), {})
        with eval_mode(self.policy):
            result = self.score_held_out(examples)
        if self.progress:
            self.progress("eval", len(examples), len(examples), {"acc": result["accuracy"]})
        return result

    def score_held_out(self, examples) -> dict[str, Any]:
        return greedy_eval(self.policy, self.tokenizer, self.task, examples, self.config.rollout.max_new_tokens,
                           autocast_dtype=self.autocast_dtype)

    def whole_policy(self) -> torch.nn.Module | None:
        """The whole policy on the main process (None elsewhere): what lm-eval scores."""
        return self.policy

    def lm_eval(self, label: str) -> dict[str, Any] | None:
        """lm-evaluation-harness scores (greedy pass@1, maj@k, pass@k) of the policy as it is now; the main
        process scores while the others wait."""
        run = self.config.run
        if not run.lm_eval:
            return None
        model = self.whole_policy()
        score = None
        if self.ranks.main:
            from harness.results.io import read_json_object, write_json
            from harness.train.lm_eval_bridge import score_policy, shared_base_score
            rollout = self.config.rollout
            shared = shared_base_score(self.run_dir, self.config, self.model_path) if label == "base" else None
            if shared is not None and shared.exists():  # another arm of this seed scored the same base model
                score = {**read_json_object(shared), "shared": str(shared.relative_to(self.run_dir.parent))}
            else:
                with eval_mode(model):
                    score = score_policy(model, self.tokenizer, self.task, k=run.lm_eval_k, seed=run.seed,
                                         max_new_tokens=rollout.max_new_tokens, work_dir=self.run_dir / "lm_eval",
                                         temperature=rollout.temperature, top_p=rollout.top_p, label=label,
                                         extra_tasks=list(run.eval_tasks), log=lambda line: None,
                                         progress=self.progress)
                if shared is not None:
                    write_json(shared, {**score, "scored_by": self.run_dir.name})
        return ranks_.gather(score, self.ranks)[0]

    # ------------------------------------------------------------ files

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights to save; None: the policy's own."""
        return None

    def save_final_model(self) -> None:
        """The trained policy and its tokenizer as a Hugging Face folder (for `harness eval`, lm_eval)."""
        weights = self.final_weights()
        if self.ranks.main:
            with atomic_folder(self.run_dir / "final_model") as staging:  # whole, and its files take the umask
                self.policy.save_pretrained(staging, state_dict=weights)
                self.tokenizer.save_pretrained(staging)
        ranks_.barrier(self.ranks)

    # ------------------------------------------------------------ steps

    def budget_left(self, state: RunState) -> bool:
        """Whether the budget (in completions, tokens or steps) allows another step."""
        budget = self.config.budget
        spent = {"completions": state.completions, "tokens": state.tokens, "steps": state.step}[budget.unit]
        return spent < budget.total and state.step < self.config.total_steps()

    def close_step(self, state: RunState, rollout: Rollout, stats: dict[str, float], times: dict[str, float],
                   step_time: float, live_peaks: dict[str, dict[str, int]], flops: float,
                   probes: Probes) -> StepRecord:
        """Add a finished step to the arm's counters and make its record, the whole job's figures: `rollout`
        holds every rank's rewards and counts (its batch this process's rows), `stats` are reduced over the
        ranks, `live_peaks` are the step's phase peaks when it was tracked."""
        state.step += 1
        state.completions += rollout.sampled
        state.tokens += rollout.generated_tokens
        state.train_s += step_time
        if live_peaks:
            state.tracked_steps += 1
            state.tracked_s += step_time
        for phase, seconds in times.items():
            state.phase_totals[phase] = state.phase_totals.get(phase, 0.0) + seconds
        for phase, peak in live_peaks.items():
            if peak["total"] > state.live_peaks.get(phase, {}).get("total", -1):
                state.live_peaks[phase] = peak
        rewards = rollout.rewards  # every completion sampled this step
        totals = torch.tensor([r.total for r in rewards])
        trained = rollout.batch
        sequence_tokens = int(trained.attention_mask.sum().item()) if trained is not None else 0
        device_peak = peak_flops(probes.device_name(), self.config.model.precision)
        peak, peak_phase = step_peak(live_peaks)
        return StepRecord(
            step=state.step, completions=state.completions, tokens=state.tokens,
            reward_mean=totals.mean().item(), reward_std=totals.std().item() if len(totals) > 1 else 0.0,
            reward_accuracy=sum(r.solved for r in rewards) / len(rewards),
            reward_correct=sum(r.correct for r in rewards) / len(rewards),
            reward_format=sum(r.format for r in rewards) / len(rewards),
            completion_len_mean=rollout.generated_tokens / rollout.sampled, step_s=step_time,
            gen_tokens_per_s=rollout.generated_tokens / max(times.get("generate", 0.0), 1e-9),
            train_tokens_per_s=sequence_tokens / max(times.get("policy_update", times.get("joint_update", 0.0)), 1e-9),
            samples_per_s=rollout.sampled / step_time, flops=flops,
            mfu=flops / step_time / device_peak if device_peak else None,
            losses=stats, phase_s=times, model_state=self.state_bytes(), live=live_peaks or None,
            live_peak=peak if live_peaks else None, live_peak_phase=peak_phase, measured=probes.step_memory(),
            train_s=state.train_s, wall=state.train_s + state.eval_s, diverged=non_finite(stats))
