"""A line of steps.jsonl as a typed record (harness.results.records says how records read and write).

Built in one place, `harness.train.policy_arm.PolicyArm.close_step`, for our loop and TRL's; read back where a line's
figures are needed one by one (the last step a stopped arm wrote). The report and the exports read the
lines as a table whose columns are these keys.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from harness.results.records import Maybe, Number, PhasePeaks, Record


class StepRecord(Record):
    """One line of steps.jsonl: one step of the whole job (every rank's share added up), keys in the README.

    On disk the keys are flat and namespaced (`reward/mean`, `loss/kl`, `mem/live/generate/activations`); here
    each fixed key is a field and each family of keys a dict: `losses` are the `loss/` keys, `phase_s` the
    `time/` keys of the phases, and so on.
    """

    step: Maybe[int] = None
    completions: Maybe[int] = None  # sampled so far
    tokens: Maybe[int] = None  # generated so far
    reward_mean: Maybe[Number] = Field(None, alias="reward/mean")  # over every completion sampled this step
    reward_std: Maybe[Number] = Field(None, alias="reward/std")
    reward_accuracy: Maybe[Number] = Field(None, alias="reward/accuracy")
    reward_correct: Maybe[Number] = Field(None, alias="reward/correct")
    reward_format: Maybe[Number] = Field(None, alias="reward/format")
    completion_len_mean: Maybe[Number] = Field(None, alias="completion/len_mean")
    step_s: Maybe[Number] = Field(None, alias="time/step")
    gen_tokens_per_s: Maybe[Number] = Field(None, alias="tput/gen_tokens_per_s")
    train_tokens_per_s: Maybe[Number] = Field(None, alias="tput/train_tokens_per_s")
    samples_per_s: Maybe[Number] = Field(None, alias="tput/samples_per_s")
    flops: Maybe[Number] = Field(None, alias="flops/step")  # arithmetic
    mfu: Maybe[Number] = Field(None, alias="flops/mfu")  # where the device's peak is known
    losses: Maybe[dict[str, Number]] = None  # loss/<name>: the algorithm's statistics
    phase_s: Maybe[dict[str, Number]] = None  # time/<phase>
    model_state: Maybe[dict[str, dict[str, int]]] = None  # mem/model_state/<model>/<category>: arithmetic
    live: Maybe[PhasePeaks] = None  # mem/live/<phase>/<category>: tracked steps only (mem/tracked)
    live_peak: Maybe[int] = Field(None, alias="mem/live/peak")
    live_peak_phase: Maybe[str] = Field(None, alias="mem/live/peak_phase")
    live_shape: Maybe[list[int]] = Field(None, alias="mem/live/shape")  # [prompt, completion] tokens measured at
    measured: Maybe[dict[str, Number]] = None  # mem/...: the probes' figures (Probes.step_memory)
    train_s: Maybe[Number] = None  # training seconds so far
    wall: Maybe[Number] = None  # training and evaluation seconds so far
    rollout_sampled: Maybe[int] = Field(None, alias="rollout/sampled")  # dynamic sampling only
    rollout_rounds: Maybe[int] = Field(None, alias="rollout/rounds")
    rollout_kept: Maybe[int] = Field(None, alias="rollout/kept")
    diverged: Maybe[str] = None  # what was not finite
    eval: Maybe[dict[str, Any]] = None  # eval/<name>: the periodic held-out evaluation
    eval_s: Maybe[Number] = Field(None, alias="time/eval")

    # the order of the keys in a line: the head's, the families', the tail's
    HEAD: ClassVar[tuple[str, ...]] = (
        "step", "completions", "tokens", "reward_mean", "reward_std", "reward_accuracy", "reward_correct",
        "reward_format", "completion_len_mean", "step_s", "gen_tokens_per_s", "train_tokens_per_s", "samples_per_s",
        "flops", "mfu")
    TAIL: ClassVar[tuple[str, ...]] = ("train_s", "wall", "rollout_sampled", "rollout_rounds", "rollout_kept",
                                       "diverged")
    # (key prefix, field) of the families of keys, the first match wins
    FAMILIES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("loss/", "losses"), ("mem/model_state/", "model_state"), ("mem/live/", "live"), ("eval/", "eval"),
        ("time/", "phase_s"), ("mem/", "measured"))

    def _put(self, row: dict[str, Any], name: str) -> None:
        value = getattr(self, name)
        if value is not None:
            row[type(self).model_fields[name].alias or name] = value

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name in self.HEAD:
            self._put(row, name)
        row.update({f"loss/{k}": v for k, v in (self.losses or {}).items()})
        row.update({f"time/{k}": v for k, v in (self.phase_s or {}).items()})
        row.update({f"mem/model_state/{model}/{category}": value
                    for model, sizes in (self.model_state or {}).items() for category, value in sizes.items()})
        if self.live:
            row["mem/tracked"] = True
            row.update({f"mem/live/{phase}/{category}": value
                        for phase, peak in self.live.items() for category, value in peak.items()})
            self._put(row, "live_peak")
            self._put(row, "live_peak_phase")
            self._put(row, "live_shape")
        row.update(self.measured or {})
        for name in self.TAIL:
            self._put(row, name)
        row.update({f"eval/{k}": v for k, v in (self.eval or {}).items()})
        self._put(row, "eval_s")
        row.update(self.model_extra or {})
        return row

    @classmethod
    def read(cls, row: Any) -> StepRecord:
        """A line of steps.jsonl as it was written (flat keys); anything else reads as an empty record."""
        row = row if isinstance(row, dict) else {}
        fixed = {field.alias or name for name, field in cls.model_fields.items()}
        data: dict[str, Any] = {}
        for key, value in row.items():
            if key in fixed or key == "mem/tracked":
                data[key] = value
                continue
            prefix, family = next(((p, f) for p, f in cls.FAMILIES if key.startswith(p)), (None, None))
            if family is None:
                data[key] = value
            elif family in ("model_state", "live"):
                outer, _, inner = key.removeprefix(prefix).partition("/")
                data.setdefault(family, {}).setdefault(outer, {})[inner] = value
            else:
                data.setdefault(family, {})[key if family == "measured" else key.removeprefix(prefix)] = value
        data.pop("mem/tracked", None)
        return cls.model_validate(data)
