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

Durability: messages are acknowledged to the broker (MQTT 5 manual ack) only after the batch that
holds them is committed, so a registry killed mid-batch loses nothing: the broker redelivers the
unacknowledged messages to the persistent session, and storing is idempotent (telemetry and
event rows are unique per device, seq and ts; statuses are ordered by the device's session).
"""

from __future__ import annotations

import collections
import functools
import logging
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


def ingest_filters(shared_group: str | None) -> list:
    # status: retained births/wills on a fresh session; retainHandling=1 skips resending them all
    # when the persistent session (and so the subscription) already exists
    filters = [(topics.fleet_filter("status"), SubscribeOptions(qos=1, retainHandling=1))]
    return filters + [(topics.fleet_filter(k, shared_group=shared_group), 1) for k in ("telemetry", "events")]


@functools.lru_cache(maxsize=1 << 16)
def _route(topic: str) -> tuple[str, str, str]:
    """``(kind, fleet, device)`` of a device topic; cached because every device reuses its few topics
    (a MessageError is raised, not cached)."""
    t = topics.parse(topic)
    return t.kind, t.fleet, t.device


class Ingest:
    """``receiver="thread"``: paho runs in this process. ``"process"``: a child process holds the MQTT
    session and forwards raw messages (see :mod:`.receiver`); ``conn`` is then a plain connection
    used only to publish (rollout notices)."""

    def __init__(self, engine, host: str, port: int, *, client_id: str = "edgekit-registry",
                 shared_group: str | None = None, batch: int = 2000, linger_s: float = 0.05, tls=None,
                 receiver: str = "thread", receive_maximum: int = 65535) -> None:
        self.engine = engine
        # Unacknowledged messages the broker may have in flight to us (MQTT 5 Receive Maximum). Acks
        # wait for the commit, so a small window makes ingest wait on round trips: 8 × 500 held one
        # worker at ~0.6× a raw subscriber. The MQTT maximum (65535 × a few hundred bytes, held by the
        # receiver until committed) lets the broker stream while batches commit (ADR 0011).
        self.receiver = None
        if receiver == "process":
            from .receiver import ProcessReceiver

            self.receiver = ProcessReceiver(client_id, host, port, tls=tls, filters=ingest_filters(shared_group),
                                            receive_maximum=receive_maximum)
            self.conn = MqttConnection(f"{client_id}-out", host, port, tls=tls)
        else:
            self.conn = MqttConnection(client_id, host, port, clean_start=False, session_expiry_s=86400,
                                       max_queued=0, tls=tls, manual_ack=True, receive_maximum=receive_maximum)
        self._stop = threading.Event()
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

    def _on_message(self, topic: str, payload: bytes, _props, delivery) -> None:
        # network thread: only enqueue; parsing and validation happen on the writer thread
        self.q.put((topic, payload, delivery))

    def _decode(self, topic: str, payload: bytes):
        """``(kind, fleet, device, message)`` for store_batch, or None (counted, logged) if unusable."""
        try:
            kind, fleet, device = _route(topic)
            if kind not in SCHEMA_OF:
                return None
            try:  # decoded once: parsed from, and stored as, this text (oversize stays bytes: loads refuses it)
                text = payload.decode() if len(payload) <= messages.MAX_PAYLOAD else payload
            except UnicodeDecodeError as exc:
                raise MessageError(f"{SCHEMA_OF[kind]}: payload is not UTF-8 ({exc})") from None
            msg = messages.loads(text, SCHEMA_OF[kind])
            if msg.get("device", device) != device:
                raise MessageError(f"message names device {msg.get('device')!r} but came on {topic}")
        except MessageError as exc:
            self.rejected += 1
            log.warning("rejected message on %s: %s", topic, exc.message)
            return None
        return (kind, fleet, device, db.RawJSON(msg, text))

    def _writer(self) -> None:
        collect, ack = ((self._collect_forwarded, self.receiver.ack) if self.receiver
                        else (self._collect_queued, self.conn.ack))
        while (received := collect()) is not None:
            items = [entry for entry in (self._decode(topic, payload) for topic, payload, _ in received) if entry]
            if not items or self._store(items):
                # committed (or refused for good): only now may the broker forget them
                ack(d for _, _, d in received)

    def _collect_forwarded(self) -> list | None:
        while not self._stop.is_set():
            received = self.receiver.recv(0.2)
            if received is None:
                continue
            while len(received) < self.batch and (more := self.receiver.recv(0)):
                received += more
            return received
        return None

    def _collect_queued(self) -> list | None:
        while True:
            item = self.q.get()
            if item is None:
                return None
            if self.linger_s and self.q.qsize() < self.batch:
                # let a batch build up: one commit of many rows costs far less CPU (and GIL time the
                # network thread needs) than many small ones
                time.sleep(self.linger_s)
            received = [item]
            while len(received) < self.batch:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                received.append(nxt)
            return received

    def _store(self, items: list) -> bool:
        """Commit ``items``; False only when giving up at shutdown (left unacknowledged: redelivered)."""
        delay, conflicts = 0.05, 0
        while True:
            try:
                self.stored += db.store_batch(self.engine, items)
                self.kinds.update(kind for kind, *_ in items)
                return True
            except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:  # database away/locked: wait, retry
                self.retries += 1
                if self._stopping and self.retries > 50:
                    log.error("giving up on %d messages at shutdown (the broker redelivers them): %s",
                              len(items), exc)
                    self.failed += len(items)
                    return False
                log.warning("commit of %d messages failed (%s); retrying in %.2fs", len(items), exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except sa_exc.IntegrityError:  # another worker created the same device first: the retry updates it
                self.retries += 1
                conflicts += 1
                if conflicts <= 3:
                    continue
                return self._split(items)
            except Exception:  # the data itself is refused: isolate the offending message(s)
                return self._split(items)

    def _split(self, items: list) -> bool:
        if len(items) == 1:
            self.failed += 1
            log.exception("dropping a message the database refuses: %r", items[0][:3])
            return True
        mid = len(items) // 2
        return all([self._store(items[:mid]), self._store(items[mid:])])

    def start(self) -> None:
        if self.receiver:
            self.receiver.start()
            self.conn.connect()
            self._thread.start()
            return
        self._thread.start()
        filters = ingest_filters(self.shared_group)
        self.conn.add_handler(filters, self._on_message)  # before connect: redeliveries follow CONNACK at once
        self.conn.connect()
        self.conn.subscribe(filters, self._on_message)

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        self.q.put(None)  # commit and acknowledge what is queued, then leave the session
        self._thread.join(10)
        if self.receiver:
            self.receiver.close()
        self.conn.close()
