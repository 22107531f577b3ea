"""llenergymeasure: measure how LLM deployment choices change energy, speed and latency.

The host-side package (the ``llem`` CLI and library). Main entry points: :func:`load_study`
to expand a study file, :class:`ExperimentConfig` for one experiment, and
:class:`ExperimentResult` for what the harness measured. Nothing here imports a GPU library.
"""

import logging

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.errors import (
    ConfigError,
    ExperimentError,
    InterruptedStudy,
    LLEMError,
    MeasurementError,
    PreflightError,
    RunnerError,
    UsageError,
)

__version__ = "2.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "ExperimentError",
    "InterruptedStudy",
    "LLEMError",
    "MeasurementError",
    "PreflightError",
    "RunnerError",
    "UsageError",
    "__version__",
]
