"""The device side of a signed rollback command (``InstallRequest(kind="rollback")``), in process
with real bundles, real signatures and onnxruntime: back to the previous verified A/B slot after a
health check, refusals that keep the current model serving, a crash mid-rollback, and the
anti-rollback floor that a rollback never lowers for downloads."""

from __future__ import annotations

import pytest

from agent.installer import InstallRequest, Installer
from edgekit.core.profiles import load_profile


class PowerCut(BaseException):
    pass


def make_installer(data_dir, keystore, events):
    return Installer(data_dir, load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda s, ok, d, e, dep: events.append((s, ok, e.code if e else None)), health_runs=3)


def rollback(inst, version, dep="rb1", model="digits-cnn"):
    return inst.install(InstallRequest(dep, model=model, version=version, kind="rollback"))


@pytest.fixture
def two_installed(tmp_path, keystore, make_bundle):
    """1.0.0 (release 1) then 3.0.0 (release 3) installed: A/B slots hold both, 3.0.0 serves."""
    events: list = []
    inst = make_installer(tmp_path, keystore, events)
    for dep, (v, rel) in (("d1", ("1.0.0", 1)), ("d3", ("3.0.0", 3))):
        assert inst.install(InstallRequest(dep, bundle_path=str(make_bundle(version=v, release=rel)))).state \
            == "committed"
    events.clear()
    return inst, events


def test_rollback_switches_to_the_previous_slot_after_a_health_check(two_installed):
    inst, events = two_installed
    before = inst.slots.current()
    rec = rollback(inst, "1.0.0")
    assert rec.state == "rolled_back" and rec.error is None
    assert [(s, ok) for s, ok, _ in events] == [("rollback_check", True), ("rollback_health", True),
                                                ("rolling_back", True), ("rolled_back", True)]
    assert rec.details["health"]["failures"] == [] and rec.details["from_version"] == "3.0.0"
    served = inst.slots.installed()
    assert served["version"] == "1.0.0" and served["slot"] != before and served["deployment_id"] == "rb1"
    events.clear()
    assert rollback(inst, "1.0.0", "rb2").state == "already_installed"  # idempotent
    assert events[-1][:2] == ("already_installed", True)


def test_rollback_refused_without_a_matching_previous_slot(two_installed, tmp_path, keystore, make_bundle):
    inst, events = two_installed
    rec = rollback(inst, "2.0.0")
    assert rec.state == "failed" and rec.error["code"] == "rollback_unavailable"
    assert "previous slot holds digits-cnn@1.0.0" in rec.error["message"] and rec.error["hint"]
    assert events[-1] == ("failed", False, "rollback_unavailable")
    assert inst.slots.installed()["version"] == "3.0.0"  # still serving what it had
    fresh_events: list = []
    fresh = make_installer(tmp_path / "fresh", keystore, fresh_events)
    assert rollback(fresh, "1.0.0").error["code"] == "rollback_unavailable"  # nothing installed at all
    assert fresh.install(InstallRequest("x", bundle_path=str(make_bundle(version="1.0.0", release=1)))).state \
        == "committed"
    rec = rollback(fresh, "0.9.0")
    assert rec.error["code"] == "rollback_unavailable" and "no previous verified slot" in rec.error["message"]


def test_rollback_refused_when_the_previous_slot_fails_its_health_check(two_installed):
    inst, events = two_installed
    prev = inst.slots.inactive()
    manifest = inst.slots.manifest(prev)
    golden = inst.slots.path(prev) / manifest["golden"]["file"]
    import numpy as np

    with np.load(golden) as f:
        data = {k: (f[k] + 5.0 if k.startswith("out:") else f[k]) for k in f.files}
    np.savez(golden, **data)  # the slot no longer answers like its golden vectors
    rec = rollback(inst, "1.0.0")
    assert rec.state == "failed" and rec.details["failed_state"] == "rollback_health", rec.error
    assert inst.slots.installed()["version"] == "3.0.0"


def test_crash_mid_rollback_recovers_to_rolled_back(two_installed, tmp_path, keystore):
    inst, events = two_installed
    real = inst.handlers["rolling_back"]

    def cut(rec):
        real(rec)  # the switch happened, then power was lost before the state record moved on
        raise PowerCut()
    inst.handlers["rolling_back"] = cut
    with pytest.raises(PowerCut):
        rollback(inst, "1.0.0")
    after: list = []
    rec = make_installer(tmp_path, keystore, after).recover()
    assert rec.state == "rolled_back" and rec.error is None
    assert after[0][0] == "recovering" and after[-1] == ("rolled_back", True, None)
    assert inst.slots.installed()["version"] == "1.0.0"


def test_rollback_does_not_lower_the_download_floor(two_installed, make_bundle):
    inst, events = two_installed
    assert rollback(inst, "1.0.0").state == "rolled_back"
    assert inst.release_floor("digits-cnn") == 3
    rec = inst.install(InstallRequest("d2", bundle_path=str(make_bundle(version="2.0.0", release=2))))
    assert rec.state == "failed" and rec.error["code"] == "rollback"  # older than the release it rolled back from
    assert "rolled back from" in rec.error["message"]
    rec = inst.install(InstallRequest("d4", bundle_path=str(make_bundle(version="4.0.0", release=4))))
    assert rec.state == "committed"  # forward again is fine
