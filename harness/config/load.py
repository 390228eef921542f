"""Loading a config: defaults <- preset YAML <- --config file <- --set overrides, strictly coerced, then validated."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from harness import UserError
from harness.config.schema import Config, validate

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _merge(target: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"unknown config field '{where}{key}'; valid: {', '.join(sorted(known))}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config field '{where}{key}' must be a mapping, got {value!r}")
            _merge(current, value, f"{where}{key}.")
        elif key == "algorithms" or key == "options":
            if not isinstance(value, dict):
                raise UserError(f"config field '{where}{key}' must be a mapping, got {value!r}")
            merged = dict(current)
            for name, options in value.items():
                merged[name] = {**merged.get(name, {}), **options} if isinstance(options, dict) else options
            setattr(target, key, merged)
        else:
            setattr(target, key, _coerce(value, type(current), f"{where}{key}"))


def _coerce(value: Any, kind: type, name: str) -> Any:
    """`value` as the field's type, strictly: true is not 1, 'maybe' is not a bool, nan is not a number."""
    def refuse(expected: str):
        return UserError(f"config field '{name}' expects {expected}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise refuse("true or false")
    if isinstance(value, (bool, dict, list)):
        raise refuse({int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__))
    if kind is str:
        return value if isinstance(value, str) else str(value)
    if kind in (int, float) and type(value) is int:
        return kind(value)
    try:
        number = float(value)  # YAML 1.1 reads 1e-4 as a string; float() reads it as a number
    except (TypeError, ValueError):
        number = math.nan
    if kind is float and math.isfinite(number):
        return number
    if kind is int and math.isfinite(number) and number.is_integer():
        return int(number)
    raise refuse("an integer" if kind is int else "a finite number")


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
    """Defaults <- preset YAML <- --config file <- --set overrides, in that order."""
    config = Config()
    if preset not in preset_names():
        raise UserError(f"unknown preset '{preset}'; valid: {', '.join(preset_names())}")
    config.preset = preset
    _merge(config, read_yaml(PRESET_DIR / f"{preset}.yaml"), "")
    layers = []
    if config_file:  # its `arms:` section is the comparison's (harness.commands.arm_specs), not a config field
        layers.append({k: v for k, v in read_yaml(Path(config_file)).items() if k != "arms"})
    layers += [nest(*parse_override(text)) for text in overrides or []]
    if task_named(layers) not in (None, config.task.name):
        config.task.options = {}  # the preset's generator options are its own task's (tiny: min_digits)
    for layer in layers:
        _merge(config, layer, "")
    validate(config)
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from a saved config.yaml (derived fields dropped)."""
    data = {k: v for k, v in data.items() if k != "derived"}
    config = Config()
    _merge(config, data, "")
    validate(config)
    return config


def copy_config(config: Config) -> Config:
    """An independent copy to change (an arm, a grid cell, a sweep's points), its preset included."""
    return config_from_dict(config.to_dict())

