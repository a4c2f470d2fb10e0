"""Hosted TUF metadata benchmark (ADR 0010): what the device-side freshness check costs, against the
install without it, measured in the same run (one process, loopback, everything started here is stopped).

1. The check alone (``agent.freshness.ReleaseCheck.check``: ngclient refresh timestamp → snapshot →
   targets → released + lookup): cold (new device: fetches root probe + 4 documents), warm (nothing
   changed: timestamp only), after a catalog change (timestamp, snapshot, released again); with 1 and
   with ``--catalog`` released bundles listed.
2. A whole HTTP install of the sample model (download, verify, stage, health check, switch), interleaved:
   ``[install] freshness = "off"`` (baseline: the install before ADR 0010) vs ``"require"`` (candidate).
3. Registry side: one ``TrustRepo.resign(force=True)`` (sign released + snapshot + timestamp) and the
   metadata sizes a device downloads.

Usage: .venv/bin/python benchmarks/trust.py [--out benchmarks/results/trust.json] [--runs 15] [--catalog 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROFILE = "raspberry-pi-4"


def ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1000, 3), "p90_ms": round(xs[int(0.9 * (len(xs) - 1))] * 1000, 3),
            "runs": len(xs)}


def make_bundle(work: Path, store, version: str) -> Path:
    from converters.data import load_dataset
    from converters.onnx_pipeline import convert_onnx
    from edgekit.core.profiles import load_profile
    from edgekit.demo import SAMPLES
    from edgekit.release import release_artifact

    out = work / "convert"
    if not (out / PROFILE).exists():
        data = load_dataset(SAMPLES / "validation.npz", ["input"])
        convert_onnx(SAMPLES / "digits_cnn.onnx", load_profile(PROFILE), out, precision="fp32", calibration=data,
                     validation=data)
    return release_artifact(out / PROFILE, store, work / "bundles" / version, name="digits-cnn", version=version)


def publish(reg, bundle: Path) -> dict:
    from edgekit.core import trust
    from edgekit.deploy import read_manifest, upload
    from edgekit.registry_client import api

    stored, m = upload(bundle, reg.url, token=reg.token), read_manifest(bundle)
    api(reg.url, "POST", f"/api/v1/models/{m['model']['name']}/versions/{m['model']['version']}",
        body={"stage": "released"}, token=reg.token)
    return {**stored, "manifest": m, "path": trust.released_target_path(m["model"]["name"], m["model"]["version"],
                                                                        m["profile"])}


def fill_catalog(reg, n: int, template: dict) -> None:
    """``n`` more released versions in the catalog (real rows; hashes made up, never downloaded)."""
    from edgekit.registry import catalog

    for i in range(n):
        m = json.loads(json.dumps(template))
        m["model"]["version"] = f"0.{i}.0"
        catalog.register(reg.engine, m, f"{i:064x}", 100_000 + i)
        catalog.set_stage(reg.engine, "digits-cnn", f"0.{i}.0", "released")
    reg.trust.step()


def bench_check(work: Path, reg, pub: dict, store, runs: int, label: str) -> dict:
    from agent.freshness import ReleaseCheck

    m = pub["manifest"]
    args = dict(model=m["model"]["name"], version=m["model"]["version"], profile=m["profile"], sha256=pub["sha256"],
                length=pub["length"])

    def one(data: Path) -> float:
        rc = ReleaseCheck(data, store.root_path, data / "trust", time.time, "require")
        t0 = time.perf_counter()
        if rc.check(pub["url"], **args)["freshness"] != "verified":
            raise RuntimeError("check did not verify")
        return time.perf_counter() - t0

    cold = [one(work / "check" / f"{label}-cold-{i}") for i in range(runs)]
    warm_dir = work / "check" / f"{label}-warm"
    one(warm_dir)
    warm = [one(warm_dir) for _ in range(runs)]
    changed = []
    for _ in range(runs):
        reg.trust.repo.resign(force=True)  # a new timestamp, snapshot and released: all fetched again
        changed.append(one(warm_dir))
    sizes = {f.name: f.stat().st_size for f in sorted((warm_dir / "tuf").glob("*.json")) if not f.is_symlink()}
    return {"cold": ms(cold), "warm": ms(warm), "after_change": ms(changed), "metadata_bytes": sizes}


def bench_install(work: Path, pub: dict, store, runs: int) -> dict:
    from agent.installer import InstallRequest, Installer
    from edgekit.core.profiles import load_profile

    profile = load_profile(PROFILE)
    m = pub["manifest"]["model"]

    def one(mode: str, i: int) -> float:
        data = work / "install" / f"{mode}-{i}"
        inst = Installer(data, profile, store.root_path, lambda *a: None, health_runs=5, freshness=mode)
        t0 = time.perf_counter()
        rec = inst.install(InstallRequest(deployment_id=f"b{i}", url=pub["url"], sha256=pub["sha256"],
                                          length=pub["length"], model=m["name"], version=m["version"]))
        elapsed = time.perf_counter() - t0
        if rec.state != "committed" or (mode != "off") != (rec.details.get("freshness") == "verified"):
            raise RuntimeError(f"{mode} install: {rec.state} {rec.error} {rec.details.get('freshness')}")
        shutil.rmtree(data, ignore_errors=True)
        return elapsed

    one("off", -1), one("require", -1)  # warm-up: imports (tuf, ngclient, onnxruntime)
    off, req = [], []
    for i in range(runs):  # interleaved, a cold device each time (the dearest case for the check)
        off.append(one("off", i))
        req.append(one("require", i))
    base, cand = ms(off), ms(req)
    return {"what": "HTTP install of the sample model (cold device each run), freshness off vs require",
            "baseline_off": base, "candidate_require": cand,
            "ratio": round(cand["median_ms"] / base["median_ms"], 3),
            "added_ms": round(cand["median_ms"] - base["median_ms"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trust.json")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--catalog", type=int, default=200, help="released bundles listed in the large-catalog case")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from edgekit.broker import ManagedBroker
    from edgekit.keys import init_keystore
    from edgekit.registry.service import Registry

    res: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp, ManagedBroker(Path(tmp) / "broker") as broker:
        work = Path(tmp)
        store = init_keystore(work / "keys")
        reg = Registry(f"sqlite:///{work}/registry.db", work / "artifacts", "127.0.0.1", broker.port,
                       trust_keys=store.directory).start()
        try:
            reg.token = reg.create_token("operator", "bench")
            pub = publish(reg, make_bundle(work, store, "1.0.0"))
            res["install"] = bench_install(work, pub, store, args.runs)
            res["check_1_release"] = bench_check(work, reg, pub, store, args.runs, "one")
            fill_catalog(reg, args.catalog, pub["manifest"])
            res[f"check_{args.catalog + 1}_releases"] = bench_check(work, reg, pub, store, args.runs, "many")
            t = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                reg.trust.repo.resign(force=True)
                t.append(time.perf_counter() - t0)
            res["registry_resign"] = {"what": f"resign(force) with {args.catalog + 1} released bundles", **ms(t)}
        finally:
            reg.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(k, json.dumps(v))


if __name__ == "__main__":
    main()
