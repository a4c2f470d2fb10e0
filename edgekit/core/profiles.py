"""Hardware-profile schema, loader and validator (``edgekit.profile/1``).

A profile is one TOML file in ``firmware_profiles/`` describing a device class: CPU, memory,
runtime, accelerators, budgets and validation settings. This module only parses and checks;
it does not decide conversion recipes (that is ``converters``) or enforce budgets at install
time (that is the agent).

The schema is data (``SCHEMA`` below): each field has a type and an optional check, so that a
malformed profile is rejected with the dotted field path and the reason.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ProfileError
from .schema import each_of, fraction, matches, non_negative, one_of, positive, validate

SCHEMA_ID = "edgekit.profile/1"
ENGINES = ("onnxruntime", "tflite", "tflite-micro", "coreml")
ENGINE_FORMATS = {"onnxruntime": "onnx", "tflite": "tflite", "tflite-micro": "tflite", "coreml": "mlpackage"}
PRECISIONS = ("fp32", "fp16", "int8-static", "int8-dynamic", "int8-full", "int16x8", "int8-mixed")
CLASSES = ("phone", "wearable", "sbc", "mcu", "gateway", "accelerator-board")
ARCHES = ("aarch64", "armv7", "armv7e-m", "armv8-m", "x86_64", "xtensa", "riscv32", "riscv64")
CPU_FEATURES = (
    "neon", "dotprod", "i8mm", "fp16", "sve", "sve2", "sse4_2", "avx2", "avx512f",
    "avx512_vnni", "avx_vnni", "dsp", "fpu", "helium", "pie",
)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")

# (type, required, check). Nested dicts are sections; a list of one dict is an array of tables.
SCHEMA: dict[str, Any] = {
    "schema": (str, True, one_of((SCHEMA_ID,))),
    "id": (str, True, matches(_ID_RE, "lower-case letters, digits and dashes")),
    "name": (str, True, None),
    "class": (str, True, one_of(CLASSES)),
    "vendor": (str, True, None),
    "cpu": {
        "arch": (str, True, one_of(ARCHES)),
        "cores": (int, True, positive),
        "clock_mhz": (int, True, positive),
        "features": (list, False, each_of(CPU_FEATURES)),
    },
    "memory": {
        "ram_bytes": (int, True, positive),
        "external_ram_bytes": (int, False, non_negative),
        "flash_bytes": (int, True, positive),
        "word_bits": (int, True, one_of((32, 64))),  # type: ignore[arg-type]
        "model_ram_budget_bytes": (int, True, positive),
        "model_flash_budget_bytes": (int, True, positive),
    },
    "runtime": {
        "engine": (str, True, one_of(ENGINES)),
        "version_min": (str, True, matches(_VERSION_RE, "a version like 1.16")),
        "version_max": (str, False, matches(_VERSION_RE, "a version like 1.20")),
        "format": (str, True, one_of(tuple(sorted(set(ENGINE_FORMATS.values()))))),
        "opset_min": (int, False, positive),
        "opset_max": (int, False, positive),
        "layout": (str, True, one_of(("NCHW", "NHWC"))),
        "static_shapes": (bool, True, None),
        "threads": (int, True, positive),
        "precisions": (list, True, each_of(PRECISIONS)),
        "op_allowlist": (list, False, None),
    },
    "accelerators": [{
        "name": (str, True, None),
        "delegate": (str, True, None),
        "precisions": (list, True, each_of(PRECISIONS)),
        "accepts_qdq": (bool, True, None),
        "tops": ((int, float), False, non_negative),
    }],
    "budgets": {
        "max_model_bytes": (int, True, positive),
        "latency_p50_ms": ((int, float), True, positive),
        "latency_p95_ms": ((int, float), True, positive),
        "max_accuracy_drop": ((int, float), True, fraction),
        "max_output_rel_error": ((int, float), True, positive),
        "max_peak_memory_bytes": (int, True, positive),
    },
    "validation": {
        "golden_vectors": (int, True, positive),
        "atol": ((int, float), True, non_negative),
        "rtol": ((int, float), True, non_negative),
        "min_top1_agreement": ((int, float), True, fraction),
        "min_cosine": ((int, float), True, fraction),
        "min_task_score": ((int, float), False, fraction),   # task metric budget (converters.tasks); default 0.9
    },
}


def _cross_checks(d: dict, errors: list[str]) -> None:
    mem, rt, bud = d.get("memory", {}), d.get("runtime", {}), d.get("budgets", {})

    def le(a_path: str, a: Any, b_path: str, b: Any) -> None:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > b:
            errors.append(f"{a_path}: {a} exceeds {b_path} ({b})")

    le("memory.model_ram_budget_bytes", mem.get("model_ram_budget_bytes"), "memory.ram_bytes + external_ram_bytes",
       (mem.get("ram_bytes") or 0) + (mem.get("external_ram_bytes") or 0))
    le("memory.model_flash_budget_bytes", mem.get("model_flash_budget_bytes"), "memory.flash_bytes", mem.get("flash_bytes"))
    le("budgets.max_model_bytes", bud.get("max_model_bytes"), "memory.model_flash_budget_bytes", mem.get("model_flash_budget_bytes"))
    le("budgets.max_peak_memory_bytes", bud.get("max_peak_memory_bytes"), "memory.model_ram_budget_bytes", mem.get("model_ram_budget_bytes"))
    le("budgets.latency_p50_ms", bud.get("latency_p50_ms"), "budgets.latency_p95_ms", bud.get("latency_p95_ms"))
    le("runtime.opset_min", rt.get("opset_min"), "runtime.opset_max", rt.get("opset_max"))
    engine, fmt = rt.get("engine"), rt.get("format")
    if engine in ENGINE_FORMATS and fmt and ENGINE_FORMATS[engine] != fmt:
        errors.append(f"runtime.format: engine {engine!r} needs format {ENGINE_FORMATS[engine]!r} (got {fmt!r})")
    if rt.get("precisions") == []:
        errors.append("runtime.precisions: must list at least one precision")


@dataclass(frozen=True)
class Profile:
    """A validated hardware profile. ``raw`` keeps every field; helpers expose the common ones."""

    id: str
    raw: dict = field(repr=False)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def device_class(self) -> str:
        return self.raw["class"]

    @property
    def engine(self) -> str:
        return self.raw["runtime"]["engine"]

    @property
    def format(self) -> str:
        return self.raw["runtime"]["format"]

    @property
    def precisions(self) -> list[str]:
        return list(self.raw["runtime"]["precisions"])

    @property
    def threads(self) -> int:
        return int(self.raw["runtime"]["threads"])

    @property
    def budgets(self) -> dict:
        return dict(self.raw["budgets"])

    @property
    def validation(self) -> dict:
        return dict(self.raw["validation"])

    @property
    def accelerators(self) -> list[dict]:
        return list(self.raw.get("accelerators", []))

    def summary(self) -> dict:
        """A flat view for tables and ``--json``."""
        return {
            "id": self.id, "name": self.name, "class": self.device_class,
            "arch": self.raw["cpu"]["arch"], "engine": self.engine, "format": self.format,
            "precisions": self.precisions, "ram_bytes": self.raw["memory"]["ram_bytes"],
            "max_model_bytes": self.budgets["max_model_bytes"],
        }


def validate_profile_dict(data: dict, expected_id: str | None = None) -> list[str]:
    """Return a list of ``"field.path: reason"`` strings; empty when the profile is valid."""
    errors = validate(data, SCHEMA, optional_sections=frozenset({"accelerators"}))
    _cross_checks(data, errors)
    if expected_id is not None and data.get("id") != expected_id:
        errors.append(f"id: must equal the file name {expected_id!r} (got {data.get('id')!r})")
    return errors


def load_profile_file(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}", path=str(path)) from None
    errors = validate_profile_dict(data, expected_id=path.stem)
    if errors:
        raise ProfileError(
            f"{path.name}: invalid profile:\n  - " + "\n  - ".join(errors),
            hint="Fix the fields listed above; see firmware_profiles/README.md for the schema.",
            path=str(path), errors=errors,
        )
    return Profile(id=data["id"], raw=data, path=path)


def profiles_dir() -> Path:
    """The bundled ``firmware_profiles`` folder (installed as a package-data directory)."""
    import firmware_profiles

    return Path(firmware_profiles.__file__).parent


def list_profiles(directory: Path | None = None) -> list[Profile]:
    directory = directory or profiles_dir()
    return [load_profile_file(p) for p in sorted(directory.glob("*.toml"))]


def load_profile(name_or_path: str, directory: Path | None = None) -> Profile:
    """Load a profile by id (from the bundled folder) or by path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        return load_profile_file(candidate)
    directory = directory or profiles_dir()
    path = directory / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(p.stem for p in sorted(directory.glob("*.toml")))
        raise ProfileError(f"unknown profile {name_or_path!r}; known profiles: {known}", profile=name_or_path)
    return load_profile_file(path)
