"""Real-process failure tests: ``kill -9`` of the agent at every persisted install state, a full
disk (a real 1 MiB tmpfs), truncated and corrupted bundles — each through the ``edgekit-agent``
CLI a bench engineer or the device would run.

The kill uses the installer's test-only hook (``EDGEKIT_TEST_KILL_AT=STATE`` SIGKILLs the process
right after STATE is persisted, ``STATE+`` right after its side effect). After the kill a
consistent slot must already be serving (old or new, complete); a restarted ``edgekit-agent run``
must recover, publish its events over MQTT and serve the new verified model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from agent.endpoint import LocalClient
from agent.installer import CRASH_ENV, TRANSITIONS
from edgekit.core import topics
from edgekit.core.mqtt import MqttConnection
from edgekit.demo import Proc, provision_device

STATES = sorted({s for s, _ in TRANSITIONS if s not in ("checking_release", "downloading", "rolling_back")
                  and not s.startswith("rollback_")})  # commanded rollbacks: tests/test_agent_rollback.py
FLEET = "demo"


def agent_cli(cfg, *args, env=None):
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def device(tmp_path, broker, keystore, name="dev-crash"):
    home = tmp_path / name
    cfg = provision_device(home, name, "raspberry-pi-4", broker.port, keystore.root_path, telemetry_s=30)
    cfg.write_text(cfg.read_text() + "\n[endpoint]\nport = 0\n")
    return home, cfg


def status(cfg):
    out = agent_cli(cfg, "status")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class Events:
    def __init__(self, port, device_id):
        self.items: list[dict] = []
        self.conn = MqttConnection(f"crash-{uuid.uuid4().hex[:6]}", "127.0.0.1", port)
        self.conn.connect()
        self.conn.subscribe([(topics.events(FLEET, device_id), 1)], lambda t, p, _: self.items.append(json.loads(p)))

    def wait_state(self, states, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if hit := next((e for e in self.items if e["state"] in states), None):
                return hit
            time.sleep(0.05)
        raise AssertionError(f"no {states} event; got {[e['state'] for e in self.items]}")


@pytest.mark.parametrize("point", [s + sfx for s in STATES for sfx in ("", "+")])
def test_kill_9_at_every_persisted_state_then_restart(point, tmp_path, broker, keystore, make_bundle):
    v1, v2 = make_bundle(version="1.0.0", release=700), make_bundle(version="2.0.0", release=701)
    home, cfg = device(tmp_path, broker, keystore)
    assert agent_cli(cfg, "install", str(v1)).returncode == 0

    killed = agent_cli(cfg, "install", str(v2), env={CRASH_ENV: point})
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-500:])
    mid = status(cfg)  # right after the kill: a complete model is current
    assert mid["installed"]["version"] in ("1.0.0", "2.0.0") and mid["last_install"] == point.rstrip("+")
    slot = home / "data" / "slots" / mid["installed"]["slot"]
    assert (slot / "model.onnx").stat().st_size > 0 and (slot / "manifest.json").exists()

    events = Events(broker.port, "dev-crash")
    agent = Proc("dev-crash", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    try:
        ready = agent.ready()
        assert ready["version"] == "2.0.0", ready
        recovering = events.wait_state({"recovering"})
        assert recovering["details"]["from_state"] == point.rstrip("+") and recovering["details"]["attempt"] == 2
        final = events.wait_state({"committed", "failed", "rolled_back"})
        assert final["state"] == "committed" and final["ok"] is True, final
        client = LocalClient(port=ready["endpoint_port"])
        assert client.get("/v1/health")["version"] == "2.0.0"
        client.close()
    finally:
        agent.stop()
        events.conn.close()
    after = status(cfg)
    assert after["installed"]["version"] == "2.0.0" and after["last_install"] == "committed"
    assert not list((home / "data" / "work").glob("*/extracted"))  # nothing half-written left behind


def test_truncated_and_corrupted_bundles_are_refused_and_leave_nothing(tmp_path, broker, keystore, make_bundle):
    home, cfg = device(tmp_path, broker, keystore, "dev-bad")
    assert agent_cli(cfg, "install", str(make_bundle(version="1.0.0", release=710))).returncode == 0
    import tarfile

    path = make_bundle(version="2.0.0", release=711)
    good = path.read_bytes()
    with tarfile.open(path) as tar:
        model = tar.getmember("model.onnx")
    truncated, corrupted = tmp_path / "truncated.bundle", tmp_path / "corrupted.bundle"
    truncated.write_bytes(good[: len(good) * 2 // 3])
    flip = model.offset_data + model.size // 2  # inside the model's bytes: the tar itself stays valid
    corrupted.write_bytes(good[:flip] + bytes([good[flip] ^ 0xFF]) + good[flip + 1:])
    for bad in (truncated, corrupted):
        out = agent_cli(cfg, "install", str(bad))
        assert out.returncode == 5, out.stderr  # BundleError family
        assert json.loads(out.stdout)["error"]["code"] == "integrity", out.stdout
        assert status(cfg)["installed"]["version"] == "1.0.0"
        assert not list((home / "data" / "work").glob("*/*"))
        assert sorted(p.name for p in (home / "data" / "slots").iterdir()) in (["a"], ["a", "b"])


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 192 KiB tmpfs: room for the config and one small model, not for a second one."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_refuses_cleanly_and_keeps_serving(tiny_disk, broker, keystore, make_bundle):
    home, cfg = device(tiny_disk, broker, keystore, "dev-full")
    assert agent_cli(cfg, "install", str(make_bundle(version="1.0.0", release=720))).returncode == 0
    filler = tiny_disk / "filler"
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    filler.write_bytes(b"\0" * max(free - 16 * 1024, 0))  # leave 16 KiB: less than a bundle
    out = agent_cli(cfg, "install", str(make_bundle(version="2.0.0", release=721)))
    assert out.returncode == 8, out.stderr  # StorageError
    err = json.loads(out.stdout)["error"]
    assert err["code"] == "storage" and "free space" in err["message"] and err["hint"]
    filler.unlink()
    assert status(cfg)["installed"]["version"] == "1.0.0"
    assert not list((home / "data" / "work").glob("*/*"))
    # with room again the same install goes through
    assert agent_cli(cfg, "install", str(make_bundle(version="2.0.0", release=722))).returncode == 0
    assert status(cfg)["installed"]["version"] == "2.0.0"


@pytest.mark.parametrize("point", ["checking_release", "checking_release+", "downloading", "downloading+"])
def test_kill_9_while_downloading_an_ota_deployment(point, tmp_path, broker, registry, keystore, make_bundle,
                                                    monkeypatch):
    from edgekit.deploy import make_notice, push, read_manifest, upload

    v1, v2 = make_bundle(version="1.0.0", release=730), make_bundle(version="2.0.0", release=731)
    home, cfg = device(tmp_path, broker, keystore)
    assert agent_cli(cfg, "install", str(v1)).returncode == 0
    events = Events(broker.port, "dev-crash")
    monkeypatch.setenv(CRASH_ENV, point)
    doomed = Proc("dev-crash", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    monkeypatch.delenv(CRASH_ENV)
    try:
        doomed.ready()
        notice = make_notice(read_manifest(v2), upload(v2, registry.url), device="dev-crash", fleet=FLEET,
                             signer=keystore.notice_signer())
        push(events.conn, FLEET, "dev-crash", notice)
        assert doomed.proc.wait(timeout=60) == -9
        mid = status(cfg)
        assert mid["installed"]["version"] == "1.0.0" and mid["last_install"] == point.rstrip("+")
        agent = Proc("dev-crash", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                     home / "agent.log")
        try:
            assert agent.ready()["version"] == "2.0.0"
            recovering = events.wait_state({"recovering"})
            assert recovering["details"]["from_state"] == point.rstrip("+")
            final = events.wait_state({"committed", "failed", "rolled_back"})
            assert final["state"] == "committed" and final["deployment_id"] == notice["deployment_id"], final
        finally:
            agent.stop()
    finally:
        doomed.stop()
        events.conn.close()
    assert not list((home / "data" / "downloads").iterdir())  # the downloaded bundle is removed after commit
