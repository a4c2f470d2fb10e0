"""Resumable bundle download over HTTP(S) with the standard library.

Downloads into ``<dest>.part``, resuming with ``Range: bytes=N-`` (a server that ignores the
range and answers 200 restarts the file), caps the bytes at the announced length ("endless
data"), retries with exponential backoff, checks free disk first, verifies SHA-256 and only then
renames to ``dest``. A failed verification deletes the ``.part`` file.

The SHA-256 is computed while the bytes arrive (a resumed download first hashes the bytes it
already has), so the file is never read back.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from edgekit.core.atomic import ensure_free_space
from edgekit.core.errors import IntegrityError, StorageError, TransportError

CHUNK = 256 * 1024


class _Partial:
    """The ``.part`` file and the SHA-256 of the bytes it holds, kept in step."""

    def __init__(self, part: Path, length: int) -> None:
        self.part, self.hash, self.have = part, hashlib.sha256(), 0
        if part.exists():
            if part.stat().st_size > length:
                part.unlink()
            else:
                with open(part, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        self.hash.update(chunk)
                        self.have += len(chunk)

    def restart(self) -> None:
        self.hash, self.have = hashlib.sha256(), 0


def _attempt(url: str, state: _Partial, length: int, timeout: float,
             progress: Callable[[int], None] | None) -> None:
    if state.have == length:
        return
    have = state.have
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        mode = "ab"
        if have and resp.status != 206:  # server ignored Range: start over
            mode, have = "wb", 0
            state.restart()
        with open(state.part, mode) as out:
            while True:
                chunk = resp.read(min(CHUNK, length - have + 1))
                if not chunk:
                    break
                have += len(chunk)
                if have > length:
                    raise IntegrityError(f"server sent more than the announced {length} bytes")
                out.write(chunk)
                state.hash.update(chunk)  # after the write: hash and file hold the same bytes
                state.have = have
                if progress:
                    progress(have)
    if have < length:
        raise TransportError(f"download ended early at {have} of {length} bytes")


def download(url: str, dest: Path, *, length: int, sha256: str, retries: int = 10, timeout: float = 30.0,
             backoff_s: float = 0.2, reserve_bytes: int = 16 << 20,
             progress: Callable[[int], None] | None = None) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    state = _Partial(part, length)
    ensure_free_space(dest.parent, max(length - state.have, 0), reserve_bytes)
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _attempt(url, state, length, timeout, progress)
            break
        except IntegrityError:
            part.unlink(missing_ok=True)
            raise
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410, 403, 401):
                raise TransportError(f"bundle download refused: HTTP {exc.code} for {url}") from None
            last = exc
        except (urllib.error.URLError, OSError, TransportError) as exc:
            if isinstance(exc, OSError) and exc.errno == 28:
                part.unlink(missing_ok=True)
                raise StorageError(f"disk full while downloading into {dest.parent}") from None
            last = exc
        state = _Partial(part, length)  # a failed write may have left a short tail: re-sync
        time.sleep(min(backoff_s * 2 ** attempt, 5.0))
    else:
        raise TransportError(f"download of {url} failed after {retries + 1} attempts: {last}")
    digest = state.hash.hexdigest()
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"downloaded bundle hash {digest[:12]}… does not match the notice's {sha256[:12]}…")
    os.replace(part, dest)
    return dest
