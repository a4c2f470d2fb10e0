"""Fleet benchmark: registry ingest vs a raw paho subscriber, and a staged rollout to 1000
simulated devices. Writes ``benchmarks/results/fleet.json``.

1. Ingest (baseline in the same run, same broker, same messages). A consumer first creates its
   persistent MQTT session (QoS 1 subscription), goes away, ``--ingest-devices`` simulated
   devices (``edgekit.fleetsim``) publish ``--per-device`` telemetry messages each (QoS 1), and
   the consumer comes back and drains the broker's queue. Measured: messages per second from the
   consumer's (re)connect until it has everything —

   * baseline: a raw paho MQTT 5 client that only counts messages (its own network thread);
   * candidate: the registry's ``Ingest`` (schema validation + batched SQLAlchemy commits to SQLite,
     or ``--db-url``), i.e. telemetry *stored* per second.

   Each consumer runs alone in this process while nothing else runs (publishers are done), so the
   two numbers are comparable; the order alternates over ``--repeats``. Also reported: the CPU time
   of the consumer's processes per message (registry: both of its processes, including the
   health polls that clock it) — steadier than msgs/s on a shared machine — and per-repeat ratios. Zero lost status: every
   simulated device's retained status reaches the registry's inventory (online count), and after
   cutting ``--drop`` devices' connections their last wills mark exactly those offline.

2. Rollout: ``edgekit registry serve`` as a subprocess (SQLite), real signed bundles of the sample
   model (converted + released here), ``--rollout-devices`` simulated devices in this process, and
   ``POST /api/v1/rollouts`` with waves 1%,10%,50%,100% and the abort rules. Measured: total time
   to ``succeeded``, notices per second (first to last notice sent), per-wave durations, and the
   registry's CPU seconds / CPU% and peak RSS, summed over its process and its MQTT receiver child
   (psutil, sampled every 0.2 s).

Reproduce::

    .venv/bin/python benchmarks/fleet.py              # ~1-2 min on the 2-core dev VM
    .venv/bin/python benchmarks/fleet.py --repeats 5 --per-device 200    # the README's figures (~3 min)
    .venv/bin/python benchmarks/fleet.py --rollout-devices 200 --out /tmp/fleet.json

Needs mosquitto (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from edgekit.broker import ManagedBroker, free_port  # noqa: E402
from edgekit.core import topics  # noqa: E402
from edgekit.demo import SAMPLES, Proc  # noqa: E402
from edgekit.fleetsim import FleetSim, Knobs  # noqa: E402


# -- 1. ingest ----------------------------------------------------------------------------------
def raw_subscriber_main(port: int, client_id: str) -> None:
    """``--role raw-sub``: the baseline consumer, a paho client that only counts telemetry.
    Prints ``{"raw": "ready"}`` once subscribed, then one JSON line per 1000 messages."""
    count = 0

    def on_message(*_):
        nonlocal count
        count += 1
        if count % 1000 == 0:
            print(json.dumps({"count": count, "t": time.time()}), flush=True)

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_message = on_message
    c.on_subscribe = lambda *a: print(json.dumps({"raw": "ready"}), flush=True)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topics.fleet_filter("telemetry"), qos=1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_forever()


def _publish_batch(port: int, devices: int, per_device: int, prefix: str) -> int:
    """Birth, ``per_device`` telemetry messages and a graceful death per device, all acknowledged."""
    sim = FleetSim("127.0.0.1", port, devices, telemetry_s=None, prefix=prefix).start()
    sent = sim.flood_telemetry(per_device)
    sim.wait_acked()
    sim.stop()
    return sent


def _pause(procs, sig) -> None:
    for p in procs:
        os.kill(p.proc.pid, sig)


def measure_raw(port: int, devices: int, per_device: int, tag: str, work: Path) -> dict:
    """The consumer is connected and subscribed, frozen (SIGSTOP) while the batch is published,
    then thawed: the clock runs from SIGCONT to its last message."""
    import signal

    sub = Proc("raw-sub", [sys.executable, __file__, "--role", "raw-sub", "--port", str(port),
                           "--client-id", f"bench-raw-{tag}"], work / f"raw-{tag}.log")
    try:
        sub.ready()
        _pause([sub], signal.SIGSTOP)
        sent = _publish_batch(port, devices, per_device, f"raw{tag}")
        cpu0 = _cpu(_tree([sub]))
        t0 = time.time()
        _pause([sub], signal.SIGCONT)
        last = {"count": 0, "t": t0}
        deadline = time.monotonic() + 300
        while last["count"] < sent and time.monotonic() < deadline:
            line = sub.proc.stdout.readline()
            if line.startswith("{") and '"count"' in line:
                last = json.loads(line)
        cpu = _cpu(_tree([sub])) - cpu0
    finally:
        sub.stop()
    return {"messages": sent, "received": last["count"], "seconds": round(last["t"] - t0, 4),
            "msgs_per_s": round(last["count"] / (last["t"] - t0), 1), "cpu_us_per_msg": round(1e6 * cpu / sent, 1)}


def _tree(procs) -> list:
    """The consumer processes with their children (the registry's MQTT receiver process)."""
    out = []
    for p in procs:
        proc = psutil.Process(p.proc.pid)
        out += [proc, *proc.children(recursive=True)]
    return out


def _health(url: str) -> dict:
    return requests.get(f"{url}/api/v1/health", timeout=30).json()["ingest"]


def measure_registry(port: int, devices: int, per_device: int, tag: str, db_url: str | None, work: Path,
                     drop: int, workers: int) -> dict:
    """``workers`` registry processes (``edgekit registry serve``; one drives rollouts, the others
    ``--no-rollouts``) on one shared-subscription group, frozen while the batch is published, then
    thawed; the clock runs from SIGCONT until the workers have *stored* every telemetry message."""
    import signal

    url = db_url or f"sqlite:///{work}/ingest-{tag}.db"
    procs, urls = [], []
    try:
        for i in range(workers):
            port_http = free_port()
            procs.append(Proc(f"registry-{i}", [
                sys.executable, "-m", "edgekit.cli.main", "registry", "serve", "--db", url,
                "--store", str(work / "store"), "--port", str(port_http), "--broker", f"127.0.0.1:{port}",
                "--client-id", f"bench-registry-{tag}-{i}", "--shared-group", f"bench{tag}"]
                + (["--no-rollouts"] if i else []), work / f"registry-{tag}-{i}.log"))
            urls.append(procs[-1].ready()["url"])
        time.sleep(0.5)  # retained statuses of earlier devices are delivered to fresh subscriptions
        before = [_health(u) for u in urls]
        _pause(procs, signal.SIGSTOP)
        prefix = f"reg{tag}"
        sent = _publish_batch(port, devices, per_device, prefix)
        tree = _tree(procs)
        cpu0 = _cpu(tree)
        t0 = time.time()
        _pause(procs, signal.SIGCONT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            now = [_health(u) for u in urls]
            tel = sum(n["kinds"].get("telemetry", 0) - b["kinds"].get("telemetry", 0) for n, b in zip(now, before))
            if tel >= sent:
                break
            time.sleep(0.05)
        t1 = time.time()
        cpu = _cpu(tree) - cpu0  # includes the health polls (20/s) the clock above needs
        time.sleep(0.5)
        now = [_health(u) for u in urls]
        # statuses are not shared: every worker must have stored every birth and death of the batch
        status = [n["kinds"].get("status", 0) - b["kinds"].get("status", 0) for n, b in zip(now, before)]
        devs = [d for d in requests.get(f"{urls[0]}/api/v1/devices", timeout=30).json()["devices"]
                if d["id"].startswith(prefix)]
        shut = sum(d["status_reason"] == "shutdown" and not d["online"] for d in devs)
        sim = FleetSim("127.0.0.1", port, devices, telemetry_s=None, prefix=prefix).start()
        for i in range(drop):
            sim.drop(f"{prefix}-{i:04d}")
        lost, deadline = set(), time.monotonic() + 30
        while len(lost) < drop and time.monotonic() < deadline:
            time.sleep(0.1)
            lost = {d["id"] for d in requests.get(f"{urls[0]}/api/v1/devices", timeout=30).json()["devices"]
                    if d["id"].startswith(prefix) and d["status_reason"] == "connection lost" and not d["online"]}
        sim.stop()
        final = [_health(u) for u in urls]
    finally:
        for p in procs:
            p.stop()
    return {"workers": workers, "messages": sent, "stored": tel, "seconds": round(t1 - t0, 4),
            "msgs_per_s": round(tel / (t1 - t0), 1), "cpu_us_per_msg": round(1e6 * cpu / sent, 1),
            "per_worker_telemetry": [
                n["kinds"].get("telemetry", 0) - b["kinds"].get("telemetry", 0) for n, b in zip(now, before)],
            "devices": devices, "status_published": 2 * devices, "status_stored_per_worker": status,
            "status_lost": sum(2 * devices - x for x in status), "devices_offline_by_shutdown_status": shut,
            "dropped": drop, "offline_by_last_will": len(lost),
            "rejected": sum(f["rejected"] for f in final), "failed": sum(f["failed"] for f in final),
            "commit_retries": sum(f["retries"] for f in final), "db": url.split(":")[0]}


def bench_ingest(args, work: Path) -> dict:
    runs: dict[str, list] = {"raw": [], **{f"registry_{w}w": [] for w in args.workers}}
    with ManagedBroker(work / "broker-ingest") as broker:
        for i in range(args.repeats):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for who in order:
                tag = f"{i}{who[-2:]}"
                if who == "raw":
                    runs[who].append(measure_raw(broker.port, args.ingest_devices, args.per_device, tag, work))
                else:
                    runs[who].append(measure_registry(broker.port, args.ingest_devices, args.per_device, tag,
                                                      args.db_url, work, args.drop, int(who.split("_")[1][:-1])))
                print(who, json.dumps(runs[who][-1]), flush=True)
    raw = statistics.median(r["msgs_per_s"] for r in runs["raw"])
    out = {"baseline_raw_paho_msgs_per_s": raw, "target_ratio": 0.8,
           "baseline_cpu_us_per_msg": statistics.median(r["cpu_us_per_msg"] for r in runs["raw"])}
    for who in runs:
        if who != "raw":
            med = statistics.median(r["msgs_per_s"] for r in runs[who])
            out[who] = {"stored_msgs_per_s": med, "ratio": round(med / raw, 3),
                        "ratios_per_repeat": [round(r["msgs_per_s"] / b["msgs_per_s"], 3)
                                              for r, b in zip(runs[who], runs["raw"])],
                        "cpu_us_per_msg": statistics.median(r["cpu_us_per_msg"] for r in runs[who]),
                        "status_lost": sum(r["status_lost"] for r in runs[who]),
                        "all_telemetry_stored": all(r["stored"] == r["messages"] for r in runs[who]),
                        "last_wills_seen": all(r["offline_by_last_will"] == r["dropped"] for r in runs[who])}
    out["runs"] = runs
    return out


# -- 2. rollout -----------------------------------------------------------------------------------
def make_bundles(work: Path) -> list[Path]:
    from converters.data import load_dataset
    from converters.onnx_pipeline import convert_onnx
    from edgekit.core.profiles import load_profile
    from edgekit.keys import init_keystore
    from edgekit.release import release_artifact

    store = init_keystore(work / "keys")
    cal = load_dataset(SAMPLES / "calibration.npz", ["input"])
    val = load_dataset(SAMPLES / "validation.npz", ["input"])
    convert_onnx(SAMPLES / "digits_cnn.onnx", load_profile("raspberry-pi-4"), work / "out", precision="fp32",
                 calibration=cal, validation=val)
    return [release_artifact(work / "out" / "raspberry-pi-4", store, work / f"b{v}", name="digits-cnn", version=v,
                             release=i) for i, v in enumerate(("1.0.0", "2.0.0"), 1)]


def _cpu(procs) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def _rss(procs) -> int:
    return sum(p.memory_info().rss for p in procs)


def bench_rollout(args, work: Path) -> dict:
    bundles = make_bundles(work)
    from edgekit.demo import registry_token

    with ManagedBroker(work / "broker-rollout") as broker:
        port = free_port()
        auth = {"Authorization": f"Bearer {registry_token(f'sqlite:///{work}/rollout.db', 'bench')}"}
        reg = Proc("registry", [sys.executable, "-m", "edgekit.cli.main", "registry", "serve",
                                "--db", f"sqlite:///{work}/rollout.db", "--store", str(work / "artifacts"),
                                "--port", str(port), "--broker", f"127.0.0.1:{broker.port}"], work / "registry.log")
        try:
            url = reg.ready()["url"]
            for b in bundles:
                with open(b, "rb") as fh:
                    requests.post(f"{url}/api/v1/artifacts", params={"name": b.name}, data=fh.read(),
                                  timeout=30, headers=auth).raise_for_status()
            requests.post(f"{url}/api/v1/models/digits-cnn/versions/2.0.0", json={"stage": "released"},
                          timeout=10, headers=auth).raise_for_status()
            t_conn = time.perf_counter()
            sim = FleetSim("127.0.0.1", broker.port, args.rollout_devices, telemetry_s=args.telemetry_s,
                           default=Knobs(latency_ms=5.0), knobs={"2.0.0": Knobs(latency_ms=5.2)}).start(timeout=120)
            connect_s = time.perf_counter() - t_conn
            deadline = time.monotonic() + 60
            while len(requests.get(f"{url}/api/v1/devices", timeout=30).json()["devices"]) < args.rollout_devices:
                assert time.monotonic() < deadline, "devices did not all reach the registry"
                time.sleep(0.2)
            proc = psutil.Process(reg.proc.pid)
            procs = [proc, *proc.children(recursive=True)]  # with its MQTT receiver process
            cpu0, rss_idle = _cpu(procs), _rss(procs)
            t0 = time.perf_counter()
            r = requests.post(f"{url}/api/v1/rollouts", timeout=30, headers=auth, json={
                "model": "digits-cnn", "version": "2.0.0", "selector": "all", "waves": "1%,10%,50%,100%",
                "abort_if": ["failure_rate>5%", "parity_failures>0", "p95_latency>1.2x"], "timeout_s": 120})
            r.raise_for_status()
            rid, peak, state = r.json()["id"], rss_idle, "running"
            while state in ("running", "paused") and time.perf_counter() - t0 < 600:
                time.sleep(0.2)
                peak = max(peak, _rss(procs))
                state = requests.get(f"{url}/api/v1/rollouts", timeout=30).json()["rollouts"][0]["state"]
            total = time.perf_counter() - t0
            cpu1 = _cpu(procs)
            detail = requests.get(f"{url}/api/v1/rollouts/{rid}", timeout=30).json()
            sim_versions = sim.versions()
            sim.stop()
        finally:
            reg.stop()
    sent = sorted(t["sent_at"] for t in detail["targets"] if t["sent_at"])
    waves = {}
    for t in detail["targets"]:
        w = waves.setdefault(t["wave"], {"devices": 0, "first_sent": 1e18, "last_finished": 0})
        w["devices"] += 1
        w["first_sent"] = min(w["first_sent"], t["sent_at"] or 1e18)
        w["last_finished"] = max(w["last_finished"], t["finished_at"] or 0)
    cpu_s = cpu1 - cpu0
    return {"devices": args.rollout_devices, "state": state, "counts": detail["counts"],
            "all_devices_on_new_version": sum(v == "digits-cnn@2.0.0" for v in sim_versions.values()),
            "total_s": round(total, 3), "notices": len(sent),
            "notices_per_s": round((len(sent) - 1) / (sent[-1] - sent[0]), 1) if len(sent) > 1 else None,
            "waves": {k: {"devices": w["devices"], "seconds": round(w["last_finished"] - w["first_sent"], 3)}
                      for k, w in sorted(waves.items())},
            "registry_cpu_s": round(cpu_s, 3), "registry_cpu_percent": round(100 * cpu_s / total, 1),
            "registry_rss_idle_mb": round(rss_idle / 2**20, 1), "registry_rss_peak_mb": round(peak / 2**20, 1),
            "sim_connect_s": round(connect_s, 3), "sim_telemetry_interval_s": args.telemetry_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="bench", choices=["bench", "raw-sub"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-id", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="Registry ingest worker counts to measure (shared subscription).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet.json")
    ap.add_argument("--ingest-devices", type=int, default=100)
    ap.add_argument("--per-device", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--drop", type=int, default=5)
    ap.add_argument("--db-url", default=None, help="Registry DB for the ingest part (default: SQLite in a temp dir).")
    ap.add_argument("--rollout-devices", type=int, default=1000)
    ap.add_argument("--telemetry-s", type=float, default=10.0)
    ap.add_argument("--skip-rollout", action="store_true")
    args = ap.parse_args()
    if args.role == "raw-sub":
        return raw_subscriber_main(args.port, args.client_id)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-fleet-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ingest = bench_ingest(args, work) if args.per_device else None
        print(json.dumps({k: v for k, v in (ingest or {}).items() if k != "runs"}), flush=True)
        rollout = None if args.skip_rollout else bench_rollout(args, work)
        print(json.dumps({k: v for k, v in (rollout or {}).items() if k != "waves"}), flush=True)
    result = {"benchmark": "fleet", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "paho_mqtt": paho.__version__ if hasattr(paho, "__version__") else None},
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "ingest": ingest, "rollout": rollout, "wall_s": round(time.perf_counter() - t0, 1),
              "run_id": uuid.uuid4().hex[:8]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
