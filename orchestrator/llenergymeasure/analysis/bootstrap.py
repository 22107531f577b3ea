"""Bootstrap confidence intervals across cycles, and the cycle-to-cycle variation flag.

Method (stored with the numbers in ``study_result.json``)::

    cycles of one experiment:  x_1 … x_n        (completed runs that measured the metric)
    resample:                  draw n of them with replacement, B = 10,000 times
                               (numpy PCG64, seed 0: the same study gives the same interval)
    statistic:                 the mean of each resample
    95 % interval:             the 2.5th and 97.5th percentiles of the B means

It is the percentile bootstrap of the mean. With n = 3 the 27 equally likely resamples put
the interval at the smallest and largest cycle (each extreme has probability 1/27 > 2.5 %): a
wide, honest interval rather than a normal-theory one that assumes what three points cannot
show. Below ``MIN_CYCLES`` = 3 no interval is given ("not enough cycles"); with one cycle
there is nothing to resample, and two cycles give only three distinct resample means.

The cycle-to-cycle coefficient of variation of J/output token (sample standard deviation over
the mean) is flagged ``high_cycle_cv`` above ``CV_THRESHOLD`` = 3 %. On a settled GPU the
method repeats to well under 1 % (H200, vLLM batch 256: 0.5 % over 3 cycles); 3 % is larger
than the NVML counter's resolution can explain over a measured window of ≥ 1 s, and about the
size of the differences a batch-size sweep tries to resolve, so above it the cycles disagree by
as much as the configurations do (H200, batch 64: 4.8 %, flagged).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from llenergymeasure.results.stats import ConfidenceIntervals, ExperimentStats, Interval
from llenergymeasure.results.study import RunSummary

#: Bootstrap resamples per interval.
N_RESAMPLES = 10_000
#: Seed of the resampling (numpy ``default_rng``), so intervals are reproducible.
SEED = 0
#: Fewer completed cycles than this: "not enough cycles" instead of an interval.
MIN_CYCLES = 3
#: Confidence level of the intervals.
CONFIDENCE = 0.95
#: Cycle-to-cycle CV of J/output token above which an experiment is flagged ``high_cycle_cv``.
CV_THRESHOLD = 0.03
HIGH_CV_FLAG = "high_cycle_cv"
NOT_ENOUGH_CYCLES = "not enough cycles"
NOT_MEASURED = "not measured"

#: The metrics given an interval: every headline figure of a run (``RunMetrics`` fields).
HEADLINE_METRICS: tuple[str, ...] = (
    "j_per_output_token",
    "net_j_per_output_token",
    "j_per_request",
    "net_j_per_request",
    "gpu_energy_j",
    "net_gpu_energy_j",
    "avg_power_w",
    "output_tokens_per_s",
    "requests_per_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "e2e_p50_s",
    "slo_attainment",
    "goodput_requests_per_s",
    "j_per_slo_request",
    "steady_j_per_output_token",
    "steady_window_s",
    "mlenergy_j_per_output_token",
    "mlenergy_window_s",
    "avg_running_batch",
    "gco2e_per_1k_output_tokens",
    "net_gco2e_per_1k_output_tokens",
    "gco2e_per_request",
    "net_gco2e_per_request",
    "cost_per_1k_output_tokens",
    "net_cost_per_1k_output_tokens",
    "cost_per_request",
    "net_cost_per_request",
)


@lru_cache(maxsize=64)
def _resample_indices(n: int, n_resamples: int, seed: int) -> Any:
    """The (n_resamples, n) index matrix; shared by every metric with n values (paired)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    idx.setflags(write=False)
    return idx


def bootstrap_interval(
    values: Sequence[float],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    min_cycles: int = MIN_CYCLES,
) -> Interval:
    """Mean and percentile-bootstrap interval of ``values`` (see the module docstring)."""
    import numpy as np

    n = len(values)
    if n == 0:
        return Interval(n=0, note=NOT_MEASURED)
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if n < min_cycles:
        return Interval(n=n, mean=mean, note=f"{NOT_ENOUGH_CYCLES} ({n} < {min_cycles})")
    means = x[_resample_indices(n, n_resamples, seed)].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(n=n, mean=mean, low=float(low), high=float(high))


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample standard deviation over the mean; None with fewer than 2 values or mean 0."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean == 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return float(var**0.5 / abs(mean))


def experiment_stats(config_hash: str, runs: Iterable[RunSummary]) -> ExperimentStats:
    """Statistics of one experiment over its completed runs (one per cycle)."""
    done = [r for r in runs if r.state == "completed" and r.metrics is not None]
    metrics: dict[str, Interval] = {}
    for name in HEADLINE_METRICS:
        values = [v for r in done if (v := getattr(r.metrics, name)) is not None]
        metrics[name] = bootstrap_interval(values)
    jpt = [r.metrics.j_per_output_token for r in done if r.metrics is not None]
    measured = [v for v in jpt if v is not None]
    # every completed cycle must have measured it, or the CV would compare unlike subsets
    cv = coefficient_of_variation(measured) if len(measured) == len(jpt) else None
    flags = [HIGH_CV_FLAG] if cv is not None and cv > CV_THRESHOLD else []
    return ExperimentStats(
        config_hash=config_hash,
        n_cycles_completed=len(done),
        metrics=metrics,
        j_per_output_token_cv=cv,
        flags=flags,
    )


def confidence_intervals(runs: Sequence[RunSummary]) -> ConfidenceIntervals:
    """Every experiment's statistics, in the order experiments first appear in ``runs``."""
    by_hash: dict[str, list[RunSummary]] = {}
    for run in runs:
        by_hash.setdefault(run.config_hash, []).append(run)
    return ConfidenceIntervals(
        confidence=CONFIDENCE,
        n_resamples=N_RESAMPLES,
        seed=SEED,
        min_cycles=MIN_CYCLES,
        cv_threshold=CV_THRESHOLD,
        experiments={h: experiment_stats(h, rs) for h, rs in by_hash.items()},
    )
