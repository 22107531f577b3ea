"""Energy measurement: :class:`NvmlEnergyMeter` windows on the NVML counter, the
:class:`TimeseriesSampler` thread, idle :mod:`baseline` with its cache, and optional Zeus and
CodeCarbon windows. NVML is imported only in :mod:`.nvml`.
"""

from llenergymeasure_harness.energy.baseline import BaselineCache, measure_idle_power
from llenergymeasure_harness.energy.meter import NvmlEnergyMeter, WindowResult
from llenergymeasure_harness.energy.nvml import GpuSample, Nvml, RealNvml, map_gpus, open_nvml
from llenergymeasure_harness.energy.sampler import (
    NullSampler,
    TimeseriesSampler,
    integrate_power,
)
from llenergymeasure_harness.energy.select import make_sampler, resolve_sampler_kind

__all__ = [
    "BaselineCache",
    "GpuSample",
    "NullSampler",
    "Nvml",
    "NvmlEnergyMeter",
    "RealNvml",
    "TimeseriesSampler",
    "WindowResult",
    "integrate_power",
    "make_sampler",
    "map_gpus",
    "measure_idle_power",
    "open_nvml",
    "resolve_sampler_kind",
]
