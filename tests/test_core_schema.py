"""edgekit.core.schema.validate: nested tables, arrays of tables, every error at once."""

from __future__ import annotations

import re

import pytest

from edgekit.core import schema as s

SCHEMA = {
    "name": (str, True, s.matches(re.compile(r"^[a-z]+$"), "lower-case letters")),
    "count": (int, True, s.positive),
    "ratio": ((int, float), False, s.fraction),
    "flag": (bool, False, None),
    "kind": (str, False, s.one_of(("a", "b"))),
    "tags": (list, False, s.each_of(("x", "y"))),
    "inner": {
        "depth": (int, True, s.non_negative),
        "deeper": {"leaf": (str, True, None)},
    },
    "items": [{"id": (int, True, None), "label": (str, False, None)}],
}


def valid_doc() -> dict:
    return {
        "name": "abc", "count": 3, "ratio": 0.5, "flag": True, "kind": "a", "tags": ["x"],
        "inner": {"depth": 0, "deeper": {"leaf": "ok"}},
        "items": [{"id": 1}, {"id": 2, "label": "two"}],
    }


def problems(doc, **kw) -> list[str]:
    return s.validate(doc, SCHEMA, **kw)


def test_valid_document_has_no_errors():
    assert problems(valid_doc()) == []


def test_optional_scalars_may_be_absent():
    doc = valid_doc()
    for key in ("ratio", "flag", "kind", "tags"):
        del doc[key]
    assert problems(doc) == []


def test_non_object_document():
    assert s.validate([1], SCHEMA) == ["document: must be an object"]


def test_nested_table_paths():
    doc = valid_doc()
    doc["inner"]["depth"] = -1
    doc["inner"]["deeper"] = {"leaf": 5, "extra": 1}
    assert sorted(problems(doc)) == sorted([
        "inner.depth: must be >= 0 (got -1)",
        "inner.deeper.extra: unknown field",
        "inner.deeper.leaf: must be str, got int 5",
    ])


def test_nested_table_wrong_type_and_missing():
    doc = valid_doc()
    doc["inner"] = "flat"
    assert problems(doc) == ["inner: must be a table"]
    del doc["inner"]
    assert problems(doc) == ["inner: missing required field"]
    assert s.validate(doc, SCHEMA, optional_sections=frozenset({"inner"})) == []


def test_array_of_tables_paths():
    doc = valid_doc()
    doc["items"] = [{"id": 1}, {"label": 3}, {"id": "x", "bogus": 0}]
    assert sorted(problems(doc)) == sorted([
        "items[1].id: missing required field",
        "items[1].label: must be str, got int 3",
        "items[2].bogus: unknown field",
        "items[2].id: must be int, got str 'x'",
    ])
    doc["items"] = {"id": 1}
    assert problems(doc) == ["items: must be an array of tables"]


def test_all_errors_reported_at_once():
    doc = {"name": "ABC", "count": 0, "ratio": 2, "flag": 1, "kind": "z", "tags": ["x", "q"],
           "inner": {"deeper": {}}, "items": [{}], "surprise": None}
    errs = problems(doc)
    paths = sorted(e.split(":")[0] for e in errs)
    assert paths == sorted(["name", "count", "ratio", "flag", "kind", "tags", "inner.depth",
                            "inner.deeper.leaf", "items[0].id", "surprise"])


@pytest.mark.parametrize("field,value", [("count", True), ("count", 1.0), ("flag", 1), ("ratio", False)])
def test_bool_and_numbers_do_not_mix(field, value):
    doc = valid_doc()
    doc[field] = value
    [err] = problems(doc)
    assert err.startswith(f"{field}: must be ")


def test_allow_unknown():
    doc = valid_doc() | {"extra": 1}
    doc["inner"]["more"] = 2
    assert problems(doc, allow_unknown=True) == []
    assert len(problems(doc)) == 2


@pytest.mark.parametrize("check,good,bad,reason", [
    (s.positive, 1, 0, "must be > 0"),
    (s.non_negative, 0, -1, "must be >= 0"),
    (s.fraction, 1, 1.5, "must be between 0 and 1"),
    (s.one_of((32, 64)), 64, 16, "must be one of 32, 64"),
    (s.each_of(("x",)), ["x"], ["x", "y"], "unknown value(s) ['y']; allowed: x"),
])
def test_checks(check, good, bad, reason):
    assert check(good) is None
    assert check(bad) == reason
