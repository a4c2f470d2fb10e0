"""Inference statistics and device health for telemetry messages.

``InferenceStats`` keeps counters and a bounded window of latencies (thread-safe);
``health()`` reads psutil (CPU, memory, disk, process RSS; temperature/battery when the platform
has them — VMs usually do not). Publishing is the service's job.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import psutil


class InferenceStats:
    def __init__(self, window: int = 4096) -> None:
        self._lock = threading.Lock()
        self._lat: deque[float] = deque(maxlen=window)
        self.count = 0
        self.errors = 0
        self._since = time.monotonic()
        self._count_at_report = 0

    def record(self, latency_ms: float, ok: bool = True) -> None:
        with self._lock:
            self.count += 1
            if ok:
                self._lat.append(latency_ms)
            else:
                self.errors += 1

    def snapshot(self, reset_window: bool = True) -> dict:
        with self._lock:
            lat = sorted(self._lat)
            now = time.monotonic()
            period = max(now - self._since, 1e-9)
            out = {"count": self.count, "errors": self.errors,
                   "throughput_per_s": round((self.count - self._count_at_report) / period, 3)}
            if lat:
                p50, p95, p99 = (percentile(lat, q) for q in (50, 95, 99))
                out.update(p50_ms=round(float(p50), 4), p95_ms=round(float(p95), 4), p99_ms=round(float(p99), 4),
                           window=len(lat))
            if reset_window:
                self._lat.clear()
                self._since, self._count_at_report = now, self.count
            return out


_proc = psutil.Process()


def percentile(ordered: list[float], q: float) -> float:
    """``q``-th percentile of an ascending list, linear interpolation (numpy's default method), so
    telemetry needs no numpy: an idle agent stays without it."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def health(data_dir: str) -> dict:
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(data_dir)
    out = {"cpu_percent": psutil.cpu_percent(interval=None), "mem_used_percent": vm.percent,
           "mem_available_bytes": vm.available, "disk_free_bytes": disk.free, "disk_used_percent": disk.percent,
           "rss_bytes": _proc.memory_info().rss, "uptime_s": round(time.time() - _proc.create_time(), 1)}
    temps = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
    readings = [t.current for entries in temps.values() for t in entries if t.current]
    if readings:
        out["temperature_c"] = max(readings)
    battery = getattr(psutil, "sensors_battery", lambda: None)()
    if battery is not None:
        out["battery_percent"] = battery.percent
    return out
