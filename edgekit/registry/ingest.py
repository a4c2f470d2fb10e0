"""MQTT ingest: a persistent-session subscriber that validates device reports and writes them
to the database in batches from one writer thread.

Malformed messages are counted and logged, never stored and never fatal. The MQTT callback
only parses and enqueues, so a slow database cannot stall the broker connection.
"""

from __future__ import annotations

import logging
import queue
import threading

from edgekit.core import messages, topics
from edgekit.core.errors import MessageError
from edgekit.core.mqtt import MqttConnection

from . import db

log = logging.getLogger("edgekit.registry.ingest")
SCHEMA_OF = {"status": messages.STATUS, "telemetry": messages.TELEMETRY, "events": messages.EVENT}


class Ingest:
    def __init__(self, engine, host: str, port: int, *, client_id: str = "edgekit-registry",
                 shared_group: str | None = None, batch: int = 500, tls=None) -> None:
        self.engine = engine
        self.conn = MqttConnection(client_id, host, port, clean_start=False, session_expiry_s=86400,
                                   max_queued=0, tls=tls)
        self.shared_group = shared_group
        self.batch = batch
        self.q: queue.Queue = queue.Queue()
        self.stored = 0
        self.rejected = 0
        self._thread = threading.Thread(target=self._writer, name="registry-writer", daemon=True)

    def _on_message(self, topic: str, payload: bytes, _props) -> None:
        try:
            t = topics.parse(topic)
            if t.kind not in SCHEMA_OF:
                return
            msg = messages.loads(payload, SCHEMA_OF[t.kind])
            if msg.get("device", t.device) != t.device:
                raise MessageError(f"message names device {msg.get('device')!r} but came on {topic}")
        except MessageError as exc:
            self.rejected += 1
            log.warning("rejected message on %s: %s", topic, exc.message)
            return
        self.q.put((t.kind, t.fleet, t.device, msg))

    def _writer(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            items = [item]
            while len(items) < self.batch:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                items.append(nxt)
            try:
                self.stored += db.store_batch(self.engine, items)
            except Exception:  # keep ingesting; the batch is logged for inspection
                log.exception("failed to store a batch of %d messages", len(items))

    def start(self) -> None:
        self._thread.start()
        self.conn.connect()
        self.conn.subscribe([(topics.fleet_filter(k, shared_group=self.shared_group), 1) for k in SCHEMA_OF],
                            self._on_message)

    def stop(self) -> None:
        self.conn.close()
        self.q.put(None)
        self._thread.join(10)
