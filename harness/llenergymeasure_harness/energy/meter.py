"""Zeus-style energy windows on the NVML total-energy counter, over all the experiment's GPUs.

::

    begin_window("measure")          end_window("measure")
    │ read counter on every GPU        │ read counter on every GPU
    ▼                                  ▼
    ───────────[ measured work ]───────────  energy_j[gpu] = (end_mJ - begin_mJ) / 1000

The counter (``nvmlDeviceGetTotalEnergyConsumption``) updates about every 100 ms and one read
costs ~3.5 ms on an H100, so it is read only at window edges, never in a hot loop. Violation
counters (cumulative ns of power/thermal throttling) are read at the same edges. A GPU whose
counter cannot be read reports ``None`` — never 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from llenergymeasure_contract.errors import MeasurementError
from llenergymeasure_harness.energy.nvml import Nvml

logger = logging.getLogger(__name__)


@dataclass
class WindowResult:
    """Energy of one window, per GPU (keys are the harness's GPU labels)."""

    name: str
    start_s: float
    end_s: float
    energy_j_per_gpu: dict[int, float | None]
    violation_ns_per_gpu: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def gpu_energy_j(self) -> float | None:
        """Sum over GPUs; None if any GPU could not be read (a partial sum would mislead)."""
        values = list(self.energy_j_per_gpu.values())
        if not values or any(v is None for v in values):
            return None
        return float(sum(v for v in values if v is not None))


@dataclass
class _Open:
    start_s: float
    counters: dict[int, int | None]
    violations: dict[int, dict[str, int] | None]


class WindowHandle:
    """What ``with meter.window(..)`` yields; ``result`` is set when the block exits."""

    result: WindowResult


class NvmlEnergyMeter:
    """Measurement windows over several GPUs; windows may overlap and nest (by name).

    Args:
        nvml: The NVML interface.
        nvml_indices: NVML device index of each GPU to measure.
        labels: The label each GPU gets in results (default: the NVML indices).
        clock: Time source in seconds, the same clock request timestamps use.
    """

    def __init__(
        self,
        nvml: Nvml,
        nvml_indices: list[int],
        labels: list[int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not nvml_indices:
            raise MeasurementError("an energy meter needs at least one GPU")
        self.nvml = nvml
        self.indices = list(nvml_indices)
        self.labels = list(labels) if labels is not None else list(nvml_indices)
        self.clock = clock
        self._open: dict[str, _Open] = {}

    def _read(self) -> tuple[float, dict[int, int | None], dict[int, dict[str, int] | None]]:
        pairs = list(zip(self.labels, self.indices, strict=True))
        violations = {lab: self.nvml.violation_ns(i) for lab, i in pairs}
        t0 = self.clock()
        counters = {lab: self.nvml.energy_mj(i) for lab, i in pairs}
        t1 = self.clock()
        # The edge time is the middle of the reads (each ~3.5 ms on an H100).
        return (t0 + t1) / 2.0, counters, violations

    def begin_window(self, name: str, sync: Callable[[], None] | None = None) -> None:
        """Open a window. ``sync`` (e.g. ``torch.cuda.synchronize``) runs first."""
        if name in self._open:
            raise MeasurementError(f"energy window {name!r} is already open")
        if sync is not None:
            sync()
        t, counters, violations = self._read()
        self._open[name] = _Open(t, counters, violations)

    def end_window(self, name: str, sync: Callable[[], None] | None = None) -> WindowResult:
        """Close a window and return its energy."""
        if sync is not None:
            sync()
        try:
            opened = self._open.pop(name)
        except KeyError as exc:
            raise MeasurementError(f"energy window {name!r} was never opened") from exc
        t, counters, violations = self._read()
        energy: dict[int, float | None] = {}
        viol: dict[int, dict[str, int]] = {}
        for lab in self.labels:
            a, b = opened.counters[lab], counters[lab]
            if a is None or b is None:
                energy[lab] = None
            elif b < a:  # driver reload or wrap: unusable, never negative
                logger.warning("energy counter of GPU %s went backwards; energy unknown", lab)
                energy[lab] = None
            else:
                energy[lab] = (b - a) / 1000.0
            va, vb = opened.violations[lab], violations[lab]
            if va is not None and vb is not None:
                viol[lab] = {k: max(0, vb[k] - va[k]) for k in vb}
        return WindowResult(name, opened.start_s, t, energy, viol)

    @contextmanager
    def window(self, name: str, sync: Callable[[], None] | None = None) -> Iterator[WindowHandle]:
        """``with meter.window("measure") as w: ...`` then ``w.result``."""
        handle = WindowHandle()
        self.begin_window(name, sync)
        try:
            yield handle
        except BaseException:
            self._open.pop(name, None)
            raise
        handle.result = self.end_window(name, sync)
