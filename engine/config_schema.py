"""The run config's schema: every section and key typed, checked before anything runs.

The schema is made from the specs themselves (each spec dataclass becomes a pydantic model that
forbids unknown keys, nested specs included), so a field added to a spec is a key of the config at
once. A config that does not fit is refused with every problem on its own line, each at its place
(``quantize[0].weights.bits``): an unknown key or section with the nearest valid name ("did you mean
'weights'?"), a wrong type with the type expected, a section written as a value with how to write
it. The values then build the specs, whose own checks (ranges, combinations) run as always.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError, create_model

from engine.errors import SpecError

MAX_SHOWN = 12  # problems listed at most; the rest are counted
EXPECTED = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "a string",
            "str": "a string", "dict": "a table", "model": "a table", "dataclass": "a table", "list": "a list",
            "tuple": "a list", "enum": "one of the listed values", "none": "nothing"}


def _json_type(value: object) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _swap_specs(annotation: Any) -> Any:
    """``annotation`` with every spec dataclass in it replaced by its schema model, and booleans and
    whole numbers strict (``"yes"`` is not true, ``"4"`` is not 4: a config says what it means)."""
    if annotation is bool:
        return StrictBool
    if annotation is int:
        return StrictInt
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return schema_of(annotation)
    arguments = typing.get_args(annotation)
    if not arguments:
        return annotation
    origin = typing.get_origin(annotation)
    swapped = tuple(_swap_specs(argument) for argument in arguments)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return typing.Union[swapped]  # noqa: UP007 - built from a runtime tuple
    return origin[swapped] if origin is not None else annotation


@functools.cache
def schema_of(kind: type) -> type[BaseModel]:
    """The pydantic model of spec dataclass ``kind``: its fields, their types and defaults, no other key."""
    hints = typing.get_type_hints(kind)
    fields = {}
    for spec_field in dataclasses.fields(kind):
        if not spec_field.init:
            continue
        if spec_field.default is not dataclasses.MISSING:
            default = spec_field.default
        elif spec_field.default_factory is not dataclasses.MISSING:
            default = None  # made by the spec itself when the key is left out
        else:
            default = ...
        annotation = _swap_specs(hints[spec_field.name])
        fields[spec_field.name] = (annotation | None if default is None else annotation, default)
    return create_model(f"{kind.__name__}Keys", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)


def spec_from(kind: type, values: BaseModel | dict) -> Any:
    """The spec ``kind`` built from validated values (nested specs built first; keys left out take
    the spec's defaults)."""
    given = values.model_dump(exclude_unset=True) if isinstance(values, BaseModel) else dict(values)
    hints = typing.get_type_hints(kind)
    built = {}
    for name, value in given.items():
        inner = [t for t in (hints[name], *typing.get_args(hints[name])) if dataclasses.is_dataclass(t) and isinstance(t, type)]
        built[name] = spec_from(inner[0], value) if inner and isinstance(value, dict) else value
    return kind(**built)


def _place(location: tuple) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the config"


def _known_keys(schema: type[BaseModel], location: tuple) -> list[str]:
    """The keys allowed where ``location`` points (its parent's fields)."""
    model: Any = schema
    for part in location:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        candidates += [inner for candidate in candidates for inner in typing.get_args(candidate)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(getattr(model, "model_fields", {})) if model is not None else []


def _problem(error: dict, schema: type[BaseModel], hints: dict[str, str]) -> str:
    location = tuple(error["loc"])
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        key, parent = location[-1], location[:-1]
        known = _known_keys(schema, parent)
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        where = f"{_place(parent)} has" if parent else "The config has"
        what = "section" if not parent else "key"
        suggestion = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(known)}." if known else "."
        return f"{where} an unknown {what} '{key}'{suggestion}"
    value = error.get("input")
    place = _place(location)
    if kind in ("model_type", "dict_type", "dataclass_type", "model_attributes_type") and location and location[0] in hints:
        return f"{place}: expected a table, got {_json_type(value)} {value!r:.60}; {hints[location[0]]}"
    if kind == "missing":
        return f"{place} is missing."
    if kind == "enum":
        allowed = error.get("ctx", {}).get("expected", "").replace(" or ", ", ")
        return f"{place}={value!r:.60} is not supported; use one of {allowed}."
    expected = next((text for key, text in EXPECTED.items() if kind.startswith(key)), error["msg"])
    hint = f"; {hints[location[0]]}" if len(location) == 1 and location[0] in hints else "."
    return f"{place}: expected {expected}, got {_json_type(value)} {value!r:.60}{hint}"


def validate(schema: type[BaseModel], data: dict, hints: dict[str, str] | None = None) -> BaseModel:
    """``data`` checked against ``schema``; SpecError listing every problem at its place."""
    try:
        return schema.model_validate(data)
    except ValidationError as invalid:
        problems = list(dict.fromkeys(_problem(error, schema, hints or {}) for error in invalid.errors()))
        if len(problems) == 1:
            raise SpecError(f"The config does not fit its schema: {problems[0]}") from None
        more = f"\n- and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise SpecError(f"The config does not fit its schema ({len(problems)} problems):\n- "
                        + "\n- ".join(problems[:MAX_SHOWN]) + more) from None


def within(place: str, build: typing.Callable[[], Any]) -> Any:
    """``build()``, a SpecError it raises prefixed with the config place it came from."""
    try:
        return build()
    except SpecError as error:
        raise SpecError(f"{place}: {error}") from None
    except TypeError as error:  # a spec called with a key it does not take (the schema lets none through)
        raise SpecError(f"{place}: {error}") from None


def labels_of(vocabulary: type[Enum]) -> str:
    return ", ".join(repr(member.value) for member in vocabulary)
