"""Drawing request lengths, and summarising the lengths a run asked for and got.

The specs are :mod:`llenergymeasure_contract.lengths` (an integer or a distribution). Draws use
a NumPy ``Generator`` seeded from the experiment's ``random_seed`` and the length's role, so
input and output lengths are independent streams: changing the output distribution leaves the
input lengths as they were, and the same config gives the same lengths on every backend (the
request list is built before any backend is chosen, :mod:`llenergymeasure_harness.prompts`).

Every draw is rounded to an integer, then clipped to ``[min, min(max, cap)]`` (clipped, not
redrawn: mass past the cap piles up at it, as an engine's ``max_tokens`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llenergymeasure_contract.experiment import ExperimentConfig, SyntheticDataset
from llenergymeasure_contract.lengths import (
    Distribution,
    EmpiricalLengths,
    ExponentialLengths,
    LengthHistogram,
    LengthStats,
    LognormalLengths,
    NormalLengths,
    ParetoLengths,
    UniformLengths,
    WorkloadOutcome,
    describe,
)

#: Stream ids mixed into the seed: one independent stream per length role.
STREAMS = {"input_len": 0x1E4_0001, "output_len": 0x1E4_0002}


def length_rng(seed: int, role: str) -> np.random.Generator:
    """The generator for ``role`` (``input_len`` / ``output_len``) of an experiment seed."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, STREAMS[role]]))


def _raw(spec: Distribution, n: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    if isinstance(spec, UniformLengths):
        return rng.integers(spec.min, spec.max, size=n, endpoint=True).astype(float)
    if isinstance(spec, NormalLengths):
        return rng.normal(spec.mean, spec.stddev, size=n)
    if isinstance(spec, LognormalLengths):
        mu, sigma = spec.mu_sigma()
        return rng.lognormal(mu, sigma, size=n)
    if isinstance(spec, ParetoLengths):
        # numpy's pareto is Lomax (type II); 1 + it, times x_m, is type I with scale x_m.
        return (rng.pareto(spec.shape, size=n) + 1.0) * spec.scale
    if isinstance(spec, ExponentialLengths):
        return rng.exponential(spec.mean, size=n)
    assert isinstance(spec, EmpiricalLengths)
    p = np.asarray(spec.weights(), dtype=float)
    idx = rng.choice(len(p), size=n, p=p / p.sum())
    if spec.values is not None:
        return np.asarray(spec.values, dtype=float)[idx]
    edges = np.asarray(spec.bins, dtype=float)
    spread: np.ndarray[Any, Any] = edges[idx] + rng.random(n) * (edges[idx + 1] - edges[idx])
    return spread


def sample_lengths(
    spec: int | Distribution, n: int, rng: np.random.Generator, cap: int
) -> list[int]:
    """``n`` lengths from ``spec``, rounded and clipped to ``[min, min(max, cap)]``."""
    if isinstance(spec, int):
        return [min(spec, cap)] * n
    high = min(spec.max, cap) if spec.max is not None else cap
    low = min(spec.min, high)
    drawn = np.clip(np.rint(_raw(spec, n, rng)), low, high)
    return [int(v) for v in drawn]


def request_lengths(config: ExperimentConfig, role: str) -> list[int]:
    """Every request's ``input_len`` or ``output_len`` for a synthetic dataset."""
    cap = config.max_input_tokens if role == "input_len" else config.max_output_tokens
    ds = config.dataset
    spec = getattr(ds, role) if isinstance(ds, SyntheticDataset) else None
    if spec is None:
        return [cap] * config.n_prompts
    return sample_lengths(spec, config.n_prompts, length_rng(config.random_seed, role), cap)


def length_stats(values: Sequence[int]) -> LengthStats:
    """Count, mean, median, p90, p99, min and max of ``values``."""
    if not values:
        return LengthStats(count=0)
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = (float(q) for q in np.percentile(a, [50, 90, 99]))
    return LengthStats(
        count=len(a),
        mean=float(a.mean()),
        p50=p50,
        p90=p90,
        p99=p99,
        min=float(a.min()),
        max=float(a.max()),
    )


def histogram(values: Sequence[int], n_bins: int = 40) -> LengthHistogram | None:
    """Counts of ``values`` in up to ``n_bins`` equal bins (None when there are none)."""
    if not values:
        return None
    low, high = min(values), max(values)
    if low == high:
        return LengthHistogram(edges=[low - 0.5, high + 0.5], counts=[len(values)])
    counts, edges = np.histogram(np.asarray(values), bins=min(n_bins, high - low + 1))
    return LengthHistogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def workload_outcome(
    config: ExperimentConfig,
    requested: Sequence[int],
    records: Sequence[Any],
    static_batch: dict[str, Any] | None = None,
) -> WorkloadOutcome:
    """The result's ``workload`` block.

    Args:
        config: The experiment.
        requested: Each measured request's ``max_new_tokens``.
        records: The measured run's :class:`~.backends.base.RequestRecord` objects.
        static_batch: A static-batching backend's slot accounting (``tokens_generated``:
            rows x decode steps, ``tokens_requested``), or None.
    """
    ds = config.dataset
    inputs = [int(r.input_tokens) for r in records]
    outputs = [int(r.output_tokens) for r in records]
    waste: dict[str, Any] = {}
    if static_batch:
        generated = int(static_batch["tokens_generated"])
        waste = {
            "static_batch_tokens_generated": generated,
            "static_batch_tokens_requested": int(static_batch["tokens_requested"]),
            "static_batch_waste_fraction": (
                1.0 - sum(outputs) / generated if generated > 0 else None
            ),
        }
    return WorkloadOutcome(
        profile=ds.profile if isinstance(ds, SyntheticDataset) else None,
        provenance=ds.provenance if isinstance(ds, SyntheticDataset) else None,
        input_len=(
            describe(ds.input_len, config.max_input_tokens)
            if isinstance(ds, SyntheticDataset)
            else f"{ds.source} (up to {config.max_input_tokens})"
        ),
        output_len=describe(
            ds.output_len if isinstance(ds, SyntheticDataset) else None, config.max_output_tokens
        ),
        input_tokens=length_stats(inputs),
        output_tokens_requested=length_stats(list(requested)),
        output_tokens_generated=length_stats(outputs),
        input_histogram=histogram(inputs),
        output_requested_histogram=histogram(list(requested)),
        output_generated_histogram=histogram(outputs),
        **waste,
    )
