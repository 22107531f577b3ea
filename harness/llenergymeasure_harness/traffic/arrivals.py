"""Arrival schedules: when each measured request is due, drawn once from ``traffic.seed``.

:func:`arrival_offsets` turns a :class:`~llenergymeasure.config.TrafficConfig` into one offset
per request (seconds after the start of the measured window, non-decreasing, the first at 0)::

    window start                                                       offsets (seconds)
    │
    ●──────●───●─────────────●──●───────●                              poisson: gaps ~ Exp(rate)
    0     0.31 0.42         1.20 1.27   1.71
    ●────●────●────●────●────●                                         constant: gaps = 1/rate

The draw uses :class:`random.Random` seeded with ``traffic.seed`` alone, so the same seed gives
the same schedule on every backend, host and Python version (Mersenne Twister and its
``expovariate``/``gammavariate`` are stable across CPython releases). ``offline`` and
``closed_loop`` have no schedule (``None``): offline submits everything at once, and a closed
loop's next arrival is the previous request's end.

Offsets start at 0 so the first request arrives as the window opens; the window closes when
the last request ends. The harness stores ``arrival_s`` (the absolute time on its
``perf_counter`` clock) per request in ``requests.parquet``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from llenergymeasure.config import TrafficConfig


def arrival_offsets(traffic: TrafficConfig, n: int) -> list[float] | None:
    """Arrival offsets (seconds from the window start) of ``n`` requests, or None.

    Args:
        traffic: The experiment's traffic section.
        n: Number of requests.

    Returns:
        ``n`` non-decreasing offsets, the first 0.0, for constant/poisson/gamma; None for
        offline and closed_loop (no precomputed schedule).
    """
    if traffic.pattern in ("offline", "closed_loop") or n <= 0:
        return None
    rate = traffic.rate_per_s
    assert rate is not None  # the config validator requires it for these patterns
    mean_gap = 1.0 / rate
    if traffic.pattern == "constant":
        return [i * mean_gap for i in range(n)]
    rng = random.Random(traffic.seed)
    offsets = [0.0]
    t = 0.0
    shape = traffic.burstiness
    for _ in range(n - 1):
        if traffic.pattern == "poisson":
            gap = rng.expovariate(rate)
        else:  # gamma with mean 1/rate: scale = mean / shape
            gap = rng.gammavariate(shape, mean_gap / shape)
        t += gap
        offsets.append(t)
    return offsets


def inter_arrival_gaps(offsets: Sequence[float]) -> list[float]:
    """Gaps between consecutive arrivals (``len(offsets) - 1`` values)."""
    return [b - a for a, b in itertools.pairwise(offsets)]


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample standard deviation over mean (None for fewer than two values or a zero mean)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean == 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return float(var**0.5 / mean)


__all__ = ["arrival_offsets", "coefficient_of_variation", "inter_arrival_gaps"]
