"""llenergymeasure_contract: what the host orchestrator and the measurement harness share.

The main classes are :class:`ExperimentConfig` (what one run measures, the harness's input),
:class:`ExperimentResult` (``result.json``, its output), :class:`HarnessEnv` (the environment
and directory contract between them) and :class:`BackendSpec` (one per backend, in
:data:`REGISTRY`). Both sides depend on this package and never on each other; its only
dependency is pydantic. Modules:

    experiment    ExperimentConfig and its sections (datasets, decoder, warmup, energy)
    chat          conversations in the OpenAI chat format (format: chat datasets)
    windows       steady-state window problems, both rules' thresholds, ML.ENERGY's figures
    sections      the per-backend sections (pytorch:, vllm:, tensorrt:)
    registry      BackendSpec and the backend registry
    results       ExperimentResult, HarnessErrorRecord, atomic JSON writes
    env           HarnessEnv, the LLEM_* variable names, the contract version check
    files         file names of a results directory, harness exit codes
    architecture  built-in model architectures (dummy weights, FLOPs)
    errors        the one error hierarchy (LLEMError and its subclasses)
    reuse         engine_key, EngineGroup: experiments sharing one loaded engine
    time_budget   where a run's wall time went (load, warmup, measure, ...)
"""

from llenergymeasure_contract._version import CONTRACT_VERSION, __version__
from llenergymeasure_contract.env import HarnessEnv, check_contract_version
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
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.files import (
    ERROR_FILE,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    REQUESTS_FILE,
    RESULT_FILE,
    TIMESERIES_FILE,
)
from llenergymeasure_contract.registry import (
    REGISTRY,
    BackendSpec,
    ContainerDefaults,
    get_backend_spec,
)
from llenergymeasure_contract.results import ExperimentResult, HarnessErrorRecord

__all__ = [
    "CONTRACT_VERSION",
    "ERROR_FILE",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "REGISTRY",
    "REQUESTS_FILE",
    "RESULT_FILE",
    "TIMESERIES_FILE",
    "BackendSpec",
    "ConfigError",
    "ContainerDefaults",
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentResult",
    "HarnessEnv",
    "HarnessErrorRecord",
    "InterruptedStudy",
    "LLEMError",
    "MeasurementError",
    "PreflightError",
    "RunnerError",
    "StorageError",
    "UsageError",
    "__version__",
    "check_contract_version",
    "get_backend_spec",
]
