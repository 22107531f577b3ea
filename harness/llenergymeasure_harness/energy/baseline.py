"""Idle power baseline, measured in a defined GPU state, and a TTL cache shared by a study.

The state matters: on an H100 idle draw was 73 W with no CUDA context and 122 W with the model
loaded and a context open (docs/methodology.md). The harness measures the baseline after the
model is loaded and before warmup, and records that state as ``"cuda_context_model_loaded"``::

    load ─► [ idle: counter window for duration_s ] ─► warmup ─► measure
                     baseline power = ΔmJ / Δt

Idle-adjusted (net) energy = gross − baseline power × measured duration. Both are reported.

The cache (``LLEM_BASELINE_CACHE``, a JSON file) is keyed by the GPU UUIDs, the state and the
loaded workload (model, revision, backend, precision, quantization), so a study reuses one
measurement across containers of the same workload (e.g. a batch-size sweep) for
``baseline.cache_ttl_s`` seconds, and never one model's loaded-idle power for another.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure_contract.results import write_json_atomic
from llenergymeasure_contract.timestamps import utc_iso
from llenergymeasure_harness.energy.meter import NvmlEnergyMeter

if TYPE_CHECKING:
    from llenergymeasure_contract.experiment import ExperimentConfig

logger = logging.getLogger(__name__)

STATE_MODEL_LOADED = "cuda_context_model_loaded"


def measure_idle_power(
    meter: NvmlEnergyMeter,
    duration_s: float,
    *,
    state: str = STATE_MODEL_LOADED,
    sleep: Callable[[float], None] = time.sleep,
    sync: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Mean idle power per GPU from a counter window of ``duration_s`` (the GPUs doing nothing).

    Returns the fields of ``BaselineMeasurement`` (source "measured"). A GPU without a readable
    counter falls back to the mean of instant-power readings taken every 100 ms.
    """
    polled: dict[int, list[float]] = {lab: [] for lab in meter.labels}
    meter.begin_window("baseline", sync)
    t_end = meter.clock() + duration_s
    while True:
        for lab, i in zip(meter.labels, meter.indices, strict=True):
            p = meter.nvml.power_w(i)
            if p is not None:
                polled[lab].append(p)
        remaining = t_end - meter.clock()
        if remaining <= 0:
            break
        sleep(min(0.1, remaining))
    w = meter.end_window("baseline")
    per_gpu: dict[str, float] = {}
    for lab in meter.labels:
        e = w.energy_j_per_gpu.get(lab)
        if e is not None and w.duration_s > 0:
            per_gpu[str(lab)] = e / w.duration_s
        elif polled[lab]:
            per_gpu[str(lab)] = sum(polled[lab]) / len(polled[lab])
    return {
        "state": state,
        "source": "measured",
        "duration_s": w.duration_s,
        "power_w_per_gpu": per_gpu,
        "total_power_w": float(sum(per_gpu.values())),
        "measured_at": utc_iso(),
    }


class BaselineCache:
    """A JSON file of baselines keyed by GPU UUIDs + state, each valid for ``ttl_s`` seconds.

    A missing, unreadable or corrupt file is treated as empty (the baseline is re-measured);
    writes are atomic (temp file + rename), last writer wins.
    """

    VERSION = 2  # 2: keys name the workload (model, backend, precision, quantization)

    def __init__(
        self, path: str | Path, ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.clock = clock

    @staticmethod
    def key(
        uuids: list[str | None], state: str, workload: Mapping[str, object] | None = None
    ) -> str:
        """The cache key: the GPU set, the GPU state, and what is loaded in that state.

        Idle power with a model loaded depends on the model and how it is held in memory, so
        ``workload`` (model, revision, backend, precision, quantization) is part of the key:
        one model's loaded-idle power is never reused for another.
        """
        gpus = ",".join(sorted(str(u) for u in uuids))
        if not workload:
            return f"{gpus}|{state}"
        what = json.dumps(dict(workload), sort_keys=True, separators=(",", ":"), default=str)
        return f"{gpus}|{state}|{what}"

    @staticmethod
    def workload_of(config: ExperimentConfig) -> dict[str, object]:
        """The parts of an experiment that change idle power once its model is loaded."""
        return {
            "model": config.model,
            "revision": config.revision,
            "backend": str(config.backend),
            "precision": str(config.precision),
            "quantization": getattr(config.backend_section, "quantization", None),
        }

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            logger.warning("baseline cache %s unreadable (%s); ignoring it", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != self.VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached measurement for ``key`` if younger than the TTL, else None."""
        if self.ttl_s <= 0:
            return None
        entry = self._load().get(key)
        if not isinstance(entry, dict):
            return None
        age = self.clock() - float(entry.get("measured_at_epoch", float("-inf")))
        if age < 0 or age > self.ttl_s:
            return None
        measurement = entry.get("measurement")
        return dict(measurement) if isinstance(measurement, dict) else None

    def put(self, key: str, measurement: dict[str, Any]) -> None:
        """Store a measurement (source is stored as "measured"; readers mark it "cache")."""
        entries = self._load()
        now = self.clock()
        # Drop expired entries so the file does not grow without bound.
        entries = {
            k: v
            for k, v in entries.items()
            if isinstance(v, dict) and now - float(v.get("measured_at_epoch", 0)) <= self.ttl_s
        }
        entries[key] = {"measured_at_epoch": now, "measurement": measurement}
        payload = json.dumps({"version": self.VERSION, "entries": entries}, indent=1)
        try:
            write_json_atomic(self.path, payload)
            os.chmod(self.path, 0o666)  # shared by containers running as other users
        except OSError as exc:
            logger.warning("could not write baseline cache %s: %s", self.path, exc)
