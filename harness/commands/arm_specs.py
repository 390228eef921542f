"""The arms of a comparison: each a name, the algorithm it trains (a registered one or a cross-check such as
trl-grpo), and overrides of the comparison's config, written the way --set writes them.

    grpo,ppo,ppo-n1=ppo:rollout.samples_per_prompt=1,grpo-nokl=grpo:algorithms.grpo.beta=0

A bare name is an arm of that algorithm without overrides; several overrides follow each other with ':'.
A config file says the same in an `arms:` section:

    arms:
      - {name: ppo-n1, algo: ppo, set: {rollout.samples_per_prompt: 1}}

Every override is checked against the config schema and the algorithm's options before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from harness import UserError
from harness.config.arm_kinds import algorithm_of, check_arm_kinds
from harness.config.derive import algorithm_options
from harness.config.kl import KLSetting
from harness.config.load import _merge, copy_config, nest, parse_override, parse_scalar
from harness.config.schema import Config, validate

ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*$")
MAX_ARM_NAME = 64  # it names folders (TASK__NAME__sSEED, a sweep's NAME.pN): well inside a file name's 255 bytes
SPEC_FORM = "NAME=ALGO[:section.field=value...]"
# What every arm of a comparison shares (the fairness rules): set it for all arms with --set instead. The
# model section defines "the same model" (name, sizes, vocabulary, warm start) and its precision, which
# DESIGN.md holds equal too; gradient checkpointing alone is a stack choice an arm may make for itself.
SHARED_FIELDS = ("budget.", "task.", "model.name", "model.hidden_size", "model.num_layers", "model.num_heads",
                 "model.warm_start_steps", "model.warm_start_batch", "model.warm_start_lr", "model.vocab_pad_to",
                 "model.precision", "run.seed", "run.device", "run.results_dir", "run.eval_split", "verdict.",
                 "estimate.")


@dataclass
class ArmSpec:
    """One arm: its name (its folders and table rows), its algorithm, and its config overrides."""

    name: str
    algo: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted field -> value, over the comparison's config

    @property
    def text(self) -> str:
        """The arm as --algos writes it: 'ppo-n1=ppo:rollout.samples_per_prompt=1', or 'ppo'."""
        if not self.overrides and self.name == self.algo:
            return self.name
        return f"{self.name}={self.algo}" + "".join(f":{k}={v}" for k, v in self.overrides.items())

    def override_text(self) -> str:
        """The overrides as the plan and the fairness lines list them: 'rollout.samples_per_prompt=1, ...'."""
        return ", ".join(f"{key}={value}" for key, value in self.overrides.items()) or "no overrides"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "algo": self.algo, "overrides": dict(self.overrides)}


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


def flatten_dotted(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for inner, item in value.items():
            out.update(flatten_dotted(f"{key}.{inner}", item))
        return out
    return {key: parse_scalar(value) if isinstance(value, str) else value}


def check_arm_list(specs: list[ArmSpec]) -> list[ArmSpec]:
    """Names that make folder names, known algorithms, distinct names, and no override of what every arm shares
    (a list read back from a file is checked the same way as one given on the command line)."""
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
            if key.startswith(SHARED_FIELDS) or key in SHARED_FIELDS:
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
    """The comparison's config with the KL setting and then the arm's overrides applied, validated; one line
    naming the arm when an override is unknown, mistyped, out of range or breaks the batch's split."""
    arm = copy_config(config)
    if seed is not None:
        arm.run.seed = seed
    if kl is not None:
        apply_kl(arm, spec.algo, kl, spec.name)
    try:
        for key, value in spec.overrides.items():
            _merge(arm, nest(key.split("."), value), "")
        validate(arm)
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
