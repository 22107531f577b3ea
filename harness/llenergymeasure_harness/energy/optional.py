"""Optional second opinions on energy: Zeus (``ZeusMonitor`` windows) and CodeCarbon.

Each is imported lazily and only when chosen. They run *beside* the NVML counter window, so a
result holds both figures (``zeus_gpu_energy_j``, ``codecarbon_energy_j``) and they can be
compared; the headline energy always comes from the NVML counter when it is available.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

logger = logging.getLogger(__name__)


def zeus_available() -> bool:
    return importlib.util.find_spec("zeus") is not None


def codecarbon_available() -> bool:
    return importlib.util.find_spec("codecarbon") is not None


class ZeusWindow:
    """A ``ZeusMonitor`` window over the given CUDA-visible GPU indices."""

    name = "zeus"

    def __init__(self, cuda_indices: list[int]) -> None:
        from zeus.monitor import ZeusMonitor

        # sync_execution=False: the harness synchronises the device itself at window edges.
        self._monitor: Any = ZeusMonitor(gpu_indices=list(cuda_indices), approx_instant_energy=True)
        self._indices = list(cuda_indices)

    def begin(self, name: str) -> None:
        self._monitor.begin_window(name, sync_execution=False)

    def end(self, name: str) -> dict[str, Any]:
        m = self._monitor.end_window(name, sync_execution=False)
        per_gpu = {int(k): float(v) for k, v in m.gpu_energy.items()}
        return {
            "gpu_energy_j": float(sum(per_gpu.values())) if per_gpu else None,
            "per_gpu_j": per_gpu,
            "duration_s": float(m.time),
        }


class CodeCarbonWindow:
    """CodeCarbon's offline tracker over one window; GPU energy in joules."""

    name = "codecarbon"

    def __init__(self, cuda_indices: list[int]) -> None:
        from codecarbon import OfflineEmissionsTracker

        self._tracker: Any = OfflineEmissionsTracker(
            country_iso_code="USA",
            gpu_ids=list(cuda_indices),
            save_to_file=False,
            log_level="error",
            measure_power_secs=1,
        )

    def begin(self, name: str) -> None:
        self._tracker.start()

    def end(self, name: str) -> dict[str, Any]:
        self._tracker.stop()
        data = getattr(self._tracker, "final_emissions_data", None)
        kwh = getattr(data, "gpu_energy", None)
        total = getattr(data, "energy_consumed", None)
        return {
            "gpu_energy_j": None if kwh is None else float(kwh) * 3.6e6,
            "total_energy_j": None if total is None else float(total) * 3.6e6,
        }


def open_extra(kind: str, cuda_indices: list[int]) -> ZeusWindow | CodeCarbonWindow | None:
    """The optional source for ``energy.sampler`` (zeus|codecarbon), or None with a warning."""
    try:
        if kind == "zeus":
            return ZeusWindow(cuda_indices)
        if kind == "codecarbon":
            return CodeCarbonWindow(cuda_indices)
    except Exception as exc:  # optional: a broken install must not fail the run
        logger.warning("energy sampler %s unavailable (%s); NVML counter only", kind, exc)
    return None
