"""Configuration: :class:`ExperimentConfig` (one run) and :class:`StudyConfig` (a sweep of them).

Load a study file with :func:`load_study`; it expands ``sweep:`` and ``experiments:`` into
validated, de-duplicated experiments and reports every problem with the file and key path.
"""

from llenergymeasure.config.backends import (
    BACKENDS,
    PyTorchConfig,
    TensorRTConfig,
    VLLMConfig,
)
from llenergymeasure.config.experiment import (
    BaselineConfig,
    DecoderConfig,
    EnergyConfig,
    ExperimentConfig,
    HubDataset,
    JsonlDataset,
    SyntheticDataset,
    WarmupConfig,
)
from llenergymeasure.config.traffic import SLOConfig, TrafficConfig

__all__ = [
    "BACKENDS",
    "BaselineConfig",
    "DecoderConfig",
    "EnergyConfig",
    "ExperimentConfig",
    "HubDataset",
    "JsonlDataset",
    "PyTorchConfig",
    "SLOConfig",
    "SyntheticDataset",
    "TensorRTConfig",
    "TrafficConfig",
    "VLLMConfig",
    "WarmupConfig",
]
