"""Run the registry: database + MQTT ingest + MQTT chunk server + HTTP API + rollout engine in one process
(+ the hosted TUF repository's re-signer with ``trust_keys``, ADR 0010).

Extra ingest-only workers (``rollouts=False``, same ``shared_group``, own ``client_id``) can run
next to it against the same database; exactly one process should drive rollouts.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from edgekit.core.errors import TransportError

from . import db
from .chunks import ChunkServer
from .http_api import RegistryHTTPServer
from .ingest import Ingest
from .rollout_engine import RolloutEngine


class Registry:
    def __init__(self, db_url: str, store: Path, broker_host: str, broker_port: int,
                 http_host: str = "127.0.0.1", http_port: int = 0, *, tls=None, shared_group: str | None = None,
                 client_id: str = "edgekit-registry", rollouts: bool = True, tick_s: float = 0.2,
                 notice_signer=None, private_reads: bool = False, receiver: str = "thread",
                 trust_keys: Path | None = None, trust_lifetimes: dict[str, float] | None = None) -> None:
        self.engine = db.open_db(db_url)
        repo = _trust_repo(self.engine, trust_keys, trust_lifetimes)  # before any socket: a ConfigError leaks none
        self.ingest = Ingest(self.engine, broker_host, broker_port, client_id=client_id, shared_group=shared_group,
                             tls=tls, receiver=receiver)
        self.http = RegistryHTTPServer((http_host, http_port), self.engine, store, self.ingest,
                                       private_reads=private_reads)
        self.chunks = ChunkServer(self.ingest.conn, store, shared_group=self.ingest.shared_group,
                                  engine=self.engine)  # MQTT transfer: bundles and hosted trust metadata
        self.rollouts = RolloutEngine(self.engine, self._publish, lambda: self.http.base_url, tick_s,
                                      can_send=lambda: self.ingest.conn.connected,
                                      notice_signer=notice_signer) if rollouts else None
        if self.rollouts:
            self.http.wake_rollouts = self.rollouts.wake
        self.trust = None  # the hosted TUF repository's re-signer (ADR 0010); reads are served from the DB anyway
        if repo is not None:
            from .trust_repo import Resigner

            self.trust = Resigner(repo)
            self.http.trust_signer = repo
            self.http.after_write = self.trust.step  # synchronous: a deprecation is withdrawn when the API answers

    def _publish(self, topic: str, payload: bytes) -> None:
        if not self.ingest.conn.connected:
            raise TransportError("registry is not connected to the broker; notice not sent")
        self.ingest.conn.publish(topic, payload, qos=1, wait=False)

    def create_token(self, role: str = "operator", name: str = "local") -> str:
        """A new API bearer token (see :mod:`.tokens`); the secret is only returned here."""
        from . import tokens

        return tokens.create(self.engine, role, name)["token"]

    @property
    def url(self) -> str:
        return self.http.base_url

    def start(self) -> "Registry":
        self.ingest.start()
        self.chunks.start()
        threading.Thread(target=self.http.serve_forever, name="registry-http", daemon=True).start()
        if self.rollouts:
            self.rollouts.start()
        if self.trust:
            self.trust.start()
        return self

    def stop(self) -> None:
        if self.trust:
            self.trust.stop()
        if self.rollouts:
            self.rollouts.stop()
        self.http.shutdown()
        self.http.server_close()
        self.chunks.stop()
        self.ingest.stop()
        self.engine.dispose()

    def serve_forever(self, on_ready=lambda url: None) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        on_ready(self.url)
        done.wait()
        self.stop()


def _trust_repo(engine, keys: Path | None, lifetimes: dict[str, float] | None):
    """The hosted TUF repository signed with ``keys`` (None: not signing), with fresh metadata."""
    if keys is None:
        return None
    from .trust_repo import TrustRepo

    repo = TrustRepo(engine, Path(keys), lifetimes)
    try:
        repo.ensure_targets()
        repo.resign()  # fresh before the first device asks; a restart continues the versions
    except BaseException:
        engine.dispose()
        raise
    return repo
