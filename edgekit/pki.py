"""The fleet PKI (host side): a CA, device and service certificates, a CRL, provisioning folders.

Layout of a PKI directory (``edgekit pki init``)::

    ca.pem                       fleet CA certificate (ECDSA P-256): goes to every device and service
    private/ca.key               CA private key (0600). Keep it on the host that enrolls devices.
    crl.pem                      certificate revocation list, read by the broker (``crlfile``)
    pki.json                     index: issued certificates (serial, expiry, revoked), device X25519 keys
    services/<name>/             identity folders of the broker and of the service clients:
        cert.pem key.pem ca.pem    ``broker`` (TLS server), ``edgekit-registry``, ``edgekit-host``

An *identity folder* always holds ``cert.pem``, ``key.pem`` and ``ca.pem``: the device's
provisioning folder (``edgekit device enroll``) is one too, plus ``agent.toml``, ``root.json``
(the TUF trust root) and ``enc.key`` (the device's X25519 key for encrypted models).
The certificate's common name is the MQTT identity (mosquitto ``use_identity_as_username``).

This module does not talk to the broker; :mod:`edgekit.broker` turns the index into an ACL.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .core.atomic import atomic_write_bytes, atomic_write_json, read_json
from .core.errors import PkiError, UsageError
from .core.mqtt import TlsFiles as Identity
from .core.topics import check_name

PKI_SCHEMA = "edgekit.pki/1"
BROKER = "broker"
REGISTRY = "edgekit-registry"
HOST = "edgekit-host"
SERVICES = (REGISTRY, HOST)
RESERVED_PREFIX = "edgekit-"
WARN_DAYS = 30


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pem)
    os.chmod(path, 0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self.index = read_json(self.directory / "pki.json")
        if self.index is None:
            raise PkiError(f"no fleet PKI in {self.directory}")
        if self.index.get("schema") != PKI_SCHEMA:
            raise PkiError(f"{self.directory}/pki.json has unknown schema {self.index.get('schema')!r}")

    # -- paths -------------------------------------------------------------------------------
    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    def service(self, name: str) -> Identity:
        return Identity.from_dir(self.directory / "services" / name)

    # -- CA ----------------------------------------------------------------------------------
    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            key = serialization.load_pem_private_key((self.directory / "private" / "ca.key").read_bytes(), None)
        except FileNotFoundError:
            raise PkiError(f"the CA private key {self.directory}/private/ca.key is missing",
                           hint="Enroll and revoke on the host that holds the CA key (restore it from backup).") \
                from None
        return x509.load_pem_x509_certificate(self.ca_path.read_bytes()), key

    def _issue(self, common_name: str, public_key, *, days: float, server: bool = False,
               names: tuple[str, ...] = ()) -> x509.Certificate:
        ca, ca_key = self._ca()
        now = _now()
        serial = x509.random_serial_number()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.index["fleet"])]))
                   .issuer_name(ca.subject).public_key(public_key).serial_number(serial)
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                                crl_sign=False, encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if server:
            import ipaddress

            sans: list[x509.GeneralName] = []
            for name in dict.fromkeys((common_name, "localhost", "127.0.0.1", *names)):
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    sans.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert

    def _record(self, kind: str, name: str, cert: x509.Certificate, **extra) -> dict:
        entry = {"serial": format(cert.serial_number, "x"), "not_after": cert.not_valid_after_utc.timestamp(),
                 "issued_at": time.time(), "revoked_at": None, **extra}
        self.index.setdefault(kind, {})[name] = entry
        atomic_write_json(self.directory / "pki.json", self.index)
        return entry

    def write_identity(self, folder: Path, common_name: str, *, days: float, server: bool = False,
                       names: tuple[str, ...] = ()) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(common_name, key.public_key(), days=days, server=server, names=names)
        folder.mkdir(parents=True, exist_ok=True)
        _write_key(folder / "key.pem", key)
        atomic_write_bytes(folder / "cert.pem", _pem(cert))
        atomic_write_bytes(folder / "ca.pem", self.ca_path.read_bytes())
        return cert

    # -- devices -----------------------------------------------------------------------------
    def enroll(self, device: str, out: Path, *, days: float = 365, force: bool = False) -> dict:
        """Issue ``device``'s certificate and X25519 key into the identity folder ``out``."""
        check_name(device, "device id")
        if device.startswith(RESERVED_PREFIX) or device == BROKER:
            raise UsageError(f"device id {device!r} is reserved for edgekit's own services",
                             hint=f"Pick a device id that does not start with {RESERVED_PREFIX!r}.")
        old = self.index.get("devices", {}).get(device)
        if old and not old.get("revoked_at") and not force:
            raise UsageError(f"device {device!r} is already enrolled (certificate {old['serial']})",
                             hint="Re-enroll with --force (the old certificate is revoked), or revoke it first.")
        if old and not old.get("revoked_at"):
            self.revoke(device)
        cert = self.write_identity(out, device, days=days)
        enc = x25519.X25519PrivateKey.generate()
        _write_key(out / "enc.key", enc)
        pub = enc.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        return self._record("devices", device, cert, x25519=pub)

    def revoke(self, device: str) -> dict:
        entry = self.index.get("devices", {}).get(device)
        if entry is None:
            raise UsageError(f"device {device!r} was never enrolled in {self.directory}",
                             hint="`edgekit device ls --pki DIR` lists enrolled devices.")
        if not entry.get("revoked_at"):
            entry["revoked_at"] = time.time()
            self.index.setdefault("revoked", []).append({"serial": entry["serial"], "at": entry["revoked_at"],
                                                         "device": device})
            atomic_write_json(self.directory / "pki.json", self.index)
        self.write_crl()
        return entry

    def write_crl(self, days: float = 30) -> Path:
        ca, ca_key = self._ca()
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now)
                   .next_update(now + dt.timedelta(days=days)))
        for r in self.index.get("revoked", []):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(r["serial"], 16))
                .revocation_date(dt.datetime.fromtimestamp(r["at"], dt.timezone.utc)).build())
        atomic_write_bytes(self.crl_path, builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    def devices(self, warn_days: float = WARN_DAYS, now: float | None = None) -> list[dict]:
        """Enrolled devices with certificate expiry and a ``warning`` when it is near or past."""
        now = time.time() if now is None else now
        rows = []
        for name, e in sorted(self.index.get("devices", {}).items()):
            left = (e["not_after"] - now) / 86400
            state = "revoked" if e.get("revoked_at") else "expired" if left <= 0 else \
                "expiring" if left <= warn_days else "valid"
            rows.append({"device": name, "serial": e["serial"], "state": state, "days_left": round(left, 1),
                         "not_after": dt.datetime.fromtimestamp(e["not_after"], dt.timezone.utc).isoformat(),
                         "warning": None if state == "valid" else
                         f"certificate {state}" + ("" if state == "revoked" else f" ({left:.0f} days left): "
                                                                                 "re-enroll with --force")})
        return rows

    def active_devices(self) -> dict[str, dict]:
        return {d: e for d, e in self.index.get("devices", {}).items() if not e.get("revoked_at")}

    def device_x25519(self, device: str) -> bytes:
        entry = self.active_devices().get(device)
        if entry is None:
            raise UsageError(f"device {device!r} is not enrolled (or revoked) in {self.directory}")
        return bytes.fromhex(entry["x25519"])


def init_pki(directory: str | Path, *, fleet: str = "default", ca_days: float = 3650, force: bool = False,
             service_days: float = 825, broker_names: tuple[str, ...] = ()) -> Pki:
    """Create the fleet CA, an empty CRL and the broker/registry/host identities.

    The broker's server certificate is valid for localhost, 127.0.0.1 and ``broker_names``
    (the host names / IP addresses devices use to reach it)."""
    directory = Path(directory)
    check_name(fleet, "fleet id")
    if (directory / "pki.json").exists() and not force:
        raise UsageError(f"a fleet PKI already exists in {directory}",
                         hint="Use it, pass another --pki directory, or --force (every device must be re-enrolled).")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgekit fleet CA ({fleet})"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, fleet)])
    now = _now()
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=ca_days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, content_commitment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "private").mkdir(exist_ok=True)
    os.chmod(directory / "private", 0o700)
    _write_key(directory / "private" / "ca.key", key)
    atomic_write_bytes(directory / "ca.pem", _pem(ca))
    atomic_write_json(directory / "pki.json", {"schema": PKI_SCHEMA, "fleet": fleet, "devices": {}, "services": {},
                                               "revoked": []})
    pki = Pki(directory)
    pki.write_crl()
    cert = pki.write_identity(directory / "services" / BROKER, "localhost", days=service_days, server=True,
                              names=tuple(broker_names))
    pki._record("services", BROKER, cert)
    for svc in SERVICES:
        pki._record("services", svc, pki.write_identity(directory / "services" / svc, svc, days=service_days))
    return pki


def load_pki(directory: str | Path) -> Pki:
    return Pki(directory)


def enroll_device(pki: Pki, device: str, profile: str, out: Path, root: Path, *, broker_host: str = "127.0.0.1",
                  broker_port: int = 8883, fleet: str | None = None, days: float = 365, force: bool = False,
                  telemetry_s: float = 30.0, freshness: str = "auto") -> Path:
    """Everything a device is provisioned with, in one folder: certificate, keys, CA, trust root
    and an agent config using them. Returns the agent config path."""
    from .core.profiles import load_profile
    from .demo import provision_device

    load_profile(profile)  # fail before issuing anything for an unknown profile
    if not root.exists():
        raise UsageError(f"trust root {root} not found", hint="Create the key store first: `edgekit keys init`.")
    pki.enroll(device, out, days=days, force=force)
    return provision_device(out, device, profile, broker_port, root, fleet=fleet or pki.index["fleet"],
                            telemetry_s=telemetry_s, host=broker_host, identity=".", freshness=freshness)
