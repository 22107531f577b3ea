"""Results: :class:`ExperimentResult` (one run, written by the harness) and study aggregates."""

from llenergymeasure.results.schema import (
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
    "write_json_atomic",
]
