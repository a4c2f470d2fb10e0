"""Resumable bundle download, one loop for every transport (HTTP Range, MQTT chunks).

:func:`download` downloads into ``<dest>.part``, resuming from the bytes it already holds, caps
the bytes at the signed length ("endless data"), retries with exponential backoff, checks free
disk first, enforces an overall deadline derived from the signed length and a minimum rate
("slow retrieval": :class:`Deadline`), verifies SHA-256 and only then renames to ``dest``. A
failed verification deletes the ``.part`` file.

A *source* moves bytes for one attempt: :class:`HttpSource` (``Range: bytes=N-``; a server
that ignores the range and answers 200 restarts the file) or
:class:`agent.fetch_mqtt.MqttChunkSource`. Sources call :meth:`PartFile.append` for every piece,
so the SHA-256 is computed while the bytes arrive (a resumed download first hashes the bytes it
already has) and the file is never read back.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Protocol

from edgekit.core.atomic import ensure_free_space
from edgekit.core.errors import IntegrityError, SlowRetrievalError, StorageError, TransportError

CHUNK = 1 << 18             # read size: 256 KiB pieces stay in cache between write and hash (1 MiB was slower)
MIN_RATE_BPS = 8192         # default minimum average rate: 64 kbit/s, a poor cellular link
GRACE_S = 30.0              # added to length / rate: connection set-up, retries of a short bundle

Progress = Callable[[int], None]


class Deadline:
    """The whole download (every attempt, every backoff) must end by ``grace_s + length / min_rate_bps``."""

    def __init__(self, length: int, min_rate_bps: float = MIN_RATE_BPS, grace_s: float = GRACE_S) -> None:
        self.budget_s = grace_s + length / min_rate_bps
        self.min_rate_bps, self.length = min_rate_bps, length
        self.end = time.monotonic() + self.budget_s

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self, have: int) -> None:
        if time.monotonic() > self.end:
            raise self.error(have)

    def error(self, have: int) -> SlowRetrievalError:
        return SlowRetrievalError(
            f"download too slow: {have} of {self.length} bytes after {self.budget_s:.1f} s (deadline from the "
            f"signed length at a minimum of {self.min_rate_bps:g} B/s); nothing was installed",
            have=have, length=self.length, deadline_s=round(self.budget_s, 3))

    def timeout(self, per_read: float) -> float:
        """A per-operation timeout that never lets one blocking call overrun the deadline."""
        return max(min(per_read, self.remaining()), 0.05)


class Tap(Protocol):
    """Sees every byte of the file in order (``edgekit.core.bundle.MemberDigests``); ``reset``: from byte 0."""

    def feed(self, chunk: bytes) -> None: ...

    def reset(self) -> None: ...


class PartFile:
    """The ``.part`` file and the SHA-256 of the bytes it holds, kept in step (and a ``tap``, if any)."""

    def __init__(self, part: Path, length: int, tap: Tap | None = None) -> None:
        self.part, self.length, self.hash, self.have, self.tap = part, length, hashlib.sha256(), 0, tap
        if tap:
            tap.reset()
        if part.exists():
            if part.stat().st_size > length:
                part.unlink()
            else:
                with open(part, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        self.hash.update(chunk)
                        if tap:
                            tap.feed(chunk)
                        self.have += len(chunk)

    def restart(self) -> None:
        self.hash, self.have = hashlib.sha256(), 0
        if self.tap:
            self.tap.reset()

    def append(self, out, chunk, progress: Progress | None) -> None:
        """Write one piece to the open ``.part`` file: the byte cap first, then write, then hash."""
        have = self.have + len(chunk)
        if have > self.length:
            raise IntegrityError(f"server sent more than the announced {self.length} bytes")
        out.write(chunk)
        self.hash.update(chunk)  # after the write: hash and file hold the same bytes
        if self.tap:
            self.tap.feed(chunk)
        self.have = have
        if progress:
            progress(have)


class Source(Protocol):
    def attempt(self, state: PartFile, deadline: Deadline, progress: Progress | None) -> None:
        """Fetch from ``state.have`` towards ``state.length``; raise TransportError/OSError to be retried."""


class HttpSource:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url, self.timeout = url, timeout

    def attempt(self, state: PartFile, deadline: Deadline, progress: Progress | None) -> None:
        try:
            self._attempt(state, deadline, progress)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410, 403, 401):
                raise TransportError(f"bundle download refused: HTTP {exc.code} for {self.url}",
                                     retryable=False) from None
            raise TransportError(f"HTTP {exc.code} for {self.url}") from None
        except urllib.error.URLError as exc:
            raise TransportError(f"cannot download {self.url}: {exc.reason}") from None
        except http.client.HTTPException as exc:
            raise TransportError(f"broken HTTP answer from {self.url}: {exc!r}") from None

    def _attempt(self, state: PartFile, deadline: Deadline, progress: Progress | None) -> None:
        length, have = state.length, state.have
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={have}-"} if have else {})
        with urllib.request.urlopen(req, timeout=deadline.timeout(self.timeout)) as resp:
            mode = "ab"
            if have and resp.status != 206:  # server ignored Range: start over
                mode = "wb"
                state.restart()
            with open(state.part, mode) as out:
                # read1: whatever arrived (a trickle cannot hold one read open past the deadline)
                while chunk := resp.read1(min(CHUNK, length - state.have + 1)):
                    state.append(out, chunk, progress)
                    deadline.check(state.have)
        if state.have < length:
            raise TransportError(f"download ended early at {state.have} of {length} bytes")


def download(source: "str | Source", dest: Path, *, length: int, sha256: str, retries: int = 10,
             timeout: float = 30.0, backoff_s: float = 0.2, reserve_bytes: int = 16 << 20,
             min_rate_bps: float = MIN_RATE_BPS, grace_s: float = GRACE_S,
             progress: Progress | None = None, tap: Tap | None = None) -> Path:
    """Fetch ``length`` bytes whose SHA-256 is ``sha256`` from ``source`` (a URL or a Source) into ``dest``;
    ``tap`` sees the bytes of the final file in order (again from byte 0 after a restart)."""
    src: Source = HttpSource(source, timeout) if isinstance(source, str) else source
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    state = PartFile(part, length, tap)
    ensure_free_space(dest.parent, max(length - state.have, 0), reserve_bytes)
    deadline = Deadline(length, min_rate_bps, grace_s)
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            if state.have < length:
                src.attempt(state, deadline, progress)
            break
        except IntegrityError:
            part.unlink(missing_ok=True)
            raise
        except SlowRetrievalError:
            part.unlink(missing_ok=True)
            raise
        except TransportError as exc:
            if exc.details.get("retryable") is False:
                raise
            last = exc
        except OSError as exc:
            if exc.errno == 28:
                part.unlink(missing_ok=True)
                raise StorageError(f"disk full while downloading into {dest.parent}") from None
            last = exc
        state = PartFile(part, length, tap)  # a failed write may have left a short tail: re-sync
        wait = min(backoff_s * 2 ** attempt, 5.0)
        if wait >= deadline.remaining():  # retrying cannot finish in time: report it as slow
            part.unlink(missing_ok=True)
            raise deadline.error(state.have)
        time.sleep(wait)
    else:
        raise TransportError(f"download failed after {retries + 1} attempts: {last}")
    digest = state.hash.hexdigest()
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"downloaded bundle hash {digest[:12]}… does not match the notice's {sha256[:12]}…")
    os.replace(part, dest)
    return dest
