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
