"""The ingest receiver as its own process: paho's network loop and nothing else.

Receiving (paho's packet parsing, in Python) and storing (schema validation, SQL) each cost about
as much CPU per message as the other; under one GIL they add up. Here a child process holds the
persistent MQTT session and forwards raw ``(topic, payload, delivery)`` lists over a pipe every few
milliseconds; the registry process validates and commits them and sends the deliveries back to be
acknowledged (ADR 0005 §5). If the registry dies, the pipe closes and the child exits *without*
acknowledging, so the broker redelivers everything uncommitted to the next session.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

from edgekit.core.errors import EdgekitError, TimeoutError_, TransportError


def _receiver_main(pipe, client_id: str, host: str, port: int, tls, filters: list, receive_maximum: int,
                   flush_s: float) -> None:
    from edgekit.core.mqtt import MqttConnection

    conn = MqttConnection(client_id, host, port, clean_start=False, session_expiry_s=86400, max_queued=0, tls=tls,
                          manual_ack=True, receive_maximum=receive_maximum)
    lock = threading.Lock()
    buf: list = []

    def on_message(topic: str, payload: bytes, _props, delivery) -> None:
        with lock:
            buf.append((topic, payload, delivery))

    conn.add_handler(filters, on_message)  # before connect: redeliveries follow CONNACK at once
    try:
        conn.connect()
        conn.subscribe(filters, on_message)
    except EdgekitError as exc:
        pipe.send(("error", exc.message, exc.hint))
        return
    pipe.send(("ready", None, None))

    def forward() -> None:
        nonlocal buf
        while True:
            time.sleep(flush_s)
            with lock:
                out, buf = buf, []
            if out:
                try:
                    pipe.send(("batch", out, conn.connected))
                except OSError:
                    os._exit(1)

    threading.Thread(target=forward, name="receiver-forward", daemon=True).start()
    while True:
        try:
            kind, deliveries = pipe.recv()
        except (EOFError, OSError):  # the registry is gone: leave without acknowledging anything
            os._exit(1)
        if kind == "ack":
            conn.ack(deliveries)
        elif kind == "stop":
            conn.close()
            return


class ProcessReceiver:
    """Parent side: start the child, read its batches, send acknowledgements back."""

    def __init__(self, client_id: str, host: str, port: int, *, tls, filters: list, receive_maximum: int,
                 flush_s: float = 0.01) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.connected = False
        self.proc = ctx.Process(target=_receiver_main, name="registry-receiver", daemon=True,
                                args=(child, client_id, host, port, tls, filters, receive_maximum, flush_s))
        self._send_lock = threading.Lock()

    def start(self, timeout: float = 60.0) -> None:
        self.proc.start()
        if not self.pipe.poll(timeout):
            self.proc.kill()
            raise TimeoutError_(f"the ingest receiver process did not connect within {timeout:.0f}s")
        kind, message, hint = self.pipe.recv()
        if kind == "error":
            self.proc.join(5)
            raise TransportError(message, hint=hint)
        self.connected = True

    def recv(self, timeout: float | None = None) -> list | None:
        """The next forwarded list of ``(topic, payload, delivery)``; None on timeout or if the child ended."""
        try:
            if not self.pipe.poll(timeout):
                return None
            kind, batch, connected = self.pipe.recv()
        except (EOFError, OSError):
            self.connected = False
            return None
        self.connected = connected
        return batch

    def ack(self, deliveries) -> None:
        with self._send_lock:
            try:
                self.pipe.send(("ack", list(deliveries)))
            except OSError:  # receiver gone: the broker redelivers (storage is idempotent)
                pass

    def close(self) -> None:
        with self._send_lock:
            try:
                self.pipe.send(("stop", None))
            except OSError:
                pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        self.connected = False
