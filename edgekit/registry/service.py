"""Run the registry: database + MQTT ingest + MQTT chunk server + HTTP API in one process."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from . import db
from .chunks import ChunkServer
from .http_api import RegistryHTTPServer
from .ingest import Ingest


class Registry:
    def __init__(self, db_url: str, store: Path, broker_host: str, broker_port: int,
                 http_host: str = "127.0.0.1", http_port: int = 0, *, tls=None) -> None:
        self.engine = db.open_db(db_url)
        self.ingest = Ingest(self.engine, broker_host, broker_port, tls=tls)
        self.http = RegistryHTTPServer((http_host, http_port), self.engine, store, self.ingest)
        self.chunks = ChunkServer(self.ingest.conn, store, shared_group=self.ingest.shared_group)  # MQTT transfer

    @property
    def url(self) -> str:
        return self.http.base_url

    def start(self) -> "Registry":
        self.ingest.start()
        self.chunks.start()
        threading.Thread(target=self.http.serve_forever, name="registry-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.chunks.stop()
        self.ingest.stop()

    def serve_forever(self, on_ready=lambda url: None) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        on_ready(self.url)
        done.wait()
        self.stop()
