"""How many prompts an experiment needs for a valid steady state (at least 30 s).

**Offline continuous batching.** With every request submitted at t=0 and equal lengths, an
engine that keeps ``K`` sequences in flight runs in waves of ``K``: each wave lasts
``output_len`` decode steps. The steady-state window
(``llenergymeasure_harness.backends.steady_state``) opens at the ``K``-th first token and
closes at the ``(N - K - 1)``-th finish, so it spans about ``(N - K - 1) / K`` waves::

    duration_s ≈ (N - K - 1) / K × output_len × step_s = (N - K - 1) × output_len / R

where ``R = K / step_s`` is the output throughput while the batch is full. For a window of at
least ``min_duration_s``::

    N ≥ K + 1 + min_duration_s × R / output_len

The H200 runs of 2026-12-01 bear it out: K=256, 1024 prompts, R=4964 tok/s gives 19.8 s
(measured 18.9 s); K=64, 512 prompts, R=2025 tok/s gives 28.3 s (measured 28.1 s).
Used before a run (the plan, with an estimated ``R``) and after it (the result's
``suggested_n_prompts``, with the measured ``R``).

**Open-loop arrivals** (``traffic.pattern`` constant, poisson or gamma at a mean rate ``r``).
The window (``arrival_steady_state_window``) opens when the first request finishes and closes
at the last arrival. The first request finishes about one request lifetime ``L`` (queueing +
prefill + decode) after the first arrival, and the ``N``-th arrival comes ``(N - 1) / r`` after
the first (exactly for constant arrivals, on average for poisson and gamma), so::

    duration_s ≈ (N - 1) / r - L

and a window of at least ``min_duration_s`` needs::

    N ≥ 1 + r × (min_duration_s + L)        (x margin on the r × (...) term)

The batch size does not enter: arrivals, not the engine, set how many requests are in flight
(about ``r × L``, Little's law). Before a run ``L`` is the roofline's ``output_len`` decode
steps at the full batch; after a run it is the measured lifetime of the first request (its
end minus the first arrival). ``L`` is small next to the 30 s at the rates of interest, and the
margin covers an estimate that is short: ``N`` from ``L_est`` still gives 30 s while the real
``L ≤ (margin - 1) × min_duration_s + margin × L_est`` (3 s + 1.1 ``L_est`` by default). The
window needs at least ``MIN_ARRIVAL_REQUESTS`` requests at all.
"""

from __future__ import annotations

import math

#: ML.ENERGY rejects steady states shorter than this (the harness flags them).
MIN_STEADY_STATE_S = 30.0
#: Headroom on a suggestion made from one run's throughput (run-to-run variation).
SUGGESTION_MARGIN = 1.1
#: An open-loop window needs a first finish, a last arrival and a request between them.
MIN_ARRIVAL_REQUESTS = 3


def steady_state_duration_s(
    n_prompts: int, concurrency: int, output_len: int, tokens_per_s: float
) -> float:
    """Expected steady-state window length (s) at a full-batch throughput ``tokens_per_s``."""
    if tokens_per_s <= 0:
        raise ValueError(f"tokens_per_s must be > 0, got {tokens_per_s}")
    return max(0, n_prompts - concurrency - 1) * output_len / tokens_per_s


def steady_state_n_prompts(
    concurrency: int,
    output_len: int,
    tokens_per_s: float,
    *,
    min_duration_s: float = MIN_STEADY_STATE_S,
    margin: float = SUGGESTION_MARGIN,
) -> int:
    """Fewest prompts for a window of ``min_duration_s`` at ``tokens_per_s``, with ``margin``.

    Rounded up to whole batches of ``concurrency`` so every wave is full.
    """
    if tokens_per_s <= 0 or output_len < 1 or concurrency < 1:
        raise ValueError("concurrency, output_len and tokens_per_s must be positive")
    need = concurrency + 1 + margin * min_duration_s * tokens_per_s / output_len
    return int(math.ceil(need / concurrency) * concurrency)


def _check_arrivals(rate_per_s: float, lifetime_s: float) -> None:
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    if not lifetime_s >= 0:
        raise ValueError(f"lifetime_s must be >= 0, got {lifetime_s}")


def arrival_steady_state_duration_s(n_prompts: int, rate_per_s: float, lifetime_s: float) -> float:
    """Expected open-loop window length (s): ``(n_prompts - 1) / rate_per_s - lifetime_s``.

    0 when the lifetime outlasts the arrivals or there are fewer than ``MIN_ARRIVAL_REQUESTS``
    requests (no window at all).
    """
    _check_arrivals(rate_per_s, lifetime_s)
    if n_prompts < MIN_ARRIVAL_REQUESTS:
        return 0.0
    return max(0.0, (n_prompts - 1) / rate_per_s - lifetime_s)


def arrival_steady_state_n_prompts(
    rate_per_s: float,
    lifetime_s: float,
    *,
    min_duration_s: float = MIN_STEADY_STATE_S,
    margin: float = SUGGESTION_MARGIN,
) -> int:
    """Fewest prompts for an open-loop window of ``min_duration_s``, with ``margin``.

    ``1 + margin × rate_per_s × (min_duration_s + lifetime_s)``, rounded up, at least
    ``MIN_ARRIVAL_REQUESTS``.
    """
    _check_arrivals(rate_per_s, lifetime_s)
    need = 1 + margin * rate_per_s * (min_duration_s + lifetime_s)
    # round first: 1.1 x 48 x 30 is 1584.0000000000002 in floating point, not a 1586th request
    return max(MIN_ARRIVAL_REQUESTS, math.ceil(round(need, 9)))


__all__ = [
    "MIN_ARRIVAL_REQUESTS",
    "MIN_STEADY_STATE_S",
    "SUGGESTION_MARGIN",
    "arrival_steady_state_duration_s",
    "arrival_steady_state_n_prompts",
    "steady_state_duration_s",
    "steady_state_n_prompts",
]
