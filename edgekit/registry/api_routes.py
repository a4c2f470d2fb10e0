"""JSON routes of the registry API for the model registry, inventory and rollouts.

::

    GET  /api/v1/models                         models with their versions and stages
    GET  /api/v1/models/{name}                  versions, artifacts per profile, lineage, reports
    POST /api/v1/models/{name}/versions/{v}     {"stage": "released"}
    GET  /api/v1/fleet?selector=S               devices matching a selector, with tags and groups
    POST /api/v1/tags                           {"devices": [...], "add": [...], "remove": [...]}
    GET  /api/v1/groups                         group → devices
    POST /api/v1/groups/{name}                  {"add": [...], "remove": [...]}
    GET  /api/v1/rollouts                       all rollouts, newest first
    POST /api/v1/rollouts                       {"model", "version", "selector", "waves", "abort_if",
                                                 "timeout_s", "rate_per_min", "supersede"}; 409 if
                                                 selected devices are in an active rollout
    GET  /api/v1/rollouts/{id}                  one rollout with its targets
    POST /api/v1/rollouts/{id}/{action}         pause | resume | cancel | rollback
    POST /api/v1/rollouts/{id}/rollback         {"to": "MODEL@VERSION", "timeout_s", "waves"}: a new
                                                 rollout of that earlier release (201; ADR 0011)
    GET  /api/v1/trust                          hosted TUF metadata: versions, expiries, next re-sign
    POST /api/v1/trust/resign                   re-sign the online roles now (registry serve --trust)

Errors are ``{"error": {code, message, hint}}`` from the edgekit exception tree, HTTP 400
(bad input) or 404 (unknown thing). Handlers are plain functions of (server, match, query, body).
"""

from __future__ import annotations

import re

from edgekit.core.errors import EdgekitError, UsageError

from . import catalog, inventory, rollout_store, rules, trust_repo


def _list(body: dict, key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{key!r} must be a list of strings", hint="See /api/v1/openapi.json for the fields.")
    return value


def _positive(value) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"rate_per_min must be a positive number, got {value!r}", hint="e.g. 600, or use \"rate\": \"600/min\".")
    return float(value)


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise UsageError(f"{key!r} must be true or false, got {value!r}", hint="See /api/v1/openapi.json for the fields.")
    return value


def _waves(body: dict) -> list[float]:
    """``waves`` as "1,10,100" or [1, 10, 100] (default: one wave of 100 %)."""
    waves = body.get("waves", "100")
    return rules.parse_waves(waves if isinstance(waves, str) else ",".join(map(str, waves)))


def _create_rollout(srv, m, q, body) -> tuple[int, dict]:
    for key in ("model", "version", "selector"):
        if not isinstance(body.get(key), str):
            raise UsageError(f"{key!r} is required (a string)", hint="See /api/v1/openapi.json for the fields.")
    out = rollout_store.create(srv.engine, model=body["model"], version=body["version"], selector=body["selector"],
                               waves=_waves(body),
                               abort_if=_list(body, "abort_if"), timeout_s=float(body.get("timeout_s", 300)),
                               rate_per_min=rules.parse_rate(body.get("rate")) or _positive(body.get("rate_per_min")),
                               supersede=_flag(body, "supersede"))
    srv.wake_rollouts()
    return 201, out


def _act(srv, m, q, body) -> tuple[int, dict]:
    if m.group(2) == "rollback" and body.get("to") is not None:  # to an earlier release: a new rollout (ADR 0011)
        from edgekit.registry_client import split_ref

        from .release_rollback import rollback_to

        if not isinstance(body["to"], str):
            raise UsageError("'to' must be a string MODEL@VERSION", hint="e.g. {\"to\": \"digits-cnn@1.0.0\"}")
        out = rollback_to(srv.engine, m.group(1), *split_ref(body["to"]), timeout_s=float(body.get("timeout_s", 300)),
                          waves=_waves(body))
        srv.wake_rollouts()
        return 201, out
    out = rollout_store.act(srv.engine, m.group(1), m.group(2))
    srv.wake_rollouts()
    return 200, out


def _trust_resign(srv, m, q, body) -> tuple[int, dict]:
    if srv.trust_signer is None:
        raise UsageError("this registry does not sign trust metadata",
                         hint="Start it with `edgekit registry serve --trust --keys DIR`.")
    return 200, {"signed": srv.trust_signer.resign(force=True), **trust_repo.status(srv.engine)}


ROUTES = [
    ("GET", r"/api/v1/trust", lambda srv, m, q, b: (200, trust_repo.status(srv.engine))),
    ("POST", r"/api/v1/trust/resign", _trust_resign),
    ("GET", r"/api/v1/models", lambda srv, m, q, b: (200, {"models": catalog.list_models(srv.engine)})),
    ("GET", r"/api/v1/models/([^/]+)", lambda srv, m, q, b: (200, catalog.show_model(srv.engine, m.group(1),
                                                                                   srv.base_url))),
    ("POST", r"/api/v1/models/([^/]+)/versions/([^/]+)",
     lambda srv, m, q, b: (200, catalog.set_stage(srv.engine, m.group(1), m.group(2), str(b.get("stage"))))),
    ("GET", r"/api/v1/fleet", lambda srv, m, q, b: (200, {"devices": inventory.select_devices(
        srv.engine, q.get("selector", "all"))})),
    ("POST", r"/api/v1/tags", lambda srv, m, q, b: (200, inventory.set_tags(
        srv.engine, _list(b, "devices"), _list(b, "add"), _list(b, "remove")) or {"ok": True})),
    ("GET", r"/api/v1/groups", lambda srv, m, q, b: (200, {"groups": inventory.list_groups(srv.engine)})),
    ("POST", r"/api/v1/groups/([^/]+)", lambda srv, m, q, b: (200, {"group": m.group(1), "devices": inventory.set_group(
        srv.engine, m.group(1), _list(b, "add"), _list(b, "remove"))})),
    ("GET", r"/api/v1/rollouts", lambda srv, m, q, b: (200, {"rollouts": rollout_store.list_rollouts(srv.engine)})),
    ("POST", r"/api/v1/rollouts", _create_rollout),
    ("GET", r"/api/v1/rollouts/([^/]+)", lambda srv, m, q, b: (200, rollout_store.status(srv.engine, m.group(1),
                                                                                       with_targets=True))),
    ("POST", r"/api/v1/rollouts/([^/]+)/([a-z]+)", _act),
]
_COMPILED = [(method, re.compile(f"^{pattern}$"), fn) for method, pattern, fn in ROUTES]


def dispatch(srv, method: str, path: str, query: dict, body: dict) -> tuple[int, dict] | None:
    """(status, JSON) for a known route, None if no route matches."""
    for meth, rx, fn in _COMPILED:
        if meth == method and (m := rx.match(path)):
            try:
                return fn(srv, m, query, body)
            except EdgekitError as exc:
                status = getattr(exc, "http_status", None) or (404 if exc.message.startswith("unknown") else 400)
                return status, {"error": exc.to_dict()}
            except (TypeError, ValueError) as exc:  # a field of the wrong type in the JSON body
                return 400, {"error": UsageError(f"bad request body: {exc}",
                                                 hint="See /api/v1/openapi.json for the fields.").to_dict()}
    return None
