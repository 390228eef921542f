"""The result files as typed records: an arm's summary.json, the lines of its steps.jsonl, a comparison.json.

Each record is built in one place: the summary in `harness.train.runner.summarize`, the step record
(harness.results.step_record) in `harness.train.policy_arm.PolicyArm.close_step`, the comparison in
`harness.commands.compare.compare`; the terminal, the report, the gate, the exports and the trackers read
them through the same types. The JSON keeps the keys it always had (README: "Result files").

Reading is tolerant, as it must be for files of older versions and of arms that died midway: a missing key
reads as None (a missing section as an empty one), a value of the wrong type as missing, and keys this
version does not know are kept, so a record read and written again is the file it was (`to_json` writes
what was read or set, nothing else).

The headline figures (`FIGURES`) say where each figure sits in a summary, its label, unit and how the CI
gate treats it; the terminal, the report and the gate iterate them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator

from harness.results.io import read_json_object
from harness.results.safe_io import arm_folders

T = TypeVar("T")
Number = int | float  # kept as written: an int stays an int


def _or_none(value: Any, handler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        return None


# A value that reads as None when it is missing or not of its type.
Maybe = Annotated[T | None, WrapValidator(_or_none)]


class Record(BaseModel):
    """A JSON object of the results: unknown keys kept, `to_json` gives back what was read or set."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, by_alias=True)

    @classmethod
    def read(cls, data: Any):
        """The record of `data` (a JSON object); anything else reads as an empty record."""
        return cls.model_validate(data if isinstance(data, dict) else {})


def _section(cls: type[Record]):
    """A section of a record: an empty one where it is missing or not an object."""
    def lenient(value: Any, handler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            return cls()
    return Annotated[cls, WrapValidator(lenient)]


def section(cls: type[Record]):
    return Field(default_factory=cls)


# ---------------------------------------------------------------- summary.json

class BudgetUsed(Record):
    completions: Maybe[int] = None
    tokens: Maybe[int] = None
    steps: Maybe[int] = None


class Budget(Record):
    unit: Maybe[str] = None  # completions | tokens | steps
    total: Maybe[Number] = None
    used: _section(BudgetUsed) = section(BudgetUsed)  # only in an arm's summary, not in a comparison.json


class EvalScores(Record):
    """Greedy held-out figures on the test split (harness.train.rollout.greedy_eval)."""

    accuracy: Maybe[Number] = None
    score: Maybe[Number] = None
    format: Maybe[Number] = None
    n: Maybe[int] = None
    per_prompt: Maybe[list[int]] = None


class LmEvals(Record):
    """lm-evaluation-harness scores of the policy before and after (harness.train.lm_eval_bridge.score_policy)."""

    base: Maybe[dict[str, Any]] = None
    final: Maybe[dict[str, Any]] = None


class Evals(Record):
    base: Maybe[EvalScores] = None  # the policy before training
    final: Maybe[EvalScores] = None
    lm_eval: _section(LmEvals) = section(LmEvals)


PhasePeaks = dict[str, dict[str, int]]  # phase -> category -> bytes


class LiveMemory(Record):
    """Measured: peaks of live tensors per phase of the tracked steps, by category (harness.measure.live_tensors)."""

    peak: Maybe[int] = None  # the step peak: max over phases
    peak_phase: Maybe[str] = None
    phases: Maybe[PhasePeaks] = None
    tracked_steps: Maybe[int] = None
    every: Maybe[int] = None  # run.memory_every
    per_rank: Maybe[list[dict[str, Any]]] = None  # under torchrun: {peak, phases} of each rank


class ArithmeticMemory(Record):
    """Arithmetic: bytes of parameters, gradients and optimizer state of each model (from sizes)."""

    models: Maybe[dict[str, dict[str, int]]] = None  # model -> params | grads | optimizer | total
    model_state_total: Maybe[int] = None
    per_rank: Maybe[list[dict[str, Any]]] = None  # under torchrun: each rank's models


class MeasuredMemory(Record):
    """Measured by the probes (harness.measure.probes.Probes.summary): RSS, allocator and NVML peaks."""

    rss_peak_net: Maybe[Number] = None
    rss_peak: Maybe[Number] = None
    gpu: Maybe[str] = None  # why there are no GPU figures
    cuda_allocated_peak: Maybe[dict[str, Number]] = None  # phase -> bytes
    cuda_reserved_peak: Maybe[dict[str, Number]] = None
    device_name: Maybe[str] = None
    nvml: Maybe[dict[str, Any] | str] = None  # used_peak, process_peak, util_mean, power_mean_w, ...; or why not


class Memory(Record):
    live: _section(LiveMemory) = section(LiveMemory)
    arithmetic: _section(ArithmeticMemory) = section(ArithmeticMemory)
    measured: _section(MeasuredMemory) = section(MeasuredMemory)


class Times(Record):
    train_s: Maybe[Number] = None  # training steps; periodic evaluations left out
    eval_s: Maybe[Number] = None
    per_step_s: Maybe[Number] = None  # tracked steps left out unless every step was tracked
    per_step_excludes_tracked: Maybe[bool] = None
    phases_s: Maybe[dict[str, Number]] = None
    phases_per_step_s: Maybe[dict[str, Number]] = None


class Throughput(Record):
    samples_per_s: Maybe[Number] = None
    gen_tokens_per_s: Maybe[Number] = None


class Summary(Record):
    """An arm's summary.json: how it ended, what it spent, what it bought and what it cost."""

    arm: Maybe[str] = None  # its name in a comparison (written by harness compare); older summaries: algo
    overrides: Maybe[dict[str, Any]] = None
    algo: Maybe[str] = None
    seed: Maybe[int] = None
    task: Maybe[str] = None
    preset: Maybe[str] = None
    model: Maybe[str] = None
    status: Maybe[str] = None  # running | ok | failed | oom | diverged | interrupted | killed (| missing, unread)
    error: Maybe[str] = None
    world_size: Maybe[int] = None
    budget: _section(Budget) = section(Budget)
    steps: Maybe[int] = None
    wall_s: Maybe[Number] = None  # training and periodic evaluations
    eval: _section(Evals) = section(Evals)
    mem: _section(Memory) = section(Memory)
    time: _section(Times) = section(Times)
    tput: _section(Throughput) = section(Throughput)

    @property
    def name(self) -> str | None:
        """The arm's name: as harness compare labelled it, else its algorithm."""
        return self.arm or self.algo

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def training_seconds(self) -> float | None:
        """Training time: evaluations left out (time.train_s); older summaries have only the wall time."""
        return self.time.train_s if self.time.train_s is not None else self.wall_s


# ---------------------------------------------------------------- headline figures

@dataclass(frozen=True)
class Figure:
    """One headline figure of an arm: where it sits in the summary and how it is shown and gated."""

    key: str
    read: Callable[[Summary], Any]
    label: str = ""  # says whether the figure is measured or arithmetic
    unit: str = ""  # harness.results.units.fmt's unit
    group: str | None = None  # memory | time: a row of the cost tables and a ratio; None: the arm table only
    gate: str = "info"  # exact (compared to the byte) | gpu (with a tolerance on the same GPU) | info (shown)


def _max_or_none(values: dict[str, Number] | None) -> Number | None:
    return max(values.values()) if values else None


def _nvml_used(summary: Summary) -> Number | None:
    nvml = summary.mem.measured.nvml
    return nvml.get("used_peak") if isinstance(nvml, dict) else None


def _accuracy(scores: EvalScores | None) -> float | None:
    return scores.accuracy if scores is not None else None


FIGURES = [
    Figure("steps", lambda s: s.steps),
    Figure("completions", lambda s: s.budget.used.completions),
    Figure("acc_base", lambda s: _accuracy(s.eval.base), "held-out accuracy before training", "%"),
    Figure("acc_final", lambda s: _accuracy(s.eval.final), "held-out accuracy after training", "%"),
    Figure("mem_live_peak", lambda s: s.mem.live.peak, "measured: step peak of live tensors (max over phases)",
           "MiB", "memory", "exact"),
    Figure("mem_live_peak_phase", lambda s: s.mem.live.peak_phase),
    Figure("mem_model_state", lambda s: s.mem.arithmetic.model_state_total,
           "arithmetic: model state (params + grads + optimizer)", "MiB", "memory", "exact"),
    Figure("mem_rss_net", lambda s: s.mem.measured.rss_peak_net, "measured: RSS peak, net of start", "MiB", "memory"),
    Figure("mem_cuda_allocated", lambda s: _max_or_none(s.mem.measured.cuda_allocated_peak),
           "measured: CUDA allocated peak", "MiB", "memory", "gpu"),
    Figure("mem_cuda_reserved", lambda s: _max_or_none(s.mem.measured.cuda_reserved_peak),
           "measured: CUDA reserved peak", "MiB", "memory", "gpu"),
    Figure("mem_nvml_used", _nvml_used, "measured: NVML device memory peak", "MiB", "memory", "gpu"),
    Figure("time_per_step", lambda s: s.time.per_step_s,
           "measured: time per step (tracked steps and evaluations left out)", "s", "time"),
    Figure("wall", lambda s: s.training_seconds, "measured: training time for the budget (evaluations left out)",
           "s", "time"),
    Figure("eval_s", lambda s: s.time.eval_s),
    Figure("samples_per_s", lambda s: s.tput.samples_per_s, "samples / s", "1/s", "time"),
    Figure("gen_tokens_per_s", lambda s: s.tput.gen_tokens_per_s, "generated tokens / s", "1/s", "time"),
]
FIGURE = {figure.key: figure for figure in FIGURES}


# ---------------------------------------------------------------- comparison.json

class ArmEntry(Record):
    """One (arm, seed) of a comparison and its folder."""

    arm: Maybe[str] = None  # older comparisons: the algorithm names the arm
    algo: Maybe[str] = None
    overrides: Maybe[dict[str, Any]] = None
    seed: Maybe[int] = None
    dir: str  # the arm's folder, relative to the comparison's


class ArmSpecEntry(Record):
    """An arm of a comparison: its name, the algorithm (or cross-check) it trains, its config overrides."""

    name: str
    algo: Maybe[str] = None
    overrides: Maybe[dict[str, Any]] = None
    settings: Maybe[list[Any]] = None  # where each of its settings came from (harness.config.load: arm_settings)


class ComparisonPlan(Record):
    """comparison.json: what a comparison is, written before its first arm starts (harness.commands.compare)."""

    algos: Maybe[list[str]] = None  # the algorithms the arms train, each once
    arm_specs: Maybe[list[ArmSpecEntry]] = None  # older comparisons: one arm per algorithm
    baseline: Maybe[str] = None  # the arm every ratio is taken against
    kl: Maybe[dict[str, Any]] = None  # harness.config.kl.KLSetting.to_dict()
    seeds: Maybe[list[int]] = None
    preset: Maybe[str] = None
    task: Maybe[str] = None
    model: Maybe[str] = None
    budget: _section(Budget) = section(Budget)
    config_hash: Maybe[str] = None
    fairness: Maybe[list[str]] = None
    plan: Maybe[dict[str, Any]] = None  # the analysis plan, fixed before the run (harness.commands.plan)
    arms: list[ArmEntry]

    @classmethod
    def load(cls, path) -> ComparisonPlan:
        """The comparison.json at `path`; one line when it is damaged (not JSON, no list of arm folders)."""
        data = read_json_object(path, {"arms": list})
        arm_folders(Path(path).parent, data)  # each arm's folder one bounded path component inside it
        return cls.model_validate(data)
