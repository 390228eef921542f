"""An algorithm's typed options from plain YAML values: names, types and ranges, one line when wrong."""

from __future__ import annotations

import dataclasses
from typing import Any


def options_from(cls: type, options: dict[str, Any]) -> Any:
    """An algorithm's options dataclass from plain YAML values, naming unknown keys and wrong types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    values = {}
    for name, value in options.items():
        default = known[name].default
        kind = type(default)
        if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} expects a number, got {value!r}") from None
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{name} expects {kind.__name__}, got {value!r}")
        values[name] = value
    return cls(**values)


def check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} '{value}' is not one of: {', '.join(valid)}")


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """ValueError unless low <= value <= high (low < value when low_open)."""
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")

