"""Analysis of finished studies: statistics, comparison, report and export.

:func:`enrich` completes a :class:`~llenergymeasure.results.study.StudyResult` with carbon and
cost figures and bootstrap confidence intervals (:mod:`.bootstrap`, :mod:`.impact`). The
``llem results`` commands sit on :mod:`.table` (one row per experiment), :mod:`.compare`,
:mod:`.report` (one self-contained HTML file) and :mod:`.export` (Hugging Face dataset
folder, CSV, Parquet, JSON). Library use: :func:`load_study_dir`, :func:`compare`,
:func:`write_report` and :func:`export_study_dir`, as the commands call them.
"""

from llenergymeasure.analysis.bootstrap import (
    CV_THRESHOLD,
    MIN_CYCLES,
    N_RESAMPLES,
    SEED,
    bootstrap_interval,
    confidence_intervals,
)
from llenergymeasure.analysis.compare import compare
from llenergymeasure.analysis.enrich import enrich
from llenergymeasure.analysis.export import export_study_dir
from llenergymeasure.analysis.impact import impact_metrics
from llenergymeasure.analysis.report import write_report
from llenergymeasure.analysis.table import load_study_dir

__all__ = [
    "CV_THRESHOLD",
    "MIN_CYCLES",
    "N_RESAMPLES",
    "SEED",
    "bootstrap_interval",
    "compare",
    "confidence_intervals",
    "enrich",
    "export_study_dir",
    "impact_metrics",
    "load_study_dir",
    "write_report",
]
