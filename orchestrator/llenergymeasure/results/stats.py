"""Across-cycle statistics stored in ``study_result.json``: :class:`ConfidenceIntervals`.

One :class:`ExperimentStats` per experiment (keyed by config hash): for every headline metric
an :class:`Interval` (mean and 95 % bootstrap interval over the completed cycles), and the
cycle-to-cycle coefficient of variation of J/output token, output tok/s and TTFT/TPOT p50
with their flags. Computed by
:func:`llenergymeasure.analysis.bootstrap.confidence_intervals`; the method and its parameters
are stored beside the numbers so a reader never has to guess them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(_Model):
    """Mean and confidence interval of one metric over the cycles of one experiment.

    ``n`` counts the cycles that measured the metric. ``low``/``high`` are ``None`` with a
    ``note`` when they cannot be given: "not measured" (no cycle has a value) or "not enough
    cycles" (fewer than the method's ``min_cycles``); ``mean`` is given whenever ``n >= 1``.
    """

    n: int
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    note: str | None = None

    @property
    def has_interval(self) -> bool:
        """Whether ``low`` and ``high`` are numbers."""
        return self.low is not None and self.high is not None


class ExperimentStats(_Model):
    """The across-cycle statistics of one experiment (one config hash)."""

    config_hash: str
    n_cycles_completed: int
    metrics: dict[str, Interval] = Field(default_factory=dict)
    j_per_output_token_cv: float | None = None  # sample std / mean over cycles; None: not measured
    # metric -> cycle-to-cycle CV (J/output token, output tok/s, TTFT p50, TPOT p50 where measured)
    cycle_cv: dict[str, float] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)  # e.g. "high_cycle_cv", "high_cycle_cv_ttft"


class ConfidenceIntervals(_Model):
    """The bootstrap intervals of a study, with the method's parameters."""

    method: Literal["percentile_bootstrap_of_the_mean"] = "percentile_bootstrap_of_the_mean"
    confidence: float = 0.95
    n_resamples: int
    seed: int
    min_cycles: int
    cv_threshold: float  # j_per_output_token_cv above this is flagged high_cycle_cv
    cv_thresholds: dict[str, float] = Field(default_factory=dict)  # metric -> its CV threshold
    experiments: dict[str, ExperimentStats] = Field(default_factory=dict)
