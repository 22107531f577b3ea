"""A fake NVML whose energy counter is the exact integral of the power it reports.

Power is piecewise constant per GPU and changes only through :meth:`FakeNvml.set_power`; the
counter advances by ``power x elapsed`` on the injected clock. With a :class:`ManualClock` the
expected joules of any window are exact, e.g. 300 W for 2 s is exactly 600 J::

    clock = ManualClock()
    nvml = FakeNvml(n_gpus=2, clock=clock, power_w=300.0)
    meter = NvmlEnergyMeter(nvml, [0, 1], clock=clock)
    with meter.window("x") as w:
        clock.advance(2.0)
    assert w.result.gpu_energy_j == 1200.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from llenergymeasure_harness.energy.nvml import GpuSample


class ManualClock:
    """A clock that only moves when told to (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class FakeNvml:
    """In-memory NVML. Satisfies :class:`llenergymeasure_harness.energy.nvml.Nvml`.

    Args:
        n_gpus: Number of devices.
        clock: Time source in seconds (default ``time.perf_counter``).
        power_w: Initial power of every GPU.
        counter_update_period_s: If > 0, the counter only changes at multiples of this period
            (the H100 counter updates about every 100 ms), so short windows read coarse values.
        supports_energy: False makes ``energy_mj`` return None (pre-Volta GPUs).
    """

    def __init__(
        self,
        n_gpus: int = 1,
        *,
        clock: Callable[[], float] = time.perf_counter,
        power_w: float = 100.0,
        counter_update_period_s: float = 0.0,
        supports_energy: bool = True,
        name: str = "Fake H100",
        persistence_mode: bool = True,
    ) -> None:
        self.clock = clock
        self.n = n_gpus
        self.period = counter_update_period_s
        self.supports_energy = supports_energy
        self.name = name
        self.persistence_mode = persistence_mode
        t = clock()
        self._power = [float(power_w)] * n_gpus
        self._acc_mj = [0.0] * n_gpus  # energy up to _t_set
        self._t_set = [t] * n_gpus
        self.clock_event_reasons = [0] * n_gpus
        self.violation = [{"power": 0, "thermal": 0} for _ in range(n_gpus)]
        self.pids: list[list[int]] = [[] for _ in range(n_gpus)]
        self.temperature_c = [40.0] * n_gpus
        self.calls: dict[str, int] = {}
        self.closed = False

    # ---------------------------------------------------------------- test controls

    def set_power(self, index: int, power_w: float) -> None:
        """Change one GPU's power from now on (the counter integrates the old value so far)."""
        t = self.clock()
        self._acc_mj[index] += self._power[index] * (t - self._t_set[index]) * 1000.0
        self._t_set[index] = t
        self._power[index] = float(power_w)

    def exact_energy_j(self, index: int) -> float:
        """Energy since creation, unquantised, in joules."""
        t = self.clock()
        return (self._acc_mj[index] + self._power[index] * (t - self._t_set[index]) * 1000) / 1000

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    # ---------------------------------------------------------------- Nvml interface

    def device_count(self) -> int:
        return self.n

    def device_name(self, index: int) -> str | None:
        return self.name

    def uuid(self, index: int) -> str | None:
        return f"GPU-fake-{index:04d}"

    def energy_mj(self, index: int) -> int | None:
        self._count("energy_mj")
        if not self.supports_energy:
            return None
        t = self.clock()
        if self.period > 0:
            t = self._t_set[index] + ((t - self._t_set[index]) // self.period) * self.period
        return round(self._acc_mj[index] + self._power[index] * (t - self._t_set[index]) * 1000)

    def power_w(self, index: int) -> float | None:
        self._count("power_w")
        return self._power[index]

    def sample(self, index: int) -> GpuSample:
        self._count("sample")
        return GpuSample(
            power_w=self._power[index],
            temperature_c=self.temperature_c[index],
            sm_clock_mhz=1980,
            mem_clock_mhz=2619,
            clock_event_reasons=self.clock_event_reasons[index],
            memory_used_bytes=1 << 30,
            gpu_util_pct=100,
            mem_util_pct=50,
        )

    def violation_ns(self, index: int) -> dict[str, int] | None:
        return dict(self.violation[index])

    def compute_pids(self, index: int) -> list[int] | None:
        return list(self.pids[index])

    def info(self, index: int) -> dict[str, Any]:
        return {
            "uuid": self.uuid(index),
            "name": self.name,
            "memory_total_bytes": 80 << 30,
            "power_limit_w": 700.0,
            "default_power_limit_w": 700.0,
            "persistence_mode": self.persistence_mode,
            "ecc_enabled": True,
            "sm_clock_max_mhz": 1980,
            "mem_clock_max_mhz": 2619,
        }

    def driver_version(self) -> str | None:
        return "580.00.00-fake"

    def cuda_driver_version(self) -> str | None:
        return "13.0"

    def shutdown(self) -> None:
        self.closed = True
