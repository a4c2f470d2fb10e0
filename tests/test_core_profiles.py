"""edgekit.core.profiles: bundled profiles load; broken copies fail with the dotted field path."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from edgekit.core import profiles
from edgekit.core.errors import ConfigError, ProfileError

BASE_ID = "esp32-s3"  # tflite-micro / tflite profile with [[accelerators]]


def base_text() -> str:
    return (profiles.profiles_dir() / f"{BASE_ID}.toml").read_text(encoding="utf-8")


def _section_span(text: str, section: str) -> tuple[int, int]:
    """Character span of a ``[section]`` / ``[[section]]`` body ("" = the top-level keys)."""
    headers = [m for m in re.finditer(r"^\[\[?([a-z_]+)\]\]?\s*$", text, re.MULTILINE)]
    if not section:
        return 0, headers[0].start()
    for i, m in enumerate(headers):
        if m.group(1) == section:
            return m.end(), headers[i + 1].start() if i + 1 < len(headers) else len(text)
    raise AssertionError(f"no [{section}] in the base profile")


def _edit(text: str, dotted: str, replacement: str | None) -> str:
    section, _, key = dotted.rpartition(".")
    start, end = _section_span(text, section)
    body = text[start:end]
    pattern = re.compile(rf"^{re.escape(key)} = .*\n", re.MULTILINE)
    assert len(pattern.findall(body)) == 1, f"{dotted!r} is not a unique line in the base profile"
    body = pattern.sub(lambda _: "" if replacement is None else f"{key} = {replacement}\n", body)
    return text[:start] + body + text[end:]


def set_key(text: str, dotted: str, value: str) -> str:
    """Replace the value of ``section.key`` (the whole line, trailing comment included)."""
    return _edit(text, dotted, value)


def drop_key(text: str, dotted: str) -> str:
    return _edit(text, dotted, None)


def add_after_header(text: str, header: str, line: str) -> str:
    assert f"\n{header}\n" in text
    return text.replace(f"\n{header}\n", f"\n{header}\n{line}\n", 1)


def write_profile(directory: Path, text: str, stem: str = BASE_ID) -> Path:
    path = directory / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        profiles.load_profile_file(path)
    return info.value


# -- bundled profiles --------------------------------------------------------------------------

def test_every_bundled_profile_loads():
    loaded = profiles.list_profiles()
    files = sorted(profiles.profiles_dir().glob("*.toml"))
    assert len(files) == 10
    assert [p.id for p in loaded] == [f.stem for f in files]
    for p in loaded:
        assert p.engine in profiles.ENGINES
        assert p.format == profiles.ENGINE_FORMATS[p.engine]
        assert p.precisions and set(p.precisions) <= set(profiles.PRECISIONS)
        assert p.summary()["id"] == p.id
        assert profiles.validate_profile_dict(p.raw, expected_id=p.id) == []


def test_load_profile_by_id_and_by_path(tmp_path):
    by_id = profiles.load_profile(BASE_ID)
    copy = write_profile(tmp_path, base_text())
    by_path = profiles.load_profile(str(copy))
    assert by_id.id == by_path.id == BASE_ID
    assert by_id.raw == by_path.raw
    assert by_path.path == copy


def test_unknown_profile_lists_known_ids():
    with pytest.raises(ProfileError) as info:
        profiles.load_profile("nope")
    msg = info.value.message
    assert "'nope'" in msg
    for stem in (p.stem for p in profiles.profiles_dir().glob("*.toml")):
        assert stem in msg
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 3


def test_missing_profile_file_raises_profile_error(tmp_path):
    err = load_error(tmp_path / "ghost.toml")
    assert "not found" in err.message


def test_unmodified_copy_is_valid(tmp_path):
    assert profiles.load_profile_file(write_profile(tmp_path, base_text())).id == BASE_ID


def test_accelerators_section_is_optional(tmp_path):
    text = base_text()
    text = text[: text.index("[[accelerators]]")] + text[text.index("\n[budgets]\n") + 1:]
    assert "accelerators" not in tomllib.loads(text)
    assert profiles.load_profile_file(write_profile(tmp_path, text)).accelerators == []


# -- broken copies: each error names the dotted path and the reason -----------------------------

BROKEN = {
    "missing_field": (lambda t: drop_key(t, "cpu.cores"), "cpu.cores: missing required field"),
    "string_for_int": (lambda t: set_key(t, "cpu.cores", '"2"'), "cpu.cores: must be int, got str"),
    "bool_for_int": (lambda t: set_key(t, "cpu.cores", "true"), "cpu.cores: must be int, got bool"),
    "bool_for_float": (lambda t: set_key(t, "validation.atol", "true"), "validation.atol: must be int or float, got bool"),
    "unknown_field": (lambda t: add_after_header(t, "[cpu]", "turbo = 1"), "cpu.turbo: unknown field"),
    "unknown_top_level": (lambda t: "colour = 'red'\n" + t, "colour: unknown field"),
    "check_fails": (lambda t: set_key(t, "cpu.cores", "0"), "cpu.cores: must be > 0"),
    "enum_fails": (lambda t: set_key(t, "cpu.arch", '"m68k"'), "cpu.arch: must be one of"),
    "bad_list_value": (lambda t: set_key(t, "cpu.features", '["fpu", "warp-drive"]'),
                       "cpu.features: unknown value(s) ['warp-drive']"),
    "accelerator_field": (lambda t: set_key(t, "accelerators.accepts_qdq", '"yes"'),
                          "accelerators[0].accepts_qdq: must be bool"),
    "model_bigger_than_flash_budget": (lambda t: set_key(t, "budgets.max_model_bytes", "5000000"),
                                       "budgets.max_model_bytes: 5000000 exceeds memory.model_flash_budget_bytes"),
    "p50_above_p95": (lambda t: set_key(t, "budgets.latency_p50_ms", "200.0"),
                      "budgets.latency_p50_ms: 200.0 exceeds budgets.latency_p95_ms"),
    "engine_format_mismatch": (lambda t: set_key(t, "runtime.format", '"onnx"'),
                               "runtime.format: engine 'tflite-micro' needs format 'tflite'"),
    "empty_precisions": (lambda t: set_key(t, "runtime.precisions", "[]"),
                         "runtime.precisions: must list at least one precision"),
    "section_not_table": (lambda t: "cpu = 3\n" + t.replace("[cpu]", "[cpu_x]", 1), "cpu: must be a table"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_profile_names_field_and_reason(tmp_path, case):
    mutate, expected = BROKEN[case]
    text = mutate(base_text())
    err = load_error(write_profile(tmp_path, text))
    assert expected in err.message
    assert expected in "\n".join(err.details["errors"])
    assert err.details["path"].endswith(f"{BASE_ID}.toml")


def test_id_must_equal_file_name(tmp_path):
    err = load_error(write_profile(tmp_path, base_text(), stem="other-board"))
    assert "id: must equal the file name 'other-board'" in err.message
    assert "'esp32-s3'" in err.message


def test_broken_toml(tmp_path):
    err = load_error(write_profile(tmp_path, base_text() + "\n[cpu\ncores = \n"))
    assert "not valid TOML" in err.message


def test_all_errors_reported_at_once(tmp_path):
    text = set_key(set_key(drop_key(base_text(), "vendor"), "cpu.cores", '"two"'), "runtime.format", '"onnx"')
    err = load_error(write_profile(tmp_path, text))
    joined = "\n".join(err.details["errors"])
    for expected in ("vendor: missing required field", "cpu.cores: must be int", "runtime.format: engine"):
        assert expected in joined
    assert len(err.details["errors"]) == 3


def test_validate_profile_dict_is_pure():
    data = tomllib.loads(base_text())
    assert profiles.validate_profile_dict(data) == []
    data["memory"]["model_ram_budget_bytes"] = 10**12
    errors = profiles.validate_profile_dict(data)
    assert any(e.startswith("memory.model_ram_budget_bytes:") for e in errors)
