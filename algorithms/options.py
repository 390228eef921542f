"""Typed options: the strict base model of every algorithm's options and of the config's sections, the one
rule by which a value is read (`coerce`), and the one line an error makes (`error_line`).

An algorithm's options are a `StrictModel`: each field typed, bounded (`Field(ge=..., le=...)`) and described;
`harness config` lists them beside the config's own fields, which share this base.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from harness import UserError

# Text that stands for the empty list in a list field ('--set estimate.at_scale=none'), in any case.
EMPTY_LIST_WORDS = ("", "none", "off", "false")


def coerce(value: Any, kind: Any) -> Any:
    """`value` as a field of type `kind`, by the one rule for the config and every algorithm's options,
    whatever wrote it (YAML, --set, a saved config.yaml, code):

    - bool: true or false only; not 1, not 'yes', not 'maybe'.
    - int: an integer, or a number or numeric text of whole value (3.0, '3', '1e3' read as 3, 3, 1000); never a
      bool, never 3.5.
    - float: a finite number, or numeric text ('1e-4': YAML 1.1 reads it as text); never a bool, nan or inf.
    - text (str, or a Literal's choices): text, or a number as its text (`--set task.eval_file=2024`: YAML reads
      2024 as a number); never a bool.
    - list[str]: a list of text, or comma-separated text ('gsm8k, arc_easy'); '', 'none' (or 'off', 'false') are
      the empty list.
    - a mapping or a section: a mapping.

    A value it cannot read raises a pydantic error whose message says what the field takes; bounds and choices
    are the field's own (checked after this, by pydantic in strict mode, which is also all that a type not named
    here gets).
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):  # an optional field: None, else the other type
        if value is None and type(None) in args:
            return None
        return coerce(value, next(a for a in args if a is not type(None)))
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _refuse("must be true or false")
    if kind is int:
        if type(value) is int:
            return value
        number = _number(value)
        if number is None or not number.is_integer():  # nan and inf are not whole numbers either
            raise _refuse("must be an integer")
        return int(number)
    if kind is float:
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise _refuse("must be a finite number")
        return number
    if kind is str or origin is Literal:
        return _text(value)
    if origin is list:
        return _text_list(value)
    if origin is dict or (isinstance(kind, type) and issubclass(kind, BaseModel)):
        if isinstance(value, (Mapping, BaseModel)):
            return value
        raise _refuse("must be a mapping of fields" if origin is not dict else "must be a mapping")
    return value


def _refuse(message: str) -> PydanticCustomError:
    return PydanticCustomError("harness_type", message)


def _number(value: Any) -> float | None:
    """A number's value as a float: ints, floats and numeric text; None for anything else (a bool included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str)):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _refuse("must be text")


def _text_list(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _refuse("must be a list, or comma-separated text")
    names = [name for name in (_text(item).strip() for item in items) if name]
    return [] if len(names) == 1 and names[0].lower() in EMPTY_LIST_WORDS else names


class StrictModel(BaseModel):
    """Typed fields read by `coerce` (one rule), bounds and choices on the fields, unknown fields refused.

    Building one from plain values (`parse`) or assigning a field in code checks the value the same way; a
    bad one is one UserError line naming the dotted field, `where` (e.g. 'rollout.') before its name.
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
    where: ClassVar[str] = ""  # the dotted prefix of this model's fields in error lines

    @field_validator("*", mode="before")
    @classmethod
    def _read(cls, value: Any, info: ValidationInfo) -> Any:
        return coerce(value, cls.model_fields[info.field_name].annotation)

    @classmethod
    def parse(cls, values: Any, where: str | None = None):
        """The model from plain values (YAML, --set, a saved file), or one UserError line for the first bad one."""
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise UserError(error_line(err, cls, cls.where if where is None else where)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise UserError(error_line(err, type(self), self.where)) from None


BOUND_WORDS = {"greater_than": ("gt", "above"), "greater_than_equal": ("ge", "at least"),
               "less_than": ("lt", "below"), "less_than_equal": ("le", "at most")}
PYDANTIC_WORDS = {"dict_type": "must be a mapping", "model_type": "must be a mapping of fields",
                  "model_attributes_type": "must be a mapping of fields", "string_type": "must be text",
                  "list_type": "must be a list"}


def error_line(err: ValidationError, model: type[BaseModel], where: str = "") -> str:
    """The first error of `err` as one line naming the dotted field, e.g. 'rollout.top_p: must be at most 1, got
    1.5' or "unknown config field 'rollout.foo'; valid: ..."."""
    first = err.errors(include_url=False)[0]
    loc, kind, ctx, value = first["loc"], first["type"], first.get("ctx") or {}, first.get("input")
    name = where + ".".join(str(part) for part in loc)
    if kind == "extra_forbidden":
        owner = model_at(model, loc[:-1])
        valid = sorted(owner.model_fields) if owner else []
        return f"unknown config field '{name}'; valid: {', '.join(valid)}"
    if kind in BOUND_WORDS:
        key, words = BOUND_WORDS[kind]
        return f"{name}: must be {words} {number_text(ctx[key])}, got {value!r}"
    if kind == "literal_error":
        owner = model_at(model, loc[:-1])
        choices = typing.get_args(owner.model_fields[str(loc[-1])].annotation) if owner else ()
        return f"{name}: {value!r} is not one of: {', '.join(map(str, choices))}"
    if kind == "value_error" and "error" in ctx:
        return f"{name}: {ctx['error']}" if loc else str(ctx["error"])
    return f"{name}: {PYDANTIC_WORDS.get(kind, first['msg'])}, got {value!r}"


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (a section of `model`, or `model` itself)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        kind = field.annotation if field else None
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return None
        model = kind
    return model


def number_text(number: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5': a bound as the user would write it."""
    return str(int(number)) if float(number).is_integer() else str(number)
