"""OpenAPI 3.1 description of the registry HTTP API (served at /api/v1/openapi.json)."""

_JSON = {"application/json": {"schema": {"type": "object"}}}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "edgekit fleet registry", "version": "1"},
    "paths": {
        "/api/v1/health": {"get": {"summary": "Liveness, row counts, ingest counters",
                                   "responses": {"200": {"description": "ok", "content": _JSON}}}},
        "/api/v1/devices": {"get": {"summary": "Device inventory",
                                    "parameters": [{"name": "fleet", "in": "query", "schema": {"type": "string"}}],
                                    "responses": {"200": {"description": "devices", "content": _JSON}}}},
        "/api/v1/devices/{id}": {"get": {"summary": "One device",
                                         "parameters": [{"name": "id", "in": "path", "required": True,
                                                         "schema": {"type": "string"}}],
                                         "responses": {"200": {"description": "device", "content": _JSON},
                                                       "404": {"description": "unknown device"}}}},
        "/api/v1/events": {"get": {"summary": "Deployment events",
                                   "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}}
                                                  for n in ("device", "deployment", "limit")],
                                   "responses": {"200": {"description": "events", "content": _JSON}}}},
        "/api/v1/artifacts": {"post": {"summary": "Upload a bundle",
                                       "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
                                       "requestBody": {"content": {"application/octet-stream": {}}},
                                       "responses": {"201": {"description": "stored", "content": _JSON}}}},
        "/artifacts/{sha256}.bundle": {"get": {"summary": "Download a bundle (supports Range)",
                                               "parameters": [{"name": "sha256", "in": "path", "required": True,
                                                               "schema": {"type": "string"}}],
                                               "responses": {"200": {"description": "bundle"},
                                                             "206": {"description": "partial content"},
                                                             "416": {"description": "bad range"}}}},
    },
}


def _op(summary: str, path_params: tuple[str, ...] = (), query: tuple[str, ...] = (), body: bool = False,
        ok: str = "200") -> dict:
    op = {"summary": summary,
          "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in path_params]
          + [{"name": n, "in": "query", "schema": {"type": "string"}} for n in query],
          "responses": {ok: {"description": "ok", "content": _JSON},
                        "400": {"description": "bad input: {error: {code, message, hint}}", "content": _JSON},
                        "404": {"description": "unknown model / device / rollout", "content": _JSON}}}
    if body:
        op["requestBody"] = {"content": _JSON}
    return op


# Model registry, inventory and rollouts (edgekit/registry/api_routes.py).
OPENAPI["paths"].update({
    "/api/v1/models": {"get": _op("Models with their versions and stages")},
    "/api/v1/models/{name}": {"get": _op("Versions, per-profile artifacts, lineage, conversion reports", ("name",))},
    "/api/v1/models/{name}/versions/{version}": {"post": _op("Set the stage: {stage: draft|released|deprecated}",
                                                             ("name", "version"), body=True)},
    "/api/v1/fleet": {"get": _op("Devices matching a selector, with tags and groups", query=("selector",))},
    "/api/v1/tags": {"post": _op("Add/remove tags: {devices, add, remove}", body=True)},
    "/api/v1/groups": {"get": _op("Groups and their devices")},
    "/api/v1/groups/{name}": {"post": _op("Add/remove group members: {add, remove}", ("name",), body=True)},
    "/api/v1/rollouts": {"get": _op("Rollouts, newest first"),
                         "post": _op("Start a rollout: {model, version, selector, waves, abort_if, timeout_s, rate, "
                                     "supersede}", body=True, ok="201")},
    "/api/v1/rollouts/{id}": {"get": _op("One rollout with its targets", ("id",))},
    "/api/v1/rollouts/{id}/{action}": {"post": _op("pause | resume | cancel | rollback", ("id", "action"))},
})

# ADR 0010: the hosted TUF repository (devices read /tuf/* without a token; 404 for unknown versions)
OPENAPI["paths"].update({
    "/api/v1/trust": {"get": _op("Hosted TUF metadata: versions, expiries, next re-sign, problems")},
    "/api/v1/trust/resign": {"post": _op("Re-sign released, snapshot and timestamp now", body=True)},
    "/tuf/{name}": {"get": {"summary": "TUF metadata: timestamp.json or N.{root,targets,snapshot,released}.json",
                            "parameters": [{"name": "name", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
                            "responses": {"200": {"description": "signed metadata", "content": _JSON},
                                          "404": {"description": "unknown role or version"}}}},
})

# ADR 0009: writes need an operator bearer token; reads a viewer token with --private-reads
OPENAPI["components"] = {**OPENAPI.get("components", {}), "securitySchemes": {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "ekt_<id>_<secret> (edgekit registry token create)"}}}
for _path, _ops in OPENAPI["paths"].items():
    for _method, _op in _ops.items():
        if _method != "get":
            _op.setdefault("security", [{"bearer": []}])
            _op.setdefault("responses", {}).update({"401": {"description": "no or unknown/revoked token"},
                                                    "403": {"description": "the token's role is viewer"}})

# ADR 0011: a rollout whose devices are in an active rollout is refused unless it supersedes them
OPENAPI["paths"]["/api/v1/rollouts"]["post"]["responses"]["409"] = {
    "description": "rollout_conflict: selected devices are in an active rollout (error.details.conflicts: "
                   "rollout id -> devices); send supersede=true to take them over", "content": _JSON}
OPENAPI["paths"]["/api/v1/rollouts/{id}/{action}"]["post"].update({
    "summary": "pause | resume | cancel | rollback. rollback with {to: MODEL@VERSION, timeout_s, waves} starts a "
               "new rollout of that earlier release to the devices this one updated (201); its release counter "
               "must be above every other release of the model (else error code rollback)",
    "requestBody": {"content": _JSON}})
