"""Rollout state in the database: the plan, one row per target device, and the queries the
engine and the API need. Everything a running rollout knows lives here, so a registry restart
resumes exactly where it stopped. Does not send anything (see ``rollout_engine``).

Rollout states: running → succeeded | aborted | cancelled; running ⇄ paused;
any of them except rolled_back → rolling_back → rolled_back.
Target states: pending → sent → succeeded | failed | timed_out (``rollback_state`` likewise for
the notice that puts the previous release back); pending | sent → superseded when a newer rollout
takes the device over (``rollout_overlap``, ADR 0011).
"""

from __future__ import annotations

import hashlib
import time
import uuid

from sqlalchemy import JSON, Float, Integer, String, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgekit.core.errors import UsageError

from . import catalog, inventory, rollout_overlap, rules
from .db import Base, serialize_writers

ACTIVE = ("running", "paused", "rolling_back")
FINISHED = ("succeeded", "failed", "timed_out")
DONE = FINISHED + ("superseded",)  # nothing more to wait for (superseded: a newer rollout took the device)
OVERLAP_LOCK = 0x6564676C  # PostgreSQL advisory lock id: creating rollouts (overlap check + insert)
ACTIONS = {  # action → (states it applies to, new state)
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "cancel": (("running", "paused"), "cancelled"),
    "rollback": (("running", "paused", "succeeded", "aborted", "cancelled"), "rolling_back"),
}


class Rollout(Base):
    __tablename__ = "rollouts"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(String(256))
    waves: Mapped[list] = mapped_column(JSON)
    wave_sizes: Mapped[list] = mapped_column(JSON)
    rules: Mapped[list] = mapped_column(JSON)
    timeout_s: Mapped[float] = mapped_column(Float)
    rate_per_min: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True)
    wave: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(512))
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    rollback_of: Mapped[str | None] = mapped_column(String(16))  # schema 3: the rollout this one rolls back


class Target(Base):
    __tablename__ = "rollout_targets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(String(16), index=True)
    device: Mapped[str] = mapped_column(String(64))
    fleet: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(64))
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    deployment_id: Mapped[str | None] = mapped_column(String(64), index=True)
    sent_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(512))
    prev_model: Mapped[str | None] = mapped_column(String(128))
    prev_version: Mapped[str | None] = mapped_column(String(64))
    baseline_p95: Mapped[float | None] = mapped_column(Float)
    rollback_state: Mapped[str | None] = mapped_column(String(16))
    rollback_deployment_id: Mapped[str | None] = mapped_column(String(64), index=True)
    rollback_sent_at: Mapped[float | None] = mapped_column(Float)
    superseded_by: Mapped[str | None] = mapped_column(String(16))  # schema 3: the rollout that took it over


def create(engine: Engine, *, model: str, version: str, selector: str, waves: list[float], abort_if: list[str],
           timeout_s: float, rate_per_min: float | None, supersede: bool = False, devices: list[str] | None = None,
           rollback_of: str | None = None) -> dict:
    """Create a running rollout. Devices already in an active rollout are refused
    (:class:`RolloutConflictError`) unless ``supersede`` hands them over (:mod:`.rollout_overlap`).
    ``devices`` narrows the selection to those ids (a rollback to an earlier release)."""
    rule_list = [rules.parse_rule(r) for r in abort_if]
    if timeout_s <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout_s}", hint="Seconds before a silent device counts as failed, e.g. 300.")
    stage, arts = catalog.artifacts_for(engine, model, version)
    if stage != "released":
        raise UsageError(f"{model}@{version} is {stage}; only released versions can be rolled out",
                         hint=f"Release it first: `edgekit models stage {model}@{version} released`.")
    wanted = devices
    devices = inventory.select_devices(engine, selector)
    if wanted is not None:
        keep = set(wanted)
        devices = [d for d in devices if d["id"] in keep]
        selector = f"devices of rollout {rollback_of}" if rollback_of else ",".join(f"id={d}" for d in sorted(keep))
    if not devices:
        raise UsageError(f"selector {selector!r} matches no device", hint="`edgekit fleet ls --to SELECTOR` previews it.")
    missing = sorted({d["profile"] or "unknown" for d in devices} - set(arts))
    if missing:
        raise UsageError(f"{model}@{version} has no artifact for profile(s) {', '.join(missing)} "
                         f"used by selected devices", hint="Release the model for those profiles, or narrow --to.")
    rid = uuid.uuid4().hex[:10]
    order = sorted(devices, key=lambda d: hashlib.sha256(f"{rid}/{d['id']}".encode()).digest())
    sizes = rules.wave_sizes(len(order), waves)
    now = time.time()
    with Session(engine) as s, s.begin():
        serialize_writers(s, OVERLAP_LOCK)  # the overlap check and the new targets form one step
        found = rollout_overlap.conflicts(s, [d["id"] for d in order], also=rollback_of)
        if found and not supersede:
            raise rollout_overlap.refuse(found)
        taken = rollout_overlap.supersede(s, found, rid, now) if found else {}
        s.add(Rollout(id=rid, model=model, version=version, selector=selector, waves=waves, wave_sizes=sizes,
                      rules=rule_list, timeout_s=timeout_s, rate_per_min=rate_per_min, state="running", wave=0,
                      created=now, updated=now, rollback_of=rollback_of,
                      reason=(f"superseded {', '.join(f'{n} device(s) of {o}' for o, n in taken.items())}"
                              if taken else None)))
        for i, d in enumerate(order):
            wave = next(w for w, k in enumerate(sizes) if i < k)
            s.add(Target(rollout_id=rid, device=d["id"], fleet=d["fleet"], profile=d["profile"], wave=wave,
                         state="pending", prev_model=d["model"], prev_version=d["version"],
                         baseline_p95=(d.get("inference") or {}).get("p95_ms")))
    return status(engine, rid)


def _get(s: Session, rid: str) -> Rollout:
    r = s.get(Rollout, rid)
    if r is None:
        raise UsageError(f"unknown rollout {rid!r}", hint="`edgekit rollout status` lists rollouts.")
    return r


def act(engine: Engine, rid: str, action: str) -> dict:
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}", hint="e.g. `edgekit rollout pause ID`.")
    allowed, new = ACTIONS[action]
    with Session(engine) as s, s.begin():
        r = _get(s, rid)
        if r.state not in allowed:
            raise UsageError(f"cannot {action} rollout {rid}: it is {r.state}",
                             hint=f"{action} applies to rollouts that are {' / '.join(allowed)}.")
        r.state, r.updated = new, time.time()
        if action == "rollback":
            r.reason = (r.reason + "; " if r.reason else "") + "rollback requested"
            for t in s.scalars(select(Target).where(Target.rollout_id == rid, Target.state.in_(("succeeded", "sent")),
                                                    Target.superseded_by.is_(None))):  # a newer rollout owns the rest
                t.rollback_state = "pending"
    return status(engine, rid)


def counts(s: Session, rid: str) -> dict[str, int]:
    rows = s.execute(select(Target.state, func.count()).where(Target.rollout_id == rid).group_by(Target.state))
    return {state: n for state, n in rows}


def status(engine: Engine, rid: str, with_targets: bool = False) -> dict:
    with Session(engine) as s:
        r = _get(s, rid)
        out = summary(s, r)
        if with_targets:
            out["targets"] = [{"device": t.device, "profile": t.profile, "wave": t.wave + 1, "state": t.state,
                               "deployment_id": t.deployment_id, "error_code": t.error_code, "error": t.error,
                               "sent_at": t.sent_at, "finished_at": t.finished_at,
                               "previous": f"{t.prev_model}@{t.prev_version}" if t.prev_model else None,
                               "rollback": t.rollback_state, "superseded_by": t.superseded_by}
                              for t in s.scalars(select(Target).where(Target.rollout_id == rid).order_by(Target.id))]
        return out


def summary(s: Session, r: Rollout) -> dict:
    c = counts(s, r.id)
    rb = dict(s.execute(select(Target.rollback_state, func.count()).where(
        Target.rollout_id == r.id, Target.rollback_state.is_not(None)).group_by(Target.rollback_state)).all())
    return {"id": r.id, "model": r.model, "version": r.version, "selector": r.selector, "state": r.state,
            "wave": r.wave + 1, "waves": r.waves, "wave_sizes": r.wave_sizes, "rules": [x["text"] for x in r.rules],
            "timeout_s": r.timeout_s, "rate_per_min": r.rate_per_min, "reason": r.reason, "created": r.created,
            "updated": r.updated, "total": sum(c.values()), "counts": c, "rollback_counts": rb,
            "rollback_of": r.rollback_of}


def list_rollouts(engine: Engine) -> list[dict]:
    with Session(engine) as s:
        return [summary(s, r) for r in s.scalars(select(Rollout).order_by(Rollout.created.desc()))]
