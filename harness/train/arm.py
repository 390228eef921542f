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
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.algorithms import get_algorithm
from harness.algorithms.batch import TrainSettings
from harness.algorithms.ops import all_sum
from harness.config.derive import algorithm_options, make_task, train_settings
from harness.config.schema import Config
from harness.measure.live_tensors import LiveTensors
from harness.measure.probes import Probes, model_state_bytes
from harness.measure.step_meter import StepMeter, is_tracked_step, non_finite, step_flops, step_record, to_floats
from harness.results.io import append_jsonl, atomic_folder, checkpoint_file, read_jsonl, rewrite_jsonl
from harness.train import distributed as ranks_
from harness.train.checkpoint import RunState, load_checkpoint, save_checkpoint
from harness.train.models import WEIGHT_DTYPES, check_device, frozen_copy, load_policy, resolve_model_path
from harness.train.rollout import Rollout, concat_batches, generate, generate_with_spread, greedy_eval, use_chat_template

# Dynamic sampling refills a step's batch from prompts drawn at these step indices and beyond: far past
# any RL step and past the warm start's (10 million), so no arm's own prompts are reused.
REFILL_STEPS = 20_000_000


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: the same for every algorithm at the same (seed, step)."""
    return seed * 1_000_003 + step


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
    builds the same objects around a policy on the meta device."""
    algorithm = get_algorithm(algo)(policy, algorithm_options(config, algo), settings, seed=config.run.seed)
    # A frozen reference is stored in the compute dtype: bf16 under bf16-mixed (2 bytes per parameter).
    reference_dtype = torch.bfloat16 if config.model.precision != "fp32" else WEIGHT_DTYPES["fp32"]
    reference = frozen_copy(policy, reference_dtype) if algorithm.needs_reference else None
    return algorithm, reference


def learn(algorithm, batch, meter) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The algorithm's part of a step on a scored batch with its log-probs: the critic's values, the
    advantages, then the update; (advantage statistics, update statistics), this process's, as 0-dim
    tensors. `harness estimate` runs it on fake tensors."""
    meter.retag_rollout(batch)
    if algorithm.uses_critic:
        with meter.phase("values"):
            algorithm.compute_values(batch)
    with meter.phase("advantages"):
        prepared = algorithm.prepare(batch)
    meter.retag_rollout(batch)
    return prepared, algorithm.update(batch, meter)


class Diverged(Exception):
    """A step produced a non-finite loss, gradient norm or log-prob."""


def combine(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout of the slices a process sampled."""
    if len(rollouts) == 1:
        return rollouts[0]
    batches = [r.batch for r in rollouts if r.batch is not None]
    return Rollout(batch=concat_batches(batches, pad_id) if batches else None,
                   completions=[t for r in rollouts for t in r.completions],
                   rewards=[x for r in rollouts for x in r.rewards], sampled=sum(r.sampled for r in rollouts),
                   generated_tokens=sum(r.generated_tokens for r in rollouts), rounds=max(r.rounds for r in rollouts))


class Arm:
    """Everything one arm holds while it trains."""

    def __init__(self, config: Config, algo: str, run_dir: Path, progress=None):
        self.config, self.algo_name, self.run_dir = config, algo, Path(run_dir)
        check_device(config.run.device)
        self.ranks = ranks_.init(config.run.device)
        self.device = ranks_.rank_device(config.run.device, self.ranks)
        self.progress = progress if self.ranks.main else None
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.task = make_task(config)
        self.model_path = resolve_model_path(config.model, self.task, progress=self._warm_start_progress)
        seed_everything(config.run.seed)
        self.policy, self.tokenizer = load_policy(self.model_path, config.model.precision, self.device,
                                                  config.model.gradient_checkpointing)
        use_chat_template(self.tokenizer, config.task.chat_template)
        self.policy.eval()
        self.settings = rank_settings(config, self.ranks.world, self.ranks.rank)
        self.algorithm, self.reference = arm_models(config, algo, self.policy, self.settings)
        self.model_sizes = {name: sum(p.numel() for p in model.parameters())
                            for name, model in self.algorithm.trained_models().items()}
        self.sharded = False
        self.on_step = lambda record: None  # experiment trackers (harness.results.trackers)

    def _warm_start_progress(self, step: int, total: int, loss: float) -> None:
        if self.progress:
            self.progress("warm start", step, total, {"loss": loss})

    def shard(self) -> None:
        """FSDP2 over every model of the arm (a no-op in a single process); optimizers rebuilt over the shards."""
        if self.sharded or not self.ranks.active:
            return
        precision, run = self.config.model.precision, self.config.run
        self.algorithm.shard_models(lambda name, model: ranks_.shard(
            model, precision, offload=run.offload_critic and name == "critic"))
        if self.reference is not None:
            ranks_.shard(self.reference, precision, offload=run.offload_reference)
        self.sharded = True

    def frozen_models(self) -> dict[str, torch.nn.Module]:
        return {"reference": self.reference} if self.reference is not None else {}

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """Arithmetic: bytes of parameters, gradients and optimizer state this process holds of each model."""
        return model_state_bytes(self.algorithm.trained_models(), self.algorithm.optimizers(), self.frozen_models())

    # ------------------------------------------------------------ files

    def checkpoint_path(self) -> Path:
        return checkpoint_file(self.run_dir)

    def save_final_model(self) -> None:
        """The trained policy and its tokenizer as a Hugging Face folder (for `harness eval`, lm_eval)."""
        weights = ranks_.full_state_dict(self.policy, self.ranks) if self.sharded else None
        if self.ranks.main:
            with atomic_folder(self.run_dir / "final_model") as staging:  # whole, and its files take the umask
                self.policy.save_pretrained(staging, state_dict=weights)
                self.tokenizer.save_pretrained(staging)
        ranks_.barrier(self.ranks)

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, Any]:
        """Greedy held-out figures on the test split; under torchrun each rank scores a share and all get the whole."""
        examples = self.task.eval_examples()
        if self.progress:
            self.progress("eval", 0, len(examples), {})
        if self.sharded:
            share = -(-len(examples) // self.ranks.world)  # equal shares: every rank runs as many forwards
            mine = examples[self.ranks.rank * share:(self.ranks.rank + 1) * share]
            mine += mine[-1:] * (share - len(mine))  # pad the last share; the padding is not counted
            local = greedy_eval(self.policy, self.tokenizer, self.task, mine, self.config.rollout.max_new_tokens,
                                autocast_dtype=self.settings.autocast_dtype)
            flags = [f for part in ranks_.gather(local["per_prompt"], self.ranks) for f in part][:len(examples)]
            result = self._eval_from_flags(flags, examples, ranks_.gather(local, self.ranks))
        else:
            result = greedy_eval(self.policy, self.tokenizer, self.task, examples, self.config.rollout.max_new_tokens,
                                 autocast_dtype=self.settings.autocast_dtype)
        if self.progress:
            self.progress("eval", len(examples), len(examples), {"acc": result["accuracy"]})
        return result

    @staticmethod
    def _eval_from_flags(flags: list[int], examples, parts: list[dict[str, Any]]) -> dict[str, Any]:
        count = len(examples)
        # score and format are means of the ranks' shares, each weighted by its size (padding aside)
        weights = [min(p["n"], max(count - i * parts[0]["n"], 0)) for i, p in enumerate(parts)]
        return {"accuracy": sum(flags) / count, "n": count, "per_prompt": flags,
                "score": sum(p["score"] * w for p, w in zip(parts, weights)) / count,
                "format": sum(p["format"] * w for p, w in zip(parts, weights)) / count}

    def lm_eval(self, label: str) -> dict[str, Any] | None:
        """lm-evaluation-harness scores (greedy pass@1, maj@k, pass@k) of the policy as it is now; under
        torchrun rank 0 scores a whole copy gathered from the shards while the others wait."""
        run = self.config.run
        if not run.lm_eval:
            return None
        weights = ranks_.full_state_dict(self.policy, self.ranks) if self.sharded else None
        score = None
        if self.ranks.main:
            from harness.train.lm_eval_bridge import score_policy
            model = self.policy
            if weights is not None:
                model, _ = load_policy(self.model_path, self.config.model.precision, self.device)
                model.load_state_dict(weights)
            extra = [name.strip() for name in run.eval_tasks.split(",") if name.strip()]
            score = score_policy(model, self.tokenizer, self.task, k=run.lm_eval_k, seed=run.seed,
                                 max_new_tokens=self.config.rollout.max_new_tokens, work_dir=self.run_dir / "lm_eval",
                                 temperature=self.config.rollout.temperature, top_p=self.config.rollout.top_p,
                                 label=label, extra_tasks=extra, log=lambda line: None, progress=self.progress)
        return ranks_.gather(score, self.ranks)[0]

    # ------------------------------------------------------------ the loop

    def budget_left(self, state: RunState) -> bool:
        budget = self.config.budget
        spent = {"completions": state.completions, "tokens": state.tokens, "steps": state.step}[budget.unit]
        return spent < budget.total and state.step < self.config.total_steps()

    def train(self, resume: bool = False, probes_enabled: bool = True) -> dict[str, Any]:
        config, steps_path, main = self.config, self.run_dir / "steps.jsonl", self.ranks.main
        state = RunState()
        resuming = resume and self.checkpoint_path().exists()
        if not resuming:
            state.base_eval = self.evaluate()
            state.base_lm_eval = self.lm_eval("base")
        self.shard()
        if resuming:
            state = load_checkpoint(self.checkpoint_path(), self.algorithm, self.ranks)
            if main:
                rewrite_jsonl(steps_path, [r for r in read_jsonl(steps_path) if r["step"] <= state.step])
        elif main:
            steps_path.unlink(missing_ok=True)
        live = None
        if probes_enabled and config.run.memory_every:
            live = LiveTensors(self.algorithm.trained_models().values(), self.frozen_models().values(),
                               self.algorithm.optimizers().values())
        probes = Probes(self.device, enabled=probes_enabled)
        meter = StepMeter(probes, live)
        with probes:
            while self.budget_left(state):
                record = self.train_step(state, meter, probes)
                if config.run.eval_every and state.step % config.run.eval_every == 0:
                    started = time.perf_counter()
                    record.update({f"eval/{k}": v for k, v in self.evaluate().items() if k != "per_prompt"})
                    record["time/eval"] = time.perf_counter() - started
                    state.eval_s += record["time/eval"]
                if main:
                    append_jsonl(steps_path, record)
                    self.on_step(record)
                if record.get("diverged"):
                    raise Diverged(f"diverged at step {state.step}: {record['diverged']}")
                if config.run.checkpoint_every and state.step % config.run.checkpoint_every == 0:
                    save_checkpoint(self.checkpoint_path(), state, self.algorithm, self.ranks)
                if self.progress:
                    self.progress("train", state.step, config.total_steps(),
                                  {"reward": record["reward/mean"], "acc": record["reward/accuracy"]})
        final_eval = self.evaluate()
        final_lm_eval = self.lm_eval("final")
        self.save_final_model()
        per_rank = ranks_.gather({"live": state.live_peaks, "state_bytes": self.state_bytes(),
                                  "probes": probes.summary()}, self.ranks)
        return {"state": state, "final_eval": final_eval, "final_lm_eval": final_lm_eval,
                "state_bytes": self.state_bytes(), "probes": probes.summary(), "device_name": probes.device_name(),
                "per_rank": per_rank if self.ranks.active else None, "world_size": self.ranks.world}

    def rollout_slice(self, step: int, slice_index: int, examples, meter: StepMeter) -> Rollout:
        """One sampling slice of the step: its prompts sampled with its own seed and scored."""
        config = self.config
        seed_everything(slice_seed(config.run.seed, step, slice_index))
        sampler_logps = self.algorithm.needs_sampler_logps
        if not self.algorithm.filters_groups:
            return generate(self.policy, self.reference, self.tokenizer, self.task, examples, config.rollout,
                            self.settings, meter, sampler_logps)
        rounds, count = self.algorithm.options.max_generation_rounds, len(examples)

        def prompts(round_index: int):
            # the first round draws the slice's own prompts, as every arm does; refills come from their own stream
            return examples if round_index == 0 else self.task.train_examples(
                REFILL_STEPS + (step * rounds + round_index) * config.sampling_slices(self.ranks.world) + slice_index,
                count)
        return generate_with_spread(self.policy, self.reference, self.tokenizer, self.task, prompts, count, rounds,
                                    config.rollout, self.settings, meter, sampler_logps)

    def rollout(self, step: int, meter: StepMeter) -> Rollout:
        """This process's slices of the step's prompts, sampled and scored, with the sampler's and the
        reference's log-probs."""
        examples = self.task.train_examples(step, self.config.prompts_per_step)
        per_slice = len(examples) // self.config.sampling_slices(self.ranks.world)
        first = self.settings.first_slice
        return combine([self.rollout_slice(step, s, examples[s * per_slice:(s + 1) * per_slice], meter)
                        for s in range(first, first + self.settings.slices)], self.tokenizer.pad_token_id)

    def train_step(self, state: RunState, meter: StepMeter, probes: Probes) -> dict[str, Any]:
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
        state.step += 1
        state.completions += whole.sampled
        state.tokens += whole.generated_tokens
        state.train_s += step_time
        if meter.tracked_peaks:
            state.tracked_steps += 1
            state.tracked_s += step_time
        for phase, seconds in times.items():
            state.phase_totals[phase] = state.phase_totals.get(phase, 0.0) + seconds
        for phase, peak in meter.tracked_peaks.items():
            if peak["total"] > state.live_peaks.get(phase, {}).get("total", -1):
                state.live_peaks[phase] = peak
        trained_tokens = int(all_sum(batch.attention_mask.sum() if batch is not None else torch.zeros(())).item())
        flops = step_flops(self.model_sizes, trained_tokens, config.optim.epochs, self.reference is not None)
        record = step_record(state.step, state, whole, stats, times, step_time, flops, probes.device_name(),
                             config.model.precision, self.state_bytes(), meter.tracked_peaks, probes.step_memory())
        record["train_s"], record["wall"] = state.train_s, state.train_s + state.eval_s
        if algorithm.filters_groups:  # dynamic sampling: what was sampled, what was kept, in how many rounds
            record.update({"rollout/sampled": whole.sampled, "rollout/rounds": whole.rounds,
                           "rollout/kept": int(all_sum(torch.tensor(batch.size if batch is not None else 0)))})
        sampled = batch.old_logps if batch is not None else None
        logps_ok = sampled is None or bool(torch.isfinite(sampled[batch.completion_mask.bool()]).all())
        problem = non_finite(stats) or (None if all(ranks_.gather(logps_ok, self.ranks))
                                        else "the sampler's log-probs hold a non-finite value")
        if problem:
            record["diverged"] = problem
        return record

    def whole_job(self, rollout: Rollout) -> Rollout:
        """The step's rewards and counts over every rank (the rollout itself in a single process)."""
        if not self.ranks.active:
            return rollout
        parts = ranks_.gather((rollout.rewards, rollout.sampled, rollout.generated_tokens, rollout.rounds), self.ranks)
        return Rollout(batch=rollout.batch, completions=[], rewards=[r for part in parts for r in part[0]],
                       sampled=sum(p[1] for p in parts), generated_tokens=sum(p[2] for p in parts),
                       rounds=max(p[3] for p in parts))
