"""edgekit.pki and `edgekit pki|device` commands: real x509 certificates, CRL and provisioning folders."""

from __future__ import annotations

import json
import stat
import time

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgekit.cli.main import cli
from edgekit.core.errors import PkiError, ProfileError, UsageError
from edgekit.pki import BROKER, HOST, REGISTRY, enroll_device, init_pki, load_pki


def cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(c):
    return c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_init_layout_permissions_and_service_identities(pki):
    d = pki.directory
    assert stat.S_IMODE((d / "private").stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "private" / "ca.key").stat().st_mode) == 0o600
    ca = cert(d / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for name, expected_cn in ((BROKER, "localhost"), (REGISTRY, REGISTRY), (HOST, HOST)):
        ident = pki.service(name)
        c = cert(ident.cert)
        assert cn(c) == expected_cn and c.issuer == ca.subject
        c.verify_directly_issued_by(ca)
        assert stat.S_IMODE(ident.key.stat().st_mode) == 0o600
    assert x509.load_pem_x509_crl((d / "crl.pem").read_bytes()).is_signature_valid(ca.public_key())


def test_second_init_is_refused_without_force(pki):
    with pytest.raises(UsageError, match="already exists"):
        init_pki(pki.directory)


def test_enroll_writes_a_complete_provisioning_folder(pki, keystore, tmp_path):
    out = tmp_path / "prov" / "pi-01"
    cfg = enroll_device(pki, "pi-01", "raspberry-pi-4", out, keystore.root_path, broker_port=8883)
    c = cert(out / "cert.pem")
    assert cn(c) == "pi-01"
    c.verify_directly_issued_by(cert(pki.ca_path))
    assert x509.ExtendedKeyUsageOID.CLIENT_AUTH in c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    for f in ("key.pem", "enc.key"):
        assert stat.S_IMODE((out / f).stat().st_mode) == 0o600
    assert (out / "root.json").read_bytes() == keystore.root_bytes()
    from agent.config import load_config

    conf = load_config(cfg)
    assert conf.device_id == "pi-01" and conf.fleet == "demo" and conf.mqtt_port == 8883
    assert conf.tls_identity == out.resolve()
    assert len(load_pki(pki.directory).device_x25519("pi-01")) == 32


@pytest.mark.parametrize("device, err", [("edgekit-host", UsageError), ("broker", UsageError), ("bad/id", UsageError)])
def test_reserved_or_invalid_ids_are_refused(pki, tmp_path, device, err):
    with pytest.raises(err):
        pki.enroll(device, tmp_path / "x")


def test_unknown_profile_issues_nothing(pki, keystore, tmp_path):
    with pytest.raises(ProfileError):
        enroll_device(pki, "pi-02", "no-such-board", tmp_path / "x", keystore.root_path)
    assert "pi-02" not in load_pki(pki.directory).index["devices"] and not (tmp_path / "x").exists()


def test_double_enroll_needs_force_and_revokes_the_old_certificate(pki, tmp_path):
    first = pki.enroll("d1", tmp_path / "a")
    with pytest.raises(UsageError, match="already enrolled"):
        pki.enroll("d1", tmp_path / "b")
    second = pki.enroll("d1", tmp_path / "b", force=True)
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(first["serial"], 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(second["serial"], 16)) is None


def test_revoke_unknown_device(pki):
    with pytest.raises(UsageError, match="never enrolled"):
        pki.revoke("ghost")


def test_expiry_states_and_warning(pki, tmp_path):
    pki.enroll("soon", tmp_path / "s", days=10)
    pki.enroll("fine", tmp_path / "f", days=365)
    pki.enroll("gone", tmp_path / "g")
    pki.revoke("gone")
    rows = {r["device"]: r for r in pki.devices(warn_days=30)}
    assert rows["soon"]["state"] == "expiring" and "re-enroll" in rows["soon"]["warning"]
    assert rows["fine"]["state"] == "valid" and rows["fine"]["warning"] is None
    assert rows["gone"]["state"] == "revoked"
    later = {r["device"]: r for r in pki.devices(now=time.time() + 11 * 86400)}
    assert later["soon"]["state"] == "expired"


def test_missing_ca_key_is_a_clear_error(pki, tmp_path):
    (pki.directory / "private" / "ca.key").unlink()
    with pytest.raises(PkiError, match="CA private key"):
        pki.enroll("d9", tmp_path / "x")


def test_no_pki_is_a_clear_error(tmp_path):
    with pytest.raises(PkiError, match="no fleet PKI"):
        load_pki(tmp_path)


def test_cli_pki_init_enroll_ls_revoke(tmp_path, keystore):
    run = CliRunner().invoke
    p = str(tmp_path / "pki")
    res = run(cli, ["pki", "init", "--pki", p, "--fleet", "lab", "--broker-name", "mqtt.lab.example",
                    "--broker-name", "10.0.0.7", "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.output)["services"]) == {BROKER, REGISTRY, HOST}
    san = cert(tmp_path / "pki" / "services" / BROKER / "cert.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "mqtt.lab.example" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.7"]
    res = run(cli, ["device", "enroll", "pi-9", "-p", "raspberry-pi-4", "--pki", p, "--keys",
                    str(keystore.directory), "--out", str(tmp_path / "pi-9"), "--days", "5", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["state"] == "expiring"
    from agent.config import load_config

    assert load_config(tmp_path / "pi-9" / "agent.toml").freshness == "auto"
    res = run(cli, ["device", "enroll", "pi-10", "-p", "raspberry-pi-4", "--pki", p, "--keys",
                    str(keystore.directory), "--out", str(tmp_path / "pi-10"), "--freshness", "require", "--json"])
    assert res.exit_code == 0, res.output
    assert load_config(tmp_path / "pi-10" / "agent.toml").freshness == "require"  # the agent parses what enroll wrote
    res = run(cli, ["device", "ls", "--pki", p])
    assert res.exit_code == 0 and "pi-9" in res.output and "warning: pi-9" in res.output
    res = run(cli, ["device", "revoke", "pi-9", "--pki", p, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["revoked_at"]
    res = run(cli, ["device", "revoke", "nobody", "--pki", p])
    assert res.exit_code == 2 and "never enrolled" in res.output
    res = run(cli, ["device", "ls", "--pki", str(tmp_path / "none")])
    assert res.exit_code == 3 and "edgekit pki init" in res.output


def test_cli_broker_config_for_an_external_mosquitto(pki, tmp_path):
    pki.enroll("pi-1", tmp_path / "pi-1")
    res = CliRunner().invoke(cli, ["pki", "broker-config", "--out", str(tmp_path / "m"), "--pki", str(pki.directory),
                                   "--port", "8883", "--json"])
    assert res.exit_code == 0, res.output
    conf = (tmp_path / "m" / "mosquitto.conf").read_text()
    for line in ("listener 8883\n", "require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false", f"crlfile {pki.crl_path}"):
        assert line in conf
    assert "user root" not in conf
    assert "user pi-1\ntopic write edgekit/v1/demo/devices/pi-1/status" in (tmp_path / "m" / "acl").read_text()
