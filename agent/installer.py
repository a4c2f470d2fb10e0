"""The install state machine: download → verify → stage → health check → switch → commit.

States and their transitions are data (``TRANSITIONS``); each state has one handler that does
I/O and returns None ("ok") or another outcome named in the table. The state record
(``state.json``) is written atomically *before* each handler runs, so
after a crash :meth:`Installer.recover` re-enters the persisted state, whose handler is
idempotent. Only the records that precede a change of the serving slot (``DURABLE_STATES``) and
the final one are fsynced: the others survive any process crash, and after a power cut recovery
may restart from an earlier state, which is safe because every handler is idempotent and the
slots themselves are made durable before ``current`` moves (ADR 0012). ``attempts`` counts entries into the machine per deployment: past ``MAX_ATTEMPTS``
the deployment fails instead of looping. The serving slot is never written: a failure at any
point leaves the previous model serving (after the switch, a failure switches back).

Every transition is reported through ``emit(state, ok, details, error, deployment_id)``.

A signed ``cmd/rollback`` (``InstallRequest(kind="rollback")``) runs its own path through the same
persisted machine: ``rollback_check`` (the inactive slot — the one this device verified and served
before — must hold the requested model@version) → ``rollback_health`` (golden vectors of that slot)
→ ``rolling_back`` (switch) → ``rolled_back`` (ok). Nothing is downloaded, and the release the
device rolled back *from* stays the anti-rollback floor for later downloads (``release_floor.json``).

The health check runs in a worker thread with a deadline (``health_timeout_s``): a run that hangs
is cancelled (onnxruntime's terminate flag) or, for engines that cannot cancel, abandoned, and
the install fails with :class:`HealthTimeoutError`. An abandoned worker is kept in
``stuck_worker``: the running agent re-executes itself once the failure is recorded (ADR 0012),
because a TFLite ``invoke()`` cannot be interrupted from Python. The session it built is handed to
``on_commit`` so serving reuses it instead of loading the model a second time.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.core.atomic import atomic_write_json, ensure_free_space, read_json, remove_tree
from edgekit.core.errors import (BundleError, CompatibilityError, EdgekitError, HealthTimeoutError, InstallError,
                                 ParityError, RollbackError, RollbackUnavailableError, TransportError)
from edgekit.core.profiles import Profile

from .runtime import Runner, available_engines, load_runner, serving_threads
from .slots import Slots

TRANSITIONS: dict[tuple[str, str], str] = {
    ("checking_release", "ok"): "downloading",  # hosted TUF metadata lists it, fresh (ADR 0010; HTTP or broker)
    ("checking_release", "fail"): "failed",
    ("downloading", "ok"): "verifying",
    ("verifying", "ok"): "staging",
    ("verifying", "already_installed"): "already_installed",
    ("staging", "ok"): "health_check",
    ("health_check", "ok"): "switching",
    ("switching", "ok"): "committed",
    ("downloading", "fail"): "failed",
    ("verifying", "fail"): "failed",
    ("staging", "fail"): "failed",
    ("health_check", "fail"): "failed",
    ("switching", "fail"): "rolling_back",
    ("rolling_back", "ok"): "rolled_back",
    ("rolling_back", "fail"): "rolled_back",
    # a commanded rollback (kind="rollback"): back to the previous verified slot, health-checked first
    ("rollback_check", "ok"): "rollback_health",
    ("rollback_check", "already_installed"): "already_installed",
    ("rollback_check", "fail"): "failed",
    ("rollback_health", "ok"): "rolling_back",
    ("rollback_health", "fail"): "failed",
}
TERMINAL = ("committed", "failed", "rolled_back", "already_installed")
# records fsynced before their handler runs: it moves ``current``, and recovery after a power cut must
# know to finish the switch or switch back (the final record is fsynced too, in _finish)
DURABLE_STATES = ("switching", "rolling_back")
# The slot switch itself (``current`` symlink, installed.json) is not fsynced on its own: the final
# state record (_finish) is written durably right after it, and its fsync of data_dir also persists the
# symlink's rename (``current`` and state.json share that directory). Until then a power cut leaves the
# durable "switching"/"rolling_back" record, whose handler is simply redone.
MAX_ATTEMPTS = 3
# Take each member's digest while the bundle downloads (edgekit.core.bundle.MemberDigests, its own
# thread), so that verifying need not read the members back (ADR 0012). False: verify hashes while it
# copies, as for a bundle flashed from a file (benchmarks/agent.py compares both).
STREAMED_DIGESTS = True
# Test-only crash hook: "STATE" kills this process with SIGKILL right after STATE was persisted,
# "STATE+" right after its handler's side effect, "downloading~" halfway through a download. Unset in
# production (tests/test_agent_crash.py, tests/test_agent_mqtt_transfer.py).
CRASH_ENV = "EDGEKIT_TEST_KILL_AT"
# Latency runs stop early once MIN_LATENCY_RUNS samples (golden runs included) are all under
# budget / FAR_FROM_BUDGET: the p95 of the remaining runs could only cross the budget if a later run
# were 4x slower than every run so far; a gate against a model that does not fit the device does
# not need that precision, and serving latency p95/p99 stays in telemetry. Without a budget only the
# golden runs are timed (they are reported, nothing is gated on them).
MIN_LATENCY_RUNS = 5
FAR_FROM_BUDGET = 4.0
AGENT_BUILD_TIME = 1795600000.0  # a floor for the clock of devices without an RTC (2026-11)
# The persisted time floor (time_floor.json: metadata expiry is judged at max(clock, floor), so a clock
# set back cannot revive expired metadata) advances in steps: after a power cut and a clock reset the
# device judges expiry at most this much earlier than the last time it saw (ADR 0015).
FLOOR_STEP_S = 3600.0

Emit = Callable[[str, bool, dict, "EdgekitError | None", "str | None"], None]
OnCommit = Callable[[Path, dict, "Runner | None"], None]  # (slot dir, manifest, checked runner or None)


@dataclass
class InstallRequest:
    deployment_id: str
    bundle_path: str | None = None          # a local file (bench flashing) ...
    url: str | None = None                  # ... or a download described by a notice
    sha256: str | None = None
    length: int | None = None
    model: str | None = None
    version: str | None = None
    allow_downgrade: bool = False
    transport: str = "http"                 # how ``_download`` fetches: "http" (url) or "mqtt" (chunks)
    kind: str = "install"                   # "rollback": a signed cmd/rollback, no download


@dataclass
class InstallRecord:
    request: InstallRequest
    state: str
    attempts: int = 1
    slot: str | None = None
    previous_slot: str | None = None
    error: dict | None = None
    details: dict = field(default_factory=dict)


class Installer:
    def __init__(self, data_dir: Path, profile: Profile, trusted_root: Path, emit: Emit, *,
                 threads: int = 0, allow_expired: bool = False, health_runs: int = 20,
                 health_timeout_s: float = 60.0, on_commit: OnCommit | None = None, device_id: str | None = None,
                 device_key: Path | None = None, min_rate_bps: float | None = None, download_grace_s: float | None = None,
                 chunk_source: "Callable[[InstallRequest], object] | None" = None, spin: bool = False,
                 freshness: str = "auto", metadata_fetcher: "Callable[[float], object] | None" = None) -> None:
        self.data_dir = Path(data_dir)
        self.profile, self.trusted_root, self.emit = profile, trusted_root, emit
        self.threads, self.allow_expired, self.health_runs = threads, allow_expired, health_runs
        self.health_timeout_s = health_timeout_s
        self._checked: tuple[str, Runner] | None = None  # (slot, runner) that passed the health check
        self._sync: threading.Thread | None = None  # background fsync of a staged slot
        self._synced: list[str] = []  # the slot whose background fsync completed
        self.stuck_worker: threading.Thread | None = None  # a health-check thread that could not be stopped
        self.on_commit = on_commit
        self.slots = Slots(self.data_dir)
        self.state_path = self.data_dir / "state.json"  # beside slots.current_link: see DURABLE_STATES
        self.root_history = self.data_dir / "trust"  # newer roots followed after key rotations
        self.device_id, self.device_key = device_id, device_key  # to decrypt encrypted models
        self.handlers: dict[str, Callable[[InstallRecord], None]] = {
            "downloading": self._download, "verifying": self._verify, "staging": self._stage,
            "health_check": self._health_check, "switching": self._switch, "rolling_back": self._roll_back,
            "rollback_check": self._rollback_check, "rollback_health": self._health_check,
            "checking_release": self._check_release,
        }
        self.freshness = freshness  # [install] freshness: auto | require | off (agent/freshness.py)
        self.metadata_fetcher = metadata_fetcher  # hosted TUF metadata over the broker (agent/trust_mqtt.py)
        self._verified_manifest: dict | None = None
        self._streamed: tuple[str, dict | None] | None = None  # (bundle path, MemberDigests result)
        from .fetch import GRACE_S, MIN_RATE_BPS

        self.min_rate_bps = min_rate_bps or MIN_RATE_BPS  # slow-retrieval deadline (agent/fetch.py Deadline)
        self.download_grace_s = GRACE_S if download_grace_s is None else download_grace_s
        self.chunk_source = chunk_source  # the agent's MQTT chunk source factory (notice transport "mqtt")
        self.spin = spin  # [inference] spin: let ORT pool threads busy-wait

    # -- persistence -------------------------------------------------------------------------
    def _save(self, rec: InstallRecord, durable: bool = True) -> None:
        atomic_write_json(self.state_path, {**asdict(rec), "request": asdict(rec.request), "ts": time.time()},
                          durable=durable)

    def load_record(self) -> InstallRecord | None:
        try:
            raw = read_json(self.state_path)
        except ValueError:  # a non-durable record torn by a power cut: nothing to resume, the slots are whole
            return None
        if not raw:
            return None
        raw.pop("ts", None)
        return InstallRecord(**{**raw, "request": InstallRequest(**raw["request"])})

    def _work(self, rec: InstallRecord) -> Path:
        return self.data_dir / "work" / rec.request.deployment_id

    # -- driver ------------------------------------------------------------------------------
    def install(self, request: InstallRequest) -> InstallRecord:
        first = "rollback_check" if request.kind == "rollback" else "downloading" if request.url else "verifying"
        if first == "downloading" and self.freshness != "off" and (request.transport == "http"
                                                                   or self.metadata_fetcher is not None):
            first = "checking_release"
        rec = InstallRecord(request=request, state=first, previous_slot=self.slots.current())
        return self._drive(rec)

    def recover(self) -> InstallRecord | None:
        """Resume an install interrupted by a crash or power cut; None if there was none."""
        rec = self.load_record()
        if rec is None or rec.state in TERMINAL:
            return None
        rec.attempts += 1
        if rec.attempts > MAX_ATTEMPTS:
            err = InstallError(f"install of {rec.request.deployment_id} interrupted {rec.attempts - 1} times; giving up")
            if rec.state not in ("switching", "rolling_back"):
                return self._finish(rec, "failed", err)
            rec.error, rec.state = err.to_dict(), "rolling_back"  # the switch may have happened: undo it
        self.emit("recovering", True, {"from_state": rec.state, "attempt": rec.attempts}, None,
                  rec.request.deployment_id)
        return self._drive(rec)

    def _drive(self, rec: InstallRecord) -> InstallRecord:
        while rec.state not in TERMINAL:
            self._save(rec, durable=rec.state in DURABLE_STATES)  # persist *before* the side effect
            _crash_point(rec.state)
            self.emit(rec.state, True, dict(rec.details), None, rec.request.deployment_id)
            try:
                outcome, err = self.handlers[rec.state](rec) or "ok", None
                _crash_point(rec.state + "+")
            except EdgekitError as exc:
                outcome, err = "fail", exc
            except Exception as exc:  # a bug or an unexpected library error: never leave a half state
                outcome, err = "fail", InstallError(f"unexpected error in {rec.state}: {exc!r}")
            nxt = TRANSITIONS[(rec.state, outcome)]
            if err is not None:
                rec.error = err.to_dict()
                rec.details["failed_state"] = rec.state
                if nxt == "failed":
                    return self._finish(rec, "failed", err)
            rec.state = nxt
        return self._finish(rec, rec.state, None)

    def _finish(self, rec: InstallRecord, state: str, err: EdgekitError | None) -> InstallRecord:
        rec.state = state
        if err is not None:
            rec.error = err.to_dict()
        remove_tree(self._work(rec))
        if rec.request.url:  # what this notice downloaded (a refused bundle too: nothing accumulates on disk)
            self._discard_downloads(keep=None)
        self._save(rec)
        ok = state in ("committed", "already_installed") or (
            state == "rolled_back" and rec.request.kind == "rollback" and not rec.error)  # commanded: success
        self.emit(state, ok, dict(rec.details), err if err else (None if ok else _error_from(rec.error)),
                  rec.request.deployment_id)
        return rec

    # -- handlers (each idempotent) --------------------------------------------------------
    def _check_release(self, rec: InstallRecord) -> None:
        from .freshness import ReleaseCheck

        req = rec.request
        check = ReleaseCheck(self.data_dir, self.trusted_root, self.root_history, self._reference_time,
                             self.freshness, deadline_s=max(self.download_grace_s, 1.0))
        rec.details.update(check.check(req.url, model=req.model, version=req.version, profile=self.profile.id,
                                       sha256=req.sha256, length=req.length,
                                       fetcher=self.metadata_fetcher if req.transport == "mqtt" else None))

    def _download(self, rec: InstallRecord) -> None:
        from .fetch import download

        req = rec.request
        path = self.data_dir / "downloads" / f"{req.deployment_id}.bundle"
        self._discard_downloads(keep=req.deployment_id)  # leftovers of other deployments (killed mid-way)
        if not path.exists():
            if req.transport == "mqtt":
                if self.chunk_source is None:
                    raise TransportError("this notice asks for an MQTT chunk transfer, but the installer has no "
                                         "broker connection", retryable=False)
                source = self.chunk_source(req)
            else:
                source = req.url
            halfway = None  # test-only: "downloading~" kills the agent once half of the bytes are in the .part
            if os.environ.get(CRASH_ENV) == "downloading~":
                halfway = lambda have: have * 2 >= req.length and _crash_point("downloading~")  # noqa: E731
            from edgekit.core.bundle import MemberDigests

            digests = MemberDigests() if STREAMED_DIGESTS else None  # _verify then need not re-read the members
            try:
                download(source, path, length=req.length, sha256=req.sha256, min_rate_bps=self.min_rate_bps,
                         grace_s=self.download_grace_s, progress=halfway, tap=digests)
            finally:
                if digests is not None:  # memory only: after a crash, verify re-hashes
                    self._streamed = (str(path), digests.result())
        req.bundle_path = str(path)

    def _discard_downloads(self, keep: str | None) -> None:
        """Delete downloaded bundles and ``.part`` files except deployment ``keep``'s (one install at a time)."""
        folder = self.data_dir / "downloads"
        for path in folder.iterdir() if folder.is_dir() else ():
            if keep is None or not path.name.startswith(f"{keep}.bundle"):
                path.unlink(missing_ok=True)

    def _reference_time(self) -> float:
        floor_path = self.data_dir / "time_floor.json"
        floor = (read_json(floor_path) or {}).get("floor", 0.0)
        now = max(time.time(), floor, AGENT_BUILD_TIME)
        if now > floor + FLOOR_STEP_S:  # durable, but at most once per step (it was 2 fsyncs per install)
            atomic_write_json(floor_path, {"floor": now})
        return now

    def _verify(self, rec: InstallRecord) -> str | None:
        from edgekit.core import bundle, trust  # tuf costs ~20 MB: import only when a bundle arrives

        work = self._work(rec) / "extracted"
        remove_tree(work)
        work.parent.mkdir(parents=True, exist_ok=True)
        try:
            root = trust.load_trusted_root(self.trusted_root.read_bytes(), self.root_history)
        except FileNotFoundError:
            raise InstallError(f"trusted root {self.trusted_root} is missing; re-provision the device") from None
        try:
            size = os.path.getsize(rec.request.bundle_path)
        except (OSError, TypeError):
            raise BundleError(f"bundle file {rec.request.bundle_path} is missing") from None
        ensure_free_space(work.parent, size)
        streamed, self._streamed = self._streamed, None
        vb = bundle.open_bundle(rec.request.bundle_path, root, work, reference_time=self._reference_time(),
                                allow_expired=self.allow_expired, root_history=self.root_history,
                                device_id=self.device_id, device_key=self.device_key,
                                streamed=streamed[1] if streamed and streamed[0] == rec.request.bundle_path else None)
        m = vb.manifest
        bundle.check_compatible(m, profile=self.profile.id, engines=available_engines())
        limit = self.profile.budgets["max_model_bytes"]
        if vb.artifact_path.stat().st_size > limit:
            raise CompatibilityError(f"model is {vb.artifact_path.stat().st_size} bytes; profile "
                                     f"{self.profile.id} allows {limit}")
        installed = self.slots.installed()
        rec.details.update(model=m["model"]["name"], version=m["model"]["version"], release=m["model"]["release"])
        if installed and installed["model"] == m["model"]["name"]:
            if installed["release"] == m["model"]["release"] and installed["version"] == m["model"]["version"]:
                return "already_installed"
            floor = max(installed["release"], self.release_floor(installed["model"]))
            if m["model"]["release"] < floor and not rec.request.allow_downgrade:
                raise RollbackError(f"release {m['model']['release']} ({m['model']['version']}) is older than the "
                                    f"installed release {installed['release']} ({installed['version']})"
                                    + ("" if floor == installed["release"] else
                                       f" or the release {floor} this device rolled back from"))

    def _stage(self, rec: InstallRecord) -> None:
        extracted = self._work(rec) / "extracted"
        slot = rec.slot or self.slots.inactive()
        if not extracted.exists():  # crash after the move: the slot already holds it
            if not (self.slots.path(slot) / "manifest.json").exists():
                raise InstallError("staged files vanished; the deployment must be retried")
        else:
            self.slots.fill(slot, extracted)
        rec.slot = slot
        # flush the slot to disk while the health check runs; _switch waits for it
        self._synced = synced = []  # this install's own list: a straggler from an earlier one cannot fill it

        def sync() -> None:
            try:
                self.slots.sync(slot)
            except OSError:  # _switch fsyncs again in the state machine's thread and reports the error
                return
            synced.append(slot)

        self._sync = threading.Thread(target=sync, name="slot-sync", daemon=True)
        self._sync.start()

    def _health_check(self, rec: InstallRecord) -> None:
        self._checked = None
        slot_dir = self.slots.path(rec.slot)
        manifest = self.slots.manifest(rec.slot)
        box: dict = {}

        def work() -> None:  # load + golden vectors + latency + memory, abandoned past the deadline
            try:
                rss0 = current_rss()
                box["runner"] = load_runner(slot_dir / manifest["artifact"], manifest["engine"],
                                            serving_threads(self.threads, self.profile.threads), self.spin)
                box["report"] = health_check(box["runner"], slot_dir / manifest["golden"]["file"], manifest,
                                             self.health_runs, rss_before=rss0)
            except BaseException as exc:  # re-raised in the state machine's thread
                box["error"] = exc

        worker = threading.Thread(target=work, name="health-check", daemon=True)
        worker.start()
        worker.join(self.health_timeout_s)
        if worker.is_alive():
            runner = box.get("runner")
            cancelled = bool(runner and runner.cancel())
            worker.join(2.0)  # a cancelled run unwinds quickly
            if worker.is_alive():
                self.stuck_worker = worker  # still burning CPU: the agent restarts itself (agent/service.py)
            raise HealthTimeoutError(
                f"health check did not finish within {self.health_timeout_s:g} s "
                f"({'inference hung' if runner else 'model load hung'}; "
                f"{'run cancelled' if cancelled else 'worker abandoned'})",
                timeout_s=self.health_timeout_s, cancelled=cancelled, abandoned=worker.is_alive())
        if "error" in box:
            raise box["error"]
        report = box["report"]
        rec.details["health"] = report
        if report["failures"]:
            raise ParityError("health check failed: " + "; ".join(report["failures"]), health=report)
        self._checked = (rec.slot, box["runner"])

    def _switch(self, rec: InstallRecord) -> None:
        if self._sync is not None:
            self._sync.join()
            self._sync = None
        if rec.slot not in self._synced:  # durable before current points at it: after a recovery (no background
            self.slots.sync(rec.slot)     # sync ran) or if it failed (re-fsyncing "clean" files cost 1-18 ms)
        self._synced = []
        manifest = self.slots.manifest(rec.slot)
        self.slots.switch(rec.slot, {"model": manifest["model"]["name"], "version": manifest["model"]["version"],
                                     "release": manifest["model"]["release"], "deployment_id": rec.request.deployment_id,
                                     "installed_at": time.time()}, durable=False)  # made durable by _finish
        if self.on_commit:
            checked = self._checked[1] if self._checked and self._checked[0] == rec.slot else None
            self.on_commit(self.slots.path(rec.slot), manifest, checked)
        self._checked = None

    def release_floor(self, model: str) -> int:
        """The highest release of ``model`` this device served before a commanded rollback (0 if none)."""
        return int((read_json(self.data_dir / "release_floor.json") or {}).get(model, 0))

    def _rollback_check(self, rec: InstallRecord) -> str | None:
        """The inactive slot must hold the requested model@version (which this device verified and
        health-checked when it installed it); it becomes ``rec.slot``."""
        req, cur = rec.request, self.slots.current()
        installed = self.slots.installed() or {}
        if cur and (installed.get("model"), installed.get("version")) == (req.model, req.version):
            rec.details.update(model=req.model, version=req.version, release=installed.get("release"))
            return "already_installed"
        target = self.slots.inactive()
        if cur is None or not (self.slots.path(target) / "manifest.json").exists():
            raise RollbackUnavailableError(f"cannot roll back to {req.model}@{req.version}: this device has no "
                                           "previous verified slot", requested=f"{req.model}@{req.version}")
        m = self.slots.manifest(target)["model"]
        if (m["name"], m["version"]) != (req.model, req.version):
            raise RollbackUnavailableError(f"cannot roll back to {req.model}@{req.version}: the previous slot holds "
                                           f"{m['name']}@{m['version']}", requested=f"{req.model}@{req.version}",
                                           previous=f"{m['name']}@{m['version']}")
        rec.slot, rec.previous_slot = target, cur
        rec.details.update(model=m["name"], version=m["version"], release=m["release"],
                           from_model=installed.get("model"), from_version=installed.get("version"),
                           from_release=installed.get("release"))

    def _roll_back(self, rec: InstallRecord) -> None:
        commanded = rec.request.kind == "rollback"
        prev = rec.slot if commanded else rec.previous_slot
        if prev and (self.slots.path(prev) / "manifest.json").exists():
            m = self.slots.manifest(prev)
            if commanded and rec.details.get("from_release") is not None:  # never lower the download floor
                floors = read_json(self.data_dir / "release_floor.json") or {}
                name = rec.details.get("from_model") or m["model"]["name"]
                floors[name] = max(int(floors.get(name, 0)), int(rec.details["from_release"]))
                atomic_write_json(self.data_dir / "release_floor.json", floors)
            self.slots.switch(prev, {"model": m["model"]["name"], "version": m["model"]["version"],
                                     "release": m["model"]["release"], "installed_at": time.time(),
                                     **({"deployment_id": rec.request.deployment_id} if commanded else {})},
                              durable=False)  # made durable by _finish
            if self.on_commit:
                checked = self._checked[1] if commanded and self._checked and self._checked[0] == prev else None
                self.on_commit(self.slots.path(prev), m, checked)
            self._checked = None
        elif commanded:  # the checked slot vanished between the health check and the switch
            raise RollbackUnavailableError(f"previous slot {prev} is gone; nothing was switched")


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _error_from(d: dict | None) -> EdgekitError | None:
    if not d:
        return None
    err = EdgekitError(d.get("message", "failed"), hint=d.get("hint"))
    err.code = d.get("code", "error")
    return err


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def health_check(runner: Runner, golden_path: Path, manifest: dict, runs: int, rss_before: int | None = None) -> dict:
    """Golden-vector parity + latency budget + memory budget, one sample at a time as the device serves.

    Memory: RSS growth of this process from ``rss_before`` (taken before the model was loaded) to the
    highest sample after the load and after each golden run, against ``max_peak_memory_bytes``.
    """
    import numpy as np

    from edgekit.core import parity

    inputs, expected = parity.load_golden(golden_path)
    g = manifest["golden"]
    n = min(len(v) for v in inputs.values())
    outputs: dict[str, list] = {name: [] for name in expected}
    lat: list[float] = []
    peak = current_rss() if rss_before is not None else 0
    for i in range(max(n, 1)):
        sample = {k: v[i:i + 1] for k, v in inputs.items()}
        t0 = time.perf_counter()
        out = runner.run(sample)
        lat.append((time.perf_counter() - t0) * 1000)
        for name in expected:
            outputs[name].append(out[name])
        if rss_before is not None:
            peak = max(peak, current_rss())
    sample = {k: v[:1] for k, v in inputs.items()}
    budget = manifest["budgets"].get("latency_p95_ms")
    stopped_early = False
    for _ in range(max(runs - n, 0)):
        if len(lat) >= MIN_LATENCY_RUNS and (not budget or max(lat) * FAR_FROM_BUDGET < budget):
            stopped_early = True  # far from the budget: see FAR_FROM_BUDGET
            break
        t0 = time.perf_counter()
        runner.run(sample)
        lat.append((time.perf_counter() - t0) * 1000)
    failures: list[str] = []
    metrics = {}
    for name, exp in expected.items():
        got = np.concatenate(outputs[name], axis=0)
        m = parity.compare(got, exp, g["atol"], g["rtol"])
        metrics[name] = m.as_dict()
        failures += [f"{name}: {r}" for r in parity.passes(m, min_cosine=g["min_cosine"],
                                                           min_top1_agreement=g["min_top1_agreement"],
                                                           max_rel_error=None)]
        if m.within_tolerance < 1.0:
            failures.append(f"{name}: {100 * (1 - m.within_tolerance):.2f}% of values outside atol={g['atol']} "
                            f"rtol={g['rtol']} (max abs diff {m.max_abs_diff:.4g})")
    p50, p95 = (float(np.percentile(lat, q)) for q in (50, 95))
    if budget and p95 > budget:
        failures.append(f"latency p95 {p95:.2f} ms exceeds the budget of {budget} ms")
    report = {"golden": n, "metrics": metrics, "latency_p50_ms": round(p50, 4), "latency_p95_ms": round(p95, 4),
              "latency_runs": len(lat), "latency_stopped_early": stopped_early}
    if rss_before is not None:
        growth = max(peak - rss_before, 0)
        report["memory_growth_bytes"] = growth
        mem_budget = manifest["budgets"].get("max_peak_memory_bytes")
        if mem_budget and growth > mem_budget:
            failures.append(f"memory: loading and running the model grew the agent's RSS by {growth} bytes; "
                            f"the budget is {mem_budget} bytes")
    return {**report, "failures": failures}
