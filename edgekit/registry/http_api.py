"""The registry's HTTP API (standard library server, JSON) and artifact store with Range.

Routes::

    GET  /api/v1/health                      liveness + row counts + ingest counters
    GET  /api/v1/devices[?fleet=F]           device inventory
    GET  /api/v1/devices/{id}                one device
    GET  /api/v1/events?device=&deployment=  deployment progress events
    POST /api/v1/artifacts?name=N            upload a bundle (body); returns sha256, url, length
    GET  /artifacts/{sha256}.bundle          download, with single-range ``Range: bytes=a-b`` (206)
    GET  /api/v1/openapi.json                the OpenAPI description of the above
    GET  /tuf/timestamp.json, /tuf/N.{root,targets,snapshot,released}.json
                                             the hosted TUF repository (:mod:`.trust_repo`, ADR 0010);
                                             404 for unknown names and versions (clients probe N+1.root.json)

plus the model registry, inventory and rollout routes of :mod:`.api_routes`. An uploaded
bundle registers its model version and per-profile artifact in the model registry.

Authentication (ADR 0009, :mod:`.tokens`): every write (POST/PUT/DELETE: uploads, stages, tags,
groups, rollouts and their actions) needs an ``operator`` bearer token — 401 without a valid
one, 403 for a ``viewer``. Reads of the inventory need a ``viewer`` token when the server runs
with ``private_reads``. Health, the OpenAPI document, artifact downloads and ``/tuf/*`` stay open:
devices fetch bundles and trust metadata without an API credential (both are signed, bundles are
encrypted when confidential).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from edgekit.core.errors import AuthError, ForbiddenError

from . import api_routes, catalog, db, tokens
from .openapi import OPENAPI

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_ART = re.compile(r"^/artifacts/([0-9a-f]{64})\.bundle$")
TUF_PREFIX = "/tuf/"  # the hosted TUF repository: open reads, like /artifacts/*
OPEN_READS = ("/api/v1/health", "/api/v1/openapi.json")  # plus /artifacts/*: never need a token
MAX_UPLOAD = 2 << 30


class RegistryHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, engine, store: Path, ingest=None, *, private_reads: bool = False) -> None:
        super().__init__(addr, Handler)
        self.engine, self.store, self.ingest = engine, Path(store), ingest
        self.private_reads = private_reads  # inventory/rollout reads need a viewer token too
        self.wake_rollouts = lambda: None  # the service points this at its rollout engine
        self.after_write = lambda: None  # the service re-signs the hosted trust metadata after API writes
        self.trust_signer = None  # a trust_repo.TrustRepo when this registry signs (serve --trust)
        self.store.mkdir(parents=True, exist_ok=True)

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client that hung up (ngclient closes unread after every 404 root probe): not an error
        super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: RegistryHTTPServer
    disable_nagle_algorithm = True  # keep-alive requests otherwise stall ~40 ms
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet; the CLI logs what matters
        pass

    def _json(self, obj, status: int = 200) -> None:
        body = db.dumps(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._json({"error": {"code": HTTPStatus(status).phrase.lower().replace(" ", "_"), "message": message}},
                   status)

    def _authorize(self, role: str, what: str) -> bool:
        """True if the request's bearer token has ``role``; otherwise answer 401/403 and return False."""
        try:
            tokens.require(tokens.authenticate(self.server.engine, self.headers.get("Authorization")), role, what)
            return True
        except AuthError as exc:
            self._drain()
            status = 403 if isinstance(exc, ForbiddenError) else 401
            self._json({"error": exc.to_dict()}, status)
            return False

    def _drain(self) -> None:
        """Read a small refused body so keep-alive stays in sync; close the connection for big ones."""
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= 16 << 20:
            while length > 0 and (chunk := self.rfile.read(min(1 << 20, length))):
                length -= len(chunk)
        elif length:
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlparse(self.path)
        if url.path.startswith(TUF_PREFIX):
            return self._tuf(url.path[len(TUF_PREFIX):])
        if (self.server.private_reads and url.path not in OPEN_READS and not _ART.match(url.path)
                and not self._authorize("viewer", f"GET {url.path}")):
            return
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        eng = self.server.engine
        if url.path == "/api/v1/health":
            ing = self.server.ingest
            return self._json({"ok": True, "rows": db.count_rows(eng),
                               "ingest": {"stored": ing.stored, "rejected": ing.rejected,
                                          "connected": ing.conn.connected, "failed": ing.failed,
                                          "retries": ing.retries, "kinds": dict(ing.kinds)} if ing else None})
        if url.path == "/api/v1/devices":
            return self._json({"devices": db.list_devices(eng, q.get("fleet"))})
        if m := re.match(r"^/api/v1/devices/([^/]+)$", url.path):
            dev = db.get_device(eng, m.group(1))
            return self._json(dev) if dev else self._error(404, f"unknown device {m.group(1)!r}")
        if url.path == "/api/v1/events":
            return self._json({"events": db.list_events(eng, q.get("device"), q.get("deployment"),
                                                        int(q.get("limit", 200)))})
        if url.path == "/api/v1/openapi.json":
            return self._json(OPENAPI)
        if m := _ART.match(url.path):
            return self._artifact(m.group(1))
        if (res := api_routes.dispatch(self.server, "GET", url.path, q, {})) is not None:
            return self._json(res[1], res[0])
        self._error(404, f"no route {url.path}")

    def _tuf(self, name: str) -> None:
        from .trust_repo import read_metadata

        raw = read_metadata(self.server.engine, name)
        if raw is None:
            return self._error(404, f"no trust metadata {name!r}")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(raw)

    def _artifact(self, sha: str) -> None:
        path = self.server.store / f"{sha}.bundle"
        if not path.exists():
            return self._error(404, f"no artifact {sha}")
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        if rng := self.headers.get("Range"):
            m = _RANGE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._error(416, f"unsupported Range {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: last N bytes
                start = max(size - int(m.group(2)), 0)
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := fh.read(min(1 << 20, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if not self._authorize("operator", f"POST {url.path}"):
            return
        if url.path != "/api/v1/artifacts":
            return self._post_json(url)
        length = int(self.headers.get("Content-Length") or -1)
        if not 0 < length <= MAX_UPLOAD:
            return self._error(411 if length < 0 else 413, "a Content-Length between 1 byte and 2 GiB is required")
        name = parse_qs(url.query).get("name", ["bundle"])[0]
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.server.store, suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as out:
                left = length
                while left > 0 and (chunk := self.rfile.read(min(1 << 20, left))):
                    h.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
            if left:
                return self._error(400, f"upload ended {left} bytes early")
            sha = h.hexdigest()
            os.replace(tmp, self.server.store / f"{sha}.bundle")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        db.add_artifact(self.server.engine, sha, name, length)
        manifest = catalog.read_manifest(self.server.store / f"{sha}.bundle")
        registered = catalog.register(self.server.engine, manifest, sha, length) if manifest else None
        self.server.after_write()
        self._json({"sha256": sha, "length": length, "url": f"{self.server.base_url}/artifacts/{sha}.bundle",
                    "registered": registered}, 201)

    def _post_json(self, url) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1 << 20:
            return self._error(413, "JSON bodies are limited to 1 MiB")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return self._error(400, f"request body must be a JSON object: {exc}")
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if (res := api_routes.dispatch(self.server, "POST", url.path, q, body)) is not None:
            if res[0] < 300:
                self.server.after_write()  # e.g. a deprecated release leaves the hosted trust metadata now
            return self._json(res[1], res[0])
        self._error(404, f"no route {url.path}")

    def _no_method(self) -> None:  # PUT/DELETE: writes, so authenticated first; no such routes today
        url = urlparse(self.path)
        if self._authorize("operator", f"{self.command} {url.path}"):
            self._drain()
            self._error(405, f"{self.command} is not supported on {url.path}")

    do_PUT = do_DELETE = do_PATCH = _no_method
