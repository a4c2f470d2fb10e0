"""Local inference endpoint for other processes on the device: HTTP/1.1 on 127.0.0.1 and/or a
Unix socket, standard library only.

Routes::

    GET  /v1/health   {"ok": true, "model": ..., "version": ...}            (200, or 503 without a model)
    GET  /v1/model    the serving manifest's model, inputs and outputs
    POST /v1/infer    body = JSON  {"inputs": {name: {dtype, shape, b64}}}   (Content-Type: application/json)
                      or a binary tensor frame (Content-Type: application/x-edgekit-tensors,
                      format in edgekit.core.frames); the answer uses the request's format.
                      JSON answers carry outputs, latency_ms, model, version; binary answers
                      carry them in X-Edgekit-* headers.

The same sockets also speak a lean *framed stream* (``edgekit.core.frames`` ``STREAM_*``: a 8-byte
request header + a tensor frame, a 20-byte answer header + a tensor frame), told apart from HTTP
per request by its first byte, for clients that want the lowest overhead
(``LocalClient(framed=True)``); a connection may mix both.

Errors are ``{"error": {code, message, hint}}`` with 400 (malformed), 404, 413 (too large),
503 (no model) or 500. Connections are kept alive (HTTP/1.1) with Nagle off; each connection
has its own thread. The HTTP loop is a lean hand-written one (request line, headers,
Content-Length bodies; no chunked uploads) so that the endpoint adds little to a ~1 ms model.
It binds loopback only: it is for processes on the device, not the network.
This module does not know MQTT or installs; it calls :meth:`agent.service.Agent.infer`.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core import frames, tensors
from edgekit.core.errors import (EdgekitError, MessageError, ModelError, StorageError, TransportError,
                                 error_from_dict)

MAX_BODY = 64 << 20
JSON = "application/json"

Infer = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Info = Callable[[], dict]


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
            413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}
MAX_LINE = 8192
MAX_HEADERS = 64


class _Handler(socketserver.StreamRequestHandler):
    """A lean HTTP/1.1 server loop: request line + headers parsed by hand (the stock
    ``BaseHTTPRequestHandler`` costs ~0.1 ms per request in header parsing and extra writes);
    each answer leaves in a single ``sendall``. Keep-alive unless the client says otherwise."""

    wbufsize = 0

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        try:
            while self._one_request():
                pass
        except (ConnectionError, socket.timeout):
            pass

    def _one_request(self) -> bool:
        first = self.rfile.peek(1)[:1]
        if first == frames.STREAM_MAGIC[:1]:  # the framed stream: no HTTP method starts with "E"
            return self._framed()
        line = self.rfile.readline(MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):
            line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or len(line) > MAX_LINE:
            self._error(400, MessageError("malformed HTTP request line"), keep=False)
            return False
        method, path, version = parts
        headers: dict[bytes, bytes] = {}
        while (h := self.rfile.readline(MAX_LINE + 1)) not in (b"\r\n", b"\n", b""):
            if len(headers) >= MAX_HEADERS or len(h) > MAX_LINE:
                self._error(431, MessageError("too many or too long request headers"), keep=False)
                return False
            k, _, v = h.partition(b":")
            headers[k.strip().lower()] = v.strip()
        keep = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
        if method == b"GET":
            return self._get(path.decode("latin-1"), keep)
        if method == b"POST":
            return self._post(path.decode("latin-1"), headers, keep)
        self._error(405, MessageError(f"method {method.decode('latin-1')} not allowed"), keep=False)
        return False

    def _send(self, status: int, body: bytes, ctype: str = JSON, headers: dict | None = None, *,
              keep: bool = True) -> bool:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if not keep:
            head.append("Connection: close")
        self.connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        return keep

    def _error(self, status: int, err: EdgekitError, keep: bool = True) -> bool:
        return self._send(status, json.dumps({"error": err.to_dict()}).encode(), keep=keep)

    def _get(self, path: str, keep: bool) -> bool:
        info = self.server.info()
        if path == "/v1/health":
            brief = {k: info[k] for k in ("model", "version") if k in info}
            return self._send(200 if info else 503, json.dumps({"ok": bool(info), **brief}).encode(), keep=keep)
        if path == "/v1/model":
            if not info:
                return self._error(503, ModelError("no model installed yet"), keep)
            return self._send(200, json.dumps(info).encode(), keep=keep)
        return self._error(404, MessageError(f"no route {path}", hint="Use /v1/infer, /v1/model or /v1/health."),
                           keep)

    def _post(self, path: str, headers: dict[bytes, bytes], keep: bool) -> bool:
        try:
            length = int(headers.get(b"content-length", b""))
        except ValueError:
            return self._error(411, MessageError("Content-Length is required"), keep=False)
        if length > MAX_BODY or length < 0:
            return self._error(413, MessageError(f"request of {length} bytes exceeds {MAX_BODY}"), keep=False)
        body = self.rfile.read(length)
        if len(body) < length:
            return False  # the client went away mid-body
        if path != "/v1/infer":
            return self._error(404, MessageError(f"no route {path}", hint="POST inference requests to /v1/infer."),
                               keep)
        binary = headers.get(b"content-type", b"").startswith(frames.CONTENT_TYPE.encode())
        status, result, latency_ms = self._infer(body, binary)
        if status != 200:
            return self._send(status, result, keep=keep)
        info = self.server.info()
        if binary:
            return self._send(200, frames.encode(result), frames.CONTENT_TYPE,
                              {"X-Edgekit-Latency-Ms": f"{latency_ms:.4f}", "X-Edgekit-Model": info.get("model", ""),
                               "X-Edgekit-Version": info.get("version", "")}, keep=keep)
        out = {"outputs": {k: tensors.encode(v) for k, v in result.items()}, "latency_ms": latency_ms,
               "model": info.get("model"), "version": info.get("version")}
        return self._send(200, json.dumps(out).encode(), keep=keep)

    def _infer(self, body: bytes, binary: bool) -> tuple[int, "dict[str, np.ndarray] | bytes", float]:
        """(200, outputs, latency_ms), or (an HTTP status, the JSON error body, 0.0)."""
        try:
            inputs = frames.decode(body) if binary else _json_inputs(body)
            t0 = time.perf_counter()
            outputs = self.server.infer(inputs)
            return 200, outputs, (time.perf_counter() - t0) * 1000
        except MessageError as exc:
            status, err = 400, exc
        except ModelError as exc:
            status, err = (503 if not self.server.info() else 400), exc
        except EdgekitError as exc:
            status, err = 500, exc
        return status, json.dumps({"error": err.to_dict()}).encode(), 0.0

    def _framed(self) -> bool:
        """One request of the framed stream (format in :mod:`edgekit.core.frames`)."""
        head = self.rfile.read(frames.STREAM_REQUEST.size)
        if len(head) < frames.STREAM_REQUEST.size:
            return False
        magic, length = frames.STREAM_REQUEST.unpack(head)
        if magic != frames.STREAM_MAGIC or length > MAX_BODY:
            err = MessageError(f"not an edgekit framed request (magic {magic!r})" if magic != frames.STREAM_MAGIC
                               else f"request of {length} bytes exceeds {MAX_BODY}",
                               hint="Send HTTP/1.1, or STREAM_MAGIC + u32 length + a tensor frame.")
            self._send_framed(400 if magic != frames.STREAM_MAGIC else 413,
                              json.dumps({"error": err.to_dict()}).encode(), 0.0)
            return False
        body = self.rfile.read(length)
        if len(body) < length:
            return False  # the client went away mid-body
        status, result, latency_ms = self._infer(body, binary=True)
        self._send_framed(status, frames.encode(result) if status == 200 else result, latency_ms)
        return True

    def _send_framed(self, status: int, body: bytes, latency_ms: float) -> None:
        self.connection.sendall(frames.STREAM_RESPONSE.pack(frames.STREAM_MAGIC, status, latency_ms, len(body)) + body)


def _json_inputs(body: bytes) -> dict[str, np.ndarray]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"request body is not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), dict):
        raise MessageError('request body must be {"inputs": {name: {dtype, shape, b64}}}')
    return {name: tensors.decode(t, f"input {name!r}") for name, t in obj["inputs"].items()}


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class LocalEndpoint:
    """Serve ``infer`` on 127.0.0.1:``port`` (0 = any free port) and/or the Unix socket ``socket_path``."""

    def __init__(self, infer: Infer, info: Info, *, port: int | None = None,
                 socket_path: str | Path | None = None) -> None:
        self.servers: list[socketserver.BaseServer] = []
        self.socket_path = Path(socket_path) if socket_path else None
        try:
            if port is not None:
                self.servers.append(_TcpServer(("127.0.0.1", port), _Handler))
            if self.socket_path:
                self.socket_path.parent.mkdir(parents=True, exist_ok=True)
                self.socket_path.unlink(missing_ok=True)  # a stale socket from a crashed agent
                self.servers.append(_UnixServer(str(self.socket_path), _Handler))
                os.chmod(self.socket_path, 0o660)
        except OSError as exc:
            self.stop()
            raise StorageError(f"cannot open the local inference endpoint: {exc.strerror or exc}",
                               hint="Pick another [endpoint] port / socket path in the agent config.") from None
        for srv in self.servers:
            srv.infer, srv.info = infer, info
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int | None:
        tcp = next((s for s in self.servers if isinstance(s, _TcpServer)), None)
        return tcp.server_address[1] if tcp else None

    def start(self) -> "LocalEndpoint":
        for srv in self.servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, name="endpoint",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self.servers:
            if self._threads:
                srv.shutdown()
            srv.server_close()
        if self.socket_path:
            self.socket_path.unlink(missing_ok=True)
        self.servers, self._threads = [], []


# -- client (for other processes on the device, tests and benchmarks) -------------------------------
class LocalClient:
    """One kept-alive connection to the endpoint (TCP ``port`` or Unix ``socket_path``).

    ``binary`` selects the tensor frame format (default) or JSON; ``framed`` sends inference
    requests on the framed stream instead of HTTP (binary tensors, no headers; ``get`` still uses
    HTTP on the same connection). Each request leaves in one ``sendall``; answers are read through
    a buffered reader. ``last_latency_ms`` is the agent's own inference time of the last answer.
    Errors come back as the edgekit error the agent raised (``MessageError``, ``ModelError``...)::

        client = LocalClient(socket_path="/run/edgekit/infer.sock", framed=True)
        logits = client.infer({"input": x})["logits"]
    """

    def __init__(self, *, port: int | None = None, socket_path: str | Path | None = None, binary: bool = True,
                 timeout: float = 30.0, framed: bool = False) -> None:
        if not port and not socket_path:
            raise ValueError("give a port or a socket path")
        self.port, self.socket_path, self.binary, self.timeout = port, socket_path, binary, timeout
        self.framed = framed
        self.last_latency_ms: float | None = None
        self.sock: socket.socket | None = None
        self._rfile = None

    def _connect(self) -> None:
        if self.socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = str(self.socket_path)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = ("127.0.0.1", self.port)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot reach the local inference endpoint at {target}: {exc}",
                                 hint="Is `edgekit-agent run` up with an [endpoint] section in its config?") from None
        self.sock, self._rfile = sock, sock.makefile("rb")

    def _request(self, method: str, path: str, body: bytes = b"", ctype: str = JSON) -> tuple[dict, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        if method == "POST":
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        status_line = self._exchange(head.encode() + b"\r\n" + body, lambda: self._rfile.readline(MAX_LINE + 1))
        status = int(status_line.split()[1])
        headers = {}
        while (h := self._rfile.readline(MAX_LINE + 1)) not in (b"\r\n", b"\n", b""):
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        data = self._rfile.read(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status != 200:
            raise _answer_error(status, data)
        return headers, data

    def _exchange(self, request: bytes, read_head: Callable[[], bytes], head_size: int = 1) -> bytes:
        """Send ``request`` and return ``read_head()`` (at least ``head_size`` bytes); a kept-alive
        connection the agent closed is reopened once."""
        for attempt in (0, 1):
            if self.sock is None:
                self._connect()
            try:
                self.sock.sendall(request)
                head = read_head()
                if len(head) < head_size:
                    raise ConnectionResetError("connection closed by the agent")
                return head
            except (ConnectionError, BrokenPipeError):
                self.close()
                if attempt:
                    raise TransportError("the local inference endpoint closed the connection") from None
        raise AssertionError("unreachable")

    def _infer_framed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frame = frames.encode(inputs)
        size = frames.STREAM_RESPONSE.size
        head = self._exchange(frames.STREAM_REQUEST.pack(frames.STREAM_MAGIC, len(frame)) + frame,
                              lambda: self._rfile.read(size), size)
        magic, status, latency_ms, length = frames.STREAM_RESPONSE.unpack(head)
        body = self._rfile.read(length) if magic == frames.STREAM_MAGIC else b""
        if len(body) < length or magic != frames.STREAM_MAGIC:
            self.close()
            raise TransportError("the local inference endpoint sent a truncated or foreign framed answer")
        if status != 200:
            raise _answer_error(status, body)
        self.last_latency_ms = latency_ms
        return frames.decode(body)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.framed:
            return self._infer_framed(inputs)
        if self.binary:
            return frames.decode(self._request("POST", "/v1/infer", frames.encode(inputs), frames.CONTENT_TYPE)[1])
        body = json.dumps({"inputs": {k: tensors.encode(v) for k, v in inputs.items()}}).encode()
        outputs = json.loads(self._request("POST", "/v1/infer", body)[1])["outputs"]
        return {k: tensors.decode(v) for k, v in outputs.items()}

    def get(self, path: str) -> dict:
        return json.loads(self._request("GET", path)[1])

    def close(self) -> None:
        if self.sock is not None:
            self._rfile.close()
            self.sock.close()
        self.sock = self._rfile = None


def _answer_error(status: int, body: bytes) -> EdgekitError:
    """The edgekit error an endpoint answer carries (HTTP or framed), or a transport error."""
    try:
        return error_from_dict(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return error_from_dict({"code": "transport", "message": f"local endpoint answered status {status}"})
