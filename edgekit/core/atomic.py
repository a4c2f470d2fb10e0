"""Crash-safe file helpers: write-then-rename with fsync, atomic symlink switch, free-space checks.

A reader of any path written through this module sees either the old content or the new one,
never a torn file, even after a power cut (the data and the directory entry are fsynced).
Nothing here knows about bundles or models.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator
from contextlib import contextmanager

from .errors import StorageError


def fsync_dir(path: Path) -> None:
    """Persist a directory entry (rename/unlink) of ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"disk full while writing {path}", path=str(path))
    return StorageError(f"cannot write {path}: {exc.strerror or exc}", path=str(path))


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", durable: bool = True) -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched. ``durable=False``
    skips both fsyncs: still atomic for every reader and across a process crash (kill -9), but a
    power cut may bring back the previous content (or, on some filesystems, an empty file).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _storage_error(exc, path) from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except OSError as exc:
        _unlink_quiet(tmp)
        raise _storage_error(exc, path) from exc
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_writer(path, "wb", durable) as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), durable)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def atomic_symlink(target: str, link: str | os.PathLike, durable: bool = True) -> None:
    """Point ``link`` at ``target`` atomically (create a temp link, rename over). ``durable=False``
    leaves the directory fsync to the caller (e.g. one later fsync of the same directory)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    _unlink_quiet(tmp)
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
        if durable:
            fsync_dir(link.parent)
    except OSError as exc:
        _unlink_quiet(tmp)
        raise _storage_error(exc, link) from exc


def ensure_free_space(directory: str | os.PathLike, needed_bytes: int, reserve_bytes: int = 0) -> None:
    """Raise :class:`StorageError` unless ``directory`` has ``needed + reserve`` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes + reserve_bytes:
        raise StorageError(
            f"not enough free space in {directory}: need {needed_bytes + reserve_bytes} bytes, have {free}",
            needed=needed_bytes + reserve_bytes,
            free=free,
        )


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
