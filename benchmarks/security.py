"""Security benchmark: what mTLS, signed notices, root chains and encryption cost, each against a
baseline measured in the same run (one thread, loopback; everything started here is stopped).

1. MQTT connect + one QoS 1 publish/PUBACK round trip: plain listener (baseline) vs the mTLS
   listener with ACL (candidate), two managed mosquittos, interleaved, median of N.
2. Notice verification on the device (signature + target + window + nonce persisted) vs a plain
   schema check of the same payload (baseline: what the agent did before).
3. Encrypted model: ``sealed.seal`` / ``unseal_file`` throughput vs SHA-256 of the same bytes
   (baseline: the hash every member already gets).
4. Root chain: verifying root v1 -> v5 from a device's history (``load_trusted_root``).

Usage: .venv/bin/python benchmarks/security.py [--out benchmarks/results/security.json] [--runs 50]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _median_ms(xs):
    return round(statistics.median(xs) * 1000, 3)


def bench_mqtt(work: Path, runs: int) -> dict:
    import uuid

    from edgekit.broker import ManagedBroker
    from edgekit.core import topics
    from edgekit.core.mqtt import MqttConnection, TlsFiles
    from edgekit.pki import init_pki

    pki = init_pki(work / "pki", fleet="bench")
    pki.enroll("dev-1", work / "dev-1")
    tls = TlsFiles.from_dir(work / "dev-1")
    plain, secure = {"t": []}, {"t": []}
    with ManagedBroker(work / "plain") as bp, ManagedBroker(work / "secure", pki=pki) as bs:
        for _ in range(runs):
            for broker, box, files in ((bp, plain, None), (bs, secure, tls)):
                t0 = time.perf_counter()
                c = MqttConnection(f"dev-1-{uuid.uuid4().hex[:4]}", "127.0.0.1", broker.port, tls=files)
                c.connect()
                c.publish(topics.status("bench", "dev-1"), b"{}", qos=1)
                box["t"].append(time.perf_counter() - t0)
                c.close()
    p, s = _median_ms(plain["t"]), _median_ms(secure["t"])
    return {"what": "connect + 1 QoS1 publish (PUBACK), median", "runs": runs, "plain_ms": p, "mtls_acl_ms": s,
            "ratio": round(s / p, 2)}


def bench_notices(work: Path, runs: int) -> dict:
    from edgekit.core import messages, notices, trust
    from edgekit.deploy import make_notice
    from edgekit.keys import init_keystore

    store = init_keystore(work / "keys")
    root = trust.load_root(store.root_bytes())
    signer = store.notice_signer()
    manifest = {"model": {"name": "m", "version": "1"}, "profile": "raspberry-pi-4"}
    stored = {"url": "http://127.0.0.1/x.bundle", "sha256": "a" * 64, "length": 1000}
    payloads = [messages.dumps(make_notice(manifest, stored, device="d", fleet="f", signer=signer))
                for _ in range(runs)]
    cache = notices.ReplayCache(work / "seen.json")
    base, cand, sign = [], [], []
    for raw in payloads:
        t0 = time.perf_counter()
        messages.loads(raw, messages.NOTICE)
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = messages.loads(raw, messages.NOTICE)
        notices.verify_notice(n, root, device="d", fleet="f", replay=cache)
        cand.append(time.perf_counter() - t0)
    for _ in range(runs):
        t0 = time.perf_counter()
        make_notice(manifest, stored, device="d", fleet="f", signer=signer)
        sign.append(time.perf_counter() - t0)
    return {"what": "device-side notice check, median", "runs": runs, "schema_only_ms": _median_ms(base),
            "verify_signed_ms": _median_ms(cand), "sign_ms": _median_ms(sign),
            "notice_bytes": len(payloads[0]), "replay_cache_entries": runs}


def bench_sealed(work: Path, mb: int, runs: int) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edgekit.core import sealed

    data = os.urandom(mb << 20)
    key = X25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sha, enc, dec = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        sha.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        blob, doc = sealed.seal(data, "model.onnx.sealed", {"d": pub})
        enc.append(time.perf_counter() - t0)
        (work / "s").write_bytes(blob)
        t0 = time.perf_counter()
        sealed.unseal_file(work / "s", doc, work / "o", "d", key)
        dec.append(time.perf_counter() - t0)
        (work / "o").unlink()
    mbps = lambda xs: round(mb / statistics.median(xs), 1)  # noqa: E731
    return {"what": f"{mb} MiB artifact, median of {runs}", "sha256_MBps": mbps(sha), "seal_MBps": mbps(enc),
            "unseal_file_MBps": mbps(dec), "unseal_vs_sha256": round(statistics.median(dec) / statistics.median(sha), 2),
            "overhead_bytes": len(blob) - len(data)}


def bench_root_chain(work: Path, runs: int) -> dict:
    from edgekit.core import trust
    from edgekit.keys import init_keystore, rotate

    store = init_keystore(work / "keys-chain")
    factory = store.root_bytes()
    for _ in range(4):
        rotate(store, "targets")
    hist = work / "hist"
    trust.update_root(trust.load_root(factory), store.root_chain(), hist)
    base, cand = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        trust.load_root(factory)
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert trust.load_trusted_root(factory, hist).signed.version == 5
        cand.append(time.perf_counter() - t0)
    return {"what": "load root v1 (baseline) vs v1 + verified chain to v5", "load_root_ms": _median_ms(base),
            "chain_to_v5_ms": _median_ms(cand)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "security.json")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--mb", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-secbench-") as tmp:
        work = Path(tmp)
        res = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                           "platform": platform.platform()},
               "mqtt": bench_mqtt(work, args.runs), "notices": bench_notices(work, args.runs * 10),
               "sealed": bench_sealed(work, args.mb, 3), "root_chain": bench_root_chain(work, args.runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(k, json.dumps(v))


if __name__ == "__main__":
    main()
