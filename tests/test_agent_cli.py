"""``edgekit-agent install`` (bench flashing, no network): same checks as over the air, exit codes
from the error tree, and the previous model stays installed after a refusal."""

from __future__ import annotations

import json
import subprocess
import sys

from edgekit.core.errors import IntegrityError, ParityError, exit_code_for
from edgekit.demo import provision_device


def _flash(cfg, bundle, *extra):
    return subprocess.run([sys.executable, "-m", "agent.cli", "install", str(bundle), "--config", str(cfg), *extra],
                          capture_output=True, text=True, timeout=120)


def _config(tmp_path, keystore):
    return provision_device(tmp_path, "bench-1", "raspberry-pi-4", 1, keystore.root_path, fleet="lab")


def test_bench_flash_then_refuse_tampered_bundle(tmp_path, keystore, make_bundle):
    cfg = _config(tmp_path, keystore)
    ok = _flash(cfg, make_bundle(version="3.0.0", release=300))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["installed"]["version"] == "3.0.0"

    bad = make_bundle(version="3.1.0", release=301)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    res = _flash(cfg, bad)
    assert res.returncode == 5, res.stderr
    assert "error:" in res.stderr and "hint:" in res.stderr
    assert json.loads(res.stdout)["installed"]["version"] == "3.0.0"


def test_exit_code_for_follows_the_error_tree():
    assert exit_code_for(IntegrityError.code) == 5
    assert exit_code_for(ParityError.code) == 4
    assert exit_code_for("no-such-code") == 1
