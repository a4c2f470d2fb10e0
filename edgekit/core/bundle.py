"""The bundle: one signed file that carries a model release for one hardware profile.

Format (ADR 0001): an uncompressed POSIX tar whose members are, in this order::

    metadata/targets.json   TUF targets metadata signed by the release keys; lists every other
                            member with length + SHA-256, custom fields on manifest.json
    manifest.json           what this is: model name/version/release counter, profile, engine,
                            precision, I/O signature, golden-vector tolerances, budgets
    model.onnx|model.tflite the artifact
    golden.npz              golden test vectors: ``in:<name>`` inputs and ``out:<name>`` outputs
    metadata/roots/N.root.json   (optional, after a key rotation) root versions 2..N: the device
                            follows them one version at a time (each signed by the previous root's
                            threshold) before it checks the targets signature
    drift.json              optional: reference distribution for drift (``edgekit.core.drift``)

Reading is defensive: only regular files with flat names, sizes capped, signature checked
*before* any member is trusted, every member verified against its signed hash, members not
named in the signed metadata refused. This module neither downloads nor installs.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError, CompatibilityError, IntegrityError, StorageError
from .schema import non_negative, positive, validate

METADATA_MEMBER = "metadata/targets.json"
MANIFEST_MEMBER = "manifest.json"
GOLDEN_MEMBER = "golden.npz"
DRIFT_MEMBER = "drift.json"  # optional signed member (edgekit.core.drift.MEMBER)
MANIFEST_SCHEMA = "edgekit.manifest/1"
ARTIFACT_NAMES = ("model.onnx", "model.tflite")
MAX_METADATA_BYTES = 1 << 20
MAX_BUNDLE_BYTES = 2 << 30      # members of one bundle, expanded
ROOTS_PREFIX = "metadata/roots/"
MAX_ROOTS = 64

_TENSOR = {"name": (str, True, None), "dtype": (str, True, None), "shape": (list, True, None)}
MANIFEST_FIELDS: dict[str, Any] = {
    "schema": (str, True, None),
    "model": {"name": (str, True, None), "version": (str, True, None), "release": (int, True, positive),
              "source_sha256": (str, False, None)},
    "profile": (str, True, None),
    "engine": (str, True, None),
    "format": (str, True, None),
    "precision": (str, True, None),
    "artifact": (str, True, None),
    "inputs": [_TENSOR],
    "outputs": [_TENSOR],
    "golden": {"file": (str, True, None), "count": (int, True, non_negative),
               "atol": ((int, float), True, non_negative), "rtol": ((int, float), True, non_negative),
               "min_cosine": ((int, float), True, non_negative),
               "min_top1_agreement": ((int, float), True, non_negative)},
    "budgets": (dict, True, None),
    "parity": (dict, False, None),
    "created_at": ((int, float), True, positive),
}


def validate_manifest(manifest: Any) -> dict:
    errors = validate(manifest, MANIFEST_FIELDS, allow_unknown=True)
    if not errors and manifest["schema"] != MANIFEST_SCHEMA:
        errors.append(f"schema: expected {MANIFEST_SCHEMA!r}, got {manifest['schema']!r}")
    if not errors and manifest["artifact"] not in ARTIFACT_NAMES:
        errors.append(f"artifact: must be one of {ARTIFACT_NAMES}")
    if errors:
        raise BundleError("bundle manifest is invalid: " + "; ".join(errors), errors=errors)
    return manifest


def signed_custom(manifest: dict) -> dict:
    """Fields copied into the signed targets entry of manifest.json (checked on read)."""
    return {"model": manifest["model"]["name"], "version": manifest["model"]["version"],
            "release": manifest["model"]["release"], "profile": manifest["profile"]}


def _is_root_member(name: str) -> bool:
    num = name[len(ROOTS_PREFIX):-len(".root.json")] if name.startswith(ROOTS_PREFIX) and \
        name.endswith(".root.json") else ""
    return num.isdigit()


def write_bundle(path: str | Path, manifest: dict, members: dict[str, bytes], signed_targets: bytes,
                 roots: list[bytes] = ()) -> Path:
    """Write the tar atomically. ``members`` excludes metadata; ``signed_targets`` covers them;
    ``roots`` are newer root versions for devices to follow (self-verifying, not in targets)."""
    import json as _json

    from .atomic import atomic_writer

    validate_manifest(manifest)
    path = Path(path)
    root_members = [(f"{ROOTS_PREFIX}{_json.loads(r)['signed']['version']}.root.json", r) for r in roots]
    ordered = root_members + [(METADATA_MEMBER, signed_targets)] + \
        sorted(members.items(), key=lambda kv: kv[0] != MANIFEST_MEMBER)
    with atomic_writer(path) as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ordered:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(manifest["created_at"])
            tar.addfile(info, io.BytesIO(data))
    return path


@dataclass
class VerifiedBundle:
    """A bundle whose signature and every member hash were checked, extracted to ``directory``."""

    directory: Path
    manifest: dict
    targets_version: int
    expires: str

    @property
    def artifact_path(self) -> Path:
        return self.directory / self.manifest["artifact"]

    @property
    def golden_path(self) -> Path:
        return self.directory / self.manifest["golden"]["file"]


def _safe_members(tar: tarfile.TarFile, max_bytes: int) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for info in tar:
        name = info.name
        if not info.isreg():
            raise IntegrityError(f"bundle member {name!r} is not a regular file")
        if name != METADATA_MEMBER and not _is_root_member(name) and ("/" in name or name.startswith(".") or "\\" in name):
            raise IntegrityError(f"bundle member name {name!r} is not allowed")
        if name in members:
            raise IntegrityError(f"bundle member {name!r} appears twice")
        total += info.size
        if total > max_bytes:
            raise IntegrityError(f"bundle expands past the {max_bytes}-byte limit")
        members[name] = info
    return members


def peek_manifest(path: str | Path) -> dict:
    """The manifest of a bundle file, schema-checked but NOT verified (host side: to fill a notice;
    devices verify everything with :func:`open_bundle`)."""
    try:
        with tarfile.open(path, "r:") as tar:
            info = _safe_members(tar, MAX_BUNDLE_BYTES).get(MANIFEST_MEMBER)
            if info is None or info.size > MAX_METADATA_BYTES:
                raise BundleError(f"{path} has no readable {MANIFEST_MEMBER}")
            return validate_manifest(json.loads(tar.extractfile(info).read()))
    except (tarfile.TarError, ValueError, OSError) as exc:
        raise BundleError(f"{path} is not a readable bundle: {exc}",
                          hint="Pass a .bundle file written by `edgekit release`.") from None


class MemberDigests:
    """SHA-256 of every regular member of a bundle's tar, computed while the bundle's bytes stream
    past (the downloader :meth:`feed` s each piece as it writes it), in a worker thread so that
    on a multi-core device it overlaps the download's own whole-file hash (``hashlib`` releases
    the GIL). :meth:`result` gives ``{name: (offset_data, size, sha256 hex)}``, or None when the
    stream held something this reader does not follow (GNU long names, a truncated tar...): the
    verifier then hashes while it copies, as for a bundle file that was never streamed.

    Only a shortcut: :func:`open_bundle` still parses the file with ``tarfile`` and uses a digest
    only for a member whose (name, offset, size) agree, and still checks it against the signed entry.
    """

    _RESET = object()
    QUEUED = 64  # pieces waiting for the worker at most (backpressure: 16 MiB of 256 KiB reads)

    def __init__(self) -> None:
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(self.QUEUED)
        self._out: dict | None = None
        self._thread = threading.Thread(target=self._run, name="member-digests", daemon=True)
        self._thread.start()

    def feed(self, chunk) -> None:
        if not isinstance(chunk, bytes) and not (isinstance(chunk, memoryview) and isinstance(chunk.obj, bytes)):
            chunk = bytes(chunk)  # a mutable buffer the caller may reuse: keep a copy
        self._q.put(chunk)

    def reset(self) -> None:
        """The stream starts over from byte 0 (a server ignored the Range request)."""
        self._q.put(self._RESET)

    def result(self) -> dict | None:
        self._q.put(None)
        self._thread.join()
        return self._out

    def _run(self) -> None:
        import hashlib

        while True:
            reader = _TarStream(hashlib.sha256)
            while (item := self._q.get()) is not None and item is not self._RESET:
                try:
                    reader.feed(item)
                except Exception:  # noqa: BLE001 - malformed headers: open_bundle (tarfile) says what is wrong
                    reader.ok = False
            if item is None:
                self._out = reader.digests if reader.ok and reader.ended else None
                return


class _TarStream:
    """Incremental ustar/pax reader: headers parsed, regular members' data hashed, nothing stored."""

    def __init__(self, new_hash) -> None:
        self.new_hash, self.pos, self.ok, self.ended = new_hash, 0, True, False
        self.digests: dict[str, tuple[int, int, str]] = {}
        self._head = bytearray()
        self._pax: dict[str, str] = {}
        self._member: tuple | None = None     # (kind, name, offset, size, hash or buffer, left)
        self._skip = 0

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and self.ok and not self.ended:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
            elif self._member is not None:
                kind, name, offset, size, acc, left = self._member
                n = min(left, len(view))
                (acc.update if kind == "file" else acc.extend)(view[:n])
                self._member = (kind, name, offset, size, acc, left - n)
                if left == n:
                    self._end_member()
            else:
                n = min(512 - len(self._head), len(view))
                self._head += view[:n]
            view = view[n:]
            self.pos += n
            if len(self._head) == 512:  # self.pos is now where the member's data starts
                block = bytes(self._head)
                self._head.clear()
                self._header(block)

    def _header(self, block: bytes) -> None:
        if block == bytes(512):
            self.ended = True
            return
        try:
            name = block[0:100].split(b"\0", 1)[0].decode()
            prefix = block[345:500].split(b"\0", 1)[0].decode() if block[257:262] == b"ustar" else ""
            size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:  # base-256 sizes, garbage: leave it to tarfile
            self.ok = False
            return
        kind = block[156:157]
        if kind == b"x":    # pax extended header: path/size of the next member
            if size > MAX_METADATA_BYTES:
                self.ok = False
                return
            self._member = ("pax", name, self.pos, size, bytearray(), size)
        elif kind == b"g":  # pax global header: nothing edgekit writes needs it
            self._skip = size + (-size % 512)
            return
        elif kind in (b"0", b"\0"):
            name = self._pax.pop("path", f"{prefix}/{name}" if prefix else name)
            size = int(self._pax.pop("size", size))
            self._pax.clear()
            self._member = ("file", name, self.pos, size, self.new_hash(), size)
        else:  # links, devices, GNU long names: open_bundle refuses or parses them itself
            self.ok = False
            return
        if size == 0:
            self._end_member()

    def _end_member(self) -> None:
        kind, name, offset, size, acc, _ = self._member
        self._member = None
        if kind == "file":
            self.digests[name] = (offset, size, acc.hexdigest())
        else:
            try:
                for record in bytes(acc).decode().splitlines():
                    key, _, value = record.split(" ", 1)[1].partition("=")
                    self._pax[key] = value
            except (ValueError, IndexError, UnicodeDecodeError):
                self.ok = False
        self._skip = -size % 512


def _extract_verified(path: str | Path, members: dict[str, tarfile.TarInfo], md, dest: Path,
                      streamed: dict | None = None) -> None:
    """Copy each member out of the (uncompressed) tar and hash it in the same pass, then check the
    digest against the signed entry: every byte is read once, through one reused buffer. A member
    whose digest was taken while the bundle streamed in (``streamed``, :class:`MemberDigests`, at
    the same offset and size) is checked first and then copied by the kernel without being read
    back. Not fsynced here: the installer makes the slot durable before it switches to it."""
    import hashlib

    from . import trust

    buf = memoryview(bytearray(1 << 20))
    with open(path, "rb", buffering=0) as src:
        for name, info in members.items():
            known = (streamed or {}).get(name)
            if known is not None and known[:2] == (info.offset_data, info.size):
                trust.verify_member_digest(md, name, info.size, known[2])
                _copy_range(src.fileno(), dest / name, info.offset_data, info.size)
                continue
            h, left, got = hashlib.sha256(), info.size, 0
            src.seek(info.offset_data)
            with open(dest / name, "wb", buffering=0) as out:
                while left and (n := src.readinto(buf[:min(left, len(buf))])):
                    chunk = buf[:n]
                    h.update(chunk)
                    while chunk:  # raw writes may be partial
                        chunk = chunk[out.write(chunk):]
                    left, got = left - n, got + n
            trust.verify_member_digest(md, name, got, h.hexdigest())  # short read (truncated) fails here


def _copy_range(src_fd: int, dest: Path, offset: int, size: int) -> None:
    """``size`` bytes of ``src_fd`` from ``offset`` into a new file, in the kernel (copy_file_range)."""
    import os

    with open(dest, "wb", buffering=0) as out:
        while size:
            try:
                n = os.copy_file_range(src_fd, out.fileno(), size, offset)
            except (OSError, AttributeError):  # a filesystem, kernel or OS without it: plain reads and writes
                data = os.pread(src_fd, min(size, 1 << 20), offset)
                n = len(data) and out.write(data)
            if not n:
                raise IntegrityError(f"bundle ends before member {dest.name!r} does (truncated?)")
            offset, size = offset + n, size - n


def open_bundle(path: str | Path, root, dest: str | Path, *, reference_time: float | None = None,
                allow_expired: bool = False, max_bytes: int = MAX_BUNDLE_BYTES,
                root_history: Path | None = None, device_id: str | None = None,
                device_key: Path | None = None, streamed: dict | None = None,
                unseal: bool = True) -> VerifiedBundle:
    """Verify ``path`` against the provisioned ``root`` metadata and extract it into ``dest``.

    Newer roots the bundle carries are followed first (and persisted to ``root_history``, see
    :func:`edgekit.core.trust.update_root`). ``dest`` must not exist yet; on any failure it is
    removed again. An encrypted artifact (manifest ``encryption``) is decrypted with
    ``device_key`` (this device's X25519 key) after every signature and hash has been checked.
    ``streamed``: member digests taken while the file was downloaded (:class:`MemberDigests`).
    ``unseal=False`` leaves an encrypted artifact sealed (signatures and hashes are still checked):
    the host re-signing a release it cannot decrypt (:func:`edgekit.release.rerelease_bundle`).
    """
    from . import trust
    from .atomic import remove_tree

    dest = Path(dest)
    if dest.exists():
        raise StorageError(f"extraction target {dest} already exists; refusing to overwrite it")
    reference_time = time.time() if reference_time is None else reference_time
    try:
        tar = tarfile.open(path, mode="r:")
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {path}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise IntegrityError(f"{path} is not a readable bundle (truncated or corrupt): {exc}") from None
    try:
        with tar:
            members = _safe_members(tar, max_bytes)
            meta = members.pop(METADATA_MEMBER, None)
            if meta is None or meta.size > MAX_METADATA_BYTES:
                raise IntegrityError(f"bundle has no signed metadata ({METADATA_MEMBER})")
            carried = [members.pop(n) for n in [n for n in members if _is_root_member(n)]]
            if len(carried) > MAX_ROOTS or any(i.size > MAX_METADATA_BYTES for i in carried):
                raise IntegrityError("bundle carries too many or too large root documents")
            if carried:
                root = trust.update_root(root, [tar.extractfile(i).read() for i in carried], root_history)
            md = trust.verify_targets(root, tar.extractfile(meta).read(), reference_time=reference_time,
                                      allow_expired=allow_expired)
            signed = set(md.signed.targets)
            if missing := sorted(signed - members.keys()):
                raise IntegrityError(f"bundle is missing signed member(s) {missing} (truncated?)")
            if extra := sorted(members.keys() - signed):
                raise IntegrityError(f"bundle holds member(s) {extra} that are not signed")
            dest.mkdir(parents=True)
            _extract_verified(path, members, md, dest, streamed)
    except tarfile.TarError as exc:
        remove_tree(dest)
        raise IntegrityError(f"bundle is corrupt: {exc}") from None
    except OSError as exc:
        remove_tree(dest)
        raise StorageError(f"cannot extract bundle into {dest}: {exc.strerror or exc}") from None
    except BaseException:
        remove_tree(dest)
        raise
    try:
        manifest = validate_manifest(json.loads((dest / MANIFEST_MEMBER).read_bytes()))
        if trust.custom(md, MANIFEST_MEMBER) != signed_custom(manifest):
            raise IntegrityError("manifest does not match the signed release fields")
        enc = manifest.get("encryption")
        needed = (enc["member"], enc["keys"]) if isinstance(enc, dict) and {"member", "keys"} <= enc.keys() \
            else (manifest["artifact"],)
        for name in (*needed, manifest["golden"]["file"]):
            if name not in members:
                raise IntegrityError(f"manifest names {name!r} but the bundle does not hold it")
        if enc is not None and unseal:
            _unseal(dest, manifest, device_id, device_key)
    except BundleError:
        remove_tree(dest)
        raise
    except (ValueError, OSError, TypeError) as exc:
        remove_tree(dest)
        raise BundleError(f"bundle has no readable manifest.json: {exc}") from None
    return VerifiedBundle(dest, manifest, md.signed.version, md.signed.expires.isoformat())


def _unseal(dest: Path, manifest: dict, device_id: str | None, device_key: Path | None) -> None:
    from . import sealed

    enc = manifest["encryption"]
    if enc.get("scheme") != sealed.SCHEME:
        raise CompatibilityError(f"bundle uses encryption scheme {enc.get('scheme')!r}; this agent knows "
                                 f"{sealed.SCHEME!r}")
    if device_id is None or device_key is None:
        from .errors import EncryptionError

        raise EncryptionError("the model in this bundle is encrypted and this agent has no device key",
                              hint="Provision the device with `edgekit device enroll` (its folder holds enc.key).")
    sealed.unseal_file(dest / enc["member"], sealed.read_keys(dest / enc["keys"]), dest / manifest["artifact"],
                       device_id, sealed.load_device_key(device_key))
    (dest / enc["member"]).unlink()


def check_compatible(manifest: dict, *, profile: str, engines: tuple[str, ...]) -> None:
    """Refuse a bundle built for another profile or for a runtime the device does not have."""
    if manifest["profile"] != profile:
        raise CompatibilityError(
            f"bundle was built for profile {manifest['profile']!r}, this device is {profile!r}",
            bundle_profile=manifest["profile"], device_profile=profile)
    if manifest["engine"] not in engines:
        raise CompatibilityError(
            f"bundle needs runtime {manifest['engine']!r}; this device has {', '.join(engines) or 'none'}")


def bundle_file_name(manifest: dict) -> str:
    m = manifest["model"]
    return f"{m['name']}-{m['version']}-{manifest['profile']}.bundle"


def file_sha256(path: str | Path) -> tuple[str, int]:
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
