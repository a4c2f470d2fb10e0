"""Time and peak memory of each conversion step, for the report.

``StepLog.step(name)`` is a context manager: it measures wall time and the peak resident set size
of this process while the step runs (sampled by a background thread with psutil, because the
kernel's ``ru_maxrss`` high-water mark cannot be reset between steps). It does not print; the
optional ``progress`` callback is told when a step starts.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

SAMPLE_S = 0.02


class _PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def finish(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, self._proc.memory_info().rss)


class StepLog:
    def __init__(self, progress: Callable[[str], None] = lambda msg: None) -> None:
        self.steps: list[dict] = []
        self._progress = progress

    @contextmanager
    def step(self, name: str, **extra) -> Iterator[dict]:
        """Record ``{"step", "seconds", "peak_rss_bytes", "status", ...extra}``; the yielded dict may be
        updated by the step (e.g. ``entry["skipped"] = "why"``)."""
        self._progress(name)
        entry = {"step": name, **extra}
        sampler = _PeakSampler()
        sampler.start()
        t0 = time.perf_counter()
        try:
            yield entry
            entry.setdefault("status", "ok")
        except BaseException:
            entry["status"] = "failed"
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            entry["peak_rss_bytes"] = sampler.finish()
            self.steps.append(entry)
