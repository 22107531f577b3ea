"""How many prompts a continuous-batching experiment needs for a valid steady state.

With every request submitted at t=0 and equal lengths, an engine that keeps ``K`` sequences in
flight runs in waves of ``K``: each wave lasts ``output_len`` decode steps. The steady-state
window (``llenergymeasure_harness.backends.steady_state``) opens at the ``K``-th first token
and closes at the ``(N - K - 1)``-th finish, so it spans about ``(N - K - 1) / K`` waves::

    duration_s ≈ (N - K - 1) / K × output_len × step_s = (N - K - 1) × output_len / R

where ``R = K / step_s`` is the output throughput while the batch is full. For a window of at
least ``min_duration_s``::

    N ≥ K + 1 + min_duration_s × R / output_len

The H200 runs of 2026-12-01 bear it out: K=256, 1024 prompts, R=4964 tok/s gives 19.8 s
(measured 18.9 s); K=64, 512 prompts, R=2025 tok/s gives 28.3 s (measured 28.1 s).
Used before a run (the plan, with an estimated ``R``) and after it (the result's
``suggested_n_prompts``, with the measured ``R``).
"""

from __future__ import annotations

import math

#: ML.ENERGY rejects steady states shorter than this (the harness flags them).
MIN_STEADY_STATE_S = 30.0
#: Headroom on a suggestion made from one run's throughput (run-to-run variation).
SUGGESTION_MARGIN = 1.1


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


__all__ = [
    "MIN_STEADY_STATE_S",
    "SUGGESTION_MARGIN",
    "steady_state_duration_s",
    "steady_state_n_prompts",
]
