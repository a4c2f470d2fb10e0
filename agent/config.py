"""Agent configuration: a small TOML file written by ``edgekit device add`` / the demo.

Example::

    device_id = "pi-01"
    fleet = "default"
    profile = "raspberry-pi-4"          # id of a bundled profile, or a path to a TOML profile
    data_dir = "/var/lib/edgekit"
    trusted_root = "/etc/edgekit/root.json"
    [mqtt]
    host = "127.0.0.1"
    port = 1883
    identity = "."                      # TLS: folder with cert.pem, key.pem, ca.pem (edgekit device enroll)
    [telemetry]
    interval_s = 30
    spool_bytes = 1048576               # disk spool for telemetry while the broker is unreachable
    drift_every = 10                    # sketch every Nth inference for drift (bundles with drift.json)
    [inference]
    threads = 0                         # 0 = the profile's default (capped at the CPUs available)
    spin = false                        # onnxruntime: let idle pool threads busy-wait (lower latency, more CPU)
    [install]
    min_rate_bps = 8192                 # slow-retrieval guard: a download must average this rate ...
    download_grace_s = 30               # ... with this much slack (deadline = grace + length / rate)
    mqtt_chunk_bytes = 262144           # chunk size for notices with transport "mqtt"
    freshness = "auto"                  # notice installs (HTTP, broker): registry's hosted TUF metadata must list the bundle,
                                        # fresh (auto: once seen; require; off) - agent/freshness.py, ADR 0010
    [endpoint]                          # optional: local inference for other processes (agent/endpoint.py)
    port = 8765                         # HTTP on 127.0.0.1 (0 = any free port; omit = no TCP endpoint)
    socket = "/run/edgekit/infer.sock"  # HTTP over a Unix socket (omit = none)
    [streaming]                         # optional: infer on sensor topics, publish predictions
    streams = ["cam0"]                  # .../sensors/cam0 -> .../predictions/cam0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.core.errors import ConfigError
from edgekit.core.schema import matches, non_negative, positive, validate
from edgekit.core.topics import NAME_RE

from .freshness import MODES as FRESHNESS_MODES

SCHEMA = {
    "device_id": (str, True, matches(NAME_RE, "1-64 letters, digits, '_', '.', '-'")),
    "fleet": (str, False, matches(NAME_RE, "1-64 letters, digits, '_', '.', '-'")),
    "profile": (str, True, None),
    "data_dir": (str, True, None),
    "trusted_root": (str, True, None),
    "mqtt": {"host": (str, True, None), "port": (int, True, positive), "keepalive_s": (int, False, positive),
             "identity": (str, False, None)},
    "telemetry": {"interval_s": ((int, float), False, positive), "spool_bytes": (int, False, positive),
                  "drift_every": (int, False, positive)},
    "inference": {"threads": (int, False, non_negative), "spin": (bool, False, None)},
    "install": {"allow_expired": (bool, False, None), "health_runs": (int, False, positive),
                "health_timeout_s": ((int, float), False, positive), "min_rate_bps": ((int, float), False, positive),
                "download_grace_s": ((int, float), False, non_negative), "mqtt_chunk_bytes": (int, False, positive),
                "freshness": (str, False, lambda v: None if v in FRESHNESS_MODES
                              else f"must be one of {', '.join(FRESHNESS_MODES)}")},
    "endpoint": {"port": (int, False, non_negative), "socket": (str, False, None)},
    "streaming": {"streams": (list, False, lambda v: None if all(isinstance(x, str) and NAME_RE.fullmatch(x)
                                                               for x in v) else "must be a list of stream names")},
}


@dataclass
class AgentConfig:
    device_id: str
    profile: str
    data_dir: Path
    trusted_root: Path
    fleet: str = "default"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    keepalive_s: int = 30
    telemetry_interval_s: float = 30.0
    threads: int = 0
    allow_expired: bool = False
    health_runs: int = 20
    tls_identity: Path | None = None      # folder with cert.pem/key.pem/ca.pem; None = plain MQTT
    health_timeout_s: float = 60.0
    spool_bytes: int = 1 << 20
    drift_every: int = 10
    endpoint_port: int | None = None       # None = no TCP endpoint
    endpoint_socket: Path | None = None    # None = no Unix socket endpoint
    streams: list[str] = field(default_factory=list)  # streaming mode: sensor streams to infer on
    min_rate_bps: float = 8192.0           # slow-retrieval guard: deadline = grace + signed length / rate
    download_grace_s: float = 30.0
    mqtt_chunk_bytes: int = 256 * 1024     # MQTT transfer: bytes per chunk request
    spin: bool = False                     # onnxruntime pool threads busy-wait for work (off: shared CPUs)
    freshness: str = "auto"                # hosted TUF check before HTTP installs (agent/freshness.py)
    path: Path | None = field(default=None, repr=False)

    @property
    def device_key(self) -> Path | None:
        """The X25519 key that encrypted models are wrapped to (``enc.key`` in the identity folder)."""
        return self.tls_identity / "enc.key" if self.tls_identity else None


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"agent config not found: {path}", hint="Pass --config PATH to a TOML file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    errors = validate(raw, SCHEMA, optional_sections=frozenset({"mqtt", "telemetry", "inference", "install",
                                                                "endpoint", "streaming"}))
    if errors:
        raise ConfigError(f"{path}: invalid agent config:\n  - " + "\n  - ".join(errors), errors=errors)
    base = path.parent
    mqtt, tel, inf, ins, ep = (raw.get(k, {}) for k in ("mqtt", "telemetry", "inference", "install", "endpoint"))
    return AgentConfig(
        device_id=raw["device_id"], fleet=raw.get("fleet", "default"), profile=raw["profile"],
        data_dir=(base / raw["data_dir"]).resolve(), trusted_root=(base / raw["trusted_root"]).resolve(),
        mqtt_host=mqtt.get("host", "127.0.0.1"), mqtt_port=mqtt.get("port", 1883),
        keepalive_s=mqtt.get("keepalive_s", 30), telemetry_interval_s=float(tel.get("interval_s", 30)),
        threads=inf.get("threads", 0), spin=inf.get("spin", False), allow_expired=ins.get("allow_expired", False),
        health_runs=ins.get("health_runs", 20), health_timeout_s=float(ins.get("health_timeout_s", 60.0)),
        spool_bytes=tel.get("spool_bytes", 1 << 20), drift_every=tel.get("drift_every", 10),
        endpoint_port=ep.get("port"),
        endpoint_socket=(base / ep["socket"]).resolve() if ep.get("socket") else None,
        streams=list(raw.get("streaming", {}).get("streams", [])),
        min_rate_bps=float(ins.get("min_rate_bps", 8192)), download_grace_s=float(ins.get("download_grace_s", 30.0)),
        mqtt_chunk_bytes=ins.get("mqtt_chunk_bytes", 256 * 1024), freshness=ins.get("freshness", "auto"),
        tls_identity=(base / mqtt["identity"]).resolve() if mqtt.get("identity") else None,
        path=path,
    )


def render_config(*, device_id: str, fleet: str, profile: str, data_dir: str, trusted_root: str,
                  host: str, port: int, telemetry_interval_s: float = 30, threads: int = 0,
                  identity: str | None = None, freshness: str = "auto") -> str:
    """The TOML text of a config (used by the host to provision devices)."""
    return (
        f'device_id = "{device_id}"\nfleet = "{fleet}"\nprofile = "{profile}"\n'
        f'data_dir = "{data_dir}"\ntrusted_root = "{trusted_root}"\n\n'
        f'[mqtt]\nhost = "{host}"\nport = {port}\n' + (f'identity = "{identity}"\n' if identity else "") + "\n"
        f'[telemetry]\ninterval_s = {telemetry_interval_s}\n\n'
        f'[inference]\nthreads = {threads}\n'
        + (f'\n[install]\nfreshness = "{freshness}"\n' if freshness != "auto" else "")
    )
