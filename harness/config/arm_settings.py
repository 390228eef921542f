"""A preset's per-arm settings: each algorithm's own chosen hyperparameters (best against best), with where
they came from. They are the comparison's, not a field of one arm's config:

    arm_settings:
      ppo:
        set: {optim.lr: 2.0e-4, rollout.samples_per_prompt: 1}
        kl: native              # the KL regime they were tuned under (--kl), if they were tuned
        provenance: harness tune --algos grpo,ppo --preset tiny ... (validation table: README, Tuning)

An arm takes the entry of its algorithm (a cross-check such as trl-grpo: its own entry, else that of the
algorithm it checks). Precedence, from weakest: schema defaults < preset < the preset's arm_settings for the
arm's algorithm < --config < --set < the arm's own overrides (an --algos variant, a sweep or tune point).
What every arm of a comparison shares (SHARED_FIELDS: the fairness rules) cannot be set per arm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from harness.algorithms.options import StrictModel

SECTION = "arm_settings"
# What every arm of a comparison shares (the fairness rules): set it for all arms with --set instead.
# The model section defines "the same model" (name, sizes, vocabulary, warm start) and its precision, which
# DESIGN.md holds equal too; gradient checkpointing, the chunked log-prob and LoRA are stack choices an arm may
# make for itself.
SHARED_FIELDS = ("budget.", "task.", "model.name", "model.hidden_size", "model.num_layers", "model.num_heads",
                 "model.warm_start_steps", "model.warm_start_batch", "model.warm_start_lr", "model.max_positions",
                 "model.vocab_pad_to", "model.precision", "run.seed", "run.device", "run.results_dir",
                 "run.eval_split", "verdict.", "estimate.")


def is_shared(key: str) -> bool:
    """A dotted field every arm of a comparison holds equal ('budget.total', 'model.name', ...)."""
    return key.startswith(SHARED_FIELDS) or key in SHARED_FIELDS


class ArmSetting(StrictModel):
    """One algorithm's entry in a preset's arm_settings."""

    set: dict[str, Any] = Field(description="Dotted config fields and their values, as --set writes them.")
    provenance: str = Field(min_length=1, description="Where the values came from: the tune or sweep command and "
                                                      "where its validation table is.")
    kl: str | None = Field(None, description="The KL regime (--kl) the values were tuned under, if tuned.")


@dataclass(frozen=True)
class PresetArm:
    """One algorithm's settings from a preset, as a comparison applies them to that algorithm's arms."""

    preset: str  # the preset's name, or its file
    algo: str  # the entry's key in arm_settings
    settings: dict[str, Any]  # dotted field -> value
    provenance: str
    kl: str | None = None
    # fields of `settings` that the user's --config or --set sets for every arm: field -> {source, value}
    user_set: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def applied(self) -> dict[str, Any]:
        """What the arm takes from the preset: its settings less those the user set for every arm."""
        return {k: v for k, v in self.settings.items() if k not in self.user_set}

    @property
    def source(self) -> str:
        return f"preset {self.preset} ({self.provenance})"

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "algo": self.algo, "set": dict(self.settings), "provenance": self.provenance,
                "kl": self.kl, "user_set": {k: dict(v) for k, v in self.user_set.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PresetArm:
        return cls(str(data["preset"]), str(data["algo"]), dict(data["set"]), str(data["provenance"]),
                   data.get("kl"), {str(k): dict(v) for k, v in (data.get("user_set") or {}).items()})


def grouped_lines(rows: list[dict[str, Any]]) -> list[str]:
    """An arm's setting rows (field, value, source, instead_of) grouped by where they came from, a line each.

    >>> grouped_lines([{"field": "optim.lr", "value": 2e-4, "source": "preset tiny (tuned)"},
    ...                {"field": "rollout.samples_per_prompt", "value": 4, "source": "your --algos variant",
    ...                 "instead_of": "the preset's 1"}])
    ['optim.lr=0.0002: preset tiny (tuned)', "rollout.samples_per_prompt=4 (instead of the preset's 1): your --algos variant"]
    """
    by_source: dict[str, list[str]] = {}
    for row in rows:
        instead = f" (instead of {row['instead_of']})" if row.get("instead_of") else ""
        by_source.setdefault(row["source"], []).append(f"{row['field']}={row['value']}{instead}")
    return [f"{', '.join(items)}: {source}" for source, items in by_source.items()]


def entry_for(settings: dict[str, PresetArm], algo: str) -> PresetArm | None:
    """The entry an arm of `algo` takes: its own, else (a cross-check) the checked algorithm's."""
    from harness.config.arm_kinds import algorithm_of
    return settings.get(algo) or settings.get(algorithm_of(algo))
