"""The time-series sampler: a background thread reading cheap NVML values at a fixed rate.

Design, from the call costs measured on an H100 beside a batch-64 ``generate``
(``benchmarks/bench_harness_overhead.py probe``; figures in docs/gpu-results.md):

* Every tick (default 10 Hz) per GPU: instant power (``NVML_FI_DEV_POWER_INSTANT`` field
  value, ~5 us), temperature, SM and memory clocks, clock-event reasons, memory used and
  utilisation (1-10 us each). About 30 us of work per GPU per tick, all inside ctypes calls
  that release the GIL.
* The total-energy counter costs ~3.5 ms per read (a firmware round trip), so the sampler reads
  it only every ``counter_every`` ticks (default: once a second). The energy figure does not
  depend on it: that comes from window edges (:mod:`.meter`).
* A thread, not a process: in-process readings share the harness's ``perf_counter`` clock with
  the request timestamps, and a separate process measured no cheaper.
* The loop sleeps on an ``Event`` with absolute deadlines (no busy-wait, no drift) and appends
  tuples to a list (no pandas/pyarrow work while measuring); columns are built after ``stop``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from llenergymeasure_harness.energy.nvml import Nvml

logger = logging.getLogger(__name__)

#: Column order of the rows (and of timeseries.parquet).
COLUMNS = (
    "t_s",
    "phase",
    "gpu",
    "power_w",
    "energy_mj",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "clock_event_reasons",
    "memory_used_bytes",
    "gpu_util_pct",
    "mem_util_pct",
)


class TimeseriesSampler:
    """Samples every GPU of the experiment at ``rate_hz`` on a daemon thread.

    Args:
        nvml: The NVML interface.
        nvml_indices: NVML index of each GPU.
        labels: Label of each GPU in the rows (default: the NVML indices).
        rate_hz: Ticks per second.
        counter_rate_hz: How often the energy counter is also read (0 = never).
        clock: Time source in seconds.
    """

    name = "nvml"

    def __init__(
        self,
        nvml: Nvml,
        nvml_indices: list[int],
        labels: list[int] | None = None,
        *,
        rate_hz: float = 10.0,
        counter_rate_hz: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.nvml = nvml
        self.indices = list(nvml_indices)
        self.labels = list(labels) if labels is not None else list(nvml_indices)
        self.rate_hz = rate_hz
        self.period_s = 1.0 / rate_hz
        self.counter_every = 0 if counter_rate_hz <= 0 else max(1, round(rate_hz / counter_rate_hz))
        self.clock = clock
        self.phase = "idle"
        self._rows: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick = 0
        self.errors = 0
        self.cpu_s: float | None = None  # CPU time the sampler thread used (after stop)

    def sample_once(self) -> None:
        """Take one tick of readings (the thread calls this; tests may call it directly)."""
        read_counter = self.counter_every > 0 and self._tick % self.counter_every == 0
        self._tick += 1
        phase = self.phase
        for lab, i in zip(self.labels, self.indices, strict=True):
            t = self.clock()
            s = self.nvml.sample(i)
            e = self.nvml.energy_mj(i) if read_counter else None
            self._rows.append(
                (
                    t,
                    phase,
                    lab,
                    s.power_w,
                    e,
                    s.temperature_c,
                    s.sm_clock_mhz,
                    s.mem_clock_mhz,
                    s.clock_event_reasons,
                    s.memory_used_bytes,
                    s.gpu_util_pct,
                    s.mem_util_pct,
                )
            )

    def _loop(self) -> None:
        cpu0 = time.thread_time()
        deadline = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # a failed read must not kill the run; counted and logged once
                self.errors += 1
                if self.errors == 1:
                    logger.exception("sampler read failed (further failures counted only)")
            deadline += self.period_s
            now = time.perf_counter()
            deadline = max(deadline, now)  # fell behind (slow read): skip ticks, no burst
            self._stop.wait(deadline - now)
        self.cpu_s = time.thread_time() - cpu0

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llem-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._thread = None

    def rows(self) -> list[dict[str, Any]]:
        """All samples so far as dicts (COLUMNS keys)."""
        return [dict(zip(COLUMNS, r, strict=True)) for r in list(self._rows)]

    def columns(self) -> dict[str, list[Any]]:
        """All samples so far column-wise (for parquet)."""
        rows = list(self._rows)
        return {c: [r[k] for r in rows] for k, c in enumerate(COLUMNS)}

    def power_series(self, label: int, t0: float, t1: float) -> list[tuple[float, float]]:
        """(time, watts) samples of one GPU between t0 and t1, inclusive."""
        return [
            (r[0], r[3])
            for r in list(self._rows)
            if r[2] == label and r[3] is not None and t0 <= r[0] <= t1
        ]


class NullSampler:
    """No GPU or no NVML: records nothing; every energy figure stays ``None``."""

    name = "null"
    rate_hz: float | None = None
    errors = 0
    cpu_s: float | None = None

    def __init__(self) -> None:
        self.phase = "idle"

    def sample_once(self) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def rows(self) -> list[dict[str, Any]]:
        return []

    def columns(self) -> dict[str, list[Any]]:
        return {c: [] for c in COLUMNS}

    def power_series(self, label: int, t0: float, t1: float) -> list[tuple[float, float]]:
        return []


def integrate_power(samples: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Trapezoid integral (J) of power samples over [t0, t1]; the edges hold the nearest sample.

    Returns None with fewer than two samples (one reading says nothing about a window).
    """
    pts = sorted(p for p in samples if t0 <= p[0] <= t1)
    if len(pts) < 2 or t1 <= t0:
        return None
    if pts[0][0] > t0:
        pts.insert(0, (t0, pts[0][1]))
    if pts[-1][0] < t1:
        pts.append((t1, pts[-1][1]))
    return float(sum((b[0] - a[0]) * (a[1] + b[1]) / 2.0 for a, b in itertools.pairwise(pts)))
