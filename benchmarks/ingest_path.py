"""Registry ingest hot path without the network: CPU µs per telemetry message to validate
(``Ingest._decode``) and to validate + store (``db.store_batch``, SQLite) 10 000 messages of 100
devices, in batches. Best of 3, one thread. Prints JSON (and writes it with ``--out``).

Run it on two checkouts to compare code, e.g. (ADR 0011)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ingest_path.py
    git archive HEAD~1 | tar -x -C /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python benchmarks/ingest_path.py

The end-to-end figure (with MQTT, vs a raw paho subscriber) is ``benchmarks/fleet.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgekit.core import messages, topics  # noqa: E402
from edgekit.registry import db  # noqa: E402
from edgekit.registry.ingest import Ingest  # noqa: E402


def telemetry(devices: int, per_device: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(devices):
        dev = f"sim-{i:04d}"
        for seq in range(1, per_device + 1):
            msg = messages.build(messages.TELEMETRY, device=dev, seq=seq, health={"cpu_percent": 1.0},
                                 inference={"count": seq * 10, "errors": 0, "p50_ms": 3.5, "p95_ms": 5.0,
                                            "p99_ms": 6.0, "window": 10}, model="digits-cnn", version="1.0.0")
            out.append((topics.telemetry("default", dev), messages.dumps(msg)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    msgs = telemetry(100, 100)
    ing = Ingest.__new__(Ingest)  # only the decoder: no broker connection
    ing.rejected = 0
    decode, store = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(3):
            engine = db.open_db(f"sqlite:///{tmp}/r{k}.db")
            t0 = time.process_time()
            for i in range(0, len(msgs), args.batch):
                [ing._decode(t, p) for t, p in msgs[i:i + args.batch]]
            t1 = time.process_time()
            for i in range(0, len(msgs), args.batch):
                db.store_batch(engine, [e for e in (ing._decode(t, p) for t, p in msgs[i:i + args.batch]) if e])
            t2 = time.process_time()
            decode.append(t1 - t0)
            store.append(t2 - t1)
            engine.dispose()
    out = {"benchmark": "ingest_path", "messages": len(msgs), "batch": args.batch,
           "decode_cpu_us_per_msg": round(1e6 * min(decode) / len(msgs), 1),
           "decode_and_store_cpu_us_per_msg": round(1e6 * min(store) / len(msgs), 1)}
    print(json.dumps(out))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
