"""One active rollout per device (ADR 0011): find the devices a new rollout would share with
active rollouts, and hand them over when the operator asks for it (``supersede``).

A device *belongs* to an active rollout while it is a target of a rollout that is running or
paused (whatever the target's own state: a paused rollout may still send to it, and a later
rollback of that rollout would act on it), or a target whose rollback is still pending or in
flight in a rolling-back rollout. Targets handed over are marked ``superseded_by``: a pending or
in-flight one becomes state ``superseded`` (the engine never sends to it again and does not count
it as failed), a finished one keeps its outcome. A later rollback of the older rollout skips them.
An older rollout left with nothing but superseded targets ends ``cancelled``.

Callers hold the registry's write lock (:func:`edgekit.registry.db.serialize_writers`), so two
rollouts created at the same moment cannot both take the same device. Sends nothing.
"""

from __future__ import annotations

import time

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from edgekit.core.errors import RolloutConflictError

SHOWN = 5  # devices named per rollout in the error message (all of them are in the error's details)


def conflicts(s: Session, devices: list[str], also: str | None = None) -> dict[str, dict]:
    """``{rollout id: {"state": ..., "devices": [...]}}`` for active rollouts that hold any of ``devices``;
    ``also``: a rollout whose devices count as held whatever its state (the one a rollback-to replaces,
    finished or not, so a later plain rollback of it cannot switch them away)."""
    from .rollout_store import Rollout, Target

    if not devices:
        return {}
    owned = or_(Rollout.state.in_(("running", "paused")),
                and_(Rollout.state == "rolling_back", Target.rollback_state.in_(("pending", "sent"))))
    if also:
        owned = or_(owned, Rollout.id == also)
    rows = s.execute(select(Target.rollout_id, Rollout.state, Target.device)
                     .join(Rollout, Rollout.id == Target.rollout_id)
                     .where(owned, Target.superseded_by.is_(None), Target.device.in_(devices))
                     .order_by(Target.rollout_id, Target.device))
    out: dict[str, dict] = {}
    for rid, state, device in rows:
        out.setdefault(rid, {"state": state, "devices": []})["devices"].append(device)
    return out


def refuse(found: dict[str, dict]) -> RolloutConflictError:
    parts = []
    for rid, c in found.items():
        devs = c["devices"]
        more = f" and {len(devs) - SHOWN} more" if len(devs) > SHOWN else ""
        parts.append(f"rollout {rid} ({c['state']}): {', '.join(devs[:SHOWN])}{more}")
    n = sum(len(c["devices"]) for c in found.values())
    return RolloutConflictError(f"{n} selected device(s) are already in an active rollout — " + "; ".join(parts),
                                conflicts={rid: c["devices"] for rid, c in found.items()})


def supersede(s: Session, found: dict[str, dict], new_id: str, now: float | None = None) -> dict[str, int]:
    """Hand the devices in ``found`` over to rollout ``new_id``; return ``{older rollout: devices taken}``."""
    from .rollout_store import FINISHED, Rollout, Target

    now = now or time.time()
    taken: dict[str, int] = {}
    for rid, c in found.items():
        targets = s.scalars(select(Target).where(Target.rollout_id == rid, Target.device.in_(c["devices"]),
                                                 Target.superseded_by.is_(None)))
        for t in targets:
            t.superseded_by = new_id
            if t.state not in FINISHED:  # pending or sent: this rollout stops caring about it
                t.state, t.finished_at, t.error = "superseded", now, f"superseded by rollout {new_id}"
            if t.rollback_state in ("pending", "sent"):
                t.rollback_state = "superseded"
            taken[rid] = taken.get(rid, 0) + 1
        r = s.get(Rollout, rid)
        left = s.scalar(select(Target.id).where(Target.rollout_id == rid, Target.superseded_by.is_(None)).limit(1))
        note = f"{taken.get(rid, 0)} device(s) superseded by rollout {new_id}"
        r.reason = f"{r.reason}; {note}" if r.reason else note
        if left is None and r.state in ("running", "paused"):
            r.state = "cancelled"
        r.updated = now
    return taken
