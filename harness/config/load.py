"""Loading a config: defaults <- preset YAML <- --config file <- --set overrides, merged, then read and checked
as one Config (the schema's one coercion rule, its bounds and choices, the fields that must agree)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness import UserError
from harness.config.schema import Config, TaskConfig

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


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


def load_config(preset: str = "tiny", config_file: str | None = None,
                overrides: list[str] | None = None) -> Config:
    """Defaults <- preset YAML <- --config file <- --set overrides, in that order, checked as one."""
    if preset not in preset_names():
        raise UserError(f"unknown preset '{preset}'; valid: {', '.join(preset_names())}")
    data = merge({"preset": preset}, read_yaml(PRESET_DIR / f"{preset}.yaml"))
    layers = []
    if config_file:  # its `arms:` section is the comparison's (harness.commands.arm_specs), not a config field
        layers.append({k: v for k, v in read_yaml(Path(config_file)).items() if k != "arms"})
    layers += [nest(*parse_override(text)) for text in overrides or []]
    preset_task = data.get("task") if isinstance(data.get("task"), dict) else {}
    if task_named(layers) not in (None, preset_task.get("name", TaskConfig().name)):
        # the preset's generator options are its own task's (tiny: min_digits)
        data = {**data, "task": {k: v for k, v in preset_task.items() if k != "options"}}
    for layer in layers:
        data = merge(data, layer)
    return Config.parse(data)


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
