"""One arm while it trains: its models, its step and its loop.

A step: sample and score (the shared rollout), the sampler's and the reference's log-probs, the
critic's values where the algorithm has a critic, advantages, then the algorithm's update; every
phase is timed, and on tracked steps the peak of live tensors is recorded per phase.

Under torchrun each rank runs an Arm over its share of the step (its sampling slices); rank 0 writes
the files. A single process is the same code with one rank.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch

from harness.algorithms import get_algorithm
from harness.algorithms.adapters import AdaptersOff, is_lora, shares_policy
from harness.algorithms.batch import TrainSettings
from harness.algorithms.ops import all_sum
from harness.config.derive import algorithm_options, train_settings
from harness.config.schema import Config
from harness.measure.flops import matmul_sizes, phase_flops
from harness.measure.live_tensors import LiveTensors
from harness.measure.probes import Probes, model_state_bytes
from harness.measure.step_meter import StepMeter, is_tracked_step, step_flops, to_floats
from harness.results.io import checkpoint_file, read_jsonl, rewrite_jsonl
from harness.results.step_record import StepRecord
from harness.train import distributed as ranks_
from harness.train.arm_interface import Progress, StepLog
from harness.train.checkpoint import RunState, load_checkpoint, save_checkpoint
from harness.train.lora import with_lora
from harness.train.models import WEIGHT_DTYPES, frozen_copy, load_policy
from harness.train.policy_arm import PolicyArm, seed_everything, step_seed
from harness.train.rollout import Rollout, concat_batches, encode_prompts, generate, generate_with_spread, greedy_eval

# Dynamic sampling refills a step's batch from prompts drawn at these step indices and beyond: far past
# any RL step and past the warm start's (10 million), so no arm's own prompts are reused.
REFILL_STEPS = 20_000_000


def slice_seed(seed: int, step: int, slice_index: int) -> int:
    """The sampling seed of one slice of a step (slice 0 keeps the step's seed)."""
    return step_seed(seed, step) + slice_index * 100_003_001


def injected_fault(algo: str, step: int) -> None:
    """Test hook: HARNESS_INJECT_FAULT=ALGO:STEP:oom|error makes that arm fail at that step."""
    spec = os.environ.get("HARNESS_INJECT_FAULT", "")
    if spec.count(":") == 2:
        target, at, kind = spec.split(":")
        if target == algo and int(at) == step:
            if kind == "oom":
                raise torch.OutOfMemoryError("injected: tried to allocate 1.00 GiB")
            raise RuntimeError("injected failure")


def rank_settings(config: Config, world: int, rank: int) -> TrainSettings:
    """The shared loop's settings on one process of `world`: its share of the step's sampling slices."""
    per_rank = config.sampling_slices(world) // world
    return dataclasses.replace(train_settings(config), slices=per_rank, first_slice=rank * per_rank)


def arm_models(config: Config, algo: str, policy: torch.nn.Module, settings: TrainSettings):
    """(algorithm, reference): what an arm trains `policy` with, built from the config. `harness estimate`
    builds the same objects around a policy on the meta device. Under LoRA (`policy` a peft model) the
    reference is the policy's base with its adapters off, not a copy."""
    algorithm = get_algorithm(algo)(policy, algorithm_options(config, algo), settings, seed=config.run.seed)
    if is_lora(policy):
        return algorithm, AdaptersOff(policy) if algorithm.needs.reference else None
    # A frozen reference is stored in the compute dtype: bf16 under bf16-mixed (2 bytes per parameter).
    reference_dtype = torch.bfloat16 if config.model.precision != "fp32" else WEIGHT_DTYPES["fp32"]
    reference = frozen_copy(policy, reference_dtype) if algorithm.needs.reference else None
    return algorithm, reference


def learn(algorithm, batch, meter) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The algorithm's part of a step on a scored batch with its log-probs: the critic's values, the
    advantages, then the update; (advantage statistics, update statistics), this process's, as 0-dim
    tensors. `harness estimate` runs it on fake tensors."""
    meter.retag_rollout(batch)
    if algorithm.needs.critic:
        with meter.phase("values"):
            algorithm.compute_values(batch)
    with meter.phase("advantages"):
        prepared = algorithm.prepare(batch)
    meter.retag_rollout(batch)
    return prepared, algorithm.update(batch, meter)


def combine(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout of the slices a process sampled."""
    if len(rollouts) == 1:
        return rollouts[0]
    batches = [r.batch for r in rollouts if r.batch is not None]
    return Rollout(batch=concat_batches(batches, pad_id) if batches else None,
                   completions=[t for r in rollouts for t in r.completions],
                   rewards=[x for r in rollouts for x in r.rewards], sampled=sum(r.sampled for r in rollouts),
                   generated_tokens=sum(r.generated_tokens for r in rollouts), rounds=max(r.rounds for r in rollouts))


class Arm(PolicyArm):
    """Our loop: everything one arm holds while it trains one of our algorithms."""

    def __init__(self, config: Config, algo: str, run_dir: Path, progress: Progress | None = None):
        super().__init__(config, algo, run_dir, progress, distributed=True,
                         gradient_checkpointing=config.model.gradient_checkpointing)
        self.policy = with_lora(self.policy, config.model.lora)
        self.settings = rank_settings(config, self.ranks.world, self.ranks.rank)
        self.algorithm, self.reference = arm_models(config, algo, self.policy, self.settings)
        self.model_sizes = {name: sum(p.numel() for p in model.parameters())
                            for name, model in self.algorithm.trained_models().items()}
        self.matmul_sizes = {name: matmul_sizes(model) for name, model in self.algorithm.trained_models().items()}
        self.sharded = False
        self._tracked_shape: tuple[int, int] | None = None

    def tracked_shape(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) that live-tensor tracked steps are padded to, so that their peaks
        depend on the configuration alone: the longest prompt of the task's held-out and validation splits,
        tokenized as the rollout does, and rollout.max_new_tokens. A training prompt longer than that widens its
        own step (the step's record says so: mem/live/shape)."""
        if self._tracked_shape is None:
            examples = self.task.eval_examples() + list(getattr(self.task, "validation_examples", list)())
            encoded = encode_prompts(self.tokenizer, [e.prompt for e in examples], "cpu")
            self._tracked_shape = (int(encoded["attention_mask"].sum(-1).max()), self.config.rollout.max_new_tokens)
        return self._tracked_shape

    def shard(self) -> None:
        """FSDP2 over every model of the arm (a no-op in a single process); optimizers rebuilt over the shards."""
        if self.sharded or not self.ranks.active:
            return
        precision, run = self.config.model.precision, self.config.run
        self.algorithm.shard_models(lambda name, model: ranks_.shard(model, precision, **ranks_.model_sharding(run, name)))
        if self.reference is not None and not shares_policy(self.reference):
            ranks_.shard(self.reference, precision, **ranks_.model_sharding(run, "reference"))
        self.sharded = True

    def frozen_models(self) -> dict[str, torch.nn.Module]:
        """Models that are held but not trained: the reference, unless it is the policy's base (LoRA)."""
        return {"reference": self.reference} if self.reference is not None and not shares_policy(self.reference) else {}

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """Arithmetic: bytes of parameters, gradients and optimizer state this process holds of each model."""
        return model_state_bytes(self.algorithm.trained_models(), self.algorithm.optimizers(), self.frozen_models())

    def checkpoint_path(self) -> Path:
        return checkpoint_file(self.run_dir)

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        return ranks_.full_state_dict(self.policy, self.ranks) if self.sharded else None

    # ------------------------------------------------------------ evaluation

    def score_held_out(self, examples) -> dict[str, Any]:
        """Under torchrun each rank scores a share and all get the whole."""
        if not self.sharded:
            return super().score_held_out(examples)
        share = -(-len(examples) // self.ranks.world)  # equal shares: every rank runs as many forwards
        mine = examples[self.ranks.rank * share:(self.ranks.rank + 1) * share]
        mine += mine[-1:] * (share - len(mine))  # pad the last share; the padding is not counted
        local = greedy_eval(self.policy, self.tokenizer, self.task, mine, self.config.rollout.max_new_tokens,
                            autocast_dtype=self.settings.autocast_dtype)
        flags = [f for part in ranks_.gather(local["per_prompt"], self.ranks) for f in part][:len(examples)]
        return self._eval_from_flags(flags, examples, ranks_.gather(local, self.ranks))

    @staticmethod
    def _eval_from_flags(flags: list[int], examples, parts: list[dict[str, Any]]) -> dict[str, Any]:
        count = len(examples)
        # score and format are means of the ranks' shares, each weighted by its size (padding aside)
        weights = [min(p["n"], max(count - i * parts[0]["n"], 0)) for i, p in enumerate(parts)]
        return {"accuracy": sum(flags) / count, "n": count, "per_prompt": flags,
                "score": sum(p["score"] * w for p, w in zip(parts, weights)) / count,
                "format": sum(p["format"] * w for p, w in zip(parts, weights)) / count}

    def whole_policy(self) -> torch.nn.Module | None:
        """Under torchrun rank 0 scores a whole copy gathered from the shards while the others wait."""
        if not self.sharded:
            return self.policy
        weights = ranks_.full_state_dict(self.policy, self.ranks)
        if not self.ranks.main:
            return None
        model, _ = load_policy(self.model_path, self.config.model.precision, self.device)
        model.load_state_dict(weights)
        return model

    # ------------------------------------------------------------ the loop

    def resume(self) -> RunState | None:
        """The checkpoint's counters with the models, optimizers and generators it saved; steps.jsonl cut back
        to its step. None without a checkpoint."""
        if not self.checkpoint_path().exists():
            return None
        self.shard()
        state = load_checkpoint(self.checkpoint_path(), self.algorithm, self.ranks)
        if self.ranks.main:
            steps_path = self.run_dir / "steps.jsonl"
            rewrite_jsonl(steps_path, [r for r in read_jsonl(steps_path) if r["step"] <= state.step])
        return state

    def train(self, state: RunState, probes: Probes, log: StepLog) -> None:
        config = self.config
        self.shard()
        live = None
        if probes.enabled and config.run.memory_every:
            live = LiveTensors(self.algorithm.trained_models().values(), self.frozen_models().values(),
                               self.algorithm.optimizers().values())
        meter = StepMeter(probes, live)
        while self.budget_left(state):
            log(state, self.train_step(state, meter, probes))
            if config.run.checkpoint_every and state.step % config.run.checkpoint_every == 0:
                save_checkpoint(self.checkpoint_path(), state, self.algorithm, self.ranks)

    def rollout_slice(self, step: int, slice_index: int, examples, meter: StepMeter) -> Rollout:
        """One sampling slice of the step: its prompts sampled with its own seed and scored."""
        config = self.config
        seed_everything(slice_seed(config.run.seed, step, slice_index))
        sampler_logps = self.algorithm.needs.sampler_logps
        pad_to = self.tracked_shape() if meter.tracked else None  # fixed shapes, for the measurement only
        if not self.algorithm.needs.filters_groups:
            return generate(self.policy, self.reference, self.tokenizer, self.task, examples, config.rollout,
                            self.settings, meter, sampler_logps, pad_to)
        rounds, count = self.algorithm.options.max_generation_rounds, len(examples)

        def prompts(round_index: int):
            # the first round draws the slice's own prompts, as every arm does; refills come from their own stream
            return examples if round_index == 0 else self.task.train_examples(
                REFILL_STEPS + (step * rounds + round_index) * config.sampling_slices(self.ranks.world) + slice_index,
                count)
        return generate_with_spread(self.policy, self.reference, self.tokenizer, self.task, prompts, count, rounds,
                                    config.rollout, self.settings, meter, sampler_logps, pad_to)

    def rollout(self, step: int, meter: StepMeter) -> Rollout:
        """This process's slices of the step's prompts, sampled and scored, with the sampler's and the
        reference's log-probs."""
        examples = self.task.train_examples(step, self.config.prompts_per_step)
        per_slice = len(examples) // self.config.sampling_slices(self.ranks.world)
        first = self.settings.first_slice
        return combine([self.rollout_slice(step, s, examples[s * per_slice:(s + 1) * per_slice], meter)
                        for s in range(first, first + self.settings.slices)], self.tokenizer.pad_token_id)

    def train_step(self, state: RunState, meter: StepMeter, probes: Probes) -> StepRecord:
        """One rollout batch and the algorithm's update on it; the step's record (the whole job's figures)."""
        config, algorithm = self.config, self.algorithm
        started = time.perf_counter()
        tracked = is_tracked_step(state.step, config.run.memory_every, config.total_steps())
        stats: dict[str, Any] = {}
        with meter.step(tracked):
            rollout = self.rollout(state.step, meter)
            batch = rollout.batch
            if batch is not None:  # None: dynamic sampling found no group with a reward spread
                injected_fault(self.algo_name, state.step + 1)
                prepared, updated = learn(algorithm, batch, meter)
                stats.update({k: all_sum(v) / self.ranks.world for k, v in prepared.items()})
                stats.update(updated)
        step_time = time.perf_counter() - started
        times = probes.take_step_times()
        stats = to_floats(stats)
        whole = self.whole_job(rollout)
        trained_tokens = int(all_sum(batch.attention_mask.sum() if batch is not None else torch.zeros(())).item())
        flops = step_flops(self.model_sizes, trained_tokens, config.optim.epochs, self.reference is not None)
        record = self.close_step(state, whole, stats, times, step_time, meter.tracked_peaks, flops, probes)
        completion_tokens = int(all_sum(batch.completion_mask.sum() if batch is not None else torch.zeros(())).item())
        record.phase_flops = phase_flops(self.matmul_sizes, trained_tokens, completion_tokens, config.optim.epochs,
                                         config.model.gradient_checkpointing, times)  # arithmetic: the report's MFU
        if meter.tracked_peaks and batch is not None:  # the fixed shape the tracked step was measured at
            record.live_shape = [batch.prompt_length, batch.completion_mask.shape[1]]
        if algorithm.needs.filters_groups:  # dynamic sampling: what was sampled, what was kept, in how many rounds
            record.rollout_sampled, record.rollout_rounds = whole.sampled, whole.rounds
            record.rollout_kept = int(all_sum(torch.tensor(batch.size if batch is not None else 0)))
        sampled = batch.old_logps if batch is not None else None
        logps_ok = sampled is None or bool(torch.isfinite(sampled[batch.completion_mask.bool()]).all())
        if record.diverged is None and not all(ranks_.gather(logps_ok, self.ranks)):
            record.diverged = "the sampler's log-probs hold a non-finite value"
        return record

    def whole_job(self, rollout: Rollout) -> Rollout:
        """The step's rewards and counts over every rank (the rollout itself in a single process)."""
        if not self.ranks.active:
            return rollout
        parts = ranks_.gather((rollout.rewards, rollout.sampled, rollout.generated_tokens, rollout.rounds), self.ranks)
        return Rollout(batch=rollout.batch, completions=[], rewards=[r for part in parts for r in part[0]],
                       sampled=sum(p[1] for p in parts), generated_tokens=sum(p[2] for p in parts),
                       rounds=max(p[3] for p in parts))
