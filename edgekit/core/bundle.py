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


def _extract_verified(path: str | Path, members: dict[str, tarfile.TarInfo], md, dest: Path) -> None:
    """Copy each member out of the (uncompressed) tar and hash it in the same pass, then check the
    digest against the signed entry: every byte is read once, through one reused buffer. Not
    fsynced here: the installer makes the slot durable before it switches to it."""
    import hashlib

    from . import trust

    buf = memoryview(bytearray(1 << 20))
    with open(path, "rb", buffering=0) as src:
        for name, info in members.items():
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


def open_bundle(path: str | Path, root, dest: str | Path, *, reference_time: float | None = None,
                allow_expired: bool = False, max_bytes: int = MAX_BUNDLE_BYTES,
                root_history: Path | None = None, device_id: str | None = None,
                device_key: Path | None = None) -> VerifiedBundle:
    """Verify ``path`` against the provisioned ``root`` metadata and extract it into ``dest``.

    Newer roots the bundle carries are followed first (and persisted to ``root_history``, see
    :func:`edgekit.core.trust.update_root`). ``dest`` must not exist yet; on any failure it is
    removed again. An encrypted artifact (manifest ``encryption``) is decrypted with
    ``device_key`` (this device's X25519 key) after every signature and hash has been checked.
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
            _extract_verified(path, members, md, dest)
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
        if enc is not None:
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
