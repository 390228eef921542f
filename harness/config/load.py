"""Loading a config: defaults <- preset YAML <- --config file <- --set overrides, merged, then read and checked
as one Config (the schema's one coercion rule, its bounds and choices, the fields that must agree).

A preset may also hold per-arm settings (`arm_settings:`, harness.config.arm_settings): they are the
comparison's, not a field of the Config; `load_arm_settings` reads them, and what the user's --config and --set
set for every arm over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness import UserError
from harness.config.arm_settings import SECTION, ArmSetting, PresetArm, is_shared
from harness.config.schema import Config, TaskConfig

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_file(preset: str) -> Path:
    """A preset by name (harness/config/presets/NAME.yaml) or a preset file of one's own (harness tune writes
    them): a path ending in .yaml or .yml."""
    if preset in preset_names():
        return PRESET_DIR / f"{preset}.yaml"
    if preset.endswith((".yaml", ".yml")):
        path = Path(preset).expanduser()
        if not path.is_file():
            raise UserError(f"preset file {preset} does not exist")
        return path
    raise UserError(f"unknown preset '{preset}'; valid: {', '.join(preset_names())}, or a preset file (.yaml)")


def preset_label(preset: str) -> str:
    """The preset as a config records it: its name, or its file's absolute path."""
    return preset if preset in preset_names() else str(preset_file(preset).resolve())


def merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `base`, neither changed: mappings (sections, algorithms.NAME, task.options) merge key by key,
    any other value is replaced. The result is checked only when it becomes a Config."""
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"malformed YAML in {path}{where}: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a config") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'rollout.samples_per_prompt=4' -> (['rollout', 'samples_per_prompt'], 4)."""
    if "=" not in text:
        raise UserError(f"override '{text}' must look like section.field=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), parse_scalar(raw)


def parse_scalar(raw: str) -> Any:
    """YAML's reading of a flag value, except that 2e-4 is a number (YAML 1.1 wants 2.0e-4)."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def flatten_dotted(key: str, value: Any) -> dict[str, Any]:
    """{'algorithms': {'ppo': {'critic_lr': 1e-3}}} read as {'algorithms.ppo.critic_lr': 1e-3}; numeric text is
    a number, as --set reads it.

    >>> flatten_dotted("algorithms", {"ppo": {"critic_lr": "1e-3"}})
    {'algorithms.ppo.critic_lr': 0.001}
    """
    if isinstance(value, dict) and value:
        out = {}
        for inner, item in value.items():
            out.update(flatten_dotted(f"{key}.{inner}", item))
        return out
    return {key: parse_scalar(value) if isinstance(value, str) else value}


def read_arm_settings(section: Any, where: str) -> dict[str, ArmSetting]:
    """A preset's arm_settings, checked: known arm kinds, each a {set, provenance, kl} mapping whose fields are
    neither shared by every arm nor another algorithm's options; one line naming the first bad entry."""
    from harness.algorithms import KL_MODES
    from harness.config.arm_kinds import algorithm_of, arm_kind_names
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise UserError(f"{where}: {SECTION} must map an algorithm's name to its {{set, provenance}}; "
                        f"got {type(section).__name__}")
    entries = {}
    for algo, entry in section.items():
        algo = str(algo)
        if algo not in arm_kind_names():
            raise UserError(f"{where}: {SECTION}.{algo}: unknown algorithm; valid: {', '.join(arm_kind_names())}")
        if not isinstance(entry, dict):
            raise UserError(f"{where}: {SECTION}.{algo} must be a mapping of set, provenance and kl")
        if not isinstance(entry.get("set"), dict):
            raise UserError(f"{where}: {SECTION}.{algo}.set must map section.field to a value")
        flat: dict[str, Any] = {}
        for key, value in entry["set"].items():
            flat.update(flatten_dotted(str(key), value))
        parsed = ArmSetting.parse({**entry, "set": flat}, where=f"{where}: {SECTION}.{algo}.")
        for key in flat:
            if "." not in key:
                raise UserError(f"{where}: {SECTION}.{algo}.set: '{key}' is not a section.field")
            if is_shared(key):
                raise UserError(f"{where}: {SECTION}.{algo}.set: {key} is the same for every arm of a comparison "
                                "(fairness); set it in the preset's own sections")
            if key.startswith("algorithms.") and key.split(".")[1] not in (algorithm_of(algo), algo):
                raise UserError(f"{where}: {SECTION}.{algo}.set: {key} does not apply to {algo} "
                                f"(its options are algorithms.{algorithm_of(algo)}.*)")
        if parsed.kl is not None and parsed.kl not in KL_MODES:
            raise UserError(f"{where}: {SECTION}.{algo}.kl '{parsed.kl}' is not one of: {', '.join(KL_MODES)}")
        entries[algo] = parsed
    return entries


def nest(path: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def task_named(layers: list[dict[str, Any]]) -> Any:
    """The task name the last of `layers` to set one sets, else None.

    >>> task_named([{"task": {"name": "spell_backward"}}, {"optim": {"lr": 1e-4}}])
    'spell_backward'
    """
    names = [layer["task"]["name"] for layer in layers
             if isinstance(layer.get("task"), dict) and "name" in layer["task"]]
    return names[-1] if names else None


def user_layers(config_file: str | None, overrides: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """The user's layers over a preset, in order, each with what it is called in the plan: the --config file
    (its `arms:` section is the comparison's, harness.commands.arm_specs), then each --set."""
    layers = []
    if config_file:
        data = read_yaml(Path(config_file))
        if SECTION in data:
            raise UserError(f"{config_file}: {SECTION} belongs in a preset (--preset FILE.yaml); a config file "
                            "sets per-arm values in its arms: section")
        layers.append((f"your --config {config_file}", {k: v for k, v in data.items() if k != "arms"}))
    layers += [("your --set", nest(*parse_override(text))) for text in overrides or []]
    return layers


def load_config(preset: str = "tiny", config_file: str | None = None,
                overrides: list[str] | None = None) -> Config:
    """Defaults <- preset YAML <- --config file <- --set overrides, in that order, checked as one."""
    return Config.parse(preset_data(preset, config_file, overrides))


def preset_data(preset: str = "tiny", config_file: str | None = None,
                overrides: list[str] | None = None) -> dict[str, Any]:
    """The preset's sections with the --config file and --set merged over them, not yet checked (what a preset
    that harness tune writes starts from); without the preset's per-arm settings."""
    data = merge({"preset": preset_label(preset)}, read_yaml(preset_file(preset)))
    data.pop(SECTION, None)  # the comparison's per-arm settings: load_arm_settings
    layers = [layer for _, layer in user_layers(config_file, overrides)]
    preset_task = data.get("task") if isinstance(data.get("task"), dict) else {}
    if task_named(layers) not in (None, preset_task.get("name", TaskConfig().name)):
        # the preset's generator options are its own task's (tiny: min_digits)
        data = {**data, "task": {k: v for k, v in preset_task.items() if k != "options"}}
    for layer in layers:
        data = merge(data, layer)
    return data


def load_arm_settings(preset: str = "tiny", config_file: str | None = None, overrides: list[str] | None = None,
                      check_options: bool = True) -> dict[str, PresetArm]:
    """The preset's per-arm settings by algorithm, each checked against the preset's own config (and, with
    `check_options`, the algorithm's options), and which of their fields the user's --config or --set sets for
    every arm (those win: a preset's per-arm value sits below --config and --set)."""
    path = preset_file(preset)
    entries = read_arm_settings(read_yaml(path).get(SECTION), f"preset {preset}")
    if not entries:
        return {}
    base = load_config(preset)
    user_leaves: dict[str, dict[str, Any]] = {}
    for source, layer in user_layers(config_file, overrides):
        for key, value in layer.items():
            for leaf, leaf_value in flatten_dotted(key, value).items():
                user_leaves[leaf] = {"source": source, "value": leaf_value}
    settings = {}
    for algo, entry in entries.items():
        where = f"preset {preset}: {SECTION}.{algo}"
        try:
            checked = with_overrides(base, entry.set)
            if check_options:
                from harness.config.derive import algorithm_options
                algorithm_options(checked, algo)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        user_set = {k: user_leaves[k] for k in entry.set if k in user_leaves}
        settings[algo] = PresetArm(preset_label(preset), algo, dict(entry.set), entry.provenance, entry.kl, user_set)
    return settings


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from a saved config.yaml (derived fields dropped), written by this version or an earlier one."""
    return Config.parse({k: v for k, v in data.items() if k != "derived"})


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A checked copy of `config` with dotted fields set ({'rollout.samples_per_prompt': 1}), as --set sets them."""
    data = {k: v for k, v in config.to_dict().items() if k != "derived"}
    for key, value in overrides.items():
        data = merge(data, nest(key.split("."), value))
    return Config.parse(data)


def copy_config(config: Config) -> Config:
    """An independent copy to change (an arm, a grid cell, a sweep's points), its preset included."""
    return config_from_dict(config.to_dict())
