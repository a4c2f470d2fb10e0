"""A disk-backed FIFO of outgoing MQTT messages with a byte budget (the telemetry spool).

Every message is written to ``<dir>/<seq>.msg`` (atomic) *before* it is sent, and deleted only
after the broker acknowledged it (QoS 1 PUBACK), so a broker outage or an agent crash loses
nothing that fits the budget; delivery is at-least-once (a message whose PUBACK was lost is sent
again). A message appended with ``durable=True`` (the default) is fsynced too and survives a power
cut; ``durable=False`` (the install's intermediate progress events, ADR 0015) survives any process
crash, and a power cut may lose it or leave it empty/torn: such a record is dropped and counted,
never sent. Past the budget the *oldest* messages are dropped first and counted; the count
survives restarts (``dropped.json``) and is reported in telemetry.

This module does not know MQTT: :meth:`Spool.flush` takes the send function.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from edgekit.core.atomic import atomic_write_bytes, atomic_write_json, read_json
from edgekit.core.errors import StorageError

Send = Callable[[str, bytes], None]


class Spool:
    def __init__(self, directory: str | Path, budget_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.budget = budget_bytes
        self._lock = threading.Lock()        # the file list and counters
        self._flush_lock = threading.Lock()  # one sender at a time keeps the order
        self._files: list[tuple[Path, int]] = [(p, p.stat().st_size) for p in sorted(self.dir.glob("*.msg"))]
        for tmp in self.dir.glob(".*.tmp"):  # a write a crash interrupted
            tmp.unlink(missing_ok=True)
        self._bytes = sum(size for _, size in self._files)
        self._next = int(self._files[-1][0].stem) + 1 if self._files else 1
        self.dropped = (read_json(self.dir / "dropped.json") or {}).get("dropped", 0)
        torn = [p for p, size in self._files if not size]  # a non-durable record emptied by a power loss
        if torn:
            self._files = [(p, size) for p, size in self._files if size]
            for path in torn:
                path.unlink(missing_ok=True)
            self._count_drops(len(torn))

    def append(self, topic: str, payload: bytes, durable: bool = True) -> bool:
        """Store a message; False if it was dropped (larger than the whole budget, or disk full).
        ``durable=False``: not fsynced (kept across process crashes, not necessarily power cuts)."""
        record = topic.encode() + b"\n" + payload
        with self._lock:
            if len(record) > self.budget:
                self._count_drops(1)
                return False
            drops = 0
            while self._files and self._bytes + len(record) > self.budget:
                path, size = self._files.pop(0)
                path.unlink(missing_ok=True)
                self._bytes -= size
                drops += 1
            path = self.dir / f"{self._next:016d}.msg"
            try:
                atomic_write_bytes(path, record, durable=durable)
            except StorageError:
                self._count_drops(drops + 1)
                return False
            self._next += 1
            self._files.append((path, len(record)))
            self._bytes += len(record)
            if drops:
                self._count_drops(drops)
            return True

    def _count_drops(self, n: int) -> None:
        self.dropped += n
        try:
            atomic_write_json(self.dir / "dropped.json", {"dropped": self.dropped})
        except StorageError:
            pass  # the in-memory count is still reported

    def flush(self, send: Send) -> int:
        """Send the stored messages oldest first; stop at the first failure (they stay stored)."""
        sent = 0
        with self._flush_lock:
            while True:
                with self._lock:
                    if not self._files:
                        return sent
                    path, size = self._files[0]
                try:
                    topic, sep, payload = path.read_bytes().partition(b"\n")
                except FileNotFoundError:  # dropped for the budget meanwhile (or removed by hand)
                    self._forget(path, size)
                    continue
                if not (sep and topic and payload) or payload.endswith(b"\0") or not _valid_topic(topic):  # torn
                    self._forget(path, size)
                    with self._lock:
                        self._count_drops(1)
                    continue
                try:
                    send(topic.decode(), payload)
                except Exception:  # noqa: BLE001 - any failure to send keeps the message for later
                    return sent
                self._forget(path, size)
                sent += 1

    def _forget(self, path: Path, size: int) -> None:
        with self._lock:
            if self._files and self._files[0][0] == path:
                self._files.pop(0)
                self._bytes -= size
            path.unlink(missing_ok=True)

    def stats(self) -> dict:
        with self._lock:
            return {"pending": len(self._files), "bytes": self._bytes, "budget_bytes": self.budget,
                    "dropped": self.dropped}


def _valid_topic(raw: bytes) -> bool:
    try:
        topic = raw.decode()
    except UnicodeDecodeError:
        return False
    return topic.isprintable() and not any(c in topic for c in "+#\0")
