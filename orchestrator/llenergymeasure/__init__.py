"""llenergymeasure: measure how LLM deployment choices change energy, speed and latency.

The host-side package (the ``llem`` CLI and library). Main entry points: :func:`load_study`
expands a study file into a :class:`StudyConfig`; :func:`build_plan` orders its runs into a
:class:`StudyPlan`; :func:`run_study` (or :func:`resume`) executes it, one container per run,
and returns a :class:`StudyResult` of :class:`ExperimentResult` files; :func:`run_experiment`
measures one experiment and returns its :class:`ExperimentResult`. Nothing here imports a
GPU library.
"""

import logging

from llenergymeasure._version import __version__  # first: submodules import it
from llenergymeasure.config import ExperimentConfig
from llenergymeasure.config.loader import expand_study, load_study
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.errors import (
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
from llenergymeasure.results import ExperimentResult, StudyResult
from llenergymeasure.study import (
    StudyPlan,
    StudyRunOptions,
    build_plan,
    resume,
    run_experiment,
    run_study,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentResult",
    "InterruptedStudy",
    "LLEMError",
    "MeasurementError",
    "PreflightError",
    "RunnerError",
    "StorageError",
    "StudyConfig",
    "StudyPlan",
    "StudyResult",
    "StudyRunOptions",
    "UsageError",
    "__version__",
    "build_plan",
    "expand_study",
    "load_study",
    "resume",
    "run_experiment",
    "run_study",
]
