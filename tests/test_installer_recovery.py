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


@pytest.mark.parametrize("lost_to", ["previous-record", "torn-file"])
@pytest.mark.parametrize("state", ["verifying", "staging", "health_check"])
def test_a_power_cut_that_loses_the_non_durable_records_still_leaves_a_serving_model(
        state, lost_to, tmp_path, keystore, make_bundle):
    """Records before DURABLE_STATES are not fsynced (ADR 0012): a power cut may bring back the last
    durable record (the previous install's final one) or, on some filesystems, a torn file. The
    device then serves the previous model, and the next deployment overwrites the inactive slot."""
    v1, v2 = make_bundle(version="1.0.0", release=30), make_bundle(version="2.0.0", release=31)
    assert make_installer(tmp_path, keystore).install(InstallRequest("d1", bundle_path=str(v1))).state == "committed"
    durable = (tmp_path / "state.json").read_bytes()
    inst = make_installer(tmp_path, keystore)
    crash_in(inst, state, after_side_effect=True)
    with pytest.raises(PowerCut):
        inst.install(InstallRequest("d2", bundle_path=str(v2)))
    (tmp_path / "state.json").write_bytes(durable if lost_to == "previous-record" else b'{"request": {"deploy')
    assert make_installer(tmp_path, keystore).recover() is None  # nothing to resume ...
    assert inst.slots.installed()["version"] == "1.0.0"          # ... and the old model serves
    rec = make_installer(tmp_path, keystore).install(InstallRequest("d3", bundle_path=str(v2)))
    assert rec.state == "committed" and inst.slots.installed()["version"] == "2.0.0"


@pytest.mark.parametrize("torn", [b"", b'{"version": "2.0'])
def test_a_torn_installed_record_falls_back_to_the_slot_and_installs_go_on(torn, tmp_path, keystore, make_bundle):
    """installed.json is written non-durably (ADR 0012): a power cut may leave it empty or cut. The
    committed slot's manifest says what serves, and the next install is not blocked by the bad file."""
    v1, v2 = make_bundle(version="1.0.0", release=60), make_bundle(version="2.0.0", release=61)
    inst = make_installer(tmp_path, keystore)
    assert inst.install(InstallRequest("d1", bundle_path=str(v1))).state == "committed"
    (tmp_path / "installed.json").write_bytes(torn)
    assert inst.slots.installed()["version"] == "1.0.0"
    rec = make_installer(tmp_path, keystore).install(InstallRequest("d2", bundle_path=str(v2)))
    assert rec.state == "committed" and inst.slots.installed()["version"] == "2.0.0"


def test_only_records_before_a_slot_switch_and_the_final_one_are_fsynced(tmp_path, keystore, make_bundle,
                                                                         monkeypatch):
    """ADR 0012: the durable "switching" record, then the switch (symlink rename, not fsynced on its
    own), then the durable final record whose directory fsync also persists the symlink (same dir)."""
    import agent.installer as installer_mod
    import agent.slots as slots_mod

    saved: list[tuple[str, bool]] = []
    real_json, real_link = installer_mod.atomic_write_json, slots_mod.atomic_symlink

    def spy_json(path, obj, durable=True):
        if path.name == "state.json":
            saved.append((obj["state"], durable))
        return real_json(path, obj, durable=durable)

    def spy_link(target, link, durable=True):
        assert link.parent == tmp_path  # the directory the final record's fsync covers
        saved.append(("current -> " + target, durable))
        return real_link(target, link, durable)

    monkeypatch.setattr(installer_mod, "atomic_write_json", spy_json)
    monkeypatch.setattr(slots_mod, "atomic_symlink", spy_link)
    v1 = make_bundle(version="1.0.0", release=40)
    assert make_installer(tmp_path, keystore).install(InstallRequest("d1", bundle_path=str(v1))).state == "committed"
    assert saved == [("verifying", False), ("staging", False), ("health_check", False), ("switching", True),
                     ("current -> slots/a", False), ("committed", True)]


@pytest.mark.parametrize("background_fails", [False, True])
def test_the_slot_is_fsynced_before_the_switch_once_or_again_if_the_background_sync_failed(
        background_fails, tmp_path, keystore, make_bundle, monkeypatch):
    import threading

    import agent.slots as slots_mod

    calls: list[str] = []
    real = slots_mod.Slots.sync

    def sync(self, slot):
        calls.append(threading.current_thread().name)
        if background_fails and threading.current_thread().name == "slot-sync":
            raise OSError(5, "I/O error")
        return real(self, slot)

    monkeypatch.setattr(slots_mod.Slots, "sync", sync)
    v1 = make_bundle(version="1.0.0", release=50)
    assert make_installer(tmp_path, keystore).install(InstallRequest("d1", bundle_path=str(v1))).state == "committed"
    assert calls == (["slot-sync", "MainThread"] if background_fails else ["slot-sync"])


def test_the_time_floor_is_persisted_in_steps_and_never_goes_back(tmp_path, keystore, monkeypatch):
    """ADR 0015: time_floor.json is written (durably) when it falls FLOOR_STEP_S behind, not on every
    install; the reference time is still max(clock, floor) to the second."""
    import json

    import agent.installer as installer_mod

    writes = []
    real = installer_mod.atomic_write_json
    monkeypatch.setattr(installer_mod, "atomic_write_json",
                        lambda path, obj, durable=True: (writes.append((path.name, obj, durable)),
                                                         real(path, obj, durable=durable))[1])
    clock = [installer_mod.AGENT_BUILD_TIME + 10 * 86400.0]
    monkeypatch.setattr(installer_mod.time, "time", lambda: clock[0])
    inst = make_installer(tmp_path, keystore)
    floor_file = tmp_path / "time_floor.json"

    assert inst._reference_time() == clock[0]
    assert writes == [("time_floor.json", {"floor": clock[0]}, True)]
    first = clock[0]
    clock[0] += installer_mod.FLOOR_STEP_S - 1           # within a step: the exact clock, no write
    assert inst._reference_time() == clock[0] and len(writes) == 1
    clock[0] += 2                                        # a step behind: persisted again
    assert inst._reference_time() == clock[0] and len(writes) == 2
    assert json.loads(floor_file.read_text())["floor"] == clock[0]
    clock[0] = first - 86400                             # the clock was set back (RTC lost after a power cut)
    assert inst._reference_time() == first + installer_mod.FLOOR_STEP_S + 1 and len(writes) == 2
