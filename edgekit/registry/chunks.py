"""The registry's MQTT chunk server: hands out bundle bytes to devices that reach only the broker.

Subscribes to every device's :func:`~edgekit.core.topics.chunk_request` and answers each
``edgekit.chunk.request/1`` with one EKC1 frame (:mod:`edgekit.core.chunks`) on the *requesting
device's* :func:`~edgekit.core.topics.chunk_response` topic, carrying the request's correlation
data. The answer topic comes from the request topic (which the broker's ACL ties to the device's
identity), never from the requester's ``ResponseTopic``, so one device cannot make the registry
publish into another's subtree. Bundles are content-addressed (``{sha256}.bundle`` in the store,
the same files ``GET /artifacts/...`` serves); chunks are capped at :data:`~edgekit.core.chunks.MAX_CHUNK`.
A request by ``name`` gets the hosted TUF metadata file ``GET /tuf/<name>`` serves (from the
database, ADR 0010), so broker-only devices check freshness and withdrawal too; an unknown name
(or a registry hosting none) answers an error with ``status`` 404, as HTTP does.
Work happens in a small thread pool: paho's network thread only enqueues.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgekit.core import chunks, messages, topics
from edgekit.core.errors import EdgekitError, MessageError, TransportError
from edgekit.core.mqtt import MqttConnection, reply

log = logging.getLogger("edgekit.registry.chunks")


class ChunkServer:
    def __init__(self, conn: MqttConnection, store: Path, *, shared_group: str | None = None, workers: int = 2,
                 engine=None) -> None:
        self.conn, self.store, self.shared_group = conn, Path(store), shared_group
        self.engine = engine  # the registry database: hosted trust metadata (None: none served)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunks")
        self.served = 0        # chunks answered with data
        self.bytes_served = 0
        self.refused = 0       # malformed requests / unknown artifacts
        self.metadata_served = 0  # answers with hosted trust metadata (requests by name)
        self._stopped = False

    def start(self) -> "ChunkServer":
        self.conn.subscribe([(topics.chunk_filter(shared_group=self.shared_group), 1)], self._on_request)
        return self

    def stop(self) -> None:
        self._stopped = True  # requests still delivered on the shared connection are dropped (devices ask again)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _on_request(self, topic: str, payload: bytes, props, delivery=None) -> None:
        # on the registry's manual-ack ingest session (thread receiver) a request is acknowledged at
        # once: a lost request is simply asked again by the device
        if delivery is not None:
            self.conn.ack([delivery])
        if self._stopped:
            return
        try:
            self._pool.submit(self._answer, topic, payload, props)
        except RuntimeError:  # stopped meanwhile
            pass

    def _answer(self, topic: str, payload: bytes, props) -> None:
        try:
            t = topics.parse(topic)
        except EdgekitError:
            return
        ref, offset = {"sha256": "?"}, 0
        try:
            req = messages.loads(payload, messages.CHUNK_REQUEST)
            offset = req["offset"]
            if ("sha256" in req) == ("name" in req):
                raise MessageError("a chunk request names a bundle (sha256) or a trust metadata file (name), "
                                   "exactly one")
            if "name" in req:
                ref = {"name": req["name"]}
                frame = chunks.encode(*self.read_metadata(req["name"], offset, req["length"]))
            else:
                ref = {"sha256": req["sha256"]}
                frame = chunks.encode(*self.read(req["sha256"], offset, req["length"]))
            self.served += 1
        except EdgekitError as exc:
            self.refused += 1
            log.warning("chunk request from %s/%s refused: %s", t.fleet, t.device, exc.message)
            frame = chunks.error_frame(ref, offset, exc)
        try:
            reply(self.conn, props, frame, topic=topics.chunk_response(t.fleet, t.device))
        except EdgekitError as exc:  # broker gone: the device times out and asks again
            log.warning("cannot answer chunk request on %s: %s", topic, exc.message)

    def read(self, sha256: str, offset: int, length: int) -> tuple[dict, bytes]:
        path = self.store / f"{sha256}.bundle"
        try:
            with open(path, "rb") as fh:
                total = fh.seek(0, 2)
                if offset > total:
                    raise TransportError(f"offset {offset} is past the end of artifact {sha256[:12]}… ({total} bytes)",
                                         retryable=False)
                fh.seek(offset)
                data = fh.read(min(length, chunks.MAX_CHUNK))
        except FileNotFoundError:
            raise TransportError(f"the registry has no artifact {sha256[:12]}…", retryable=False,
                                 hint="Upload the bundle again (`edgekit push`) before notifying devices.") from None
        self.bytes_served += len(data)
        return {"sha256": sha256, "offset": offset, "total": total, "length": len(data)}, data

    def read_metadata(self, name: str, offset: int, length: int) -> tuple[dict, bytes]:
        from .trust_repo import read_metadata

        raw = read_metadata(self.engine, name) if self.engine is not None else None
        if raw is None:
            raise TransportError(f"no trust metadata {name!r}", retryable=False, status=404)
        if offset > len(raw):
            raise TransportError(f"offset {offset} is past the end of {name} ({len(raw)} bytes)", retryable=False)
        data = raw[offset:offset + min(length, chunks.MAX_CHUNK)]
        self.metadata_served += 1
        return {"name": name, "offset": offset, "total": len(raw), "length": len(data)}, data
