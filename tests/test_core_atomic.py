"""edgekit.core.atomic: write-then-rename, symlink switch, free-space checks."""

from __future__ import annotations

import os

import pytest

from edgekit.core import atomic
from edgekit.core.errors import StorageError


class Boom(Exception):
    pass


def entries(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_bytes_creates_parents_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    atomic.atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert entries(target.parent) == ["file.bin"]


def test_write_bytes_replaces_content(tmp_path):
    target = tmp_path / "file.bin"
    atomic.atomic_write_bytes(target, b"old")
    atomic.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert entries(tmp_path) == ["file.bin"]


def test_exception_midway_keeps_old_content_and_removes_temp(tmp_path):
    target = tmp_path / "file.bin"
    atomic.atomic_write_bytes(target, b"old")
    with pytest.raises(Boom):
        with atomic.atomic_writer(target) as fh:
            fh.write(b"half of the new")
            fh.flush()
            assert len(entries(tmp_path)) == 2  # the temp file exists while writing
            raise Boom()
    assert target.read_bytes() == b"old"
    assert entries(tmp_path) == ["file.bin"]


def test_exception_midway_on_new_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic.atomic_writer(tmp_path / "new.bin") as fh:
            fh.write(b"x")
            raise Boom()
    assert entries(tmp_path) == []


def test_oserror_inside_writer_becomes_storage_error(tmp_path):
    target = tmp_path / "file.bin"
    atomic.atomic_write_bytes(target, b"old")
    with pytest.raises(StorageError) as info:
        with atomic.atomic_writer(target):
            raise OSError(28, "No space left on device")  # errno.ENOSPC
    assert "disk full" in info.value.message
    assert info.value.details["path"] == str(target)
    assert target.read_bytes() == b"old"
    assert entries(tmp_path) == ["file.bin"]


def test_unusable_directory_raises_storage_error(tmp_path):
    (tmp_path / "plain-file").write_bytes(b"")
    with pytest.raises(StorageError):
        atomic.atomic_write_bytes(tmp_path / "plain-file" / "child.bin", b"x")


def test_json_round_trip_and_default(tmp_path):
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"b": [1, 2], "a": {"x": None}})
    assert atomic.read_json(target) == {"b": [1, 2], "a": {"x": None}}
    assert target.read_text().endswith("\n")
    assert atomic.read_json(tmp_path / "missing.json", default={"d": 1}) == {"d": 1}


def test_symlink_create_and_switch(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    link = tmp_path / "current"
    atomic.atomic_symlink("v1", link)
    assert os.readlink(link) == "v1"
    atomic.atomic_symlink("v2", link)
    assert os.readlink(link) == "v2"
    assert link.resolve() == (tmp_path / "v2").resolve()
    assert entries(tmp_path) == ["current", "v1", "v2"]


def test_symlink_error_becomes_storage_error(tmp_path):
    with pytest.raises(StorageError):
        atomic.atomic_symlink("anything", tmp_path / "no-such-dir" / "link")


def test_ensure_free_space(tmp_path):
    atomic.ensure_free_space(tmp_path, 0)
    with pytest.raises(StorageError) as info:
        atomic.ensure_free_space(tmp_path, 10**18, reserve_bytes=10**18)
    assert info.value.details["needed"] == 2 * 10**18
    assert info.value.details["free"] < 2 * 10**18


def test_remove_tree_is_quiet(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    atomic.remove_tree(tmp_path / "d")
    atomic.remove_tree(tmp_path / "d")  # already gone: no error
    assert not (tmp_path / "d").exists()


def test_non_durable_write_is_atomic_but_skips_fsync(tmp_path, monkeypatch):
    import os

    from edgekit.core import atomic

    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"v": 1})
    assert len(calls) == 2  # the file and its directory
    atomic.atomic_write_json(target, {"v": 2}, durable=False)
    assert len(calls) == 2 and atomic.read_json(target) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind
