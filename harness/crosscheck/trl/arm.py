"""The `trl-grpo` arm: TRL's `GRPOTrainer` trains the same model on the same prompts, probed like our arms.

A reader asks whether our GRPO behaves like the GRPO they know; TRL's trainer is the one most of them
use. This arm gives it everything our GRPO arm gets (model, tokenizer, task, prompts per step in the same
order, group size, sampling, learning rate, beta, optimizer steps per rollout, budget in completions, the
sampling seed of each step) and writes steps.jsonl and summary.json with the same keys, so the report,
the gate and the statistics read it like any arm. `harness.crosscheck.trl.settings` maps the config onto
`GRPOConfig` and lists, in words, what TRL does differently.

The probes reach inside TRL through a `TrainerCallback` here (step boundaries, logs, periodic
evaluation, the budget) and a trainer subclass in `harness.crosscheck.trl.trainer` (phases of the rollout).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trl
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig

from harness import UserError
from harness.algorithms.grpo import group_stats
from harness.config.derive import algorithm_options, make_task, train_settings
from harness.config.load import read_yaml
from harness.config.schema import Config
from harness.crosscheck.trl.settings import TRLSettings, trl_settings
from harness.crosscheck.trl.trainer import ProbedGRPOTrainer, TaskReward, TRLMeter, prompt_dataset
from harness.measure.live_tensors import LiveTensors
from harness.measure.probes import Probes, model_flops, model_state_bytes
from harness.measure.step_meter import StepMeter, is_tracked_step, non_finite, step_record, to_floats
from harness.results.io import append_jsonl, atomic_folder, write_yaml
from harness.train.arm import Diverged, seed_everything, step_seed
from harness.train.checkpoint import RunState
from harness.train.models import check_device, load_policy, resolve_model_path
from harness.train.rollout import Rollout, greedy_eval, use_chat_template

ALGO = "trl-grpo"
# TRL's figures of a rollout's optimizer steps (its log keys) under our names
TRL_STATS = {"loss": "loss", "grad_norm": "grad_norm", "entropy": "entropy", "kl": "kl",
             "clipfrac": "clip_ratio/region_mean"}


def trl_options(config: Config):
    """GRPO's options for the TRL arm: algorithms.grpo, with algorithms.trl-grpo over it.

    The cross-check takes our GRPO arm's beta, clip range and scaling unless told otherwise.
    """
    options = algorithm_options(config, ALGO)
    if options.kl_reward_coef:
        raise UserError(f"algorithms.{ALGO}.kl_reward_coef: TRL's GRPOTrainer has no KL term in the reward; set it "
                        "to 0 for this arm (its KL goes in the loss: beta)")
    return options


def record_settings(run_dir: Path, settings: TRLSettings, options) -> None:
    """The TRL settings and what they could not match, in the arm's config.yaml (`derived.trl`)."""
    path = run_dir / "config.yaml"
    saved = read_yaml(path) if path.exists() else {}
    derived = saved.setdefault("derived", {})
    derived["algorithm_options"] = dataclasses.asdict(options)
    derived["trl"] = {"version": trl.__version__, "grpo_config": settings.grpo_config,
                      "optimizer_steps_per_rollout": settings.optimizer_steps_per_rollout,
                      "not_matched": settings.not_matched}
    write_yaml(path, saved)


@dataclass
class _Batch:
    """The part of a RolloutBatch that `harness.measure.step_meter.step_record` reads, rebuilt from TRL's rollout."""

    scores: torch.Tensor  # [B]
    completion_mask: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, P + T] (prompt tokens first, then completion tokens; only sums are read)
    size: int


def trl_rollout(reward: TaskReward, prompt_lengths: list[int]) -> Rollout:
    """Our Rollout of the completions TRL sampled and the task scored, for the step record."""
    lengths = torch.tensor(reward.completion_lengths)
    completion_mask = (torch.arange(max(int(lengths.max()), 1)) < lengths.unsqueeze(1)).float()  # [B, T]
    prompts = torch.tensor(prompt_lengths)
    prompt_mask = (torch.arange(int(prompts.max())) < prompts.unsqueeze(1)).long()  # [B, P]
    batch = _Batch(scores=torch.tensor([r.total for r in reward.rewards]), completion_mask=completion_mask,
                   attention_mask=torch.cat([prompt_mask, completion_mask.long()], dim=1), size=len(reward.rewards))
    return Rollout(batch=batch, completions=reward.completions, rewards=reward.rewards)


class TRLArm:
    """The trl-grpo arm; `train()` returns what `harness.train.runner.summarize` reads, like `runner.Arm.train`."""

    def __init__(self, config: Config, algo: str, run_dir: Path, progress=None):
        self.config, self.algo_name, self.run_dir, self.progress = config, algo, Path(run_dir), progress
        if config.world_size > 1:
            raise UserError(f"{ALGO} runs in one process (TRL's own multi-process launch is not wired here); "
                            "drop --nproc-per-node / --nnodes for this arm")
        check_device(config.run.device)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.task = make_task(config)
        self.model_path = resolve_model_path(config.model, self.task, progress=self._warm_start_progress)
        seed_everything(config.run.seed)
        # gradient checkpointing is TRL's to switch on (GRPOConfig.gradient_checkpointing)
        self.policy, self.tokenizer = load_policy(self.model_path, config.model.precision, config.run.device)
        self.policy.eval()
        use_chat_template(self.tokenizer, config.task.chat_template)
        self.on_step = lambda record: None  # experiment trackers (harness.results.trackers), set by the runner
        self.autocast_dtype = train_settings(config).autocast_dtype
        self.options = trl_options(config)
        self.settings = trl_settings(config, self.options)
        record_settings(self.run_dir, self.settings, self.options)
        self.examples, self.dataset = prompt_dataset(self.task, config.prompts_per_step, config.total_steps())
        self.reward = TaskReward(self.task, self.examples, self.tokenizer.eos_token_id)
        self.parameter_count = sum(p.numel() for p in self.policy.parameters())

    def _warm_start_progress(self, step: int, total: int, loss: float) -> None:
        if self.progress:
            self.progress("warm start", step, total, {"loss": loss})

    def evaluate(self) -> dict[str, float]:
        """Greedy held-out figures through our arms' function, in eval mode (TRL leaves the model training)."""
        examples = self.task.eval_examples()
        if self.progress:
            self.progress("eval", 0, len(examples), {})
        training = self.policy.training
        self.policy.eval()
        try:
            result = greedy_eval(self.policy, self.tokenizer, self.task, examples, self.config.rollout.max_new_tokens,
                                 autocast_dtype=self.autocast_dtype)
        finally:
            self.policy.train(training)
        if self.progress:
            self.progress("eval", len(examples), len(examples), {"acc": result["accuracy"]})
        return result

    def lm_eval(self, label: str) -> dict[str, Any] | None:
        run = self.config.run
        if not run.lm_eval:
            return None
        from harness.train.lm_eval_bridge import score_policy
        extra = [name.strip() for name in run.eval_tasks.split(",") if name.strip()]
        training = self.policy.training
        self.policy.eval()
        try:
            return score_policy(self.policy, self.tokenizer, self.task, k=run.lm_eval_k, seed=run.seed,
                                max_new_tokens=self.config.rollout.max_new_tokens, work_dir=self.run_dir / "lm_eval",
                                temperature=self.config.rollout.temperature, top_p=self.config.rollout.top_p,
                                label=label, extra_tasks=extra, log=lambda line: None, progress=self.progress)
        finally:
            self.policy.train(training)

    def save_final_model(self) -> None:
        with atomic_folder(self.run_dir / "final_model") as staging:  # whole, and its files take the umask
            self.policy.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)

    def train(self, resume: bool = False, probes_enabled: bool = True) -> dict[str, Any]:
        """Train to the budget. TRL's arm keeps no checkpoint of its own: `resume` trains it again from the start."""
        (self.run_dir / "steps.jsonl").unlink(missing_ok=True)
        state = RunState(base_eval=self.evaluate(), base_lm_eval=self.lm_eval("base"))
        probes = Probes(self.config.run.device, enabled=probes_enabled)
        callback = HarnessCallback(self, state, probes, probes_enabled)
        args = GRPOConfig(output_dir=str(self.run_dir / "trl"), **self.settings.grpo_config)
        trainer = ProbedGRPOTrainer(model=self.policy, reward_funcs=self.reward, args=args,
                                    train_dataset=self.dataset, processing_class=self.tokenizer, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # our progress bar and steps.jsonl say what it would print
        trainer.meter = callback.meter
        trainer.eos_token_ids = [self.tokenizer.eos_token_id]  # our sampler stops at the tokenizer's EOS only
        trainer.generation_config.eos_token_id = self.tokenizer.eos_token_id
        callback.trainer = trainer
        with probes, warnings.catch_warnings():
            # TRL 1.16 calls transformers 5's deprecated gradient_checkpointing names on every rollout
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            trainer.train()
        if callback.diverged:
            raise Diverged(f"diverged at step {state.step}: {callback.diverged}")
        self.policy.eval()
        final_eval, final_lm_eval = self.evaluate(), self.lm_eval("final")
        self.save_final_model()
        shutil.rmtree(self.run_dir / "trl", ignore_errors=True)  # TRL's output_dir: nothing of ours in it
        return {"state": state, "final_eval": final_eval, "final_lm_eval": final_lm_eval,
                "state_bytes": callback.state_bytes(), "probes": probes.summary(), "device_name": probes.device_name()}


class HarnessCallback(TrainerCallback):
    """Step boundaries, records, periodic evaluation and the budget, from TRL's Trainer loop.

    One of our steps (a rollout) is `optimizer_steps_per_rollout` of the Trainer's: it begins at the
    first one's on_step_begin (where the step's sampling seed is set, before TRL generates) and is
    recorded at the last one's on_log (after TRL has logged its loss, KL and entropy).
    """

    def __init__(self, arm: TRLArm, state: RunState, probes: Probes, probes_enabled: bool):
        self.arm, self.state, self.probes, self.trainer = arm, state, probes, None
        self.live_enabled = probes_enabled and arm.config.run.memory_every > 0
        self.meter = TRLMeter(StepMeter(probes, None))
        self.per_rollout = arm.settings.optimizer_steps_per_rollout
        self.logs: list[dict[str, float]] = []
        self.step_start = self.step_time = 0.0
        self.diverged: str | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # the optimizer exists from here on; TRL made the reference model when it was built
        if self.live_enabled:
            frozen = [self.trainer.ref_model] if self.trainer.ref_model is not None else []
            self.meter.meter.live = LiveTensors([model], frozen, [optimizer])

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.per_rollout == 0:  # a rollout starts: the same seed as our arms' step
            step = state.global_step // self.per_rollout
            seed_everything(step_seed(self.arm.config.run.seed, step))
            self.logs = []
            self.step_start = time.perf_counter()
            self.meter.begin_step(is_tracked_step(step, self.arm.config.run.memory_every, self.arm.config.total_steps()))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.per_rollout == 0:
            self.meter.end_step()
            self.step_time = time.perf_counter() - self.step_start

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "train_runtime" in (logs or {}):  # the Trainer's closing summary, not a step
            return
        self.logs.append(dict(logs or {}))
        if state.global_step % self.per_rollout or state.global_step // self.per_rollout == self.state.step:
            return
        record = self.step_record()
        config = self.arm.config
        if config.run.eval_every and self.state.step % config.run.eval_every == 0:
            started = time.perf_counter()
            record.update({f"eval/{k}": v for k, v in self.arm.evaluate().items() if k != "per_prompt"})
            record["time/eval"] = time.perf_counter() - started
            self.state.eval_s += record["time/eval"]
        append_jsonl(self.arm.run_dir / "steps.jsonl", record)
        self.arm.on_step(record)
        if self.arm.progress:
            self.arm.progress("train", self.state.step, config.total_steps(),
                              {"reward": record["reward/mean"], "acc": record["reward/accuracy"]})
        if record.get("diverged"):
            self.diverged = record["diverged"]
        if self.diverged or not self.budget_left():
            control.should_training_stop = True

    def budget_left(self) -> bool:
        budget, state = self.arm.config.budget, self.state
        spent = {"completions": state.completions, "tokens": state.tokens, "steps": state.step}[budget.unit]
        return spent < budget.total

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """Arithmetic: bytes of parameters, gradients and optimizer state, as our arms count them."""
        trainer = self.trainer
        frozen = {"reference": trainer.ref_model} if trainer.ref_model is not None else {}
        return model_state_bytes({"policy": trainer.model}, {"policy": trainer.optimizer}, frozen)

    def trl_stats(self) -> dict[str, float]:
        """TRL's logged figures, each the mean over the rollout's optimizer steps that logged it."""
        out = {}
        for ours, theirs in TRL_STATS.items():
            values = [log[theirs] for log in self.logs if log.get(theirs) is not None]
            if values:
                out[ours] = sum(values) / len(values)
        return out

    def step_flops(self, sequence_tokens: int) -> float:
        """Arithmetic, as our arms count it, with the passes TRL runs: generate, old log-probs only when
        it needs them, the reference's when beta > 0, then forward and backward per epoch."""
        settings = self.arm.settings.grpo_config
        old_logps = settings["gradient_accumulation_steps"] % (settings["steps_per_generation"] * settings["num_iterations"]) != 0
        passes = 1 + old_logps + (settings["beta"] != 0.0)
        return (model_flops(self.arm.parameter_count, sequence_tokens, backward=False) * passes
                + model_flops(self.arm.parameter_count, sequence_tokens * self.arm.config.optim.epochs, backward=True))

    def step_record(self) -> dict[str, Any]:
        arm, state, config = self.arm, self.state, self.arm.config
        times = self.meter.take_step_times()
        live_peaks = self.meter.meter.tracked_peaks
        rollout = trl_rollout(arm.reward, self.trainer.prompt_lengths)
        batch = rollout.batch
        stats = {**self.trl_stats(), **to_floats(group_stats(batch.scores, config.rollout.samples_per_prompt))}
        state.step += 1
        state.completions += rollout.sampled
        state.tokens += rollout.generated_tokens
        state.train_s += self.step_time
        if live_peaks:
            state.tracked_steps += 1
            state.tracked_s += self.step_time
        for phase, seconds in times.items():
            state.phase_totals[phase] = state.phase_totals.get(phase, 0.0) + seconds
        for phase, peak in live_peaks.items():
            if peak["total"] > state.live_peaks.get(phase, {}).get("total", -1):
                state.live_peaks[phase] = peak
        flops = self.step_flops(int(batch.attention_mask.sum().item()))
        record = step_record(state.step, state, rollout, stats, times, self.step_time, flops,
                             self.probes.device_name(), config.model.precision, self.state_bytes(), live_peaks,
                             self.probes.step_memory())
        record["train_s"], record["wall"] = state.train_s, state.train_s + state.eval_s
        problem = non_finite(stats)
        if problem:
            record["diverged"] = problem
        return record
