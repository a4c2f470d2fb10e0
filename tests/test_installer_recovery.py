"""Crash safety of the install state machine: a crash (power cut) in any persisted state resumes
into a consistent place — the old model or the new verified one, never none.

In-process with real bundles, real signatures and onnxruntime; the crash is simulated by raising
a BaseException right after the state record is persisted (before the handler's side effect), or
after the side effect, so both halves of every state are covered.
"""

from __future__ import annotations

import pytest

from agent.installer import MAX_ATTEMPTS, TRANSITIONS, InstallRequest, Installer
from edgekit.core.profiles import load_profile

CRASHABLE = sorted({s for s, _ in TRANSITIONS if s not in ("checking_release", "downloading", "rolling_back")
                     and not s.startswith("rollback_")})  # commanded rollbacks: tests/test_agent_rollback.py


class PowerCut(BaseException):
    pass


def make_installer(data_dir, keystore, events=None):
    log = events if events is not None else []
    return Installer(data_dir, load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda s, ok, d, e, dep: log.append((s, ok, e.code if e else None)), health_runs=3)


def crash_in(inst, state, after_side_effect):
    real = inst.handlers[state]

    def handler(rec):
        if after_side_effect:
            real(rec)
        raise PowerCut(state)
    inst.handlers[state] = handler


@pytest.mark.parametrize("after", [False, True], ids=["before-effect", "after-effect"])
@pytest.mark.parametrize("state", CRASHABLE)
def test_crash_in_any_state_recovers_to_a_serving_model(state, after, tmp_path, keystore, make_bundle):
    v1, v2 = make_bundle(version="1.0.0", release=10), make_bundle(version="2.0.0", release=11)
    assert make_installer(tmp_path, keystore).install(InstallRequest("d1", bundle_path=str(v1))).state == "committed"

    inst = make_installer(tmp_path, keystore)
    crash_in(inst, state, after)
    with pytest.raises(PowerCut):
        inst.install(InstallRequest("d2", bundle_path=str(v2)))
    # whatever happened, the current slot holds a complete, verified model
    serving = inst.slots.installed()
    assert serving["version"] in ("1.0.0", "2.0.0")
    assert (inst.slots.path(serving["slot"]) / "model.onnx").exists()

    events = []
    rec = make_installer(tmp_path, keystore, events).recover()  # the agent restarts
    assert rec.state == "committed", (rec.state, rec.error)
    assert events[0][0] == "recovering"
    final = inst.slots.installed()
    assert final["version"] == "2.0.0" and final["release"] == 11


def test_loop_guard_gives_up_after_max_attempts(tmp_path, keystore, make_bundle):
    v1 = make_bundle(version="1.0.0", release=20)
    for attempt in range(MAX_ATTEMPTS):  # install + (MAX_ATTEMPTS - 1) recoveries, each cut
        inst = make_installer(tmp_path, keystore)
        crash_in(inst, "health_check", after_side_effect=False)
        with pytest.raises(PowerCut):
            if attempt == 0:
                inst.install(InstallRequest("d1", bundle_path=str(v1)))
            else:
                inst.recover()
    events = []
    rec = make_installer(tmp_path, keystore, events).recover()
    assert rec.state == "failed" and "giving up" in rec.error["message"]
    assert events[-1] == ("failed", False, "install")


def test_health_check_failure_keeps_previous_model(tmp_path, keystore, make_bundle):
    import numpy as np

    from edgekit.core import parity

    v1 = make_bundle(version="1.0.0", release=30)
    inst = make_installer(tmp_path, keystore)
    assert inst.install(InstallRequest("d1", bundle_path=str(v1))).state == "committed"
    real = inst.handlers["health_check"]

    def corrupt_golden_then_check(rec):
        golden = inst.slots.path(rec.slot) / "golden.npz"
        ins, outs = parity.load_golden(golden)
        golden.write_bytes(parity.save_golden(ins, {k: -v + 5 for k, v in outs.items()}))
        real(rec)
    inst.handlers["health_check"] = corrupt_golden_then_check
    rec = inst.install(InstallRequest("d2", bundle_path=str(make_bundle(version="1.1.0", release=31))))
    assert rec.state == "failed" and rec.error["code"] == "parity"
    assert "health check failed" in rec.error["message"]
    assert inst.slots.installed()["version"] == "1.0.0"
    assert np.isfinite(rec.details["health"]["latency_p95_ms"])


def test_loop_guard_during_switch_rolls_back_to_previous_model(tmp_path, keystore, make_bundle):
    v1, v2 = make_bundle(version="1.0.0", release=40), make_bundle(version="2.0.0", release=41)
    assert make_installer(tmp_path, keystore).install(InstallRequest("d1", bundle_path=str(v1))).state == "committed"
    for attempt in range(MAX_ATTEMPTS):
        inst = make_installer(tmp_path, keystore)
        crash_in(inst, "switching", after_side_effect=True)  # the symlink already points at 2.0.0
        with pytest.raises(PowerCut):
            inst.install(InstallRequest("d2", bundle_path=str(v2))) if attempt == 0 else inst.recover()
    events = []
    rec = make_installer(tmp_path, keystore, events).recover()
    assert rec.state == "rolled_back" and "giving up" in rec.error["message"]
    assert inst.slots.installed()["version"] == "1.0.0"
    assert events[-1] == ("rolled_back", False, "install")


def test_recover_without_interrupted_install_is_a_no_op(tmp_path, keystore, make_bundle):
    inst = make_installer(tmp_path, keystore)
    assert inst.recover() is None
    assert inst.install(InstallRequest("d1", bundle_path=str(make_bundle(release=50)))).state == "committed"
    assert make_installer(tmp_path, keystore).recover() is None
