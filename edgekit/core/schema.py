"""A tiny declarative validator for TOML/JSON documents (profiles, MQTT messages, configs).

A schema is a dict: ``key -> (type, required, check)`` for scalars, ``key -> {...}`` for a
nested table, ``key -> [{...}]`` for an array of tables. :func:`validate` returns every problem
as ``"dotted.path: reason"`` so callers can show the user all of them at once. It knows nothing
about what the documents mean.
"""

from __future__ import annotations

import re
from typing import Any, Callable

Check = Callable[[Any], "str | None"]


def one_of(options: tuple) -> Check:
    return lambda v: None if v in options else f"must be one of {', '.join(map(str, options))}"


def each_of(options: tuple[str, ...]) -> Check:
    def check(values: list) -> str | None:
        bad = [v for v in values if v not in options]
        return f"unknown value(s) {bad}; allowed: {', '.join(options)}" if bad else None
    return check


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def matches(regex: re.Pattern, what: str) -> Check:
    return lambda v: None if regex.fullmatch(v) else f"must be {what}"


def _type_name(t: Any) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def validate(data: Any, schema: dict, prefix: str = "", optional_sections: frozenset = frozenset(),
             allow_unknown: bool = False) -> list[str]:
    """Check ``data`` against ``schema``; return a list of problems (empty when valid)."""
    errors: list[str] = []
    if not isinstance(data, dict):
        return [f"{prefix or 'document'}: must be an object"]
    if not allow_unknown:
        errors += [f"{prefix}{key}: unknown field" for key in data if key not in schema]
    for key, spec in schema.items():
        if key not in data:
            required = spec[1] if isinstance(spec, tuple) else key not in optional_sections
            if required:
                errors.append(f"{prefix}{key}: missing required field")
            continue
        value = data[key]
        if type(spec) is tuple and type(value) is spec[0] and spec[2] is None:
            continue  # the common case, kept cheap: MQTT ingest validates every message (exact type, no check)
        path = f"{prefix}{key}"
        if isinstance(spec, dict):
            errors += validate(value, spec, path + ".", optional_sections, allow_unknown) if isinstance(value, dict) \
                else [f"{path}: must be a table"]
        elif isinstance(spec, list):
            if not isinstance(value, list):
                errors.append(f"{path}: must be an array of tables")
                continue
            for i, item in enumerate(value):
                errors += validate(item, spec[0], f"{path}[{i}].", optional_sections, allow_unknown)
        else:
            typ, _, check = spec
            # bool is an int subclass: never accept it for numbers, nor numbers for bools.
            if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
                errors.append(f"{path}: must be {_type_name(typ)}, got {type(value).__name__} {value!r}")
            elif check and (why := check(value)):
                errors.append(f"{path}: {why} (got {value!r})")
    return errors
