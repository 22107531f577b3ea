"""Analysis of finished studies: statistics, comparison, report and export.

:func:`enrich` completes a :class:`~llenergymeasure.results.study.StudyResult` with carbon and
cost figures and bootstrap confidence intervals (:mod:`.bootstrap`, :mod:`.impact`). The
``llem results`` commands sit on :mod:`.table` (one row per experiment), :mod:`.compare`,
:mod:`.report` (one self-contained HTML file) and :mod:`.export` (Hugging Face dataset
folder, CSV, Parquet, JSON).
"""

from llenergymeasure.analysis.bootstrap import (
    CV_THRESHOLD,
    MIN_CYCLES,
    N_RESAMPLES,
    SEED,
    bootstrap_interval,
    confidence_intervals,
)
from llenergymeasure.analysis.enrich import enrich
from llenergymeasure.analysis.impact import impact_metrics

__all__ = [
    "CV_THRESHOLD",
    "MIN_CYCLES",
    "N_RESAMPLES",
    "SEED",
    "bootstrap_interval",
    "confidence_intervals",
    "enrich",
    "impact_metrics",
]
