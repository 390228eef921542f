"""The arms of a comparison: each a name, the algorithm it trains (a registered one or a cross-check such as
trl-grpo), and overrides of the comparison's config, written the way --set writes them.

    grpo,ppo,ppo-n1=ppo:rollout.samples_per_prompt=1,grpo-nokl=grpo:algorithms.grpo.beta=0

A bare name is an arm of that algorithm without overrides; several overrides follow each other with ':'.
A config file says the same in an `arms:` section:

    arms:
      - {name: ppo-n1, algo: ppo, set: {rollout.samples_per_prompt: 1}}

Every override is checked against the config schema and the algorithm's options before anything is written.

An arm also takes its algorithm's per-arm settings from the preset (harness.config.arm_settings: the chosen
settings of a tuned preset, with their provenance), below the user's --config and --set, which are below the
arm's own overrides; `setting_rows` says where each of an arm's own settings came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from harness import UserError
from harness.config.arm_kinds import algorithm_of, check_arm_kinds
from harness.config.arm_settings import PresetArm, entry_for, grouped_lines, is_shared
from harness.config.derive import algorithm_options
from harness.config.kl import KLSetting
from harness.config.load import copy_config, flatten_dotted, parse_override, with_overrides
from harness.config.schema import Config

ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*$")
MAX_ARM_NAME = 64  # it names folders (TASK__NAME__sSEED, a sweep's NAME.pN): well inside a file name's 255 bytes
SPEC_FORM = "NAME=ALGO[:section.field=value...]"
VARIANT_SOURCE = "your --algos variant"


@dataclass
class ArmSpec:
    """One arm: its name (its folders and table rows), its algorithm, its config overrides, and the preset's
    per-arm settings for its algorithm, which its overrides win over (setting_rows says which came from where)."""

    name: str
    algo: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted field -> value, over the comparison's config
    preset: PresetArm | None = None  # the preset's per-arm settings for this arm's algorithm, under the overrides
    source: str = VARIANT_SOURCE  # what the overrides are called where the plan says where a setting came from

    @property
    def text(self) -> str:
        """The arm as --algos writes it: 'ppo-n1=ppo:rollout.samples_per_prompt=1', or 'ppo'."""
        if not self.overrides and self.name == self.algo:
            return self.name
        return f"{self.name}={self.algo}" + "".join(f":{k}={v}" for k, v in self.overrides.items())

    def with_preset(self, settings: dict[str, PresetArm]) -> ArmSpec:
        """This arm with its algorithm's entry of a preset's per-arm settings (none: as it is)."""
        return replace(self, preset=entry_for(settings, self.algo))

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "algo": self.algo, "overrides": dict(self.overrides)}
        if self.preset is not None:
            out["preset_settings"] = self.preset.to_dict()
        if self.preset is not None or self.source != VARIANT_SOURCE:
            out["source"] = self.source
            out["settings"] = setting_rows(self)
        return out

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> ArmSpec:
        """An arm as to_dict saved it (comparison.json, sweep.json, tune.json), or as earlier versions did."""
        preset = entry.get("preset_settings")
        return cls(str(entry["name"]), str(entry["algo"]), dict(entry.get("overrides") or {}),
                   PresetArm.from_dict(preset) if isinstance(preset, dict) else None,
                   str(entry.get("source") or VARIANT_SOURCE))


def setting_rows(spec: ArmSpec) -> list[dict[str, Any]]:
    """Each of the arm's own settings, its value and where it came from: the preset's per-arm settings (with
    their provenance), your --config or --set (instead of the preset's value), your --algos variant (instead
    of both).

    >>> from harness.config.arm_settings import PresetArm
    >>> tuned = PresetArm("tiny", "ppo", {"optim.lr": 2e-4, "rollout.samples_per_prompt": 1}, "harness tune ...",
    ...                   user_set={"optim.lr": {"source": "your --set", "value": 3e-4}})
    >>> for row in setting_rows(ArmSpec("ppo-n4", "ppo", {"rollout.samples_per_prompt": 4}, tuned)):
    ...     print(row)
    {'field': 'optim.lr', 'value': 0.0003, 'source': 'your --set', 'instead_of': "the preset's 0.0002"}
    {'field': 'rollout.samples_per_prompt', 'value': 4, 'source': 'your --algos variant', 'instead_of': "the preset's 1"}
    """
    preset = spec.preset
    rows = []
    for key, value in (preset.settings if preset else {}).items():
        if key in spec.overrides:
            continue
        if key in preset.user_set:
            rows.append({"field": key, "value": preset.user_set[key]["value"], "source": preset.user_set[key]["source"],
                         "instead_of": f"the preset's {value}"})
        else:
            rows.append({"field": key, "value": value, "source": preset.source})
    for key, value in spec.overrides.items():
        row = {"field": key, "value": value, "source": spec.source}
        if preset and key in preset.user_set:
            row["instead_of"] = f"{preset.user_set[key]['source']}'s {preset.user_set[key]['value']}"
        elif preset and key in preset.settings:
            row["instead_of"] = f"the preset's {preset.settings[key]}"
        rows.append(row)
    return rows


def setting_lines(spec: ArmSpec) -> list[str]:
    """The arm's own settings grouped by where they came from, one source a line, as the plan prints them:

        algorithms.ppo.critic_lr=0.001: preset tiny (harness tune --algos grpo,ppo ...)
        rollout.samples_per_prompt=4 (instead of the preset's 1): your --algos variant
    """
    return grouped_lines(setting_rows(spec))


def kl_notes(arms, kl: KLSetting) -> list[str]:
    """A line for each arm whose preset settings were tuned under another KL regime than the comparison's."""
    return [f"note: arm {a.name}'s preset settings were tuned under --kl {a.preset.kl}; this comparison runs "
            f"--kl {kl.mode}" for a in arms if getattr(a, "preset", None) and a.preset.kl not in (None, kl.mode)]


def parse_arm_spec(text: str) -> ArmSpec:
    """'ppo-n1=ppo:rollout.samples_per_prompt=1' -> ArmSpec('ppo-n1', 'ppo', {'rollout.samples_per_prompt': 1})."""
    text = text.strip()
    if "=" not in text:
        if ":" in text:
            raise UserError(f"arm '{text}' has overrides but no name: write {SPEC_FORM}")
        return check_name(ArmSpec(text, text), text)
    name, rest = (part.strip() for part in text.split("=", 1))
    if ":" in name:
        raise UserError(f"arm '{text}' has overrides but no name: write {SPEC_FORM}")
    if not name:
        raise UserError(f"arm '{text}' names no arm: write {SPEC_FORM}")
    algo, *sets = rest.split(":")
    if not algo.strip():
        raise UserError(f"arm '{text}' names no algorithm: write {SPEC_FORM}")
    overrides = {}
    for item in sets:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(f"arm '{text}': override '{item}' must look like section.field=value ({SPEC_FORM})")
        path, value = parse_override(item)
        overrides[".".join(path)] = value
    return check_name(ArmSpec(name, algo.strip(), overrides), text)


def check_name(spec: ArmSpec, text: str) -> ArmSpec:
    shown = text if len(text) <= 80 else text[:77] + "..."
    if len(spec.name) > MAX_ARM_NAME:
        raise UserError(f"arm name in '{shown}' has {len(spec.name)} characters; at most {MAX_ARM_NAME} (it names "
                        "the arm's folders)")
    if not ARM_NAME.match(spec.name) or "__" in spec.name:
        raise UserError(f"arm name '{spec.name}' in '{shown}' must be letters, digits, '.', '+', '-' or single '_' "
                        "(it names the arm's folders)")
    return spec


def parse_arm_specs(text: str) -> list[ArmSpec]:
    """--algos: comma-separated arms."""
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"--algos names no arm: '{text}'")
    return check_arm_list([parse_arm_spec(item) for item in items])


def arms_from_yaml(section: Any, where: str) -> list[ArmSpec]:
    """The `arms:` section of a config file: a list of {name, algo, set: {dotted.field: value}}."""
    if not isinstance(section, list) or not section:
        raise UserError(f"{where}: 'arms' must be a list of {{name, algo, set}} mappings")
    specs = []
    for entry in section:
        if not isinstance(entry, dict) or set(entry) - {"name", "algo", "set"} or not entry.get("name"):
            raise UserError(f"{where}: each entry of 'arms' is a mapping of name, algo and set; got {entry!r}")
        overrides = entry.get("set") or {}
        if not isinstance(overrides, dict):
            raise UserError(f"{where}: 'set' of arm {entry['name']} must map section.field to a value")
        flat = {}
        for key, value in overrides.items():
            flat.update(flatten_dotted(str(key), value))
        name = str(entry["name"])
        specs.append(check_name(ArmSpec(name, str(entry.get("algo") or name), flat), name))
    return check_arm_list(specs)


def check_arm_list(specs: list[ArmSpec]) -> list[ArmSpec]:
    """Names that make folder names, known algorithms, distinct names, and no override of what every arm shares
    (harness.config.arm_settings.SHARED_FIELDS; a list read back from a file is checked as one given on the
    command line)."""
    for spec in specs:
        check_name(spec, str(spec.name))
    try:
        check_arm_kinds([spec.algo for spec in specs])
    except ValueError as err:
        raise UserError(str(err)) from None
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"arm name {', '.join(twice)} is given twice; name each arm once "
                        f"(a variant needs its own name: {twice[0]}-2={twice[0]}:section.field=value)")
    for spec in specs:
        for key in spec.overrides:
            if is_shared(key):
                raise UserError(f"arm {spec.name}: {key} is the same for every arm of a comparison (fairness); "
                                "set it for all arms with --set")
            section = algorithm_section(spec.algo)
            if key.startswith("algorithms.") and key.split(".")[1] not in (section, spec.algo):
                raise UserError(f"arm {spec.name} runs {spec.algo}: {key} does not apply to it "
                                f"(its options are algorithms.{section}.*)")
    return specs


def algorithm_section(algo: str) -> str:
    """The config section whose options an arm of `algo` reads: a cross-check reads the checked algorithm's."""
    return algorithm_of(algo)


def apply_kl(config: Config, algo: str, kl: KLSetting, arm: str) -> None:
    """Put `algo`'s KL where `kl` says (harness.algorithms.kl_settings), in config.algorithms, in place."""
    from harness.algorithms import kl_settings
    try:
        settings = kl_settings(algorithm_of(algo), kl.mode, kl.coef or 0.0)
    except ValueError as err:
        raise UserError(f"arm {arm}: {err}") from None
    if settings:
        section = algorithm_section(algo)
        config.algorithms = {**config.algorithms, section: {**config.algorithms.get(section, {}), **settings}}


def arm_config(config: Config, spec: ArmSpec, kl: KLSetting | None = None, seed: int | None = None) -> Config:
    """The comparison's config with the preset's per-arm settings, the KL setting and then the arm's overrides
    applied, validated; one line
    naming the arm when an override is unknown, mistyped, out of range or breaks the batch's split."""
    arm = copy_config(config)
    if seed is not None:
        arm.run.seed = seed
    try:  # the preset's per-arm settings, under the KL setting (alike in every arm) and the arm's own overrides
        arm = with_overrides(arm, spec.preset.applied) if spec.preset else arm
    except UserError as err:
        raise UserError(f"arm {spec.name}: {spec.preset.source}: {err}") from None
    if kl is not None:
        apply_kl(arm, spec.algo, kl, spec.name)
    try:
        arm = with_overrides(arm, spec.overrides)
        algorithm_options(arm, spec.algo)
    except UserError as err:
        raise UserError(f"arm {spec.name}: {err}") from None
    return arm


def check_baseline(specs: list[ArmSpec], baseline: str | None) -> str:
    """The baseline arm: the one named (--baseline), else the first PPO arm, else the first arm."""
    from harness.results.headline import default_baseline
    if baseline is None:
        return default_baseline({s.name: s.algo for s in specs})
    if baseline not in [s.name for s in specs]:
        raise UserError(f"--baseline {baseline} is not an arm of this comparison; arms: "
                        f"{', '.join(s.name for s in specs)}")
    return baseline
