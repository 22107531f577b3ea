"""Warmup: run batches of the measured shape until the engine is warm. Never measured.

Modes (``config.warmup``):

* ``fixed`` (default): ``n_batches`` steps.
* ``convergence``: steps until the coefficient of variation (std/mean) of the last ``window``
  step latencies is below ``cv_threshold``, at most ``max_batches``.
* ``min_duration_s`` (either mode, a thermal floor): keep stepping until at least this long has
  passed, so the measured window starts at a settled temperature.

An un-warmed first batch-64 window ran 3.3x slower on the H100 (docs/methodology.md), which is why
every step uses exactly the requests (and so the shapes) of one measured batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from llenergymeasure_contract.experiment import WarmupConfig


def coefficient_of_variation(values: list[float]) -> float | None:
    """std/mean (population std), None for fewer than two values or a zero mean."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if mean == 0:
        return None
    return statistics.pstdev(values) / mean


def run_warmup(
    cfg: WarmupConfig,
    step: Callable[[], Any],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Run warmup steps; return the fields of ``WarmupOutcome``.

    Args:
        cfg: The warmup section of the config.
        step: Runs one batch of the measured shape (blocking, device synchronised).
        clock: Time source in seconds.
    """
    latencies: list[float] = []
    start = clock()
    converged: bool | None = None
    final_cv: float | None = None
    # The thermal floor is bounded too: a step that never ends is the backend's problem, but a
    # floor must not loop forever if the clock does not move (fake clocks in tests).
    floor_cap = 100_000

    def elapsed() -> float:
        return clock() - start

    def one() -> None:
        t0 = clock()
        step()
        latencies.append(clock() - t0)

    if cfg.mode == "fixed":
        while len(latencies) < cfg.n_batches or (
            elapsed() < cfg.min_duration_s and len(latencies) < floor_cap
        ):
            one()
    else:
        converged = False
        while len(latencies) < cfg.max_batches:
            one()
            if len(latencies) >= cfg.window:
                final_cv = coefficient_of_variation(latencies[-cfg.window :])
                if final_cv is not None and final_cv < cfg.cv_threshold:
                    converged = True
            if converged and elapsed() >= cfg.min_duration_s:
                break
        while elapsed() < cfg.min_duration_s and len(latencies) < floor_cap:
            one()
    return {
        "mode": cfg.mode,
        "n_batches": len(latencies),
        "duration_s": elapsed(),
        "converged": converged,
        "final_cv": final_cv,
        "step_latencies_s": latencies,
    }
