"""The config's schema: one dataclass per concern, every field with a one-line comment, the ranges and
choices of every field, and the checks of the fields that bound each other.

The resolved config (derived fields included) is saved with each run as config.yaml.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import UserError

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
EVAL_SPLITS = ("test", "validation")
TINY_POSITIONS = 64  # the tiny model's context: one position per character of prompt and completion
TRACKERS = ("trackio", "wandb", "tensorboard", "mlflow")


@dataclass
class ModelConfig:
    name: str = "tiny"  # "tiny" builds the embedded model; anything else is a Hub name or local path
    hidden_size: int = 128  # tiny model: width
    num_layers: int = 4  # tiny model: decoder layers
    num_heads: int = 4  # tiny model: attention heads
    warm_start_steps: int = 300  # tiny model: supervised steps on generated (question, answer) pairs
    warm_start_batch: int = 256  # tiny model: sequences per supervised step
    warm_start_lr: float = 2e-3  # tiny model: AdamW learning rate of the warm start
    vocab_pad_to: int = 0  # tiny model: pad embedding and LM head to this many rows (151936: Qwen2.5's); 0: none
    precision: str = "fp32"  # fp32 | bf16-mixed (bf16 compute, fp32 weights and AdamW state) | bf16 (pure)
    gradient_checkpointing: bool = False  # recompute activations in backward (transformers' checkpointing)


@dataclass
class TaskConfig:
    name: str = "chain_sum"  # an offline reasoning-gym task (see `harness tasks`), or data:FILE_OR_DATASET
    eval_size: int = 1000  # test prompts: distinct, equal shares per difficulty level, never trained on
    validation_size: int = 500  # validation prompts for tuning: disjoint from the test split and from training
    seed: int = 0  # data seed; the same for every arm and every training seed
    format_weight: float = 0.1  # reward = correctness + format_weight * well-formed
    options: dict[str, Any] = field(default_factory=dict)  # generator options, e.g. max_digits; data: split, subset, eval_split
    prompt_key: str = "prompt"  # data tasks: the column that holds the prompt text
    answer_key: str = "answer"  # data tasks: the column that holds the reference answer
    reward: str = "math"  # data tasks: math (math-verify), exact, or a TRL-style reward function module:function
    eval_file: str = ""  # data tasks: held-out examples from this file (else a seeded cut of eval_size)
    chat_template: str = "auto"  # auto: prompts go through the tokenizer's chat template when it has one; none
    reward_timeout: float = 60.0  # data tasks: seconds a reward function call may take before the arm fails

    @property
    def label(self) -> str:
        """The task's name in folder and lm-eval task names ('data:sets/train.jsonl' -> 'train')."""
        from harness.tasks.data import data_label, is_data_task
        return data_label(self.name) if is_data_task(self.name) else self.name.replace(":", "_")


@dataclass
class RolloutConfig:
    batch_size: int = 256  # sampled completions per rollout step, for every arm
    samples_per_prompt: int = 8  # completions per prompt (GRPO's group size G); must divide batch_size
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    max_new_tokens: int = 6  # completion length cap
    logprob_batch_size: int = 0  # rows per no-grad forward for old/reference log-probs and values (0: all)
    slices: int = 0  # sampling slices of a step (whole groups, each its own seed and partition); 0: one per process
    backend: str = "hf"  # hf (transformers generate) | vllm (GPU only)


@dataclass
class BudgetConfig:
    unit: str = "completions"  # completions | tokens | steps: what is held equal across arms
    total: int = 15360  # sampled completions (or tokens, or steps) per arm


@dataclass
class OptimConfig:
    lr: float = 1e-4  # policy AdamW learning rate, the same for every arm
    epochs: int = 1  # passes over each rollout batch
    minibatches: int = 2  # optimizer steps per pass
    micro_batch_size: int = 0  # rows per forward/backward, gradients accumulated (0: the whole minibatch)
    entropy_coef: float = 0.0  # entropy bonus in the loss (0: entropy is a statistic, under no_grad)
    max_grad_norm: float = 1.0  # gradient clipping
    weight_decay: float = 0.0  # AdamW weight decay


@dataclass
class RunConfig:
    seed: int = 0  # training seed (torch, numpy, random)
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 0  # torch threads; 0 uses every core
    eval_every: int = 0  # greedy held-out accuracy every N steps (0: start and end only)
    checkpoint_every: int = 10  # steps between checkpoints that resume needs
    memory_every: int = 10  # live-tensor peaks on the second step and every N after (1: every step; 0: off)
    nproc_per_node: int = 1  # processes (one per GPU) an arm runs on, launched by torchrun; the models FSDP2-sharded
    nnodes: int = 1  # machines of a multi-node arm (torchrun rendezvous)
    node_rank: int = 0  # this machine's index among them
    master_addr: str = "127.0.0.1"  # the rendezvous host (node 0)
    master_port: int = 29500  # and its port
    parallel_arms: bool = False  # harness compare on a GPU machine: arms at once, each on its own nproc_per_node GPUs
    offload_reference: bool = False  # keep the reference's shards in CPU memory (FSDP2 CPU offload)
    offload_critic: bool = False  # the same for PPO's critic
    eval_split: str = "test"  # test | validation: the split held-out accuracy and lm-eval score (harness sweep: validation)
    lm_eval: bool = True  # score the base and final policy with lm-evaluation-harness
    lm_eval_k: int = 8  # samples per prompt for maj@k and pass@k (0: greedy pass@1 only)
    eval_tasks: str = ""  # extra lm-eval benchmarks by name, comma-separated (e.g. gsm8k)
    results_dir: str = "results"  # where run folders go
    report_to: str = "none"  # experiment trackers: trackio, wandb, tensorboard, mlflow (comma-separated), all, none
    tracker_project: str = "rl-harness"  # the tracker project (trackio, W&B) or experiment (MLflow) arms log to


# Device memory of the GPUs `harness estimate` checks a step against, in GiB (nominal capacities).
DEVICE_MEMORY_GIB = {"h100": ("H100 80 GB", 80), "h200": ("H200 141 GB", 141), "a100-40": ("A100 40 GB", 40),
                     "a100-80": ("A100 80 GB", 80)}


ROLLOUT_ENGINES = ("resident", "asleep")


@dataclass
class EstimateConfig:
    prompt_length: int = 0  # harness estimate: prompt tokens (0: the task's longest prompt, one token per character)
    completion_length: int = 0  # harness estimate: generated tokens per completion (0: rollout.max_new_tokens)
    world_size: int = 1  # harness estimate: GPUs per arm (FSDP/ZeRO-3 sharding, the batch split across them)
    # harness estimate: a learned reward model in both arms: none, same (the policy's size), or a model
    reward_model: str = "none"
    # harness estimate: a colocated rollout engine's share of device memory (TRL's vLLM: 0.3); 0: none
    rollout_reserve: float = 0.0
    rollout_engine: str = "resident"  # harness estimate: the engine during training: resident (kept) | asleep (released)
    device_memory: str = "h100"  # harness estimate: the device the reserve is a share of: h100, h200, a100-40, a100-80
    at_scale: str = "Qwen/Qwen2.5-7B"  # harness compare: models of the report's "At scale" grid, comma-separated; none: off
    at_scale_world_size: int = 8  # harness compare: GPUs per arm in the "At scale" grid
    at_scale_grid: bool = False  # harness compare: every choice of the grid (minutes), not only this config's own


@dataclass
class VerdictConfig:
    """The analysis plan, fixed before the run and saved with it (see `harness plan`)."""

    margin: float = 0.05  # non-inferiority margin δ: GRPO's final accuracy may trail PPO's by less than this
    target_accuracy: float = 0.0  # held-out accuracy arms are timed to; 0: the shared start + target_gain
    target_gain: float = 0.10  # with target_accuracy 0: the target is the base model's accuracy + this
    claim: float = 0.5  # the claimed GRPO/PPO resource ratio
    band: float = 0.1  # a ratio reads as "about the claim" when its interval lies within claim ± band
    seeds: int = 1  # seeds per algorithm when `harness compare` gets no --seeds
    seed_sd: float = 0.02  # assumed SD of an arm's final accuracy across training seeds, beyond eval noise
    expected_accuracy: float = 0.5  # accuracy assumed for the binomial SE of the plan (0.5: the widest)
    pilot: str = ""  # a finished comparison folder whose paired seed spread replaces the two assumptions above
    power: float = 0.8  # the power at which the minimum detectable difference is stated


@dataclass
class Config:
    preset: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    algorithms: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-algorithm options
    estimate: EstimateConfig = field(default_factory=EstimateConfig)

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
        data = dataclasses.asdict(self)
        data["derived"] = {"completions_per_step": self.completions_per_step,
                           "prompts_per_step": self.prompts_per_step,
                           "total_steps": self.total_steps()}
        return data

    def hash(self) -> str:
        return config_hash(dataclasses.asdict(self))


# Every number's range, in one place: (test, what it must be). A new numeric field needs a line here
# (tests/test_faults.py checks that each has one).
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")


NON_NEGATIVE = (lambda v: v >= 0, "0 or more")


POSITIVE = (lambda v: v > 0, "above 0")


PROBABILITY = (lambda v: 0 < v <= 1, "in (0, 1]")


# numpy seeds each step with seed * STEP_SEED_STRIDE + step (harness.train.runner.step_seed), below 2**32
STEP_SEED_STRIDE = 1_000_003


SEED_LIMIT = 2**32 // STEP_SEED_STRIDE - 1


RUN_SEED = (lambda v: 0 <= v <= SEED_LIMIT, f"in [0, {SEED_LIMIT}]")


FIELD_RANGES = {  # 0 means "off" or "all" where a field's comment says so
    "model.hidden_size": AT_LEAST_1, "model.num_layers": AT_LEAST_1, "model.num_heads": AT_LEAST_1,
    "model.warm_start_steps": NON_NEGATIVE, "model.warm_start_batch": AT_LEAST_1, "model.warm_start_lr": POSITIVE,
    "model.vocab_pad_to": NON_NEGATIVE,
    "task.eval_size": AT_LEAST_1, "task.validation_size": NON_NEGATIVE, "task.seed": NON_NEGATIVE,
    "task.format_weight": NON_NEGATIVE, "task.reward_timeout": POSITIVE,
    "rollout.batch_size": AT_LEAST_1, "rollout.samples_per_prompt": AT_LEAST_1, "rollout.temperature": POSITIVE,
    "rollout.top_p": PROBABILITY, "rollout.max_new_tokens": AT_LEAST_1, "rollout.logprob_batch_size": NON_NEGATIVE,
    "rollout.slices": NON_NEGATIVE,
    "budget.total": AT_LEAST_1,
    "optim.lr": POSITIVE, "optim.epochs": AT_LEAST_1, "optim.minibatches": AT_LEAST_1,
    "optim.micro_batch_size": NON_NEGATIVE, "optim.entropy_coef": NON_NEGATIVE,
    "optim.max_grad_norm": POSITIVE, "optim.weight_decay": NON_NEGATIVE,
    "run.seed": RUN_SEED, "run.threads": NON_NEGATIVE, "run.eval_every": NON_NEGATIVE,
    "run.checkpoint_every": NON_NEGATIVE, "run.memory_every": NON_NEGATIVE, "run.lm_eval_k": NON_NEGATIVE,
    "run.nproc_per_node": AT_LEAST_1, "run.nnodes": AT_LEAST_1, "run.node_rank": NON_NEGATIVE,
    "run.master_port": (lambda v: 1 <= v <= 65535, "a port in [1, 65535]"),
    "estimate.world_size": AT_LEAST_1, "estimate.at_scale_world_size": AT_LEAST_1,
    "estimate.prompt_length": NON_NEGATIVE, "estimate.completion_length": NON_NEGATIVE,
    "estimate.rollout_reserve": (lambda v: 0 <= v < 1, "a share of device memory in [0, 1)"),
}  # the verdict section is checked as a whole (validate_verdict): its fields bound each other


FIELD_CHOICES = {
    "budget.unit": ("completions", "tokens", "steps"), "rollout.backend": ("hf", "vllm"),
    "model.precision": PRECISIONS, "task.chat_template": ("auto", "none"), "run.eval_split": EVAL_SPLITS,
}


def field_value(config: Config, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def check_range(name: str, value: Any, rule: tuple) -> None:
    test, expected = rule
    if not test(value):
        raise UserError(f"{name} must be {expected}, got {value!r}")


def validate(config: Config) -> None:
    """Every field's range and choices, and the fields that must agree; one line for the first that is wrong."""
    for name, rule in FIELD_RANGES.items():
        check_range(name, field_value(config, name), rule)
    for name, choices in FIELD_CHOICES.items():
        if field_value(config, name) not in choices:
            raise UserError(f"{name} '{field_value(config, name)}' is not one of: {', '.join(choices)}")
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
    if not str(config.run.results_dir).strip():
        raise UserError("run.results_dir is empty; give a folder")
    validate_algorithm_sections(config.algorithms)
    if not isinstance(config.task.options, dict):
        raise UserError(f"task.options must be a mapping of generator options, got {config.task.options!r}")
    validate_estimate(config.estimate)
    absolute_task_paths(config.task)
    parse_report_to(config.run.report_to)
    validate_verdict(config.verdict)


def validate_processes(config: Config) -> None:
    """The step's batch splits into whole groups per sampling slice and whole slices per process."""
    run = config.run
    if run.nproc_per_node < 1 or run.nnodes < 1 or not 0 <= run.node_rank < run.nnodes:
        raise UserError("run.nproc_per_node and run.nnodes must be at least 1, and 0 <= run.node_rank < run.nnodes")
    world, slices, prompts = config.world_size, config.sampling_slices(), config.prompts_per_step
    if config.rollout.slices < 0 or slices % world:
        raise UserError(f"rollout.slices={config.rollout.slices} must be a multiple of the {world} processes "
                        "(0: one slice per process)")
    if prompts % slices:
        raise UserError(f"the {prompts} prompts of a step (rollout.batch_size / samples_per_prompt) do not split "
                        f"into {slices} sampling slices of whole groups (one per process unless rollout.slices); "
                        f"pick a batch of a multiple of {slices * config.rollout.samples_per_prompt} completions")
    if (config.rollout.batch_size // slices) % config.optim.minibatches:
        raise UserError(f"a sampling slice of {config.rollout.batch_size // slices} completions does not split into "
                        f"optim.minibatches={config.optim.minibatches} equal parts")


def validate_verdict(verdict: VerdictConfig) -> None:
    if not 0 < verdict.margin < 1:
        raise UserError(f"verdict.margin must lie between 0 and 1 (accuracy), got {verdict.margin}")
    if not 0 <= verdict.target_accuracy <= 1:
        raise UserError(f"verdict.target_accuracy must lie in [0, 1] (0: the start + target_gain), got {verdict.target_accuracy}")
    if not 0 < verdict.target_gain < 1:
        raise UserError(f"verdict.target_gain must lie between 0 and 1, got {verdict.target_gain}")
    if verdict.claim <= 0 or not 0 < verdict.band < verdict.claim:
        raise UserError(f"verdict.claim must be positive and verdict.band between 0 and the claim, "
                        f"got {verdict.claim} ± {verdict.band}")
    if verdict.seeds < 1:
        raise UserError(f"verdict.seeds must be at least 1, got {verdict.seeds}")
    if verdict.seed_sd < 0 or not 0 < verdict.expected_accuracy < 1:
        raise UserError("verdict.seed_sd must be ≥ 0 and verdict.expected_accuracy between 0 and 1")
    if not 0.5 <= verdict.power < 1:
        raise UserError(f"verdict.power must lie in [0.5, 1), got {verdict.power}")


def validate_algorithm_sections(sections: dict[str, Any]) -> None:
    """Only registered algorithms, each a mapping; option names, types and ranges are the algorithm's."""
    from harness.config.arm_kinds import arm_kind_names
    valid = arm_kind_names()  # a cross-check's section goes over its algorithm's
    for name, options in sections.items():
        if name not in valid:
            raise UserError(f"unknown section 'algorithms.{name}'; valid: "
                            f"{', '.join(f'algorithms.{a}' for a in valid)}")
        if not isinstance(options, dict):
            raise UserError(f"algorithms.{name} must be a mapping of options, got {options!r}")


def check_seed(seed: int) -> None:
    check_range("the seed", seed, RUN_SEED)


def validate_estimate(estimate: EstimateConfig) -> None:
    if estimate.world_size < 1 or estimate.at_scale_world_size < 1:
        raise UserError("estimate.world_size and estimate.at_scale_world_size must be at least 1 (GPUs per arm)")
    if estimate.prompt_length < 0 or estimate.completion_length < 0:
        raise UserError("estimate.prompt_length and estimate.completion_length must be 0 (the config's) or positive")
    if not 0 <= estimate.rollout_reserve < 1:
        raise UserError(f"estimate.rollout_reserve must be a share of device memory in [0, 1), got {estimate.rollout_reserve}")
    if estimate.rollout_engine not in ROLLOUT_ENGINES:
        raise UserError(f"estimate.rollout_engine '{estimate.rollout_engine}' is not one of: {', '.join(ROLLOUT_ENGINES)}")
    if estimate.device_memory not in DEVICE_MEMORY_GIB:
        raise UserError(f"estimate.device_memory '{estimate.device_memory}' is not one of: {', '.join(DEVICE_MEMORY_GIB)}")


def absolute_task_paths(task: TaskConfig) -> None:
    """Data and reward files as absolute paths, so that an arm or a resume started elsewhere finds them."""
    from harness.tasks.data import DATA_PREFIX, is_data_task
    source = task.name[len(DATA_PREFIX):]
    if is_data_task(task.name) and Path(source).expanduser().exists():
        task.name = DATA_PREFIX + str(Path(source).expanduser().resolve())
    if task.eval_file:
        task.eval_file = str(Path(task.eval_file).expanduser().resolve())
    module, _, function = task.reward.rpartition(":")
    if module.endswith(".py"):
        task.reward = f"{Path(module).expanduser().resolve()}:{function}"


def config_hash(data: Any) -> str:
    """A short, stable hash of a JSON-able value (a config, a cache key)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_report_to(text: str) -> list[str]:
    """'trackio, tensorboard' -> ['trackio', 'tensorboard']; 'none' -> []; 'all' -> every tracker."""
    names = [n.strip().lower() for n in str(text or "none").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return list(TRACKERS)
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or "none" in names:
        raise UserError(f"--report-to '{text}': unknown tracker {', '.join(unknown) or 'none (alone only)'}; "
                        f"valid: {', '.join(TRACKERS)}, all, none")
    return list(dict.fromkeys(names))
