"""edgekit-agent: the on-device side. Verifies, installs and serves models; reports telemetry.

Imports ``edgekit.core`` and one inference runtime, never onnx, click, converters or the
registry (enforced by ``tests/test_agent_imports.py``).
"""

__version__ = "0.1.0"
