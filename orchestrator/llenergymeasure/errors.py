"""The error hierarchy (defined once, in :mod:`llenergymeasure_contract.errors`; see there)."""

from llenergymeasure_contract.errors import (
    ConfigError,
    ExperimentError,
    InterruptedStudy,
    LLEMError,
    MeasurementError,
    PreflightError,
    RunnerError,
    StorageError,
    UsageError,
)

__all__ = [
    "ConfigError",
    "ExperimentError",
    "InterruptedStudy",
    "LLEMError",
    "MeasurementError",
    "PreflightError",
    "RunnerError",
    "StorageError",
    "UsageError",
]
