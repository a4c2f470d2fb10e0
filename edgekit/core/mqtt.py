"""A thin MQTT 5 connection on paho-mqtt 2.x that turns broker answers into edgekit errors.

What it adds to paho: waits for CONNACK/SUBACK/PUBACK and checks their MQTT 5 reason codes (a
denied QoS 1 publish is only visible as PUBACK 0x87), a bounded offline queue, one message
callback, request/response with MQTT 5 response-topic + correlation data. It does not know any
topic or payload format (see ``topics`` and ``messages``).
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .errors import ConfigError, TimeoutError_, TransportError

log = logging.getLogger("edgekit.mqtt")
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id
Handler = Callable[[str, bytes, "Properties | None"], None]


@dataclass(frozen=True)
class Delivery:
    """One received message to acknowledge later (``manual_ack`` connections): its packet id, QoS
    and the connection generation it arrived on (a reconnect makes older ids meaningless)."""

    mid: int
    qos: int
    generation: int


# with ``manual_ack=True`` handlers get the delivery as a 4th argument and must pass it to ``ack``
AckHandler = Callable[[str, bytes, "Properties | None", Delivery], None]


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class TlsFiles:
    """An identity folder's files: certificate + private key presented to the peer, CA to trust."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_dir(cls, directory: str | Path) -> "TlsFiles":
        d = Path(directory)
        files = cls(d / "cert.pem", d / "key.pem", d / "ca.pem")
        missing = [str(p) for p in (files.cert, files.key, files.ca) if not p.exists()]
        if missing:
            raise ConfigError(f"identity folder {d} is incomplete: missing {', '.join(missing)}",
                              hint="Pass a folder written by `edgekit pki init` (PKI/services/NAME) or by "
                                   "`edgekit device enroll`.")
        return files


class MqttConnection:
    """One client session. Threads: paho's network loop calls ``on_message`` handlers."""

    def __init__(self, client_id: str, host: str, port: int, *, will: Will | None = None,
                 clean_start: bool = True, session_expiry_s: int = 0, keepalive: int = 30,
                 max_queued: int = 1000, tls: TlsFiles | None = None, manual_ack: bool = False,
                 receive_maximum: int | None = None) -> None:
        """``manual_ack``: a QoS 1 message is acknowledged to the broker only when the application
        calls ``ack`` (e.g. after it is committed), so an unacknowledged one is redelivered to the
        persistent session after a crash. ``receive_maximum``: how many unacknowledged messages the
        broker may have in flight to us (MQTT 5; otherwise the broker's max_inflight_messages)."""
        self.client_id, self.host, self.port = client_id, host, port
        self.manual_ack, self._receive_maximum = manual_ack, receive_maximum
        self._generation = 0
        self.tls = tls
        self._clean_start, self._session_expiry, self._keepalive = clean_start, session_expiry_s, keepalive
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                                  manual_ack=manual_ack)
        self.client.max_queued_messages_set(max_queued)
        self.client.reconnect_delay_set(0.2, 5)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
            try:
                ctx.load_cert_chain(str(tls.cert), str(tls.key))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load TLS identity {tls.cert} / {tls.key}: {exc}") from None
            self.client.tls_set_context(ctx)
        if will:
            self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._cv = threading.Condition(threading.RLock())
        self._connack: int | None = None
        self._refused: str | None = None  # why the broker dropped us before any CONNACK (e.g. TLS)
        # Reason codes by message id. Never hold ``_cv`` while calling into paho: paho calls
        # on_publish with its own mutex held, so holding ours around publish() deadlocks.
        self._pubacks: dict[int, int] = {}
        self._subacks: dict[int, int] = {}
        self._handlers: list[tuple[str, Handler]] = []
        self._subscriptions: dict[str, int] = {}  # filter -> QoS, renewed after a reconnect without session
        self._rpc_waiters: list[Handler] = []
        self.on_connected: Callable[[bool], None] | None = None
        self.client.on_connect = self._on_connect
        self.client.on_socket_open = self._on_socket_open
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_suback
        self.client.on_message = self._on_message

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cv:
            self._connack = reason_code.value
            self._generation += 1
            self._cv.notify_all()
        if reason_code.value == 0 and not flags.session_present and self._subscriptions:
            # the broker forgot us (restart without persistence, clean start): subscribe again, no wait here
            client.subscribe(list(self._subscriptions.items()))
        if reason_code.value == 0 and self.on_connected:
            self.on_connected(bool(flags.session_present))

    @staticmethod
    def _on_socket_open(client, userdata, sock) -> None:
        # paho leaves Nagle on: small PUBLISH/PUBACK packets then stall ~40 ms on delayed ACKs.
        import socket

        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not a TCP socket (e.g. websockets/unix)
            pass

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cv:
            if self._connack is None and self._refused is None:
                self._refused = f"connection closed before CONNACK ({reason_code})"
            self._connack = None
            self._cv.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        with self._cv:
            self._refused = self._refused or "connection failed"
            self._cv.notify_all()

    def _on_ack(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cv:
            self._pubacks[mid] = reason_code.value  # bounded: at most 65535 message ids
            self._cv.notify_all()

    def _on_suback(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cv:
            self._subacks[mid] = max(rc.value for rc in reason_codes)
            self._cv.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        handlers = self._handlers
        extra = (Delivery(msg.mid, msg.qos, self._generation),) if self.manual_ack else ()
        if len(handlers) > 1 and all(h is handlers[0][1] for _, h in handlers):
            # one handler for every filter (e.g. the registry's ingest): the broker only sends what
            # matches a subscription, so skip the per-filter matching on this hot path
            handlers[0][1](msg.topic, msg.payload, getattr(msg, "properties", None), *extra)
            return
        matched = False
        for flt, handler in list(handlers):
            if paho.topic_matches_sub(flt.split("/", 2)[2] if flt.startswith("$share/") else flt, msg.topic):
                matched = True
                handler(msg.topic, msg.payload, getattr(msg, "properties", None), *extra)
        if extra and not matched:  # nobody will ever acknowledge it: do not leave it in flight
            log.warning("no handler for %s: acknowledged and dropped", msg.topic)
            self.ack(extra)

    def ack(self, deliveries) -> int:
        """Acknowledge received messages (``manual_ack`` connections); return how many were sent.
        Deliveries from an earlier connection are skipped: the broker redelivers those anyway."""
        gen = self._generation
        mine = [d for d in deliveries if d.qos > 0 and d.generation == gen]
        queue_packet = getattr(self.client, "_packet_queue", None)
        if queue_packet is not None and all(d.qos == 1 for d in mine) and len(mine) > 1:
            # Many PUBACKs as one queued write: client.ack() queues each one separately and, from a
            # thread other than paho's, also wakes paho's loop once per message (a syscall each).
            # A reason-code-0 PUBACK without properties is these 4 bytes in MQTT 3.1.1 and 5 alike.
            queue_packet(paho.PUBACK, b"".join(_PUBACK.pack(0x40, 2, d.mid) for d in mine), 0, 0)
        else:
            for d in mine:
                self.client.ack(d.mid, d.qos)
        return len(mine)

    # -- public API ------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connack == 0

    def connect(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)
        if self._session_expiry:
            props.SessionExpiryInterval = self._session_expiry
        if self._receive_maximum:
            props.ReceiveMaximum = self._receive_maximum
        self._refused = None
        try:
            self.client.connect(self.host, self.port, keepalive=self._keepalive,
                                clean_start=self._clean_start, properties=props)
        except ssl.SSLError as exc:
            raise TransportError(f"TLS handshake with {self.host}:{self.port} failed: {exc}",
                                 hint="Check the client certificate/key, that it is not revoked, and that "
                                      "the broker's CA (ca.pem) is the fleet's.") from None
        except OSError as exc:
            raise TransportError(f"cannot reach MQTT broker at {self.host}:{self.port}: {exc}") from None
        self.client.loop_start()
        with self._cv:
            if not self._cv.wait_for(lambda: self._connack is not None or self._refused is not None, timeout):
                self.close()
                raise TimeoutError_(f"no CONNACK from {self.host}:{self.port} within {timeout:.0f}s")
            if self._connack is None:
                why = self._refused
                self.close()
                raise TransportError(f"broker at {self.host}:{self.port} dropped the connection: {why}",
                                     hint="With TLS: is the client certificate issued by the fleet CA, "
                                          "unexpired and not revoked?")
            if self._connack != 0:
                code = self._connack
                self.close()
                raise TransportError(f"broker refused the connection (reason code 0x{code:02x})",
                                     hint="Check the client id, credentials/certificate and broker ACLs.")

    def _wait(self, predicate, what: str, timeout: float) -> None:
        with self._cv:
            if not self._cv.wait_for(predicate, timeout):
                raise TimeoutError_(f"{what}: no acknowledgement from the broker within {timeout:.0f}s")

    def add_handler(self, filters: list, handler: Handler) -> None:
        """Route messages matching ``filters`` to ``handler`` without subscribing. Call it before
        ``connect`` on a persistent session: the broker resends unacknowledged messages right after
        CONNACK, before any SUBSCRIBE is answered, and they must not find the connection handler-less."""
        self._handlers.extend((flt, handler) for flt, _ in filters if (flt, handler) not in self._handlers)

    def subscribe(self, filters: list[tuple[str, int]], handler: Handler, timeout: float = 10.0) -> None:
        self.add_handler(filters, handler)
        self._subscriptions.update(filters)
        rc, mid = self.client.subscribe(filters)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe to {[f for f, _ in filters]} failed: {paho.error_string(rc)}")
        self._wait(lambda: mid in self._subacks, "subscribe", timeout)
        with self._cv:
            code = self._subacks.pop(mid)
        if code >= 0x80:
            raise TransportError(f"broker refused subscription to {[f for f, _ in filters]} (reason code 0x{code:02x})")

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                properties: Properties | None = None, wait: bool = True, timeout: float = 10.0) -> None:
        """Publish; with ``wait`` (QoS 1), block for PUBACK and raise on a failure reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if wait and qos > 0:
            if info.rc == paho.MQTT_ERR_NO_CONN:  # paho queued it; is_published() would raise RuntimeError
                raise TransportError(f"publish to {topic}: not connected to the broker")
            self._wait(info.is_published, f"publish to {topic}", timeout)
            with self._cv:
                code = self._pubacks.get(info.mid, 0)
            if code >= 0x80:
                raise TransportError(f"broker refused publish to {topic} (reason code 0x{code:02x})",
                                     reason_code=code)

    def request(self, topic: str, payload: bytes, response_topic: str, timeout: float = 10.0) -> bytes:
        """MQTT 5 request/response: subscribe to ``response_topic``, correlate by a random id."""
        pending = self.send_request(topic, payload, response_topic, timeout=timeout)
        try:
            return pending.result(timeout)
        finally:
            pending.cancel()

    def send_request(self, topic: str, payload: bytes, response_topic: str, *, timeout: float = 10.0,
                     wait: bool = True) -> "PendingReply":
        """Publish a request and return at once; ``.result(timeout)`` waits for its answer. Several may
        be in flight (pipelining); ``wait=False`` does not wait for the request's PUBACK either."""
        if not any(f == response_topic for f, _ in self._handlers):
            self.subscribe([(response_topic, 1)], self._dispatch_reply, timeout=timeout)
        pending = PendingReply(self, response_topic)
        self._rpc_waiters.append(pending.offer)
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            props.CorrelationData = pending.corr
            self.publish(topic, payload, qos=1, properties=props, timeout=timeout, wait=wait)
        except BaseException:
            pending.cancel()
            raise
        return pending

    def _dispatch_reply(self, topic: str, body: bytes, props: Properties | None, *delivery: Delivery) -> None:
        for waiter in list(self._rpc_waiters):
            waiter(topic, body, props)
        if delivery:
            self.ack(delivery)

    def close(self, publish_first: tuple[str, bytes] | None = None) -> None:
        """Disconnect cleanly (the broker then does *not* send the last will)."""
        try:
            if publish_first and self.connected:
                self.publish(*publish_first, qos=1, retain=True, timeout=5)
        finally:
            self.client.disconnect()
            self.client.loop_stop()


class PendingReply:
    """One request in flight (see :meth:`MqttConnection.send_request`)."""

    def __init__(self, conn: MqttConnection, response_topic: str) -> None:
        self.conn, self.response_topic, self.corr = conn, response_topic, uuid.uuid4().bytes
        self._done = threading.Event()
        self.body: bytes | None = None

    def offer(self, _topic: str, body: bytes, props: Properties | None) -> None:
        if props is not None and getattr(props, "CorrelationData", None) == self.corr:
            self.body = body
            self._done.set()

    def result(self, timeout: float) -> bytes:
        if not self._done.wait(timeout):
            raise TimeoutError_(f"no reply on {self.response_topic} within {timeout:.0f}s",
                                hint="Is the device online? `edgekit fleet ls` shows its last status.")
        return self.body

    def cancel(self) -> None:
        try:
            self.conn._rpc_waiters.remove(self.offer)
        except ValueError:
            pass


def reply(conn: MqttConnection, request_props: Properties | None, payload: bytes, topic: str | None = None) -> bool:
    """Answer an MQTT 5 request on its response topic (or ``topic``, when the responder fixes
    where answers go) with its correlation data."""
    topic = topic or (getattr(request_props, "ResponseTopic", None) if request_props is not None else None)
    if not topic:
        return False
    props = Properties(PacketTypes.PUBLISH)
    corr = getattr(request_props, "CorrelationData", None)
    if corr is not None:
        props.CorrelationData = corr
    conn.publish(topic, payload, qos=1, properties=props, wait=False)
    return True
