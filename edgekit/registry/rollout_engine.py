"""The rollout engine: one thread inside the registry that drives every active rollout.

Each tick, per rollout: read the outcome of sent notices from stored device events, time out
silent devices (they count as failed), evaluate the abort rules (install failures *and* ML
signals: parity failures, latency regression, drift), then send the next notices of the current
wave within the rate limit, and move to the next wave once every device of this one has
finished. A target row is marked ``sent`` (with its deployment id) *before* its notice is
published, so a restart never sends a second notice for one target; a notice lost in that gap
times out and counts as failed. Notices come from :func:`edgekit.deploy.make_notice`.

Rollback sends each updated device a signed ``cmd/rollback`` (:func:`edgekit.deploy.make_rollback`):
the device switches back to the previous slot it already verified (a deploy notice for the older
release would be refused by its anti-rollback counter) and answers ``rolled_back`` (ok).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from edgekit.core import messages, topics
from edgekit.deploy import TERMINAL_FAIL, TERMINAL_OK, make_notice, make_rollback

from . import catalog, rules
from .db import Device, EventRow
from .rollout_store import ACTIVE, DONE, FINISHED, Rollout, Target

log = logging.getLogger("edgekit.registry.rollouts")


class RolloutEngine:
    def __init__(self, engine: Engine, publish, base_url, tick_s: float = 0.2, can_send=lambda: True,
                 notice_signer=None) -> None:
        """``publish(topic, payload)`` sends a QoS 1 message; ``base_url()`` is the artifact host;
        ``can_send()`` says whether the broker connection is up (no notice is marked sent otherwise);
        ``notice_signer`` (``KeyStore.notice_signer()``) signs each notice for its one device — agents
        refuse unsigned notices."""
        self.engine, self.publish, self.base_url, self.tick_s = engine, publish, base_url, tick_s
        self.notice_signer = notice_signer
        self.can_send = can_send
        self.notices_sent = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-engine", daemon=True)
        self._artifacts: dict[tuple[str, str], dict] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a DB hiccup must not kill the engine; state is in the DB, retry next tick
                log.exception("rollout tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def tick(self, now: float | None = None) -> None:
        with Session(self.engine) as s:
            ids = list(s.scalars(select(Rollout.id).where(Rollout.state.in_(ACTIVE))))
        for rid in ids:
            self._step(rid, now or time.time())

    # -- one rollout -----------------------------------------------------------------------
    def _step(self, rid: str, now: float) -> None:
        to_send: list[tuple[Target, bytes]] = []
        command = "deploy"
        sendable = self.can_send()
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            r = s.get(Rollout, rid)
            self._collect(s, r, now)
            if r.state == "running":
                reason = rules.evaluate(r.rules, self.metrics(s, r))
                if reason:
                    r.state, r.reason, r.updated = "aborted", reason, now
                    log.warning("rollout %s aborted: %s", rid, reason)
                    return
                to_send = self._next_wave_notices(s, r, now) if sendable else []
            elif r.state == "rolling_back" and sendable:
                to_send, command = self._rollback_notices(s, r, now), "rollback"
        for t, payload in to_send:  # after the commit: the target is recorded as sent first
            self.publish(topics.command(t.fleet, t.device, command), payload)
            self.notices_sent += 1

    def _collect(self, s: Session, r: Rollout, now: float) -> None:
        sent = list(s.scalars(select(Target).where(Target.rollout_id == r.id, or_(
            Target.state == "sent", Target.rollback_state == "sent"))))
        if not sent:
            return
        by_dep = {t.deployment_id: t for t in sent if t.state == "sent"}
        by_rb = {t.rollback_deployment_id: t for t in sent if t.rollback_state == "sent"}
        q = select(EventRow).where(EventRow.deployment_id.in_(list(by_dep) + list(by_rb)),
                                   EventRow.state.in_(TERMINAL_OK + TERMINAL_FAIL))
        for ev in s.scalars(q):
            if (t := by_dep.pop(ev.deployment_id, None)) is not None:
                ok = ev.state in TERMINAL_OK
                t.state, t.finished_at = ("succeeded" if ok else "failed"), now
                if not ok:
                    err = (ev.payload or {}).get("error") or {}
                    t.error_code, t.error = ev.error_code or ev.state, str(err.get("message", ev.state))[:500]
            elif (t := by_rb.pop(ev.deployment_id, None)) is not None:  # answer to a cmd/rollback
                done = ev.state in TERMINAL_OK or (ev.state == "rolled_back" and ev.ok)
                t.rollback_state = "done" if done else "failed"
                if not done:
                    t.error = str(((ev.payload or {}).get("error") or {}).get("message", ev.state))[:500]
        for t in by_dep.values():
            if now - t.sent_at > r.timeout_s:
                t.state, t.finished_at, t.error_code = "timed_out", now, "timeout"
                t.error = f"no final answer within {r.timeout_s:.0f}s"
        for t in by_rb.values():
            if now - t.rollback_sent_at > r.timeout_s:
                t.rollback_state = "timed_out"

    def metrics(self, s: Session, r: Rollout) -> dict:
        targets = list(s.scalars(select(Target).where(Target.rollout_id == r.id, Target.state.in_(FINISHED))))
        failed = [t for t in targets if t.state != "succeeded"]
        out: dict = {"failure_rate": 100.0 * len(failed) / len(targets) if targets else None,
                     "parity_failures": sum(t.error_code == "parity" for t in failed),
                     "p95_latency": None, "drift": None}
        ok = {t.device: t for t in targets if t.state == "succeeded"}
        if ok:
            devs = s.scalars(select(Device).where(Device.id.in_(list(ok)), Device.version == r.version,
                                                  Device.model == r.model))
            pairs, drifts = [], []
            for d in devs:
                inf = d.inference or {}
                if inf.get("p95_ms") and ok[d.id].baseline_p95:
                    pairs.append((inf["p95_ms"], ok[d.id].baseline_p95))
                if isinstance(inf.get("drift_score"), (int, float)):
                    drifts.append(float(inf["drift_score"]))
            if pairs:
                out["p95_latency"] = statistics.median(p for p, _ in pairs) / statistics.median(b for _, b in pairs)
            out["drift"] = max(drifts) if drifts else None
        return out

    def _budget(self, s: Session, r: Rollout, now: float) -> int:
        """Notices allowed now: at most rate×window/60 in the last window (1 s, or 60/rate s below
        1/s), counted from the database so the limit holds across restarts and stays smooth."""
        if not r.rate_per_min:
            return 1 << 30
        window = max(1.0, 60.0 / r.rate_per_min)
        allowed = max(1, int(r.rate_per_min * window / 60))
        recent = s.scalar(select(func.count()).select_from(Target).where(Target.rollout_id == r.id, or_(
            Target.sent_at > now - window, Target.rollback_sent_at > now - window))) or 0
        return max(allowed - recent, 0)

    def _artifact(self, model: str, version: str, profile: str) -> dict | None:
        key = (model, version)
        if profile not in self._artifacts.get(key, {}):  # refresh on a miss: bundles may have been added
            self._artifacts[key] = catalog.artifacts_for(self.engine, model, version)[1]
        return self._artifacts[key].get(profile)

    def _notice(self, t: Target, model: str, version: str) -> dict | None:
        art = self._artifact(model, version, t.profile)
        if art is None:
            return None
        stored = {"url": f"{self.base_url()}/artifacts/{art['sha256']}.bundle", "sha256": art["sha256"],
                  "length": art["length"]}
        return make_notice(art["manifest"], stored, device=t.device, fleet=t.fleet, signer=self.notice_signer)

    def _next_wave_notices(self, s: Session, r: Rollout, now: float) -> list:
        wave_targets = list(s.scalars(select(Target).where(Target.rollout_id == r.id, Target.wave <= r.wave)))
        if all(t.state in DONE for t in wave_targets):
            if r.wave + 1 >= len(r.wave_sizes):
                r.state, r.updated = "succeeded", now
                return []
            r.wave, r.updated = r.wave + 1, now
            wave_targets = list(s.scalars(select(Target).where(Target.rollout_id == r.id, Target.wave <= r.wave)))
        out = []
        budget = self._budget(s, r, now)
        pending = [t for t in wave_targets if t.state == "pending"]
        if pending and budget > 0:  # read the artifacts afresh: a re-signed release replaces them (ADR 0011)
            self._artifacts.pop((r.model, r.version), None)
        for t in pending:
            if budget <= 0:
                break
            notice = self._notice(t, r.model, r.version)
            if notice is None:
                t.state, t.finished_at, t.error_code = "failed", now, "no_artifact"
                t.error = f"no artifact of {r.model}@{r.version} for profile {t.profile}"
                continue
            t.state, t.sent_at, t.deployment_id = "sent", now, notice["deployment_id"]
            out.append((t, messages.dumps(notice)))
            budget -= 1
        return out

    def _rollback_notices(self, s: Session, r: Rollout, now: float) -> list:
        out, budget = [], self._budget(s, r, now)
        pending = list(s.scalars(select(Target).where(Target.rollout_id == r.id,
                                                      Target.rollback_state.in_(("pending", "sent")))))
        for t in pending:
            if t.rollback_state == "sent" or t.state == "sent":
                continue  # waiting for an answer (to the rollback, or to the original notice)
            if t.state != "succeeded":
                t.rollback_state = "skipped"  # never updated: nothing to undo (the agent rolled back itself)
                continue
            if not t.prev_model or not t.prev_version:
                t.rollback_state, t.error = "failed", "the device had no model before this rollout: nothing to go back to"
                continue
            if budget <= 0:
                continue
            notice = make_rollback(t.prev_model, t.prev_version, device=t.device, fleet=t.fleet,
                                   signer=self.notice_signer, from_version=r.version)
            t.rollback_state, t.rollback_sent_at, t.rollback_deployment_id = "sent", now, notice["deployment_id"]
            out.append((t, messages.dumps(notice)))
            budget -= 1
        if not any(t.rollback_state in ("pending", "sent") for t in pending):
            r.state, r.updated = "rolled_back", now
        return out
