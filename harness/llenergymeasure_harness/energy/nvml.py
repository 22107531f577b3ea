"""The one module that imports ``pynvml``: :class:`RealNvml` and the :class:`Nvml` interface.

Everything else in the harness talks to :class:`Nvml`, so tests swap in
:class:`llenergymeasure_harness.testing.FakeNvml` and no other module needs the driver.
``pynvml.NVMLError`` is translated into
:class:`~llenergymeasure_contract.errors.MeasurementError` here, at one boundary.

Cost of each call, measured on an H100 (driver 580.159.04) beside a batch-64 ``generate``
(docs/gpu-results.md)::

    nvmlDeviceGetTotalEnergyConsumption   ~3.3-3.8 ms   (firmware round trip; GIL released)
    NVML_FI_DEV_PERF_POLICY_* violations  ~0.4-1.2 ms
    POWER_INSTANT field value               ~5 us
    power usage, temperature, clocks,       1-10 us each
    clock-event reasons, memory, util

So the sampler reads only the microsecond calls every tick; the energy counter is read at
window edges (the energy figure) and at a low rate in the time series; violation counters are
read at window edges only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from llenergymeasure_contract.errors import MeasurementError, PreflightError

logger = logging.getLogger(__name__)

#: Clock-event reason bits (``nvmlClocksEventReason*``) that mean the GPU was slowed down.
REASON_SW_POWER_CAP = 0x4
REASON_HW_SLOWDOWN = 0x8
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40
REASON_HW_POWER_BRAKE = 0x80
POWER_REASONS = REASON_SW_POWER_CAP | REASON_HW_POWER_BRAKE
THERMAL_REASONS = REASON_SW_THERMAL | REASON_HW_THERMAL | REASON_HW_SLOWDOWN


@dataclass(frozen=True)
class GpuSample:
    """One time-series reading of one GPU. ``None`` fields could not be read."""

    power_w: float | None
    temperature_c: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    clock_event_reasons: int | None
    memory_used_bytes: int | None
    gpu_util_pct: int | None
    mem_util_pct: int | None


@runtime_checkable
class Nvml(Protocol):
    """The NVML surface the harness uses, by NVML device index."""

    def device_count(self) -> int: ...

    def device_name(self, index: int) -> str | None: ...

    def uuid(self, index: int) -> str | None: ...

    def energy_mj(self, index: int) -> int | None:
        """Total-energy counter in millijoules since the driver loaded (None if unsupported)."""
        ...

    def power_w(self, index: int) -> float | None:
        """Instant power (field value), falling back to the averaged power usage."""
        ...

    def sample(self, index: int) -> GpuSample: ...

    def violation_ns(self, index: int) -> dict[str, int] | None:
        """Cumulative throttle time in ns: {"power": .., "thermal": ..} (None if unsupported)."""
        ...

    def compute_pids(self, index: int) -> list[int] | None: ...

    def info(self, index: int) -> dict[str, Any]:
        """Static facts (GPUInfo fields except ``index``)."""
        ...

    def driver_version(self) -> str | None: ...

    def cuda_driver_version(self) -> str | None: ...

    def shutdown(self) -> None: ...


def _field_number(fv: Any) -> float | None:
    """The value of one ``c_nvmlFieldValue_t`` as a number, or None if the read failed."""
    if fv.nvmlReturn != 0:
        return None
    vt = fv.valueType
    v = fv.value
    getter: Callable[[], Any] = {
        0: lambda: v.dVal,
        1: lambda: v.uiVal,
        2: lambda: v.ulVal,
        3: lambda: v.ullVal,
        4: lambda: v.sllVal,
        5: lambda: v.siVal,
        6: lambda: v.usVal,
    }.get(vt, lambda: v.ullVal)
    return float(getter())


class RealNvml:
    """NVML through ``pynvml`` (nvidia-ml-py). Init in the constructor; :meth:`shutdown` after.

    Raises:
        PreflightError: pynvml is not installed or NVML cannot initialise (no driver/GPU).
    """

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise PreflightError(
                ["pynvml is not installed"], hint="pip install nvidia-ml-py"
            ) from exc
        self._nv = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise PreflightError([f"NVML could not initialise: {exc}"]) from exc
        self._handles: dict[int, Any] = {}
        self._instant_ok: dict[int, bool] = {}
        self._closed = False

    def _h(self, index: int) -> Any:
        h = self._handles.get(index)
        if h is None:
            try:
                h = self._nv.nvmlDeviceGetHandleByIndex(index)
            except self._nv.NVMLError as exc:
                raise MeasurementError(f"NVML has no GPU {index}: {exc}") from exc
            self._handles[index] = h
        return h

    def _try(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nv.NVMLError:
            return None

    def device_count(self) -> int:
        try:
            return int(self._nv.nvmlDeviceGetCount())
        except self._nv.NVMLError as exc:
            raise MeasurementError(f"NVML device count failed: {exc}") from exc

    def device_name(self, index: int) -> str | None:
        name = self._try(self._nv.nvmlDeviceGetName, self._h(index))
        return name.decode() if isinstance(name, bytes) else name

    def uuid(self, index: int) -> str | None:
        u = self._try(self._nv.nvmlDeviceGetUUID, self._h(index))
        return u.decode() if isinstance(u, bytes) else u

    def energy_mj(self, index: int) -> int | None:
        v = self._try(self._nv.nvmlDeviceGetTotalEnergyConsumption, self._h(index))
        return None if v is None else int(v)

    def power_w(self, index: int) -> float | None:
        h = self._h(index)
        if self._instant_ok.get(index, True):
            fvs = self._try(
                self._nv.nvmlDeviceGetFieldValues, h, [self._nv.NVML_FI_DEV_POWER_INSTANT]
            )
            value = _field_number(fvs[0]) if fvs is not None else None
            if value is not None and value > 0:
                return float(value) / 1000.0
            self._instant_ok[index] = False  # not supported here: use the averaged reading
        mw = self._try(self._nv.nvmlDeviceGetPowerUsage, h)
        return None if mw is None else float(mw) / 1000.0

    def sample(self, index: int) -> GpuSample:
        nv = self._nv
        h = self._h(index)
        mem = self._try(nv.nvmlDeviceGetMemoryInfo, h)
        util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if reasons_fn is None:  # nvidia-ml-py < 12.535 spells it "throttle"
            reasons_fn = nv.nvmlDeviceGetCurrentClocksThrottleReasons
        temp = self._try(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        return GpuSample(
            power_w=self.power_w(index),
            temperature_c=None if temp is None else float(temp),
            sm_clock_mhz=self._try(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
            mem_clock_mhz=self._try(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
            clock_event_reasons=self._try(reasons_fn, h),
            memory_used_bytes=None if mem is None else int(mem.used),
            gpu_util_pct=None if util is None else int(util.gpu),
            mem_util_pct=None if util is None else int(util.memory),
        )

    def violation_ns(self, index: int) -> dict[str, int] | None:
        nv = self._nv
        fvs = self._try(
            nv.nvmlDeviceGetFieldValues,
            self._h(index),
            [nv.NVML_FI_DEV_PERF_POLICY_POWER, nv.NVML_FI_DEV_PERF_POLICY_THERMAL],
        )
        if fvs is None:
            return None
        power, thermal = _field_number(fvs[0]), _field_number(fvs[1])
        if power is None or thermal is None:
            return None
        return {"power": int(power), "thermal": int(thermal)}

    def compute_pids(self, index: int) -> list[int] | None:
        procs = self._try(self._nv.nvmlDeviceGetComputeRunningProcesses, self._h(index))
        return None if procs is None else [int(p.pid) for p in procs]

    def info(self, index: int) -> dict[str, Any]:
        nv = self._nv
        h = self._h(index)
        mem = self._try(nv.nvmlDeviceGetMemoryInfo, h)
        limit = self._try(nv.nvmlDeviceGetEnforcedPowerLimit, h)
        default = self._try(nv.nvmlDeviceGetPowerManagementDefaultLimit, h)
        pers = self._try(nv.nvmlDeviceGetPersistenceMode, h)
        ecc = self._try(nv.nvmlDeviceGetEccMode, h)
        return {
            "uuid": self.uuid(index),
            "name": self.device_name(index),
            "memory_total_bytes": None if mem is None else int(mem.total),
            "power_limit_w": None if limit is None else limit / 1000.0,
            "default_power_limit_w": None if default is None else default / 1000.0,
            "persistence_mode": None if pers is None else bool(pers),
            "ecc_enabled": None if ecc is None else bool(ecc[0]),
            "sm_clock_max_mhz": self._try(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
            "mem_clock_max_mhz": self._try(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
        }

    def driver_version(self) -> str | None:
        v = self._try(self._nv.nvmlSystemGetDriverVersion)
        return v.decode() if isinstance(v, bytes) else v

    def cuda_driver_version(self) -> str | None:
        v = self._try(self._nv.nvmlSystemGetCudaDriverVersion)
        return None if v is None else f"{v // 1000}.{(v % 1000) // 10}"

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._try(self._nv.nvmlShutdown)


def open_nvml() -> Nvml | None:
    """A :class:`RealNvml`, or None (with a log line) when there is no usable NVML/GPU."""
    try:
        nvml = RealNvml()
        if nvml.device_count() == 0:
            nvml.shutdown()
            return None
        return nvml
    except (PreflightError, MeasurementError) as exc:
        problems = "; ".join(getattr(exc, "problems", [])) or str(exc)
        logger.warning("no NVML (energy will not be measured): %s", problems)
        return None


def map_gpus(
    gpus: list[int], nvml_count: int, cuda_visible: str | None = None
) -> list[tuple[int, int | str]]:
    """Pair each experiment GPU with (process-visible CUDA index, NVML index or UUID).

    ``config.gpus`` are host indices. Inside a container started with ``--gpus device=..``
    NVML and CUDA both see only those GPUs, renumbered from 0. A local run with
    ``CUDA_VISIBLE_DEVICES`` set sees them renumbered in CUDA but not in NVML.

    Raises:
        PreflightError: a listed GPU is not visible.
    """
    if cuda_visible is None:
        cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cuda_visible not in (None, ""):
        visible: list[int | str] = [
            int(v) if v.strip().isdigit() else v.strip()
            for v in cuda_visible.split(",")
            if v.strip()
        ]
        if len(visible) == len(gpus):
            return list(enumerate(visible))
        missing = [g for g in gpus if g >= len(visible)]
        if missing:
            raise PreflightError(
                [f"GPUs {missing} are not among CUDA_VISIBLE_DEVICES={cuda_visible}"]
            )
        return [(g, visible[g]) for g in gpus]
    if max(gpus) < nvml_count:
        return [(g, g) for g in gpus]
    if nvml_count == len(gpus):  # renumbered container
        return [(i, i) for i in range(len(gpus))]
    raise PreflightError(
        [f"GPUs {gpus} requested but only {nvml_count} visible"],
        hint="list GPUs that exist on this host (nvidia-smi -L)",
    )
