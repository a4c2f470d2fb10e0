"""Agent benchmark: inference overhead, footprint and install throughput, each against a baseline
measured in the same run.

What is measured (all on loopback, everything started here is stopped before exit):

1. Inference overhead on a ~1 ms float32 CNN built with ``onnx.helper``
   (input [1, 3, 64, 64] -> Conv 3->C1 3x3 -> Relu -> Conv C1->C2 3x3 -> Relu -> GlobalAveragePool
   -> Flatten -> Gemm C2->10):

   * baseline: raw ``onnxruntime.InferenceSession.run`` (intra_op_num_threads=1, inter_op=1);
   * A (in-process): a real ``agent.service.Agent`` (constructed, never started: no MQTT) whose
     ``runner`` is ``agent.runtime.load_runner(path, "onnxruntime", threads=1)``; timed calls go
     through ``Agent.infer`` (lock, runner, ``InferenceStats.record``);
   * B (MQTT RPC end to end): a managed mosquitto, the model converted (fp32), signed, flashed with
     ``edgekit-agent install`` *before* the agent starts, a real ``edgekit-agent run`` subprocess
     (``threads = 1``), and ``edgekit.deploy.infer_remote`` round trips from this process.

   * C (local endpoint): the same agent subprocess serves ``[endpoint]`` HTTP/1.1 on 127.0.0.1 and
     on a Unix socket; ``agent.endpoint.LocalClient`` (one kept-alive connection each) sends binary
     tensor frames (TCP and Unix) and JSON (TCP). Timed in blocks interleaved with a fresh run of
     the raw ``session.run`` baseline. For the TCP binary requests the agent's own ``Agent.infer``
     time (``X-Edgekit-Latency-Ms``) is kept too (``tcp_binary_server_side``): it separates the
     model's run inside the agent from the transport (two cross-process wake-ups per request).

   Baseline and A are timed in interleaved blocks so that drift of the machine hits both alike.

2. Agent footprint: RSS (psutil) of an agent subprocess connected to the broker, idle with a fresh
   data dir (no model), and with the model of (1) loaded, each 2 s after its "ready" line; cold
   start = process spawn until the "ready" JSON line on stdout (median of 3 spawns per case).
   ``runtimes_mapped`` says whether the idle agent has onnxruntime / numpy mapped (/proc/PID/maps).

3. Install throughput of a ~10 MB model (Gemm, 1600x1600 float32 weight) served by the registry's
   HTTP server (``RegistryHTTPServer``, artifact store addressed by SHA-256):

   * baseline: ``urllib.request`` download to a file + ``hashlib.sha256`` of the bytes;
   * candidate: the installer of a real ``agent.service.Agent`` (constructed, not started; events go
     through its disk spool as in ``edgekit-agent run``, progress events not fsynced, ADR 0015) in-process
     into a fresh data dir (profile
     ``x86-64-gateway``, its default thread count capped at the CPUs available) = download (hashed
     while it arrives), verify (TUF; members copied out and hashed in one pass), stage (rename),
     health check (a worker thread with a deadline), switch, and serving load (``on_commit`` as
     the agent does it: the health-check session is reused). Per-state times come from the
     timestamps of the emitted events. Each install is an update: the session of the previous
     install keeps serving (stays alive) until the new one commits, so the new session needs fresh
     memory as on a device;
   * paced links (``--link-mbit``, default 1000, 500 and 100 Mbit/s): baseline and candidate again, downloading
     through ``PacedLink`` (a loopback proxy pacing the answer to that rate): loopback (~700 MB/s here) is
     faster than any device link, and the install's fixed costs do not grow with the link;
   * floor: the health check alone in a new thread with the previous session alive (``GateAlone``),
     interleaved with the baseline: baseline + that is what no health-checked install can go under
     (``floor_ratio_over_baseline`` vs the 1.5 goal; ADR 0015);

   * previous defaults: the same install with onnxruntime pool threads spinning and all 20 latency
     runs (what the agent did before ``[inference] spin = false`` and the early latency stop);
   * health check alone (session build + golden + latency runs), current vs previous defaults,
     interleaved, 40 runs each: the CPU-bound step without the download/fsync noise;
   * MQTT chunked transfer: the same bundle through ``agent.fetch.download`` over HTTP (Range) and
     over MQTT (``MqttChunkSource`` asking the registry's ``ChunkServer`` through a managed
     mosquitto), interleaved; plus a full ``Installer.install`` with notice transport "mqtt".

   Median of N runs each (alternating), after one unrecorded warm-up run of each.

Reproduce::

    .venv/bin/python benchmarks/agent.py                # writes benchmarks/results/agent.json
    .venv/bin/python benchmarks/agent.py --out /tmp/agent.json --runs 500

Needs mosquitto (``scripts/setup.sh`` installs it). Takes 10-25 s on a 2-core VM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "agent.json"
OFFLINE_BROKER = object()  # Agent.conn stand-in: not None = running, so events are spooled (never sent here)
PROFILE = "x86-64-gateway"
FLEET = "bench"


# -- helpers ------------------------------------------------------------------------------------
def pcts(lat_ms: list[float]) -> dict:
    p50, p95, p99 = np.percentile(lat_ms, [50, 95, 99])
    return {"n": len(lat_ms), "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(float(np.mean(lat_ms)), 4)}


def ratios(cand: dict, base: dict) -> dict:
    return {k: round(cand[k] / base[k], 3) for k in ("p50_ms", "p95_ms", "p99_ms")}


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _save(model, path: Path) -> Path:
    import onnx

    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_cnn(path: Path, c1: int, c2: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, shape, scale=0.1):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", (c1, 3, 3, 3)), init("b1", (c1,)), init("w2", (c2, c1, 3, 3)), init("b2", (c2,)),
             init("w3", (10, c2)), init("b3", (10,))]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_gemm(path: Path, n: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(n, np.float32), "b")
    graph = helper.make_graph([helper.make_node("Gemm", ["input", "w", "b"], ["output"])], "bench_gemm",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n])], [w, b])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def make_bundle(model: Path, shape: tuple[int, ...], work: Path, store, name: str) -> Path:
    """Convert (fp32, parity gate on random inputs), sign and write a bundle; return its path."""
    from converters.data import Dataset
    from converters.onnx_pipeline import convert_onnx
    from edgekit.core.profiles import load_profile
    from edgekit.release import release_artifact

    data = Dataset({"input": np.random.default_rng(2).random((16, *shape[1:]), dtype=np.float32)}, labels=None)
    out = work / f"out-{name}"
    convert_onnx(model, load_profile(PROFILE), out, precision="fp32", calibration=data, validation=data)
    return release_artifact(out / PROFILE, store, work / "bundles", name=name, version="1.0.0")


def write_agent_config(home: Path, device: str, broker_port: int, root: Path, threads: int | None) -> Path:
    """Provision without spawning (so we can flash first); threads None = the profile's default."""
    from edgekit.demo import provision_device

    return provision_device(home, device, PROFILE, broker_port, root, fleet=FLEET, telemetry_s=30,
                            threads=threads or 0)


def spawn_agent(stack: ExitStack, home: Path, device: str, cfg: Path) -> tuple:
    """Start ``edgekit-agent run``; return (Proc, seconds from spawn to the ready line, ready dict)."""
    from edgekit.demo import Proc

    t0 = time.perf_counter()
    proc = Proc(device, [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    stack.callback(proc.stop)
    ready = proc.ready()
    return proc, time.perf_counter() - t0, ready


def mapped_libraries(pid: int) -> dict:
    """Which heavy runtimes a process really has mapped (whatever imported them)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    return {"onnxruntime": "onnxruntime_pybind11_state" in maps, "numpy": "_multiarray_umath" in maps}


def settled_rss(proc, settle_s: float = 2.0) -> int:
    import psutil

    time.sleep(settle_s)
    return psutil.Process(proc.proc.pid).memory_info().rss


# -- 1 + 2: inference overhead and footprint -------------------------------------------------------
def bench_inference_and_footprint(work: Path, args) -> tuple[dict, dict]:
    import onnxruntime as ort
    import psutil

    from agent.config import AgentConfig
    from agent.endpoint import LocalClient
    from agent.runtime import load_runner
    from agent.service import Agent
    from edgekit.broker import ManagedBroker
    from edgekit.core.mqtt import MqttConnection
    from edgekit.deploy import infer_remote
    from edgekit.keys import init_keystore

    model = build_cnn(work / "cnn.onnx", args.channels[0], args.channels[1])
    x = {"input": np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)}
    store = init_keystore(work / "keys")

    # baseline and A, in-process, interleaved blocks
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    agent = Agent(AgentConfig(device_id="bench-inproc", profile=PROFILE, data_dir=work / "inproc",
                              trusted_root=store.root_path, threads=1))
    try:
        agent.runner = load_runner(model, "onnxruntime", threads=1)
        base_fn = lambda: sess.run(None, x)  # noqa: E731
        agent_fn = lambda: agent.infer(x)  # noqa: E731
        ref = sess.run(None, x)[0]
        assert np.allclose(agent.infer(x)["logits"], ref, atol=1e-5)
        timed(base_fn, args.warmup), timed(agent_fn, args.warmup)
        base_lat: list[float] = []
        agent_lat: list[float] = []
        blocks = 5
        for _ in range(blocks):
            base_lat += timed(base_fn, args.runs // blocks)
            agent_lat += timed(agent_fn, args.runs // blocks)
        agent_stats = agent.stats.snapshot()
    finally:
        agent.stop()

    # B: MQTT RPC end to end, plus the footprint of real agent subprocesses
    with ExitStack() as stack:
        broker = stack.enter_context(ManagedBroker(work / "broker"))
        bundle = make_bundle(model, (1, 3, 64, 64), work, store, "bench-cnn")

        # footprint: idle agent, fresh data dir, no model
        idle_home = work / "devices" / "bench-idle"
        idle_cfg = write_agent_config(idle_home, "bench-idle", broker.port, store.root_path, threads=1)
        idle_cold = []
        for i in range(args.cold_starts):
            idle, cold_s, _ = spawn_agent(stack, idle_home, "bench-idle", idle_cfg)
            idle_cold.append(cold_s)
            if i == args.cold_starts - 1:
                idle_rss = settled_rss(idle)
                idle_libs = mapped_libraries(idle.proc.pid)
            idle.stop()

        # agent with the model flashed before it starts
        home = work / "devices" / "bench-rpc"
        cfg = write_agent_config(home, "bench-rpc", broker.port, store.root_path, threads=1)
        cfg.write_text(cfg.read_text() + f'\n[endpoint]\nport = 0\nsocket = "{home / "ep.sock"}"\n')
        t0 = time.perf_counter()
        flashed = subprocess.run([sys.executable, "-m", "agent.cli", "install", str(bundle), "--config", str(cfg)],
                                 capture_output=True, text=True, timeout=120)
        flash_s = time.perf_counter() - t0
        if flashed.returncode != 0:
            raise RuntimeError(f"edgekit-agent install failed ({flashed.returncode}): {flashed.stderr[-800:]}")
        model_cold = []
        for i in range(args.cold_starts):  # the last one stays up for the RPC runs
            proc, cold_s, ready = spawn_agent(stack, home, "bench-rpc", cfg)
            model_cold.append(cold_s)
            if ready.get("model") != "bench-cnn":
                raise RuntimeError(f"agent started without the flashed model: {ready}")
            if i < args.cold_starts - 1:
                proc.stop()
        model_rss = settled_rss(proc)

        conn = MqttConnection(f"bench-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
        conn.connect()
        stack.callback(conn.close)
        out, _ = infer_remote(conn, FLEET, "bench-rpc", x, timeout=10)
        assert np.allclose(out["logits"], ref, atol=1e-4)
        rpc = lambda: infer_remote(conn, FLEET, "bench-rpc", x, timeout=10)  # noqa: E731
        timed(rpc, args.warmup)
        rpc_lat, device_lat = [], []
        for _ in range(args.mqtt_runs):
            t0 = time.perf_counter()
            _, resp = rpc()
            rpc_lat.append((time.perf_counter() - t0) * 1000)
            device_lat.append(resp["latency_ms"])
        rss_after_rpc = psutil.Process(proc.proc.pid).memory_info().rss

        # C: the local endpoint of the same agent process, interleaved with raw session.run
        clients = {"tcp_binary": LocalClient(port=ready["endpoint_port"]),
                   "unix_binary": LocalClient(socket_path=ready["endpoint_socket"]),
                   "unix_framed": LocalClient(socket_path=ready["endpoint_socket"], framed=True),
                   "tcp_framed": LocalClient(port=ready["endpoint_port"], framed=True),
                   "tcp_json": LocalClient(port=ready["endpoint_port"], binary=False)}
        server_lat: list[float] = []  # Agent.infer time inside the agent (X-Edgekit-Latency-Ms), tcp_binary
        tcp_request = clients["tcp_binary"]._request

        def request_noting_latency(*a, **kw):
            headers, body = tcp_request(*a, **kw)
            server_lat.append(float(headers["x-edgekit-latency-ms"]))
            return headers, body

        clients["tcp_binary"]._request = request_noting_latency
        framed_server_lat: list[float] = []  # the same, for unix_framed (the answer header carries it)
        framed = clients["unix_framed"]
        framed_infer = framed.infer

        def infer_noting_latency(inputs):
            out = framed_infer(inputs)
            framed_server_lat.append(framed.last_latency_ms)
            return out

        framed.infer = infer_noting_latency
        for c in clients.values():
            stack.callback(c.close)
            assert np.allclose(c.infer(x)["logits"], ref, atol=1e-4)
            timed(lambda: c.infer(x), args.warmup)  # noqa: B023
        base_c: list[float] = []
        ep_lat: dict[str, list[float]] = {k: [] for k in clients}
        for _ in range(blocks):
            base_c += timed(base_fn, args.runs // blocks)
            for k, c in clients.items():
                ep_lat[k] += timed(lambda: c.infer(x), args.runs // blocks)  # noqa: B023

    base, a, b = pcts(base_lat), pcts(agent_lat), pcts(rpc_lat)
    inference = {
        "model": {"input": [1, 3, 64, 64], "channels": list(args.channels), "bytes": model.stat().st_size},
        "baseline_raw_onnxruntime": base,
        "a_in_process_agent_infer": {**a, "construction": "real agent.service.Agent(AgentConfig) (not started); "
                                     "runner = load_runner(path, 'onnxruntime', threads=1); timed Agent.infer",
                                     "agent_stats_snapshot": agent_stats},
        "b_mqtt_rpc": {**b, "device_side_latency": pcts(device_lat), "min_ms": round(min(rpc_lat), 4),
                       "p50_per_50_runs_ms": [round(float(np.median(rpc_lat[k:k + 50])), 3)
                                              for k in range(0, len(rpc_lat), 50)],
                       "path": "infer_remote -> mosquitto -> edgekit-agent run (threads=1) -> reply"},
        "ratio_a_over_baseline": ratios(a, base),
        "ratio_b_over_baseline": ratios(b, base),
        "interleaved_blocks": blocks,
        "c_local_endpoint": {
            "path": "agent.endpoint.LocalClient (one kept-alive socket, TCP_NODELAY) -> edgekit-agent run "
                    "(threads=1) endpoint -> Agent.infer; *_binary/*_json = HTTP/1.1, *_framed = the framed stream "
                    "(edgekit.core.frames STREAM_*: 8-byte request header, 20-byte answer header, tensor frames); "
                    "baseline = raw session.run in this process, interleaved blocks",
            "baseline_raw_onnxruntime": pcts(base_c),
            **{k: {**pcts(v), "ratio_over_baseline": ratios(pcts(v), pcts(base_c))} for k, v in ep_lat.items()},
            "goal_ratio_p50": 1.3,
            "tcp_binary_server_side": {
                **pcts(server_lat[-len(ep_lat["tcp_binary"]):]),
                "ratio_over_baseline": ratios(pcts(server_lat[-len(ep_lat["tcp_binary"]):]), pcts(base_c)),
                "what": "Agent.infer time measured inside the agent (X-Edgekit-Latency-Ms) for the tcp_binary "
                        "requests: the same session runs ~5% slower there than in a hot loop, because each "
                        "request wakes a thread that was blocked on its socket (cold caches); a plain process "
                        "serving the same session over the same endpoint shows the same ratio"},
            "unix_framed_server_side": {
                **pcts(framed_server_lat[-len(ep_lat["unix_framed"]):]),
                "ratio_over_baseline": ratios(pcts(framed_server_lat[-len(ep_lat["unix_framed"]):]), pcts(base_c)),
                "what": "Agent.infer time inside the agent for the unix_framed requests (answer header)"},
        },
    }
    footprint = {
        "idle_no_model": {"rss_bytes": idle_rss, "rss_mib": round(idle_rss / 2**20, 1),
                          "rss_mb": round(idle_rss / 1e6, 1), "goal_mb": 40, "runtimes_mapped": idle_libs,
                          "cold_start_s": round(statistics.median(idle_cold), 3),
                          "cold_start_all_s": [round(v, 3) for v in idle_cold]},
        "model_loaded": {"rss_bytes": model_rss, "rss_mib": round(model_rss / 2**20, 1),
                         "cold_start_s": round(statistics.median(model_cold), 3),
                         "cold_start_all_s": [round(v, 3) for v in model_cold],
                         "rss_after_rpc_runs_mib": round(rss_after_rpc / 2**20, 1)},
        "settle_s": 2.0,
        "bench_flash_s": round(flash_s, 3),
        "notes": "cold start = Popen until the ready JSON line (imports, recover, model load, MQTT connect), "
                 "median of the spawns; RSS of the last spawn, 2 s after ready, before any RPC",
    }
    return inference, footprint


# -- 3: install throughput ---------------------------------------------------------------------------
def bench_install(work: Path, args) -> dict:
    import hashlib

    from agent.fetch import download
    from agent.fetch_mqtt import CHUNK_BYTES, WINDOW
    from agent.config import AgentConfig
    from agent.installer import InstallRequest, Installer
    from agent.runtime import serving_threads
    from agent.service import Agent
    from edgekit.core.profiles import load_profile
    from edgekit.keys import init_keystore
    from edgekit.registry.db import open_db
    from edgekit.registry.http_api import RegistryHTTPServer

    store = init_keystore(work / "keys-install")
    model = build_gemm(work / "gemm.onnx", args.gemm)
    bundle = make_bundle(model, (1, args.gemm), work, store, "bench-gemm")
    blob = bundle.read_bytes()
    sha, length = hashlib.sha256(blob).hexdigest(), len(blob)
    del blob

    server = RegistryHTTPServer(("127.0.0.1", 0), open_db(f"sqlite:///{work}/registry.db"), work / "artifacts")
    shutil.copy(bundle, server.store / f"{sha}.bundle")
    url = f"{server.base_url}/artifacts/{sha}.bundle"
    thread = threading.Thread(target=server.serve_forever, name="registry-http", daemon=True)
    thread.start()
    profile = load_profile(PROFILE)
    try:
        def baseline(i: int, src: str | None = None) -> float:
            dest = work / "raw" / f"{i}.bundle"
            dest.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            h = hashlib.sha256()
            with urllib.request.urlopen(src or url, timeout=30) as resp, open(dest, "wb") as out:
                while chunk := resp.read(256 * 1024):
                    h.update(chunk)
                    out.write(chunk)
            elapsed = time.perf_counter() - t0
            if h.hexdigest() != sha:
                raise RuntimeError("baseline download hash mismatch")
            dest.unlink()
            return elapsed

        def candidate_previous(i: int) -> float:
            """The install before the health-check changes: ORT pool threads spinning, all 20 latency runs."""
            import agent.installer as installer_mod

            far, installer_mod.FAR_FROM_BUDGET = installer_mod.FAR_FROM_BUDGET, float("inf")  # never stop early
            try:
                data_dir = work / "install" / f"prev-{i}"
                inst = Installer(data_dir, profile, store.root_path, lambda *a: None, spin=True,
                                 on_commit=lambda s, m, r: None)
                t0 = time.perf_counter()
                rec = inst.install(InstallRequest(deployment_id=f"bench-p{i}", url=url, sha256=sha, length=length))
                elapsed = time.perf_counter() - t0
            finally:
                installer_mod.FAR_FROM_BUDGET = far
            if rec.state != "committed" or rec.details["health"]["latency_stopped_early"]:
                raise RuntimeError(f"previous-defaults install ended in {rec.state}: {rec.error}")
            shutil.rmtree(data_dir, ignore_errors=True)
            return elapsed

        def candidate(i: int, threads: int = 0, health_check: bool = True, streamed: bool = True,
                      durable_events: bool = False, src: str | None = None) -> tuple[float, dict]:
            """The install as ``edgekit-agent run`` does it: a real Agent's installer, its events through the
            disk spool (no broker here: they wait there for the sender), serving loaded by Agent._load_model.
            health_check=False: the health-check handler made a no-op (a measuring device only, to separate
            the gate's cost: serving then loads the session in on_commit). streamed=False: member digests are
            not taken during the download; verify hashes while copying. durable_events=True: every install
            event fsynced in the spool (the policy before ADR 0015)."""
            import agent.installer as installer_mod
            import agent.service as service_mod

            marks: list[tuple[str, float]] = []
            data_dir = work / "install" / f"run-{i}"
            device = Agent(AgentConfig(device_id=f"bench-{i}", profile=PROFILE, data_dir=data_dir,
                                       trusted_root=store.root_path, threads=threads))
            device.conn = OFFLINE_BROKER  # as when running: events go to the spool, not stdout
            inst, spool_events = device.installer, device.installer.emit

            def emit(state, ok, details, error, deployment_id):
                marks.append((state, time.perf_counter()))
                spool_events(state, ok, details, error, deployment_id)

            inst.emit = emit
            if not health_check:
                inst.handlers["health_check"] = lambda rec: None
            installer_mod.STREAMED_DIGESTS, service_mod.DURABLE_EVENTS = streamed, durable_events
            try:
                t0 = time.perf_counter()
                rec = inst.install(InstallRequest(deployment_id=f"bench-{i}", url=src or url, sha256=sha,
                                                  length=length))
                elapsed = time.perf_counter() - t0
            finally:
                installer_mod.STREAMED_DIGESTS, service_mod.DURABLE_EVENTS = True, False
            if rec.state != "committed" or device.runner is None or device.spool.stats()["pending"] != len(marks):
                raise RuntimeError(f"install ended in {rec.state}: {rec.error}")
            serving["runner"] = device.runner  # an update, as on a device: the old model serves while the new loads
            device._pool.shutdown()
            states = {s: (marks[k + 1][1] - t) for k, (s, t) in enumerate(marks[:-1])}
            shutil.rmtree(data_dir, ignore_errors=True)
            return elapsed, states

        serving: dict = {"runner": None}  # the model being served while the next install runs
        mqtt = stack_mqtt(work, server.store, sha)  # MQTT chunked transfer from the same artifact store

        def fetch_http(i: int) -> float:  # agent.fetch over HTTP Range (what the installer's download does)
            dest = work / "fetch" / f"h{i}.bundle"
            t0 = time.perf_counter()
            download(url, dest, length=length, sha256=sha, reserve_bytes=0)
            elapsed = time.perf_counter() - t0
            dest.unlink()
            return elapsed

        def fetch_mqtt(i: int) -> float:  # the same download through the broker in chunks
            dest = work / "fetch" / f"m{i}.bundle"
            t0 = time.perf_counter()
            download(mqtt.source(), dest, length=length, sha256=sha, reserve_bytes=0)
            elapsed = time.perf_counter() - t0
            dest.unlink()
            return elapsed

        def candidate_mqtt(i: int) -> float:
            data_dir = work / "install" / f"mqtt-{i}"
            inst = Installer(data_dir, profile, store.root_path, lambda *a: None, chunk_source=lambda req: mqtt.source(),
                             metadata_fetcher=mqtt.metadata_fetcher)  # the release check over the broker, as the agent
            t0 = time.perf_counter()
            rec = inst.install(InstallRequest(deployment_id=f"bench-m{i}", url=url, sha256=sha, length=length,
                                              transport="mqtt"))
            elapsed = time.perf_counter() - t0
            if rec.state != "committed":
                raise RuntimeError(f"install over MQTT ended in {rec.state}: {rec.error}")
            shutil.rmtree(data_dir, ignore_errors=True)
            return elapsed

        gate = GateAlone(work, bundle, store, serving_threads(0, profile.threads))

        fetch_http(-1), fetch_mqtt(-1), candidate_mqtt(-1)
        http_s, mqtt_s, cand_m_s = [], [], []
        for i in range(args.install_runs):
            http_s.append(fetch_http(i))
            mqtt_s.append(fetch_mqtt(i))
            cand_m_s.append(candidate_mqtt(i))
        baseline(-1), candidate(-1), candidate(-2, threads=1), candidate_previous(-1)  # warm-up (page cache, tuf)
        gate.one(), gate.one()
        candidate(-3, health_check=False), candidate(-4, streamed=False), candidate(-5, durable_events=True)
        base_s, cand_s, per_state, cand1_s, per_state1, prev_s, nohc_s, per_state_nohc = [], [], [], [], [], [], [], []
        copyhash_s, per_state_copyhash, durable_s, per_state_durable = [], [], [], []
        gate_s, gate_faults = [], []
        for i in range(args.install_runs):
            base_s.append(baseline(i))
            t, faults = gate.one()
            gate_s.append(t)
            gate_faults.append(faults)
            t, states = candidate(i)
            cand_s.append(t)
            per_state.append(states)
            t, states = candidate(2000 + i, health_check=False)
            nohc_s.append(t)
            per_state_nohc.append(states)
            t, states = candidate(3000 + i, streamed=False)
            copyhash_s.append(t)
            per_state_copyhash.append(states)
            t, states = candidate(4000 + i, durable_events=True)
            durable_s.append(t)
            per_state_durable.append(states)
            prev_s.append(candidate_previous(i))
            t, states = candidate(1000 + i, threads=1)
            cand1_s.append(t)
            per_state1.append(states)
        links = {}
        for mbit in args.link_mbit:  # the same installs over a link paced to a device-class rate
            with PacedLink(server.server_address[1], mbit * 1e6 / 8) as link:
                src = url.replace(f":{server.server_address[1]}/", f":{link.port}/")
                lb, lc = [], []
                for i in range(args.link_runs):
                    lb.append(baseline(5000 + i, src))
                    lc.append(candidate(5000 + i, src=src)[0])
            links[f"{mbit:g}_mbit"] = {"baseline_median_s": round(statistics.median(lb), 4),
                                       "candidate_median_s": round(statistics.median(lc), 4),
                                       "ratio_candidate_over_baseline": round(statistics.median(lc)
                                                                              / statistics.median(lb), 3),
                                       "baseline_all_s": [round(v, 4) for v in lb],
                                       "candidate_all_s": [round(v, 4) for v in lc]}
    finally:
        server.shutdown()
        server.server_close()
        if "mqtt" in locals():
            mqtt.close()

    health_ab = bench_health_check(gate, serving_threads(0, profile.threads), runs=40)
    verify_ab = bench_verify(work, bundle, store, runs=30)
    med_b, med_c, med_1 = statistics.median(base_s), statistics.median(cand_s), statistics.median(cand1_s)
    med_h, med_m = statistics.median(http_s), statistics.median(mqtt_s)
    state_names = list(per_state[0])

    def variant(what: str, times: list[float], states: list[dict]) -> dict:
        return {"what": what, "median_s": round(statistics.median(times), 4), "all_s": [round(v, 4) for v in times],
                "ratio_over_baseline": round(statistics.median(times) / med_b, 3),
                "per_state_median_s": {s: round(statistics.median(r[s] for r in states), 4) for s in state_names}}

    return {
        "bundle_bytes": length, "model_bytes": model.stat().st_size, "runs": args.install_runs,
        "baseline_urllib_sha256": {"median_s": round(med_b, 4), "all_s": [round(v, 4) for v in base_s],
                                   "mb_per_s": round(length / med_b / 1e6, 1)},
        "candidate_installer": {"median_s": round(med_c, 4), "all_s": [round(v, 4) for v in cand_s],
                                "mb_per_s": round(length / med_c / 1e6, 1),
                                "threads": serving_threads(0, profile.threads), "profile_threads": profile.threads,
                                "health_runs": 20},
        "ratio_candidate_over_baseline": round(med_c / med_b, 3),
        "candidate_previous_defaults": {
            "what": "same install with onnxruntime pool threads spinning and all 20 latency runs (the defaults "
                    "before [inference] spin = false and the early latency stop), interleaved",
            "median_s": round(statistics.median(prev_s), 4), "all_s": [round(v, 4) for v in prev_s],
            "ratio_over_baseline": round(statistics.median(prev_s) / med_b, 3)},
        "goal_ratio": 1.5,
        "paced_links": {
            "what": "baseline and candidate (interleaved, median of --link-runs) downloading through PacedLink, a "
                    "loopback proxy that paces the server's bytes to the rate of a device-class link (each "
                    "connection from its start); the install's fixed costs (session build, golden runs, fsync) "
                    "do not grow with the link while the baseline does",
            **links},
        "floor": {
            "what": "what no health-checked install can skip beyond the baseline, measured in the same interleaved "
                    "loop: the health check alone (session build + golden + latency runs) in a new thread while "
                    "the previous model's session stays alive, as in the agent (the old model serves while the new "
                    "one loads; no download, verify, stage, fsync or switch). floor = baseline + that",
            "gate_alone_median_s": round(statistics.median(gate_s), 4), "gate_alone_all_s": [round(v, 4) for v in gate_s],
            "gate_alone_minor_faults_median": int(statistics.median(gate_faults)),
            "floor_s": round(med_b + statistics.median(gate_s), 4),
            "floor_ratio_over_baseline": round((med_b + statistics.median(gate_s)) / med_b, 3),
            "candidate_over_floor": round(med_c / (med_b + statistics.median(gate_s)), 3)},
        "per_state_median_s": {s: round(statistics.median(r[s] for r in per_state), 4) for s in state_names},
        "candidate_without_health_check": variant(
            "the same install with the health-check handler made a no-op (measurement only: the agent never skips "
            "it); serving loads the session in on_commit instead, and the switch waits for the slot fsync that "
            "otherwise overlaps the check", nohc_s, per_state_nohc),
        "candidate_hash_while_copying": variant(
            "the same install without member digests taken during the download (STREAMED_DIGESTS = False): verify "
            "reads every member back and hashes it while copying, interleaved", copyhash_s, per_state_copyhash),
        "candidate_durable_events": variant(
            "the same install with every event fsynced in the agent's spool (DURABLE_EVENTS = True, the policy "
            "before ADR 0015: two fsyncs per progress event), interleaved", durable_s, per_state_durable),
        "verify_ab": verify_ab,
        "candidate_installer_threads_1": {
            "median_s": round(med_1, 4), "all_s": [round(v, 4) for v in cand1_s],
            "ratio_over_baseline": round(med_1 / med_b, 3),
            "per_state_median_s": {s: round(statistics.median(r[s] for r in per_state1), 4) for s in state_names},
            "note": "[inference] threads = 1: on this shared 2-CPU VM an ORT thread pool costs more than it gives"},
        "note": "after the download, the signed-member hash, the session build and the golden/latency runs are "
                "work the baseline does not do; see docs/adr/0004",
        "health_check_ab": health_ab,
        "mqtt_transfer": {
            "what": "agent.fetch.download of the same bundle: HTTP Range from the registry's HTTP server vs MQTT "
                    "chunks from its ChunkServer through mosquitto (interleaved runs)",
            "chunk_bytes": CHUNK_BYTES, "window": WINDOW,
            "http_fetch": {"median_s": round(med_h, 4), "all_s": [round(v, 4) for v in http_s]},
            "mqtt_fetch": {"median_s": round(med_m, 4), "all_s": [round(v, 4) for v in mqtt_s],
                           "mb_per_s": round(length / med_m / 1e6, 1)},
            "ratio_mqtt_over_http": round(med_m / med_h, 3),
            "installer_over_mqtt": {"median_s": round(statistics.median(cand_m_s), 4),
                                    "all_s": [round(v, 4) for v in cand_m_s],
                                    "ratio_over_baseline": round(statistics.median(cand_m_s) / med_b, 3)},
        },
    }


class PacedLink:
    """A loopback TCP proxy to ``port`` that sends the server's answer at ``rate_bps`` bytes/s at most
    (each connection paced from its start; the requests go through unpaced)."""

    def __init__(self, port: int, rate_bps: float) -> None:
        import socket

        self.target, self.rate = ("127.0.0.1", port), rate_bps
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, name="paced-link", daemon=True).start()

    def __enter__(self) -> "PacedLink":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(conn, up, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, conn, self.rate), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, rate: float | None) -> None:
        import socket

        t0, sent = time.monotonic(), 0
        try:
            while data := src.recv(64 * 1024):
                dst.sendall(data)
                sent += len(data)
                if rate and (ahead := sent / rate - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class GateAlone:
    """The install's health check on its own, as the agent runs it: a new worker thread builds the
    session and runs golden + latency runs while the previous model's session is still alive (so the
    new one needs fresh memory: its first-touch page faults are counted, ``RUSAGE_THREAD``)."""

    def __init__(self, work: Path, bundle: Path, store, threads: int) -> None:
        from edgekit.core import bundle as bundle_mod
        from edgekit.core import trust

        self.dir = work / "gate"
        self.manifest = bundle_mod.open_bundle(bundle, trust.load_trusted_root(store.root_path.read_bytes(), None),
                                               self.dir).manifest
        self.threads, self.serving = threads, None

    def one(self) -> tuple[float, int]:
        import resource

        import agent.installer as installer_mod
        from agent.runtime import load_runner

        m, box = self.manifest, {}

        def work() -> None:
            f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            t0 = time.perf_counter()
            rss0 = installer_mod.current_rss()  # as Installer._health_check: the memory budget is checked too
            runner = load_runner(self.dir / m["artifact"], m["engine"], self.threads)
            installer_mod.health_check(runner, self.dir / m["golden"]["file"], m, 20, rss_before=rss0)
            box.update(t=time.perf_counter() - t0, runner=runner,
                       faults=resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0)

        worker = threading.Thread(target=work, name="health-check")
        worker.start()
        worker.join()
        self.serving = box["runner"]  # serves until the next one is checked, as the agent's old slot does
        return box["t"], box["faults"]


def bench_health_check(gate: "GateAlone", threads: int, runs: int) -> dict:
    """The health check alone (session build + golden + latency runs), current vs previous defaults,
    interleaved: isolates the CPU-bound step from the download and fsync noise of whole installs
    (on the bundle ``gate`` extracted)."""
    import agent.installer as installer_mod
    from agent.runtime import load_runner

    m, d = gate.manifest, gate.dir
    far = installer_mod.FAR_FROM_BUDGET

    def one(current: bool) -> tuple[float, int]:
        installer_mod.FAR_FROM_BUDGET = far if current else float("inf")
        try:
            t0 = time.perf_counter()
            runner = load_runner(d / m["artifact"], m["engine"], threads, spin=not current)
            report = installer_mod.health_check(runner, d / m["golden"]["file"], m, 20)
            return time.perf_counter() - t0, report["latency_runs"]
        finally:
            installer_mod.FAR_FROM_BUDGET = far

    one(True), one(False)
    cur, prev = [], []
    for i in range(runs):
        for current in ((True, False) if i % 2 else (False, True)):
            (cur if current else prev).append(one(current)[0])
    q = lambda v: [round(x * 1000, 2) for x in statistics.quantiles(v, n=4)]  # noqa: E731
    return {"what": "load_runner + health_check (20 runs asked), threads as the install", "threads": threads,
            "runs_each": runs, "current_ms_quartiles": q(cur), "previous_ms_quartiles": q(prev),
            "latency_runs": {"current": one(True)[1], "previous": one(False)[1]},
            "ratio_current_over_previous_median": round(statistics.median(cur) / statistics.median(prev), 3)}


def bench_verify(work: Path, bundle: Path, store, runs: int) -> dict:
    """``open_bundle`` (TUF + member checks + extraction) with member digests taken while the bundle
    streamed in (what the installer's download now hands over) vs hashing while copying (bench
    flashing, or after a crash), interleaved; plus what taking the digests costs on its own
    (``MemberDigests`` over the file in 256 KiB pieces, the work moved into the download)."""
    from edgekit.core import bundle as bundle_mod
    from edgekit.core import trust

    root = trust.load_trusted_root(store.root_path.read_bytes(), None)
    data = bundle.read_bytes()

    def digests() -> dict:
        md = bundle_mod.MemberDigests()
        for k in range(0, len(data), 1 << 18):
            md.feed(data[k:k + (1 << 18)])
        return md.result()

    streamed = digests()

    def one(known) -> float:
        dest = work / "verify-ab"
        shutil.rmtree(dest, ignore_errors=True)
        t0 = time.perf_counter()
        bundle_mod.open_bundle(bundle, root, dest, streamed=known)
        return (time.perf_counter() - t0) * 1000

    one(None), one(streamed)
    copy_hash, kernel_copy, tap = [], [], []
    for _ in range(runs):
        copy_hash.append(one(None))
        kernel_copy.append(one(streamed))
        t0 = time.perf_counter()
        digests()
        tap.append((time.perf_counter() - t0) * 1000)
    shutil.rmtree(work / "verify-ab", ignore_errors=True)
    med = lambda v: round(statistics.median(v), 2)  # noqa: E731
    return {"what": "open_bundle of the install bundle, interleaved, median ms", "runs": runs,
            "hash_while_copying_ms": med(copy_hash), "streamed_digests_kernel_copy_ms": med(kernel_copy),
            "ratio": round(statistics.median(kernel_copy) / statistics.median(copy_hash), 3),
            "member_digests_alone_ms": med(tap)}


class stack_mqtt:
    """A managed mosquitto, the registry's ChunkServer on ``store`` and one device-side connection."""

    def __init__(self, work: Path, store: Path, sha: str) -> None:
        from edgekit.broker import ManagedBroker
        from edgekit.core.mqtt import MqttConnection
        from edgekit.registry.chunks import ChunkServer

        self.sha = sha
        self.broker = ManagedBroker(work / "broker-install").start()
        self.server_conn = MqttConnection("bench-registry", "127.0.0.1", self.broker.port)
        self.server_conn.connect()
        self.chunks = ChunkServer(self.server_conn, store).start()
        self.device = MqttConnection("bench-device", "127.0.0.1", self.broker.port)
        self.device.connect()

    def source(self):
        from agent.fetch_mqtt import MqttChunkSource

        return MqttChunkSource(self.device, "bench", "dev-1", self.sha)

    def metadata_fetcher(self, end: float):  # this chunk server hosts no trust metadata: auto mode probes, goes on
        from agent.trust_mqtt import metadata_fetcher

        return metadata_fetcher(self.device, "bench", "dev-1", end)

    def close(self) -> None:
        self.device.close()
        self.chunks.stop()
        self.server_conn.close()
        self.broker.stop()


# -- main -------------------------------------------------------------------------------------
def machine_info() -> dict:
    import onnxruntime as ort

    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "cpu_model": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                               if ln.startswith("model name")), platform.processor()),
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def print_table(res: dict) -> None:
    inf, fp, ins = res["inference"], res["footprint"], res["install"]
    print(f"\n{'inference (ms)':34} {'p50':>8} {'p95':>8} {'p99':>8}   ratio p50/p95/p99")
    rows = [("baseline raw onnxruntime", inf["baseline_raw_onnxruntime"], None),
            ("A in-process Agent.infer", inf["a_in_process_agent_infer"], inf["ratio_a_over_baseline"]),
            ("B MQTT RPC round trip", inf["b_mqtt_rpc"], inf["ratio_b_over_baseline"]),
            ("  (B device-side latency_ms)", inf["b_mqtt_rpc"]["device_side_latency"], None)]
    for name, p, r in rows:
        tail = f"   {r['p50_ms']}/{r['p95_ms']}/{r['p99_ms']}" if r else ""
        print(f"{name:34} {p['p50_ms']:8.3f} {p['p95_ms']:8.3f} {p['p99_ms']:8.3f}{tail}")
    c = inf["c_local_endpoint"]
    print(f"{'C baseline (interleaved with C)':34} {c['baseline_raw_onnxruntime']['p50_ms']:8.3f} "
          f"{c['baseline_raw_onnxruntime']['p95_ms']:8.3f} {c['baseline_raw_onnxruntime']['p99_ms']:8.3f}")
    for k in ("tcp_binary", "unix_binary", "unix_framed", "tcp_framed", "tcp_json", "tcp_binary_server_side",
              "unix_framed_server_side"):
        p, r = c[k], c[k]["ratio_over_baseline"]
        print(f"{'C endpoint ' + k:34} {p['p50_ms']:8.3f} {p['p95_ms']:8.3f} {p['p99_ms']:8.3f}"
              f"   {r['p50_ms']}/{r['p95_ms']}/{r['p99_ms']}")
    print(f"\n{'agent footprint':34} {'RSS MiB':>8} {'cold s':>8}   (cold start: median of spawns)")
    for name, key in (("idle, no model", "idle_no_model"), ("model loaded", "model_loaded")):
        print(f"{name:34} {fp[key]['rss_mib']:8.1f} {fp[key]['cold_start_s']:8.3f}")
    print(f"\ninstall {ins['bundle_bytes'] / 1e6:.1f} MB bundle, median of {ins['runs']}")
    print(f"{'baseline urllib + sha256':34} {ins['baseline_urllib_sha256']['median_s']:8.3f} s")
    print(f"{'Installer.install':34} {ins['candidate_installer']['median_s']:8.3f} s   "
          f"ratio {ins['ratio_candidate_over_baseline']} (goal <= {ins['goal_ratio']})")
    print("  per state (median s): " + ", ".join(f"{k} {v}" for k, v in ins["per_state_median_s"].items()))
    for name, r in ins["paced_links"].items():
        if isinstance(r, dict):
            print(f"{'  over a link paced to ' + name.replace('_', ' '):34} {r['candidate_median_s']:8.3f} s   ratio "
                  f"{r['ratio_candidate_over_baseline']} (baseline {r['baseline_median_s']} s)")
    fl = ins["floor"]
    print(f"{'  floor: baseline + health check':34} {fl['floor_s']:8.3f} s   ratio {fl['floor_ratio_over_baseline']} "
          f"(health check alone {fl['gate_alone_median_s']} s, {fl['gate_alone_minor_faults_median']} page faults); "
          f"install / floor {fl['candidate_over_floor']}")
    for label, key in (("  without the health check", "candidate_without_health_check"),
                       ("  every event fsynced (before)", "candidate_durable_events"),
                       ("  hash while copying (no tap)", "candidate_hash_while_copying")):
        v = ins[key]
        print(f"{label:34} {v['median_s']:8.3f} s   ratio {v['ratio_over_baseline']}")
        print("    per state (median s): " + ", ".join(f"{k} {x}" for k, x in v["per_state_median_s"].items()))
    va = ins["verify_ab"]
    print(f"{'verify (open_bundle) ms':34} streamed digests {va['streamed_digests_kernel_copy_ms']} vs hash while "
          f"copying {va['hash_while_copying_ms']} (ratio {va['ratio']}; digests alone {va['member_digests_alone_ms']})")
    hc = ins["health_check_ab"]
    print(f"{'health check alone, quartiles (ms)':34} current {hc['current_ms_quartiles']} vs previous "
          f"{hc['previous_ms_quartiles']} (median ratio {hc['ratio_current_over_previous_median']})")
    prev = ins["candidate_previous_defaults"]
    print(f"{'  previous defaults (spin, 20 runs)':34} {prev['median_s']:8.3f} s   ratio {prev['ratio_over_baseline']}")
    one = ins["candidate_installer_threads_1"]
    print(f"{'Installer.install, threads = 1':34} {one['median_s']:8.3f} s   ratio {one['ratio_over_baseline']}")
    print("  per state (median s): " + ", ".join(f"{k} {v}" for k, v in one["per_state_median_s"].items()))
    mq = ins["mqtt_transfer"]
    print(f"{'fetch over HTTP (agent.fetch)':34} {mq['http_fetch']['median_s']:8.3f} s")
    print(f"{'fetch over MQTT chunks':34} {mq['mqtt_fetch']['median_s']:8.3f} s   ratio {mq['ratio_mqtt_over_http']} "
          f"({mq['chunk_bytes'] // 1024} KiB x {mq['window']} in flight)")
    print(f"{'Installer.install over MQTT':34} {mq['installer_over_mqtt']['median_s']:8.3f} s   ratio "
          f"{mq['installer_over_mqtt']['ratio_over_baseline']} over the raw HTTP baseline")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result path (default {DEFAULT_OUT})")
    p.add_argument("--runs", type=int, default=500, help="timed in-process runs per variant (default 500)")
    p.add_argument("--mqtt-runs", type=int, default=300, help="timed MQTT round trips (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed warm-up calls per variant")
    p.add_argument("--cold-starts", type=int, default=3, help="agent spawns per footprint case (default 3)")
    p.add_argument("--install-runs", type=int, default=5, help="install runs per variant (default 5)")
    p.add_argument("--channels", type=int, nargs=2, default=(32, 48), metavar=("C1", "C2"),
                   help="conv channels of the ~1 ms model (default 32 48)")
    p.add_argument("--link-mbit", type=float, nargs="*", default=[1000.0, 500.0, 100.0],
                   help="also install over links paced to these rates, Mbit/s (default 1000 500 100; none: skip)")
    p.add_argument("--link-runs", type=int, default=3, help="installs per paced link (default 3)")
    p.add_argument("--gemm", type=int, default=1600, help="Gemm size of the install model (default 1600: ~10 MB)")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, bundles)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    with ExitStack() as stack:
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgekit-bench-")))
        print("[1/2] inference overhead + agent footprint", flush=True)
        inference, footprint = bench_inference_and_footprint(work, args)
        print("[2/2] install throughput", flush=True)
        install = bench_install(work, args)
    res = {"benchmark": "agent", "machine": machine_info(), "inference": inference, "footprint": footprint,
           "install": install, "wall_s": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print_table(res)
    print(f"\nwrote {args.out} in {res['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
