"""Turn a converted artifact directory into a signed bundle (host side).

Reads ``<convert-out>/<profile>/{model.*, golden.npz, report.json}``, writes the manifest,
signs a TUF targets document with the key store's targets key and writes one ``.bundle`` file.
The release counter (anti-rollback) is monotonic per model name and key store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .core import bundle, trust
from .core.atomic import atomic_write_json, read_json
from .core.errors import TrustError, UsageError
from .core.profiles import load_profile
from .keys import KeyStore


def next_release(store: KeyStore, model: str, explicit: int | None = None) -> int:
    path = store.directory / "releases.json"
    counters = read_json(path, {})
    last = counters.get(model, 0)
    n = explicit if explicit is not None else last + 1
    if n <= 0:
        raise UsageError("release counter must be positive")
    atomic_write_json(path, {**counters, model: max(last, n)})
    return n


def build_manifest(report: dict, *, name: str, version: str, release: int) -> dict:
    profile = load_profile(report["profile"])
    v = profile.validation
    return {
        "schema": bundle.MANIFEST_SCHEMA,
        "model": {"name": name, "version": version, "release": release, "source_sha256": report["source_sha256"]},
        "profile": profile.id, "engine": report["engine"], "format": report["format"],
        "precision": report["precision"], "artifact": report["artifact"],
        "inputs": report["inputs"], "outputs": report["outputs"],
        "golden": {"file": bundle.GOLDEN_MEMBER, "count": report["golden_vectors"], "atol": v["atol"],
                   "rtol": v["rtol"], "min_cosine": v["min_cosine"], "min_top1_agreement": v["min_top1_agreement"]},
        "budgets": {k: profile.budgets[k] for k in ("latency_p50_ms", "latency_p95_ms", "max_peak_memory_bytes",
                                                     "max_model_bytes")},
        "parity": next((c for c in report["candidates"] if c["precision"] == report["precision"]), {}),
        "created_at": time.time(),
    }


def release_artifact(artifact_dir: Path, store: KeyStore, out_dir: Path, *, name: str, version: str,
                     release: int | None = None, expiry_days: float = 180,
                     encrypt_to: dict[str, bytes] | None = None) -> Path:
    """Sign a bundle; with ``encrypt_to`` (device id → X25519 public key, see ``Pki.device_x25519``)
    the artifact is encrypted (:mod:`edgekit.core.sealed`) and only those devices can install it."""
    artifact_dir = Path(artifact_dir)
    try:
        report = json.loads((artifact_dir / "report.json").read_text())
    except FileNotFoundError:
        raise UsageError(f"{artifact_dir} holds no report.json", hint="Run `edgekit convert` first and pass "
                         "one of the per-profile folders it wrote (e.g. out/raspberry-pi-4).") from None
    manifest = build_manifest(report, name=name, version=version, release=next_release(store, name, release))
    artifact = (artifact_dir / manifest["artifact"]).read_bytes()
    members = {bundle.GOLDEN_MEMBER: (artifact_dir / "golden.npz").read_bytes()}
    if encrypt_to is not None:
        from .core import sealed

        member = manifest["artifact"] + sealed.SUFFIX
        members[member], keys_doc = sealed.seal(artifact, member, encrypt_to)
        members[sealed.KEYS_MEMBER] = json.dumps(keys_doc, indent=1, sort_keys=True).encode()
        manifest["encryption"] = {"scheme": sealed.SCHEME, "member": member, "keys": sealed.KEYS_MEMBER,
                                  "recipients": sorted(encrypt_to)}
    else:
        members[manifest["artifact"]] = artifact
    if (artifact_dir / bundle.DRIFT_MEMBER).exists():  # optional, signed like every member
        members[bundle.DRIFT_MEMBER] = (artifact_dir / bundle.DRIFT_MEMBER).read_bytes()
    return _sign_and_write(manifest, members, store, out_dir, expiry_days)


def _sign_and_write(manifest: dict, members: dict[str, bytes], store: KeyStore, out_dir: Path,
                    expiry_days: float) -> Path:
    members[bundle.MANIFEST_MEMBER] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    md = trust.build_targets(members, version=manifest["model"]["release"], expires=trust.utc_in(expiry_days),
                             custom={bundle.MANIFEST_MEMBER: bundle.signed_custom(manifest)})
    trust.sign(md, store.signers("targets"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return bundle.write_bundle(out_dir / bundle.bundle_file_name(manifest), manifest, members, md.to_bytes(),
                               roots=store.root_chain())


def rerelease_bundle(bundle_path: Path, store: KeyStore, out_dir: Path, *, above: int = 0,
                     expiry_days: float = 180) -> Path:
    """Sign the content of an existing bundle again under a new release counter, higher than ``above``
    and than every release this key store signed for the model — how a fleet goes back more than one
    release: devices refuse an older counter (anti-rollback), so the earlier model is released anew
    (ADR 0011). The bundle is verified against this key store's root first (signature and every
    member hash, expiry ignored): only content this key store signed is ever signed again. The
    manifest keeps name and version and records ``rereleased_from`` (the release it copies). An
    encrypted artifact is re-signed as it is, sealed: the same recipients can open it, and the host
    never needs a device key."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgekit-rerelease-") as tmp:
        root = trust.load_root(store.root_bytes())
        try:
            vb = bundle.open_bundle(bundle_path, root, Path(tmp) / "content", allow_expired=True, unseal=False)
        except TrustError as exc:
            raise TrustError(f"{Path(bundle_path).name} is not signed by this key store ({store.directory}): "
                             f"{exc.message}", hint="Re-sign with the key store that released it, or release the "
                             "converted artifacts again with `edgekit release`.") from None
        members = {p.name: p.read_bytes() for p in vb.directory.iterdir()
                   if p.is_file() and p.name != bundle.MANIFEST_MEMBER}
        old = vb.manifest
    counters = read_json(store.directory / "releases.json", {})
    release = next_release(store, old["model"]["name"], max(above, counters.get(old["model"]["name"], 0)) + 1)
    manifest = {**old, "model": {**old["model"], "release": release},
                "rereleased_from": {"release": old["model"]["release"], "created_at": old["created_at"]},
                "created_at": time.time()}
    return _sign_and_write(manifest, members, store, out_dir, expiry_days)
