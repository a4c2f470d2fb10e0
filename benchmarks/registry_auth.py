"""benchmarks/registry_auth.py — cost of the bearer-token check per request: same registry, same run, one thread.
baseline: GET /api/v1/fleet on a registry without private reads (no token check);
auth:     GET /api/v1/fleet with private_reads + a token (parse, SHA-256, DB lookup, role check);
write:    POST /api/v1/tags (empty) with an operator token.
Median of 300 keep-alive requests each; prints JSON and writes benchmarks/results/registry_auth.json.
Run: PYTHONPATH=$PWD .venv/bin/python benchmarks/registry_auth.py"""
import json
import statistics
import tempfile
import time
from pathlib import Path

import requests

from edgekit.broker import ManagedBroker
from edgekit.registry.service import Registry



def bench(sess, method, url, n=300, **kw):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); r = sess.request(method, url, **kw); ts.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return statistics.median(ts)

with tempfile.TemporaryDirectory() as d, ManagedBroker(Path(d) / "b") as broker:
    out = {}
    for private in (False, True):
        reg = Registry(f"sqlite:///{d}/r{private}.db", Path(d) / "a", "127.0.0.1", broker.port, rollouts=False,
                       private_reads=private).start()
        tok = reg.create_token("operator", "bench")
        s = requests.Session()
        h = {"Authorization": f"Bearer {tok}"}
        bench(s, "GET", reg.url + "/api/v1/fleet", 50, headers=h)
        out["get_open" if not private else "get_token"] = bench(s, "GET", reg.url + "/api/v1/fleet", headers=h)
        if private:
            out["post_tags_token"] = bench(s, "POST", reg.url + "/api/v1/tags", headers=h, json={"devices": [], "add": []})
        reg.stop()
    out["ratio_get_token_vs_open"] = out["get_token"] / out["get_open"]
    result = {k: round(v, 3) for k, v in out.items()}
    result["unit"] = "ms (median per request)"
    print(json.dumps(result))
    dest = Path(__file__).parent / "results" / "registry_auth.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
