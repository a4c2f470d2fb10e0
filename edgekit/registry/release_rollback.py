"""Roll a rollout back to *any* earlier release (ADR 0011): a new rollout of that release to the
devices the rollout updated, which takes them over (``supersede``).

A device keeps one previous release (its inactive A/B slot), which the signed ``cmd/rollback``
returns to (ADR 0009). Further back, the device must download and install the earlier model like
any release — and its anti-rollback check only accepts a release counter *above* every release it
ran. So the chosen version's artifact must carry a counter above every other release of the model
the registry holds for that profile; if it does not, this refuses with :class:`RollbackError`,
whose hint is the re-sign step (``edgekit rollout rollback ID --to M@V --keys DIR`` re-releases the
same content with a new counter: the release key stays with the operator, never in the registry).
Sends nothing itself; the engine sends the new rollout's notices.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from edgekit.core.errors import RollbackError, UsageError

from . import catalog, rollout_store
from .rollout_store import Rollout, Target


def updated_targets(engine: Engine, rid: str) -> tuple[Rollout, list[Target]]:
    """The rollout and its targets that got (or may have got) its release and no newer rollout owns."""
    with Session(engine, expire_on_commit=False) as s:
        r = rollout_store._get(s, rid)
        targets = list(s.scalars(select(Target).where(Target.rollout_id == rid, Target.state.in_(("succeeded", "sent")),
                                                      Target.superseded_by.is_(None)).order_by(Target.device)))
        s.expunge_all()
        return r, targets


def rollback_to(engine: Engine, rid: str, model: str, version: str, *, timeout_s: float = 300.0,
                waves: list[float] | None = None) -> dict:
    r, targets = updated_targets(engine, rid)
    if model != r.model:
        raise UsageError(f"rollout {rid} rolled out {r.model}, not {model}",
                         hint=f"Pick an earlier version of {r.model}: `edgekit models show {r.model}`.")
    if version == r.version:
        raise UsageError(f"{model}@{version} is the release rollout {rid} installs, not an earlier one",
                         hint=f"`edgekit models show {model}` lists its versions.")
    if not targets:
        raise UsageError(f"rollout {rid} updated no device that it still owns: nothing to roll back",
                         hint=f"`edgekit rollout status {rid} --devices` shows its targets.")
    stage, arts = catalog.artifacts_for(engine, model, version)
    profiles = sorted({t.profile for t in targets})
    if missing := [p for p in profiles if p not in arts]:
        raise UsageError(f"{model}@{version} has no artifact for profile(s) {', '.join(missing)}",
                         hint="Release and upload it for those profiles first.")
    floors = catalog.newest_releases(engine, model, besides=version)
    low = {p: (arts[p]["release"], floors[p]) for p in profiles if arts[p]["release"] <= floors.get(p, 0)}
    if low:
        what = "; ".join(f"{p}: release {have} is not above release {floor}" for p, (have, floor) in low.items())
        previous_slot = all((t.prev_model, t.prev_version) == (model, version) for t in targets)
        raise RollbackError(
            f"devices would refuse {model}@{version} (anti-rollback counter): {what}",
            hint=(f"Re-sign it as a newer release: `edgekit rollout rollback {rid} --to {model}@{version} --keys DIR` "
                  "(the key store that released it)"
                  + (f"; or `edgekit rollout rollback {rid}`: it is the devices' previous slot, switched back to "
                     "without a download" if previous_slot else "") + "."),
            low={p: {"release": h, "newest": f} for p, (h, f) in low.items()})
    out = rollout_store.create(engine, model=model, version=version, selector="all",
                               devices=[t.device for t in targets], waves=waves or [100.0], abort_if=[],
                               timeout_s=timeout_s, rate_per_min=r.rate_per_min, supersede=True, rollback_of=rid)
    with Session(engine) as s, s.begin():  # create() handed rid's devices over under its lock (rollback_of)
        old = s.get(Rollout, rid)
        note = f"rolled back to {model}@{version} by rollout {out['id']}"
        old.reason, old.updated = (f"{old.reason}; {note}" if old.reason else note), time.time()
        if old.state in ("running", "paused"):
            old.state = "cancelled"  # no more notices of the release being rolled back
    return rollout_store.status(engine, out["id"])
