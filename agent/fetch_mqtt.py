"""MQTT chunk source for :func:`agent.fetch.download`: bundle bytes over the broker.

For devices that reach only the broker (notice ``transport: "mqtt"``). One attempt asks the
chunk server (:mod:`edgekit.registry.chunks`) for ``[have, have + chunk_bytes)`` by the bundle's
signed SHA-256, keeping up to ``window`` requests in flight (MQTT 5 request/response on the
device's own ``rpc/chunk`` and ``rpc/chunk/res`` topics), and appends each answer in order to
the ``.part`` file through the same byte cap, running hash and deadline as HTTP. An answer for other bytes, or a
server that claims another total size than the signed length, is an integrity error; a lost
connection or a silent server is a transport error that the download loop retries from the
``.part`` length (so a broker restart mid-transfer resumes where it stopped).
"""

from __future__ import annotations

from collections import deque

from edgekit.core import chunks, messages, topics
from edgekit.core.errors import EdgekitError, IntegrityError, MessageError, TransportError
from edgekit.core.mqtt import MqttConnection

from .fetch import Deadline, Progress, PartFile

CHUNK_BYTES = 256 * 1024
WINDOW = 4  # chunk requests in flight: hides the request/answer round trip (memory: WINDOW x chunk)


class MqttChunkSource:
    def __init__(self, conn: MqttConnection, fleet: str, device: str, sha256: str, *,
                 chunk_bytes: int = CHUNK_BYTES, window: int = WINDOW, timeout: float = 10.0) -> None:
        self.conn, self.sha256, self.timeout, self.window = conn, sha256, timeout, max(window, 1)
        self.chunk_bytes = min(chunk_bytes, chunks.MAX_CHUNK)
        self.request_topic = topics.chunk_request(fleet, device)
        self.response_topic = topics.chunk_response(fleet, device)

    def attempt(self, state: PartFile, deadline: Deadline, progress: Progress | None) -> None:
        if not self.conn.connected:
            raise TransportError("not connected to the broker; the chunk transfer waits for it")
        inflight: deque = deque()  # (pending answer, offset, length), oldest first: at most `window` ahead
        ahead = state.have
        try:
            with open(state.part, "ab") as out:
                while state.have < state.length:
                    while len(inflight) < self.window and ahead < state.length:
                        want = min(self.chunk_bytes, state.length - ahead)
                        req = messages.build(messages.CHUNK_REQUEST, sha256=self.sha256, offset=ahead, length=want)
                        inflight.append((self.conn.send_request(self.request_topic, messages.dumps(req),
                                                                self.response_topic, wait=False,
                                                                timeout=deadline.timeout(self.timeout)), ahead, want))
                        ahead += want
                    pending, offset, want = inflight.popleft()
                    try:
                        raw = pending.result(deadline.timeout(self.timeout))
                    finally:
                        pending.cancel()
                    if self._append(raw, offset, want, state, out, progress) < want:
                        # a server with a smaller chunk cap: re-plan from here (later answers are misaligned)
                        for p, _, _ in inflight:
                            p.cancel()
                        inflight.clear()
                        ahead = state.have
                    deadline.check(state.have)
        finally:
            for pending, _, _ in inflight:
                pending.cancel()

    def _append(self, raw: bytes, offset: int, want: int, state: PartFile, out, progress: Progress | None) -> int:
        try:
            header, data = chunks.decode(raw)
        except MessageError as exc:  # garbled on the way: ask again
            raise TransportError(f"malformed chunk answer: {exc.message}") from None
        except EdgekitError as exc:  # the server refused: an unknown artifact is not worth retrying
            raise TransportError(f"chunk server: {exc.message}", hint=exc.hint,
                                 retryable=exc.details.get("retryable", True)) from None
        if header.get("sha256") != self.sha256 or header["offset"] != offset or offset != state.have:
            raise IntegrityError(f"chunk answer is for {str(header.get('sha256'))[:12]}…@{header['offset']}, "
                                 f"asked for {self.sha256[:12]}…@{state.have}")
        if header["total"] != state.length:
            raise IntegrityError(f"the chunk server holds {header['total']} bytes; the signed notice says "
                                 f"{state.length}")
        if not data:
            raise TransportError(f"chunk server sent no bytes at offset {state.have}")
        if len(data) > want:
            raise IntegrityError(f"chunk server sent {len(data)} bytes at offset {offset}; {want} were asked for")
        state.append(out, data, progress)  # byte cap, write, hash
        return len(data)
