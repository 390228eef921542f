"""The config's reference, read from the schema: every field (the sections' and each algorithm's options) with its
type, default, bounds or choices and description, for `harness config` and for the README's table."""

from __future__ import annotations

import importlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from harness import UserError
from harness.config.arm_kinds import CROSS_CHECKS
from harness.config.schema import Config

README_BEGIN = "<!-- BEGIN config table: generated from the schema by `harness config --markdown README.md` -->"
README_END = "<!-- END config table -->"
UNSET = object()  # FieldRow.value when no config was given


@dataclass(frozen=True)
class FieldRow:
    """One field of the config: 'rollout.top_p' or 'algorithms.ppo.gamma'."""

    section: str  # 'rollout', 'algorithms.ppo', '' for a top-level field
    name: str  # the field's own name: 'top_p'
    type: str  # int, float, bool, str, list[str], mapping, or choice (one of `choices`)
    default: Any
    bounds: dict[str, float]  # pydantic's: gt, ge, lt, le
    choices: tuple[str, ...]
    description: str
    value: Any = UNSET  # the given config's value

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    def allowed(self) -> str:
        """'(0, 1]', '≥ 1', 'fp32, bf16-mixed, bf16' or ''."""
        if self.choices:
            return ", ".join(self.choices)
        return bounds_text(self.bounds)

    def to_dict(self) -> dict[str, Any]:
        out = {"field": self.dotted, "type": self.type, "default": self.default, "bounds": self.bounds,
               "choices": list(self.choices), "allowed": self.allowed(), "description": self.description}
        return out if self.value is UNSET else {**out, "value": self.value}


def bounds_text(bounds: dict[str, float]) -> str:
    """{'gt': 0, 'le': 1} -> '(0, 1]'; {'ge': 1} -> '≥ 1'."""
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        return f"{low[0]}{number(low[1])}, {number(high[1])}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '≥'} {number(low[1])}"
    if high:
        return f"{'<' if high[0] == ')' else '≤'} {number(high[1])}"
    return ""


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def field_row(section: str, name: str, field: FieldInfo, value: Any = UNSET) -> FieldRow:
    kind = field.annotation
    origin = typing.get_origin(kind)
    optional = origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:  # `float | None`: the type and null
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        origin = typing.get_origin(kind)
    type_name = ("choice" if origin is Literal else "list[str]" if origin is list else "mapping" if origin is dict
                 else kind.__name__) + (" or null" if optional else "")
    bounds = {key: getattr(meta, key) for meta in field.metadata for key in ("gt", "ge", "lt", "le")
              if getattr(meta, key, None) is not None}
    return FieldRow(section, name, type_name, field.get_default(call_default_factory=True), bounds,
                    typing.get_args(kind) if origin is Literal else (), field.description or "", value)


def is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def field_rows(config: Config | None = None, under: str | None = None) -> list[FieldRow]:
    """Every field of the config in the schema's order, then each algorithm's options (`algorithms.NAME.OPTION`),
    or those `under` a section or field ('rollout', 'algorithms.ppo'); with `config`, each row carries that
    config's value (an algorithm's: its resolved options). The algorithms' options are read from their modules
    (which import torch) only when they are asked for."""
    rows = config_rows(config)
    if not under or under.rstrip(".") == "algorithms" or under.startswith("algorithms."):
        rows += algorithm_rows(config)
    if not under:
        return rows
    chosen = [r for r in rows if r.dotted == under or r.dotted.startswith(under.rstrip(".") + ".")]
    if not chosen:
        sections = [name for name, field in Config.model_fields.items() if is_section(field)]
        raise UserError(f"no config field under '{under}'; sections: {', '.join(sections)}, algorithms.NAME")
    return chosen


def config_rows(config: Config | None = None) -> list[FieldRow]:
    rows = []
    for name, field in Config.model_fields.items():
        if name == "algorithms":
            continue
        if not is_section(field):
            rows.append(field_row("", name, field, getattr(config, name) if config else UNSET))
            continue
        section = getattr(config, name) if config else None
        rows += [field_row(name, inner, info, getattr(section, inner) if section else UNSET)
                 for inner, info in field.annotation.model_fields.items()]
    return rows


def algorithm_rows(config: Config | None = None) -> list[FieldRow]:
    from harness.algorithms import algorithm_names, get_algorithm
    from harness.config.derive import algorithm_options
    rows = []
    for algo in algorithm_names():
        options = algorithm_options(config, algo) if config is not None else None
        rows += [field_row(f"algorithms.{algo}", inner, info, getattr(options, inner) if options else UNSET)
                 for inner, info in get_algorithm(algo).Config.model_fields.items()]
    return rows


def section_descriptions(sections: list[str]) -> dict[str, str]:
    """Each section's one line: a config section's description, an algorithm's module docstring's first paragraph."""
    from harness.algorithms import get_algorithm
    out = {}
    for section in sections:
        if section.startswith("algorithms."):
            doc = importlib.import_module(get_algorithm(section.split(".", 1)[1]).__module__).__doc__ or ""
            out[section] = " ".join(doc.strip().split("\n\n")[0].split())
        else:
            out[section] = Config.model_fields[section].description if section else "Top-level fields."
    return out


def cross_check_lines() -> list[str]:
    """What an `algorithms.<cross-check>` section takes."""
    return [f"algorithms.{name} takes the options of algorithms.{check.checks} (its own section over them): "
            f"a cross-check of {check.checks} by another library's trainer" for name, check in CROSS_CHECKS.items()]


def value_text(value: Any) -> str:
    """A default as --set writes it: true, 0.0001, fp32, a,b, null; '' for empty text; none for an empty list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value) or "none"
    if isinstance(value, dict):
        return "{}" if not value else ", ".join(f"{k}: {v}" for k, v in value.items())
    if value == "":
        return "''"
    return str(value)


def markdown_table(rows: list[FieldRow] | None = None) -> str:
    """The README's configuration table: one row per section, each field as `name=default`, choices after it."""
    rows = field_rows() if rows is None else rows
    sections: dict[str, list[str]] = {}
    for row in rows:
        if not row.section:
            continue  # the preset: the README's prose covers --preset
        choices = f" ({', '.join(row.choices)})" if row.choices else ""
        sections.setdefault(row.section, []).append(f"`{row.name}={value_text(row.default)}`{choices}")
    lines = ["| section | fields (default; choices) |", "|---|---|"]
    lines += [f"| {section} | {', '.join(fields)} |" for section, fields in sections.items()]
    lines += [f"| algorithms.{name} | the options of algorithms.{check.checks} (a cross-check; its own section "
              f"over them) |" for name, check in CROSS_CHECKS.items()]
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The generated table between the README's markers (UserError when they are missing)."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise UserError(f"no configuration table markers in the README: put the table between '{README_BEGIN}' "
                        f"and '{README_END}'")
    return text[begin + len(README_BEGIN):end].strip("\n")


def with_readme_table(text: str, table: str) -> str:
    """The README `text` with the table between its markers replaced by `table`."""
    readme_table(text)  # the markers are there
    head, rest = text.split(README_BEGIN, 1)
    return f"{head}{README_BEGIN}\n{table}\n{README_END}{rest.split(README_END, 1)[1]}"
