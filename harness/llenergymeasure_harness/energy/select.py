"""Choosing the sampler for ``energy.sampler`` (auto|nvml|zeus|codecarbon|null)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from llenergymeasure_harness.energy.nvml import Nvml
from llenergymeasure_harness.energy.optional import codecarbon_available, zeus_available
from llenergymeasure_harness.energy.sampler import NullSampler, TimeseriesSampler

logger = logging.getLogger(__name__)


def resolve_sampler_kind(requested: str, nvml: Nvml | None) -> str:
    """What ``requested`` means here.

    ``auto`` is ``nvml`` when NVML sees a GPU (the counter is the most direct source and needs
    nothing else), otherwise ``null``. ``zeus``/``codecarbon`` need NVML for the time series
    too and fall back to ``nvml`` (with a warning) when their package is missing.
    """
    if nvml is None:
        if requested not in ("auto", "null"):
            logger.warning("energy.sampler=%s but no NVML/GPU: energy is not measured", requested)
        return "null"
    if requested == "auto":
        return "nvml"
    if requested == "zeus" and not zeus_available():
        logger.warning("energy.sampler=zeus but zeus is not installed; using nvml")
        return "nvml"
    if requested == "codecarbon" and not codecarbon_available():
        logger.warning("energy.sampler=codecarbon but codecarbon is not installed; using nvml")
        return "nvml"
    return requested


def make_sampler(
    kind: str,
    *,
    nvml: Nvml | None,
    gpus: list[int],
    labels: list[int] | None = None,
    rate_hz: float = 10.0,
    counter_rate_hz: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> TimeseriesSampler | NullSampler:
    """The time-series sampler for a resolved kind (null when there is no NVML)."""
    if kind == "null" or nvml is None:
        return NullSampler()
    return TimeseriesSampler(
        nvml, gpus, labels, rate_hz=rate_hz, counter_rate_hz=counter_rate_hz, clock=clock
    )
