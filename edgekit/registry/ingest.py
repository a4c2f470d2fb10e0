"""MQTT ingest: a persistent-session subscriber that validates device reports and writes them
to the database in batches from one writer thread.

Malformed messages are counted and logged, never stored and never fatal. The MQTT callback
only parses and enqueues, so a slow database cannot stall the broker connection.

Several registry workers can share the load (ADR 0005): telemetry and events use an MQTT 5
shared subscription (``$share/GROUP/...``, each message goes to one worker), while status is
subscribed plainly by every worker, because brokers do not deliver *retained* messages to shared
subscriptions and status writes are idempotent (ordered by the device's session counter).
A batch whose commit fails is retried with backoff while the database is unreachable; a batch
the database rejects is split so only the offending message is dropped (counted in ``failed``).
"""

from __future__ import annotations

import logging
import collections
import queue
import threading
import time

from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import exc as sa_exc

from edgekit.core import messages, topics
from edgekit.core.errors import MessageError
from edgekit.core.mqtt import MqttConnection

from . import db

log = logging.getLogger("edgekit.registry.ingest")
SCHEMA_OF = {"status": messages.STATUS, "telemetry": messages.TELEMETRY, "events": messages.EVENT}


class Ingest:
    def __init__(self, engine, host: str, port: int, *, client_id: str = "edgekit-registry",
                 shared_group: str | None = None, batch: int = 500, linger_s: float = 0.05, tls=None) -> None:
        self.engine = engine
        self.conn = MqttConnection(client_id, host, port, clean_start=False, session_expiry_s=86400,
                                   max_queued=0, tls=tls)
        self.shared_group = shared_group
        self.batch, self.linger_s = batch, linger_s
        self.q: queue.Queue = queue.Queue()
        self.stored = 0
        self.rejected = 0
        self.failed = 0
        self.retries = 0
        self.kinds: collections.Counter = collections.Counter()  # stored messages by kind
        self._stopping = False
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
        self.q.put((t.kind, t.fleet, t.device, db.RawJSON(msg, payload.decode())))

    def _writer(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.linger_s and self.q.qsize() < self.batch:
                # let a batch build up: one commit of many rows costs far less CPU (and GIL time the
                # network thread needs) than many small ones
                time.sleep(self.linger_s)
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
            self._store(items)

    def _store(self, items: list) -> None:
        delay, conflicts = 0.05, 0
        while True:
            try:
                self.stored += db.store_batch(self.engine, items)
                self.kinds.update(kind for kind, *_ in items)
                return
            except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:  # database away/locked: wait, retry
                self.retries += 1
                if self._stopping and self.retries > 50:
                    log.error("giving up on %d messages at shutdown: %s", len(items), exc)
                    self.failed += len(items)
                    return
                log.warning("commit of %d messages failed (%s); retrying in %.2fs", len(items), exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except sa_exc.IntegrityError:  # another worker created the same device first: the retry updates it
                self.retries += 1
                conflicts += 1
                if conflicts <= 3:
                    continue
                self._split(items)
                return
            except Exception:  # the data itself is refused: isolate the offending message(s)
                self._split(items)
                return

    def _split(self, items: list) -> None:
        if len(items) == 1:
            self.failed += 1
            log.exception("dropping a message the database refuses: %r", items[0][:3])
            return
        mid = len(items) // 2
        self._store(items[:mid])
        self._store(items[mid:])

    def start(self) -> None:
        self._thread.start()
        self.conn.connect()
        # status: retained births/wills on a fresh session; retainHandling=1 skips resending them all
        # when the persistent session (and so the subscription) already exists
        filters = [(topics.fleet_filter("status"), SubscribeOptions(qos=1, retainHandling=1))]
        filters += [(topics.fleet_filter(k, shared_group=self.shared_group), 1) for k in ("telemetry", "events")]
        self.conn.subscribe(filters, self._on_message)

    def stop(self) -> None:
        self._stopping = True
        self.conn.close()
        self.q.put(None)
        self._thread.join(10)
