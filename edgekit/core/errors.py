"""The one exception tree of edgekit, shared by the host CLI, the registry and the agent.

Every error carries:

* ``code``  – a stable, machine-readable slug used in MQTT events, ``--json`` output and logs;
* ``exit_code`` – what the CLI returns when this error ends a command;
* ``hint``  – one sentence telling the user what to do next.

Third-party exceptions (tuf, paho, onnxruntime, sqlite ...) are mapped onto this tree at the
edge of the module that calls them; callers never have to catch library-specific types.

Tree::

    EdgekitError                      exit 1   generic failure
    ├── UsageError                    exit 2   bad arguments / missing files given by the user
    │   └── RolloutConflictError               devices already in an active rollout (HTTP 409)
    ├── ConfigError                   exit 3   malformed config, profile or key store
    │   ├── ProfileError                       a hardware profile is unknown or invalid
    │   ├── PkiError                           fleet CA / device certificate problem
    │   └── DatabaseSchemaError                registry database newer than this edgekit
    ├── ModelError                    exit 4   model cannot be loaded / converted / is unsupported
    │   ├── UnsupportedOpError                 an op the target runtime lacks (names node + op)
    │   ├── ParityError                        an artifact does not answer like its reference
    │   └── TargetFitError                     a model too big / too dynamic for the target device
    ├── BundleError                   exit 5   a bundle is malformed, truncated or inconsistent
    │   ├── TrustError                         signature / key / threshold failure
    │   │   ├── ExpiredError                   signed metadata past its expiry
    │   │   └── RollbackError                  release older than what is installed
    │   ├── IntegrityError                     hash or length mismatch (tampered / truncated)
    │   ├── EncryptionError                    encrypted model not wrapped for this device
    │   └── CompatibilityError                 bundle built for another profile / runtime / budget
    ├── TransportError                exit 6   broker / HTTP / download failure
    │   ├── TimeoutError_                      no answer in time (silence counts as failure)
    │   └── SlowRetrievalError                 a download slower than the minimum rate (deadline)
    ├── InstallError                  exit 7   install / health check / switch failed (rolled back)
    │   └── HealthTimeoutError                 the health check's inference hung past its deadline
    ├── StorageError                  exit 8   disk full, unwritable data dir
    ├── MessageError                  exit 9   a malformed MQTT message / notice
    │   └── NoticeError                        a deployment notice refused: unsigned/bad signature,
    │                                          expired, replayed, or for another device
    └── AuthError                     exit 10  the registry API refused the credential (HTTP 401)
        └── ForbiddenError                     the token's role may not do this (HTTP 403)

(``InstallError`` also has ``RollbackUnavailableError``: a signed rollback command the device
cannot honour — no previous verified slot, or it holds another model/version. ``TrustError`` also
has ``TrustRepositoryError`` — the registry's hosted TUF metadata did not verify — with
``NotReleasedError`` (bundle not in the signed released list: withdrawn or never released),
``TrustMetadataExpiredError`` (frozen / stale) and ``TrustMetadataRollbackError`` (older than seen).)
"""

from __future__ import annotations

from typing import Any


class EdgekitError(Exception):
    """Base class: every error edgekit raises on purpose derives from it."""

    code = "error"
    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used in events and ``--json`` output."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = {k: _jsonable(v) for k, v in self.details.items()}
        return out

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class UsageError(EdgekitError):
    code = "usage"
    exit_code = 2


class ConfigError(EdgekitError):
    code = "config"
    exit_code = 3


class ProfileError(ConfigError):
    code = "profile"
    default_hint = "Run `edgekit profiles list` to see the known profiles, `edgekit profiles validate FILE` to check one."


class ModelError(EdgekitError):
    code = "model"
    exit_code = 4


class UnsupportedOpError(ModelError):
    code = "unsupported_op"
    default_hint = "Pick a profile whose runtime supports the op, or rewrite the node before converting."


class ParityError(ModelError):
    code = "parity"
    default_hint = ("For detection or text heads declare what the output is for (--task detection-yolo|text-mask) so "
                    "the task metric decides; otherwise try a higher precision (--precision fp32/fp16) or better "
                    "calibration data.")


class TargetFitError(ModelError):
    code = "target_fit"
    default_hint = ("Use a smaller model or input size, convert with --precision int8-full, or pick a profile "
                    "with more RAM/flash.")


class BundleError(EdgekitError):
    code = "bundle"
    exit_code = 5


class TrustError(BundleError):
    code = "trust"
    default_hint = "Check that the bundle was released with the fleet's keys (`edgekit keys show`) and that the device holds the current root.json."


class ExpiredError(TrustError):
    code = "expired"
    default_hint = "Release the model again (`edgekit release`) to get fresh signatures."


class RollbackError(TrustError):
    code = "rollback"
    default_hint = "Release a newer version; installing an older release needs a signed rollback order."


class IntegrityError(BundleError):
    code = "integrity"
    default_hint = "The file was changed or truncated in transit; download it again from the registry."


class CompatibilityError(BundleError):
    code = "incompatible"
    default_hint = "Release the model for this device's profile (`edgekit convert --profile ...`)."


class TransportError(EdgekitError):
    code = "transport"
    exit_code = 6
    default_hint = "Is the broker/registry running and reachable? Check --broker / --registry."


class TimeoutError_(TransportError):
    code = "timeout"


class SlowRetrievalError(TransportError):
    code = "slow_retrieval"
    default_hint = ("The download ran past its deadline (signed length / [install] min_rate_bps + grace): the link "
                    "or server is too slow, or stalling on purpose. Retry on a better link, or lower "
                    "[install] min_rate_bps if this link is known to be that slow.")


class InstallError(EdgekitError):
    code = "install"
    exit_code = 7


class HealthTimeoutError(InstallError):
    code = "health_timeout"
    default_hint = ("The model's inference did not finish in time on this device (hung or far too slow); "
                    "check it on the bench with `edgekit-agent install` or raise [install] health_timeout_s.")


class StorageError(EdgekitError):
    code = "storage"
    exit_code = 8
    default_hint = "Free disk space on the data directory or point the agent at another one."


class MessageError(EdgekitError):
    code = "malformed_message"
    exit_code = 9


def _all_subclasses(cls: type) -> list[type]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _all_subclasses(sub)]


def error_class(code: str) -> type[EdgekitError]:
    """The error class whose ``code`` is ``code`` (for errors carried as dicts); EdgekitError if none."""
    return next((c for c in _all_subclasses(EdgekitError) if c.code == code), EdgekitError)


def exit_code_for(code: str) -> int:
    """The exit code of the error class whose ``code`` is ``code`` (for errors carried as dicts)."""
    return error_class(code).exit_code


# -- security (issue 7): PKI and signed deployment notices -----------------------------------------
class PkiError(ConfigError):
    code = "pki"
    default_hint = "Create the fleet CA with `edgekit pki init`, then enroll devices with `edgekit device enroll`."


class NoticeError(MessageError):
    """A deployment notice was refused (signature, expiry, replay or target); the device keeps serving."""

    code = "notice_rejected"
    default_hint = "Send a fresh notice with `edgekit push` (it signs with the key store's notices key)."


class NoticeSignatureError(NoticeError):
    code = "notice_unsigned"
    default_hint = ("Push with the fleet's key store (`edgekit push --keys DIR`); if keys were rotated, the notice "
                    "must carry the new root (edgekit does this automatically).")


class NoticeExpiredError(NoticeError):
    code = "notice_expired"
    default_hint = "Notices are short-lived on purpose: push again to get a fresh one."


class NoticeReplayError(NoticeError):
    code = "notice_replayed"
    default_hint = "This exact notice was already used: push again to get a fresh one."


class NoticeTargetError(NoticeError):
    code = "notice_wrong_device"
    default_hint = "The notice was signed for another device or fleet; push it to the device it names."


class EncryptionError(BundleError):
    code = "encrypted_for_other_device"
    default_hint = "Release the model again with `--encrypt-for THIS_DEVICE` (or `--encrypt-fleet`)."
def error_from_dict(d: dict[str, Any]) -> EdgekitError:
    """Rebuild an error carried as ``to_dict()`` JSON (an event, an HTTP answer) as its own class."""
    code = d.get("code", "error")
    err = error_class(code)(d.get("message", code), hint=d.get("hint"), **(d.get("details") or {}))
    err.code = code
    return err


# -- registry API authentication and device rollback commands (issues 6+7 follow-up) ---------------
class AuthError(EdgekitError):
    """The registry API needs a valid bearer token for this request (HTTP 401)."""

    code = "unauthorized"
    exit_code = 10
    default_hint = ("Create a token with `edgekit registry token create --db URL --role operator` and export it "
                    "as EDGEKIT_REGISTRY_TOKEN for the CLI.")


class ForbiddenError(AuthError):
    """The token is valid but its role may not do this (HTTP 403)."""

    code = "forbidden"
    default_hint = "Use an operator token for writes (`edgekit registry token create --role operator`)."


class RollbackUnavailableError(InstallError):
    """A signed rollback command the device cannot honour; it keeps serving what it has."""

    code = "rollback_unavailable"
    default_hint = ("A device can only roll back to the slot it already verified: deploy the wanted release "
                    "again with `edgekit deploy` instead.")


# -- registry schema versions, overlapping rollouts (issue 6 follow-up, ADR 0011) -------------------
class DatabaseSchemaError(ConfigError):
    """The registry database cannot be used by this edgekit (e.g. written by a newer version)."""

    code = "db_schema"
    default_hint = "Run the edgekit version that wrote this database, or point --db at another database."


class RolloutConflictError(UsageError):
    """A new rollout selects devices that an active (running/paused) rollout still owns (HTTP 409)."""

    code = "rollout_conflict"
    http_status = 409
    default_hint = ("Pass --supersede to cancel the older rollout(s) for those devices, narrow --to, or pause/cancel "
                    "the older rollout first (`edgekit rollout cancel ID`).")
# -- hosted TUF repository: freshness and withdrawal checks over HTTP (issue 6, ADR 0010) ------------
class TrustRepositoryError(TrustError):
    """The registry's hosted trust metadata (timestamp → snapshot → targets) did not verify."""

    code = "trust_repository"
    default_hint = ("The registry's TUF metadata does not verify against this device's root: check "
                    "`edgekit registry trust status` and that the registry signs with the fleet's keys "
                    "(`edgekit registry trust init` after a key rotation).")


class NotReleasedError(TrustRepositoryError):
    """The bundle a notice names is not in the registry's signed list of released bundles."""

    code = "not_released"
    default_hint = ("Only released bundles install over HTTP from a registry that hosts trust metadata: release it "
                    "with `edgekit models stage MODEL@VERSION released` (a deprecated release was withdrawn on purpose).")


class TrustMetadataExpiredError(TrustRepositoryError):
    """Hosted timestamp/snapshot/targets metadata is past its expiry (a frozen or stopped registry)."""

    code = "trust_metadata_expired"
    default_hint = ("The registry stopped re-signing its short-lived metadata, or someone replays old metadata: "
                    "check `edgekit registry trust status` (is `registry serve` running with --keys?) and the "
                    "device's clock.")


class TrustMetadataRollbackError(TrustRepositoryError):
    """Hosted metadata older than what this device already saw (a rolled-back or replayed repository)."""

    code = "trust_metadata_rollback"
    default_hint = ("The registry served metadata older than this device already verified (a restored backup or a "
                    "replay): restore the registry's newest trust metadata, or run `edgekit registry trust resign` "
                    "once the registry holds it.")
