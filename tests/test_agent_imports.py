"""The agent must stay light: importing it (and running an install) never loads host libraries."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("onnx", "click", "converters", "sqlalchemy", "edgekit.registry", "edgekit.cli", "requests",
             "tflite", "edgekit.keys")

PROBE = """
import json, sys
import agent.cli, agent.service, agent.installer, agent.fetch, agent.runtime, agent.telemetry, agent.endpoint
before = set(sys.modules)
import edgekit.core.bundle, edgekit.core.trust   # loaded lazily when a bundle arrives
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split('.')[0] in ("onnx", "click", "converters",
       "sqlalchemy", "requests", "tflite") or m.startswith(("edgekit.registry", "edgekit.cli", "edgekit.keys"))),
       "tuf_at_start": any(m.startswith("tuf") for m in before)}))
"""


def test_agent_import_does_not_load_host_libraries():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["loaded"] == [], f"agent pulled in host-only modules: {result['loaded']}"
    assert result["tuf_at_start"] is False, "tuf (~20 MB) must be imported only when a bundle arrives"


def test_forbidden_list_is_checked_against_real_module_names():
    # guard against a vacuous test: the host CLI really does load these
    probe = "import sys, edgekit.cli.main, converters.onnx_pipeline, edgekit.registry.db; " \
            "print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "click" in out.stdout and "sqlalchemy" in out.stdout
