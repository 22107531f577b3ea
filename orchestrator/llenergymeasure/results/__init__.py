"""Results: :class:`ExperimentResult` (one run, written by the harness) and study aggregates."""

from llenergymeasure.results.study import RunMetrics, RunSummary, StudyResult
from llenergymeasure_contract.results import (
    SCHEMA_VERSION,
    ExperimentResult,
    HarnessErrorRecord,
    QualityFlag,
    write_json_atomic,
)

__all__ = [
    "SCHEMA_VERSION",
    "ExperimentResult",
    "HarnessErrorRecord",
    "QualityFlag",
    "RunMetrics",
    "RunSummary",
    "StudyResult",
    "write_json_atomic",
]
