"""The config's schema: one pydantic model per section, every field typed, bounded and described, and the checks
of the fields that bound each other.

Values are read by the one rule of `harness.algorithms.options.coerce`, the same for every algorithm's options;
a bad value is one line naming the dotted field. The resolved config (derived fields included) is saved with
each run as config.yaml; `harness config` lists every field.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PlainSerializer, field_validator, model_validator

from harness import UserError
from harness.algorithms.options import StrictModel
from harness.config.choices import (TRACKERS, BudgetUnit, ChatTemplate, DeviceMemory, EvalSplit, IntervalMethod,
                                    Precision, RolloutBackend, RolloutEngine, Sharding)

TINY_POSITIONS = 64  # the tiny model's context: one position per character of prompt and completion
# numpy seeds each step with seed * STEP_SEED_STRIDE + step (harness.train.runner.step_seed), below 2**32
STEP_SEED_STRIDE = 1_000_003
SEED_LIMIT = 2**32 // STEP_SEED_STRIDE - 1


def comma_list(empty: str):
    """A list[str] field that config.yaml saves as comma-separated text, as the command line writes it (and as
    config files written before it became a list hold it); the empty list is saved as `empty`."""
    return Annotated[list[str], PlainSerializer(lambda names: ",".join(names) or empty, return_type=str)]


Names = comma_list("")  # run.eval_tasks: saved as '' when empty
NamesOrNone = comma_list("none")  # saved as 'none' when empty


class LoraSettings(StrictModel):
    where = "model.lora."
    rank: int = Field(0, ge=0, description="LoRA rank (peft); 0: full fine-tuning. With a rank the policy (and the "
                                           "critic) train adapters on a frozen base, and the reference is that base.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha: the adapters' output is scaled by alpha / rank "
                                                 "(verl's lora_alpha).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: str = Field("all-linear", description="Layers that get adapters: all-linear (every linear layer "
                                                          "but the LM head, as verl) or comma-separated module names.")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


# How often (in supervised steps) the tiny model's warm start reads validation accuracy past warm_start_steps.
WARM_START_CHECK_EVERY = 10


class ModelConfig(StrictModel):
    where = "model."
    name: str = Field("tiny", description='"tiny" builds the embedded model; anything else is a Hub name or a '
                                          "local path.")
    hidden_size: int = Field(128, ge=1, description="Tiny model: width.")
    num_layers: int = Field(4, ge=1, description="Tiny model: decoder layers.")
    num_heads: int = Field(4, ge=1, description="Tiny model: attention heads.")
    warm_start_steps: int = Field(300, ge=0, description="Tiny model: supervised steps on generated (question, "
                                                         "answer) pairs.")
    warm_start_batch: int = Field(256, ge=1, description="Tiny model: sequences per supervised step.")
    warm_start_lr: float = Field(2e-3, gt=0, description="Tiny model: AdamW learning rate of the warm start.")
    warm_start_until: float | None = Field(None, gt=0, le=1, description=(
        f"Tiny model: after warm_start_steps, go on {WARM_START_CHECK_EVERY} steps at a time until greedy accuracy on "
        "the validation split reaches this (up to warm_start_max_steps), so that every seed starts from a comparable "
        "model; null: stop at warm_start_steps."))
    warm_start_max_steps: int = Field(600, ge=1, description="Tiny model: where warm_start_until gives up.")
    max_positions: int = Field(TINY_POSITIONS, ge=1, description="Tiny model: context, one position per character "
                                                                 "(rotary embeddings: no weights).")
    vocab_pad_to: int = Field(0, ge=0, description="Tiny model: pad the embedding and LM head to this many rows "
                                                   "(151936: Qwen2.5's); 0: none.")
    precision: Precision = Field("fp32", description="fp32, bf16-mixed (bf16 compute, fp32 weights and AdamW "
                                                     "state) or bf16 (pure).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (transformers' "
                                                            "checkpointing).")
    logprob_chunk: int = Field(0, ge=0, description="The LM head in chunks of this many positions for log-probs, "
                                                    "recomputed in backward; 0: off.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters (pip install -e '.[lora]').")


class TaskConfig(StrictModel):
    where = "task."
    name: str = Field("chain_sum", description="An offline reasoning-gym task (see `harness tasks`), "
                                               "rg:DATASET, or data:FILE_OR_DATASET.")
    eval_size: int = Field(1000, ge=1, description="Test prompts: distinct, equal shares per difficulty level, "
                                                   "never trained on.")
    validation_size: int = Field(500, ge=0, description="Validation prompts for tuning: disjoint from the test "
                                                        "split and from training.")
    seed: int = Field(0, ge=0, description="Data seed; the same for every arm and every training seed.")
    format_weight: float = Field(0.1, ge=0, description="Reward = correctness + format_weight * well-formed.")
    options: dict[str, Any] = Field(default_factory=dict, description="Generator options, e.g. max_digits; data "
                                                                      "tasks: split, subset, eval_split.")
    prompt_key: str = Field("prompt", description="Data tasks: the column that holds the prompt text.")
    answer_key: str = Field("answer", description="Data tasks: the column that holds the reference answer.")
    reward: str = Field("math", description="Data tasks: math (math-verify), exact, or a TRL-style reward function "
                                            "module:function.")
    eval_file: str = Field("", description="Data tasks: held-out examples from this file (else a seeded cut of "
                                           "eval_size).")
    chat_template: ChatTemplate = Field("auto", description="auto: prompts go through the tokenizer's chat template "
                                                            "when it has one; none: never.")
    reward_timeout: float = Field(60.0, gt=0, description="Data tasks: seconds a reward function call may take "
                                                          "before the arm fails.")

    @property
    def label(self) -> str:
        """The task's name in folder and lm-eval task names ('data:sets/train.jsonl' -> 'train')."""
        from harness.tasks.data import data_label, is_data_task
        return data_label(self.name) if is_data_task(self.name) else self.name.replace(":", "_")

    # Data and reward files as absolute paths, so that an arm or a resume started elsewhere finds them.
    @field_validator("name")
    @classmethod
    def _absolute_data_file(cls, name: str) -> str:
        from harness.tasks.data import DATA_PREFIX, is_data_task
        source = Path(name[len(DATA_PREFIX):]).expanduser()
        return DATA_PREFIX + str(source.resolve()) if is_data_task(name) and source.exists() else name

    @field_validator("eval_file")
    @classmethod
    def _absolute_eval_file(cls, eval_file: str) -> str:
        return str(Path(eval_file).expanduser().resolve()) if eval_file else eval_file

    @field_validator("reward")
    @classmethod
    def _absolute_reward_file(cls, reward: str) -> str:
        module, _, function = reward.rpartition(":")
        return f"{Path(module).expanduser().resolve()}:{function}" if module.endswith(".py") else reward


class RolloutConfig(StrictModel):
    where = "rollout."
    batch_size: int = Field(256, ge=1, description="Sampled completions per rollout step, for every arm.")
    samples_per_prompt: int = Field(8, ge=1, description="Completions per prompt (GRPO's group size G); must "
                                                         "divide batch_size.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(6, ge=1, description="Completion length cap.")
    logprob_batch_size: int = Field(0, ge=0, description="Rows per no-grad forward for old and reference log-probs "
                                                         "and values (0: the update's micro-batch).")
    slices: int = Field(0, ge=0, description="Sampling slices of a step (whole groups, each its own seed and "
                                             "partition); 0: one per process.")
    backend: RolloutBackend = Field("hf", description="hf (transformers generate) or vllm (GPU only).")


class BudgetConfig(StrictModel):
    where = "budget."
    unit: BudgetUnit = Field("completions", description="What is held equal across arms.")
    total: int = Field(15360, ge=1, description="Sampled completions (or tokens, or steps) per arm.")


class OptimConfig(StrictModel):
    where = "optim."
    lr: float = Field(1e-4, gt=0, description="Policy AdamW learning rate, the same for every arm.")
    epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    minibatches: int = Field(2, ge=1, description="Optimizer steps per pass.")
    micro_batch_size: int = Field(0, ge=0, description="Rows per forward and backward, gradients accumulated "
                                                       "(0: the whole minibatch).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus in the loss (0: entropy is a statistic, "
                                                       "under no_grad).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")


class RunConfig(StrictModel):
    where = "run."
    seed: int = Field(0, ge=0, le=SEED_LIMIT, description="Training seed (torch, numpy, random).")
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")
    threads: int = Field(0, ge=0, description="Torch threads; 0 uses every core.")
    eval_every: int = Field(0, ge=0, description="Greedy held-out accuracy every N steps (0: start and end only).")
    checkpoint_every: int = Field(10, ge=0, description="Steps between the checkpoints that resume needs.")
    memory_every: int = Field(10, ge=0, description="Live-tensor peaks on the second step and every N after "
                                                    "(1: every step; 0: off).")
    nproc_per_node: int = Field(1, ge=1, description="Processes (one per GPU) an arm runs on, launched by "
                                                     "torchrun; the models FSDP2-sharded.")
    nnodes: int = Field(1, ge=1, description="Machines of a multi-node arm (torchrun rendezvous).")
    node_rank: int = Field(0, ge=0, description="This machine's index among them.")
    master_addr: str = Field("127.0.0.1", description="The rendezvous host (node 0).")
    master_port: int = Field(29500, ge=1, le=65535, description="The rendezvous port.")
    parallel_arms: bool = Field(False, description="harness compare on a GPU machine: arms at once, each on its "
                                                   "own nproc_per_node GPUs.")
    offload_reference: bool = Field(False, description="Keep the reference's shards in CPU memory (FSDP2 CPU "
                                                       "offload).")
    offload_critic: bool = Field(False, description="Keep PPO's critic's shards in CPU memory.")
    offload_policy: bool = Field(False, description="The policy's parameter, gradient and AdamW shards in CPU memory "
                                                    "(FSDP2's CPUOffloadPolicy).")
    shard_policy: Sharding = Field("full", description="FSDP2: full (ZeRO-3, resharded after forward) or grad_optim "
                                                       "(ZeRO-2-like, kept gathered to backward).")
    shard_critic: Sharding = Field("full", description="The same for PPO's critic.")
    shard_reference: Sharding = Field("full", description="The reference (and an estimate's reward model): "
                                                          "grad_optim keeps it gathered.")
    eval_split: EvalSplit = Field("test", description="The split held-out accuracy and lm-eval score (harness "
                                                      "sweep: validation).")
    lm_eval: bool = Field(True, description="Score the base and final policy with lm-evaluation-harness.")
    lm_eval_k: int = Field(8, ge=0, description="Samples per prompt for maj@k and pass@k (0: greedy pass@1 only).")
    eval_tasks: Names = Field(default_factory=list, description="Extra lm-eval benchmarks by name "
                                                                         "(e.g. gsm8k).")
    results_dir: str = Field("results", description="Where run folders go.")
    report_to: NamesOrNone = Field(default_factory=list, description="Experiment trackers: trackio, wandb, "
                                                                            "tensorboard, mlflow, all, or none.")
    tracker_project: str = Field("rl-harness", description="The tracker project (trackio, W&B) or experiment "
                                                           "(MLflow) arms log to.")

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        """TRL's convention: 'none' (or nothing) is no tracker, 'all' every one."""
        names = list(dict.fromkeys(name.lower() for name in names))
        if names == ["all"]:
            return list(TRACKERS)
        unknown = [f"{name} (alone only)" if name in ("all", "none") else name for name in names
                   if name not in TRACKERS]
        if unknown:
            raise UserError(f"run.report_to: unknown tracker {', '.join(unknown)}; valid: {', '.join(TRACKERS)}, "
                            "all, none")
        return names


class EstimateConfig(StrictModel):
    where = "estimate."
    prompt_length: int = Field(0, ge=0, description="harness estimate: prompt tokens (0: the task's longest "
                                                    "prompt, one token per character).")
    completion_length: int = Field(0, ge=0, description="harness estimate: generated tokens per completion "
                                                        "(0: rollout.max_new_tokens).")
    world_size: int = Field(1, ge=1, description="harness estimate: GPUs per arm (FSDP/ZeRO-3 sharding, the batch "
                                                 "split across them).")
    reward_model: str = Field("none", description="harness estimate: a learned reward model in both arms: none, "
                                                  "same (the policy's size), or a model.")
    rollout_reserve: float = Field(0.0, ge=0, lt=1, description="harness estimate: a colocated rollout engine's "
                                                                "share of device memory (TRL's vLLM: 0.3); 0: none.")
    rollout_engine: RolloutEngine = Field("resident", description="harness estimate: the engine during training: "
                                                                  "resident (kept) or asleep (released).")
    device_memory: DeviceMemory = Field("h100", description="harness estimate: the device the reserve is a share "
                                                            "of.")
    critic_gpus: int = Field(0, ge=0, description="harness estimate: GPUs of the critic and a learned reward "
                                                  "model's own (OpenRLHF); 0: the policy's.")
    engine_gpus: int = Field(0, ge=0, description="harness estimate: GPUs of the rollout engine's own (OpenRLHF's "
                                                  "vLLM engines); 0: colocated.")
    engine_tp: int = Field(1, ge=1, description="harness estimate: the rollout engine's tensor-parallel size (verl's "
                                                "rollout TP; roofline time).")
    mfu: float = Field(0.35, gt=0, le=1, description="harness estimate: MFU of training and prefill in the roofline "
                                                     "time (torchtitan: 33-39% at 8B).")
    at_scale: NamesOrNone = Field(default_factory=lambda: ["verl-qwen2-7b-gsm8k"],
                                         description='harness compare: models of the report\'s "At scale" grid; '
                                                     "none: off.")
    at_scale_world_size: int = Field(8, ge=1, description='harness compare: GPUs per arm in the "At scale" grid.')
    at_scale_grid: bool = Field(False, description="harness compare: every choice of the grid (minutes), not only "
                                                   "this config's own.")


class VerdictConfig(StrictModel):
    """The analysis plan, fixed before the run and saved with it (see `harness plan`)."""

    where = "verdict."
    margin: float = Field(0.05, gt=0, lt=1, description="Non-inferiority margin δ: GRPO's final accuracy may trail "
                                                         "PPO's by less than this.")
    target_accuracy: float = Field(0.0, ge=0, le=1, description="Held-out accuracy arms are timed to; 0: the shared "
                                                                "start + target_gain.")
    target_gain: float = Field(0.10, gt=0, lt=1, description="With target_accuracy 0: the target is the base "
                                                             "model's accuracy + this.")
    claim: float = Field(0.5, gt=0, description="The claimed GRPO/PPO resource ratio.")
    band: float = Field(0.1, gt=0, description="A ratio reads as about the claim when its interval lies within "
                                               "claim ± band; below the claim.")
    seeds: int = Field(1, ge=1, description="Seeds per algorithm when `harness compare` gets no --seeds.")
    seed_sd: float = Field(0.02, ge=0, description="Assumed SD of an arm's final accuracy across training seeds, "
                                                   "beyond eval noise.")
    expected_accuracy: float = Field(0.5, gt=0, lt=1, description="Accuracy assumed for the binomial SE of the "
                                                                  "plan (0.5: the widest).")
    pilot: str = Field("", description="A finished comparison folder whose paired seed spread replaces the two "
                                       "assumptions above.")
    power: float = Field(0.8, ge=0.5, lt=1, description="The power at which the minimum detectable difference is "
                                                        "stated.")
    interval: IntervalMethod = Field("paired_t", description="The quality interval, named before the run: paired_t "
                                                         "over seeds, or bootstrap over prompts × seeds.")

    @model_validator(mode="after")
    def _band_within_claim(self) -> VerdictConfig:
        if self.band >= self.claim:
            raise UserError(f"verdict.band must lie below verdict.claim (the band is a half-width around the "
                            f"claim), got {self.claim} ± {self.band}")
        return self


class Config(StrictModel):
    preset: str = Field("tiny", description="The preset the config started from (--preset).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="What is asked and how it is scored.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling, the same for every arm.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="What each arm may spend.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="The policy's optimizer (a preset's "
                                                                        "arm_settings may give an arm its own lr).")
    run: RunConfig = Field(default_factory=RunConfig, description="Seeds, devices, evaluation, output.")
    verdict: VerdictConfig = Field(default_factory=VerdictConfig, description="The analysis plan.")
    algorithms: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Each algorithm's options over its defaults: algorithms.NAME.OPTION.")
    estimate: EstimateConfig = Field(default_factory=EstimateConfig, description="harness estimate and the "
                                                                                 "report's At scale section.")

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Only registered arm kinds (a cross-check's section goes over its algorithm's); the options' names,
        types and bounds are the algorithm's own, read when its arm is planned (config.derive.algorithm_options)."""
        from harness.config.arm_kinds import arm_kind_names
        valid = arm_kind_names()
        for name in sections:
            if name not in valid:
                raise UserError(f"unknown section 'algorithms.{name}'; valid: "
                                f"{', '.join(f'algorithms.{a}' for a in valid)}")
        return sections

    @model_validator(mode="after")
    def _fields_agree(self) -> Config:
        check_agreement(self)
        return self

    @property
    def completions_per_step(self) -> int:
        return self.rollout.batch_size

    @property
    def prompts_per_step(self) -> int:
        return self.rollout.batch_size // self.rollout.samples_per_prompt

    @property
    def world_size(self) -> int:
        return self.run.nproc_per_node * self.run.nnodes

    def sampling_slices(self, world: int | None = None) -> int:
        """The step's sampling slices: rollout.slices, or one per process."""
        return self.rollout.slices or (world or self.world_size)

    def total_steps(self) -> int:
        """Rollout steps that spend the budget (tokens: an upper bound, the runner stops early)."""
        if self.budget.unit == "steps":
            return self.budget.total
        # completions: exact; tokens: every completion has at least one token, so this bounds it
        return math.ceil(self.budget.total / self.completions_per_step)

    def to_dict(self) -> dict[str, Any]:
        """The config as config.yaml saves it (list fields as comma-separated text), derived fields added."""
        data = self.model_dump()
        data["derived"] = {"completions_per_step": self.completions_per_step,
                           "prompts_per_step": self.prompts_per_step,
                           "total_steps": self.total_steps()}
        return data

    def hash(self) -> str:
        return config_hash(self.model_dump())


def check_agreement(config: Config) -> None:
    """The fields that must agree with each other; one line for the first that does not."""
    if config.rollout.batch_size % config.rollout.samples_per_prompt:
        raise UserError(
            f"rollout.batch_size={config.rollout.batch_size} is not divisible by the group size "
            f"rollout.samples_per_prompt={config.rollout.samples_per_prompt}; pick a multiple of it")
    if config.rollout.batch_size % config.optim.minibatches:
        raise UserError(
            f"rollout.batch_size={config.rollout.batch_size} is not divisible into "
            f"optim.minibatches={config.optim.minibatches}")
    validate_processes(config)
    minibatch = config.rollout.batch_size // config.world_size // config.optim.minibatches
    micro = config.optim.micro_batch_size
    if micro and minibatch % micro:
        where = "" if config.world_size == 1 else f" per process ({config.world_size} processes)"
        raise UserError(f"optim.micro_batch_size={micro} does not divide a minibatch of {minibatch} rows{where} "
                        f"(rollout.batch_size / optim.minibatches); pick a divisor of {minibatch}, or 0 for all")
    model = config.model
    if model.name == "tiny" and (model.hidden_size % model.num_heads or (model.hidden_size // model.num_heads) % 2):
        raise UserError(f"model.hidden_size={model.hidden_size} must split into model.num_heads={model.num_heads} "
                        f"heads of an even width (rotary embeddings rotate pairs)")
    if model.warm_start_until is not None and model.warm_start_max_steps < model.warm_start_steps:
        raise UserError(f"model.warm_start_max_steps={model.warm_start_max_steps} is below model.warm_start_steps="
                        f"{model.warm_start_steps}: warm_start_until trains past warm_start_steps, up to the maximum")
    critic_base = config.algorithms.get("ppo", {}).get("critic_base", "separate")
    if critic_base == "shared" and not model.lora.enabled:
        raise UserError("algorithms.ppo.critic_base=shared puts the critic on the policy's frozen LoRA base; set "
                        "model.lora.rank > 0, or use critic_base=separate")
    if not config.run.results_dir.strip():
        raise UserError("run.results_dir is empty; give a folder")


def validate(config: Config) -> None:
    """Every field of a config that code has changed, and the fields that must agree; one line for the first that
    is wrong. (Assigning a field checks that field; a dict changed in place, or fields that bound each other,
    need this.)"""
    Config.parse({k: v for k, v in config.to_dict().items() if k != "derived"})


def validate_processes(config: Config) -> None:
    """The step's batch splits into whole groups per sampling slice and whole slices per process."""
    run = config.run
    if not run.node_rank < run.nnodes:
        raise UserError(f"run.node_rank={run.node_rank} must be below run.nnodes={run.nnodes} (0 <= run.node_rank "
                        f"< run.nnodes)")
    world, slices, prompts = config.world_size, config.sampling_slices(), config.prompts_per_step
    if slices % world:
        raise UserError(f"rollout.slices={config.rollout.slices} must be a multiple of the {world} processes "
                        "(0: one slice per process)")
    if prompts % slices:
        raise UserError(f"the {prompts} prompts of a step (rollout.batch_size / samples_per_prompt) do not split "
                        f"into {slices} sampling slices of whole groups (one per process unless rollout.slices); "
                        f"pick a batch of a multiple of {slices * config.rollout.samples_per_prompt} completions")
    if (config.rollout.batch_size // slices) % config.optim.minibatches:
        raise UserError(f"a sampling slice of {config.rollout.batch_size // slices} completions does not split into "
                        f"optim.minibatches={config.optim.minibatches} equal parts")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= SEED_LIMIT:
        raise UserError(f"the seed must be in [0, {SEED_LIMIT}], got {seed}")


def config_hash(data: Any) -> str:
    """A short, stable hash of a JSON-able value (a config, a cache key)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
