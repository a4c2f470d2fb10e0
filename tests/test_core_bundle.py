"""edgekit.core.bundle: write a signed bundle, open/verify it, and refuse every kind of tampering.

Each refusal must raise the specific error class and leave ``dest`` absent.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit import keys
from edgekit.core import bundle, parity, trust
from edgekit.core.errors import (
    BundleError, CompatibilityError, ExpiredError, IntegrityError, StorageError, TrustError,
)

PROFILE = "x86-64-gateway"
RELEASE = 3
MODEL_BYTES = b"\x08\x07ONNX-MODEL-PAYLOAD:" + bytes(range(256)) * 4


# -- helpers -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return keys.init_keystore(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def root(store):
    return trust.load_root(store.root_bytes())


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    return keys.init_keystore(tmp_path_factory.mktemp("other-keys"))


def make_manifest(**overrides) -> dict:
    manifest = {
        "schema": bundle.MANIFEST_SCHEMA,
        "model": {"name": "kws", "version": "1.2.0", "release": RELEASE},
        "profile": PROFILE, "engine": "onnxruntime", "format": "onnx", "precision": "fp32",
        "artifact": "model.onnx",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [2, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [2, 3]}],
        "golden": {"file": bundle.GOLDEN_MEMBER, "count": 2, "atol": 1e-3, "rtol": 1e-3,
                   "min_cosine": 0.99, "min_top1_agreement": 0.9},
        "budgets": {"max_model_bytes": 1 << 20},
        "created_at": 1_700_000_000,
    }
    return manifest | overrides


def golden_bytes() -> bytes:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    return parity.save_golden({"x": x}, {"y": np.ones((2, 3), dtype=np.float32)})


def make_members(manifest: dict) -> dict[str, bytes]:
    return {bundle.MANIFEST_MEMBER: json.dumps(manifest).encode(), "model.onnx": MODEL_BYTES,
            bundle.GOLDEN_MEMBER: golden_bytes()}


def sign_release(store, members: dict[str, bytes], manifest: dict, *, days: float = 30,
                 custom: dict | None = None) -> bytes:
    custom = {bundle.MANIFEST_MEMBER: bundle.signed_custom(manifest)} if custom is None else custom
    md = trust.build_targets(members, version=RELEASE, expires=trust.utc_in(days), custom=custom)
    return trust.sign(md, store.signers("targets")).to_bytes()


def make_bundle(path: Path, store, *, manifest: dict | None = None, members: dict | None = None,
                signed_members: dict | None = None, **sign_kw) -> Path:
    """A bundle; ``members`` is what goes in the tar, ``signed_members`` what the signature covers."""
    manifest = make_manifest() if manifest is None else manifest
    members = make_members(manifest) if members is None else members
    signed = sign_release(store, members if signed_members is None else signed_members, manifest, **sign_kw)
    return bundle.write_bundle(path, manifest, members, signed)


def write_tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return path


def tar_entries(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def member_offset(path: Path, name: str) -> int:
    """File offset of the first data byte of member ``name`` (the tar is uncompressed)."""
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


def refuse(path: Path, root, dest: Path, error: type[Exception], match: str | None = None, **kw) -> Exception:
    with pytest.raises(error, match=match) as info:
        bundle.open_bundle(path, root, dest, **kw)
    assert not dest.exists(), "a refused bundle must not leave the destination behind"
    return info.value


@pytest.fixture
def good(tmp_path, store) -> Path:
    return make_bundle(tmp_path / "good.bundle", store)


# -- happy path --------------------------------------------------------------------------------

def test_open_valid_bundle(good, root, tmp_path):
    dest = tmp_path / "dest"
    vb = bundle.open_bundle(good, root, dest)
    assert vb.manifest == make_manifest()
    assert vb.directory == dest
    assert vb.targets_version == RELEASE
    assert vb.expires.startswith(str(trust.utc_in(30).year))
    assert vb.artifact_path.read_bytes() == MODEL_BYTES
    ins, outs = parity.load_golden(vb.golden_path)
    np.testing.assert_array_equal(ins["x"], np.arange(8, dtype=np.float32).reshape(2, 4))
    assert sorted(p.name for p in dest.iterdir()) == ["golden.npz", "manifest.json", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "good.bundle"]  # no temp files left


def test_member_order_and_tar_format(good):
    names = [name for name, _ in tar_entries(good)]
    assert names[:2] == [bundle.METADATA_MEMBER, bundle.MANIFEST_MEMBER]
    assert sorted(names[2:]) == ["golden.npz", "model.onnx"]
    with tarfile.open(good) as tar:
        assert all(m.mtime == 1_700_000_000 and m.mode == 0o644 for m in tar.getmembers())


def test_peek_manifest_reads_the_manifest_and_refuses_what_is_not_a_bundle(good, tmp_path):
    assert bundle.peek_manifest(good) == make_manifest()
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar file" * 100)
    with pytest.raises(BundleError, match="not a readable bundle") as exc:
        bundle.peek_manifest(junk)
    assert exc.value.exit_code == 5 and exc.value.hint
    empty = tmp_path / "empty.bundle"
    with tarfile.open(empty, "w") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"abcd"))
    with pytest.raises(BundleError, match="no readable manifest.json"):
        bundle.peek_manifest(empty)


def test_write_bundle_refuses_invalid_manifest(tmp_path, store):
    manifest = make_manifest()
    bad = manifest | {"artifact": "model.exe"}
    with pytest.raises(BundleError, match="artifact"):
        bundle.write_bundle(tmp_path / "b.bundle", bad, make_members(manifest), b"{}")
    bad = manifest | {"schema": "edgekit.manifest/2"}
    with pytest.raises(BundleError, match="schema"):
        bundle.write_bundle(tmp_path / "b.bundle", bad, make_members(manifest), b"{}")
    bad = {k: v for k, v in manifest.items() if k != "golden"}
    with pytest.raises(BundleError, match="golden: missing required field"):
        bundle.write_bundle(tmp_path / "b.bundle", bad, make_members(manifest), b"{}")
    assert not (tmp_path / "b.bundle").exists()


# -- tampering ---------------------------------------------------------------------------------

@pytest.mark.parametrize("member", ["model.onnx", bundle.MANIFEST_MEMBER, bundle.GOLDEN_MEMBER])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_member(good, root, tmp_path, member, where):
    size = dict(tar_entries(good))[member].__len__()
    flip_byte(good, member_offset(good, member) + {"first": 0, "middle": size // 2, "last": size - 1}[where])
    err = refuse(good, root, tmp_path / "dest", IntegrityError, "does not match its signed hash")
    assert err.details["member"] == member


def test_flipped_byte_found_by_content(good, root, tmp_path):
    data = good.read_bytes()
    offset = data.find(MODEL_BYTES)
    assert offset > 0 and data.count(MODEL_BYTES) == 1
    flip_byte(good, offset + len(MODEL_BYTES) - 7)
    refuse(good, root, tmp_path / "dest", IntegrityError)


def test_flipped_byte_in_signed_metadata(good, root, tmp_path):
    meta = dict(tar_entries(good))[bundle.METADATA_MEMBER]
    offset = member_offset(good, bundle.METADATA_MEMBER) + meta.index(b'"version"') + 12
    flip_byte(good, offset)
    refuse(good, root, tmp_path / "dest", TrustError)


@pytest.mark.parametrize("cut", ["empty", "header", "metadata", "model", "golden", "last_byte_of_golden"])
def test_truncated_file(good, root, tmp_path, cut):
    entries = dict(tar_entries(good))
    golden_end = member_offset(good, bundle.GOLDEN_MEMBER) + len(entries[bundle.GOLDEN_MEMBER])
    keep = {
        "empty": 0, "header": 100,
        "metadata": member_offset(good, bundle.METADATA_MEMBER) + 50,
        "model": member_offset(good, "model.onnx") + len(MODEL_BYTES) // 2,
        "golden": member_offset(good, bundle.GOLDEN_MEMBER) + 10,
        "last_byte_of_golden": golden_end - 1,
    }[cut]
    good.write_bytes(good.read_bytes()[:keep])
    refuse(good, root, tmp_path / "dest", IntegrityError)


def test_missing_member(good, root, tmp_path):
    entries = [e for e in tar_entries(good) if e[0] != bundle.GOLDEN_MEMBER]
    refuse(write_tar(tmp_path / "b.bundle", entries), root, tmp_path / "dest", IntegrityError, "missing signed")


def test_missing_metadata(good, root, tmp_path):
    entries = [e for e in tar_entries(good) if e[0] != bundle.METADATA_MEMBER]
    refuse(write_tar(tmp_path / "b.bundle", entries), root, tmp_path / "dest", IntegrityError, "no signed metadata")


def test_signed_by_another_keystore(tmp_path, root, other_store):
    path = make_bundle(tmp_path / "b.bundle", other_store)
    err = refuse(path, root, tmp_path / "dest", TrustError, "not signed by this fleet's release keys")
    assert not isinstance(err, ExpiredError)


def test_expired_release(tmp_path, store, root):
    path = make_bundle(tmp_path / "b.bundle", store, days=-1)
    refuse(path, root, tmp_path / "dest", ExpiredError)
    assert bundle.open_bundle(path, root, tmp_path / "dest", allow_expired=True).manifest == make_manifest()


def test_reference_time_past_expiry(good, root, tmp_path):
    far = time.time() + 365 * 86400
    refuse(good, root, tmp_path / "dest", ExpiredError, reference_time=far)
    vb = bundle.open_bundle(good, root, tmp_path / "dest", reference_time=far, allow_expired=True)
    assert vb.artifact_path.read_bytes() == MODEL_BYTES


def test_extra_unsigned_member(tmp_path, store, root):
    manifest = make_manifest()
    signed = make_members(manifest)
    path = make_bundle(tmp_path / "b.bundle", store, members=signed | {"notes.txt": b"hi"}, signed_members=signed)
    refuse(path, root, tmp_path / "dest", IntegrityError, "not signed")


def test_extra_member_appended_to_a_good_tar(good, root, tmp_path):
    entries = tar_entries(good) + [("payload.sh", b"#!/bin/sh\n")]
    refuse(write_tar(tmp_path / "b.bundle", entries), root, tmp_path / "dest", IntegrityError, "not signed")


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "sub/evil", ".hidden", "..", "a\\b"])
def test_unsafe_member_name(tmp_path, store, root, name):
    manifest = make_manifest()
    members = make_members(manifest) | {name: b"evil"}
    path = make_bundle(tmp_path / "work" / "b.bundle", store, members=members)  # signed, too
    refuse(path, root, tmp_path / "work" / "dest", IntegrityError, "is not allowed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.bundle", "work"]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])
def test_non_regular_member(good, root, tmp_path, kind):
    info = tarfile.TarInfo("model.onnx.link")
    info.type, info.linkname = kind, "/etc/passwd"
    refuse(write_tar(tmp_path / "b.bundle", tar_entries(good) + [info]), root, tmp_path / "dest",
           IntegrityError, "not a regular file")


def test_duplicate_member(good, root, tmp_path):
    entries = tar_entries(good)
    model = next(e for e in entries if e[0] == "model.onnx")
    refuse(write_tar(tmp_path / "b.bundle", entries + [model]), root, tmp_path / "dest",
           IntegrityError, "appears twice")


def test_size_limit(good, root, tmp_path):
    refuse(good, root, tmp_path / "dest", IntegrityError, "byte limit", max_bytes=len(MODEL_BYTES))


@pytest.mark.parametrize("field,value", [("profile", "esp32-s3"), ("model", "other-model"),
                                         ("version", "9.9.9"), ("release", RELEASE + 1)])
def test_signed_custom_disagrees_with_manifest(tmp_path, store, root, field, value):
    manifest = make_manifest()
    custom = {bundle.MANIFEST_MEMBER: bundle.signed_custom(manifest) | {field: value}}
    path = make_bundle(tmp_path / "b.bundle", store, manifest=manifest, custom=custom)
    refuse(path, root, tmp_path / "dest", IntegrityError, "manifest does not match the signed release fields")


def test_signed_custom_missing(tmp_path, store, root):
    path = make_bundle(tmp_path / "b.bundle", store, custom={})
    refuse(path, root, tmp_path / "dest", IntegrityError, "manifest does not match")


def test_manifest_names_a_file_not_in_the_bundle(tmp_path, store, root):
    manifest = make_manifest(artifact="model.tflite")
    path = make_bundle(tmp_path / "b.bundle", store, manifest=manifest)
    refuse(path, root, tmp_path / "dest", IntegrityError, "'model.tflite'")


@pytest.mark.parametrize("raw", [b"{not json", b"[1]", b'{"schema": "edgekit.manifest/1"}'])
def test_signed_but_invalid_manifest(tmp_path, store, root, raw):
    manifest = make_manifest()
    members = make_members(manifest) | {bundle.MANIFEST_MEMBER: raw}
    path = make_bundle(tmp_path / "b.bundle", store, manifest=manifest, members=members)
    err = refuse(path, root, tmp_path / "dest", BundleError)
    assert type(err) is BundleError


@pytest.mark.parametrize("content", [b"", b"definitely not a tar file" * 100, bytes(10240)])
def test_not_a_tar(tmp_path, root, content):
    path = tmp_path / "b.bundle"
    path.write_bytes(content)
    refuse(path, root, tmp_path / "dest", IntegrityError)


def test_missing_bundle_file(tmp_path, root):
    err = refuse(tmp_path / "absent.bundle", root, tmp_path / "dest", BundleError, "not found")
    assert type(err) is BundleError


def test_existing_dest_is_refused(good, root, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StorageError):
        bundle.open_bundle(good, root, dest)


def test_existing_dest_is_left_alone(good, root, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("previous install")
    with pytest.raises(StorageError):
        bundle.open_bundle(good, root, dest)
    assert (dest / "keep.txt").read_text() == "previous install"


def test_signed_bundle_without_manifest(tmp_path, store, root):
    manifest = make_manifest()
    members = {k: v for k, v in make_members(manifest).items() if k != bundle.MANIFEST_MEMBER}
    signed = sign_release(store, members, manifest, custom={})
    path = tmp_path / "b.bundle"
    write_tar(path, [(bundle.METADATA_MEMBER, signed)] + list(members.items()))
    refuse(path, root, tmp_path / "dest", BundleError)


# -- compatibility and small helpers ----------------------------------------------------------

def test_check_compatible():
    manifest = make_manifest()
    bundle.check_compatible(manifest, profile=PROFILE, engines=("onnxruntime",))
    with pytest.raises(CompatibilityError, match="built for profile 'x86-64-gateway'") as info:
        bundle.check_compatible(manifest, profile="esp32-s3", engines=("onnxruntime",))
    assert info.value.details == {"bundle_profile": PROFILE, "device_profile": "esp32-s3"}
    with pytest.raises(CompatibilityError, match="needs runtime 'onnxruntime'"):
        bundle.check_compatible(manifest, profile=PROFILE, engines=("tflite",))
    with pytest.raises(CompatibilityError, match="none"):
        bundle.check_compatible(manifest, profile=PROFILE, engines=())


def test_bundle_file_name_and_sha(good):
    assert bundle.bundle_file_name(make_manifest()) == f"kws-1.2.0-{PROFILE}.bundle"
    digest, size = bundle.file_sha256(good)
    import hashlib
    assert (digest, size) == (hashlib.sha256(good.read_bytes()).hexdigest(), good.stat().st_size)


def test_member_digests_match_tarfile_for_any_chunking():
    """The streaming reader agrees with tarfile on names, offsets and sizes (ustar, pax long and
    non-ASCII names, empty members), whatever the piece sizes; a truncated stream gives None."""
    import hashlib
    import io
    import random
    import tarfile

    from edgekit.core.bundle import MemberDigests

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in [("manifest.json", b"{}" * 300), ("a" * 150, b"x" * 1000), ("é.txt", b""),
                              ("dir/" + "b" * 120, b"y" * 513), ("model.onnx", bytes(range(256)) * 40)]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        want = {i.name: (i.offset_data, i.size, hashlib.sha256(data[i.offset_data:i.offset_data + i.size]).hexdigest())
                for i in tar}
    rng = random.Random(5)
    for _ in range(20):
        md, pos = MemberDigests(), 0
        while pos < len(data):
            n = rng.choice([1, 7, 511, 512, 513, 4096, 1 << 16])
            md.feed(memoryview(data)[pos:pos + n])
            pos += n
        assert md.result() == want
    md, reused = MemberDigests(), bytearray(4096)  # a caller that reuses its read buffer
    for pos in range(0, len(data), 4096):
        piece = data[pos:pos + 4096]
        reused[:len(piece)] = piece
        md.feed(memoryview(reused)[:len(piece)])
    reused[:] = bytes(4096)
    assert md.result() == want
    md = MemberDigests()
    md.feed(data[:len(data) // 2])
    assert md.result() is None  # never reached the end-of-archive blocks
    md = MemberDigests()
    md.feed(b"garbage" * 100)
    md.reset()
    md.feed(data)
    assert md.result() == want
    bad = bytearray(data[:512])
    bad[124:136] = b"not-octal!!\0"  # a malformed size: the reader gives up, the feeder never blocks
    md = MemberDigests()
    for _ in range(3 * MemberDigests.QUEUED):
        md.feed(bytes(bad))
    assert md.result() is None
