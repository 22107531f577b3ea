"""Configuration: :class:`ExperimentConfig` (one run) and :class:`StudyConfig` (a sweep of them).

Load a study file with :func:`load_study`; it expands ``sweep:`` and ``experiments:`` into
validated, de-duplicated experiments and reports every problem with the file and key path.

The classes are defined once, in the contract package (:mod:`llenergymeasure_contract`), and
re-exported here.
"""

from llenergymeasure_contract.experiment import (
    BaselineConfig,
    DecoderConfig,
    EnergyConfig,
    ExperimentConfig,
    HubDataset,
    JsonlDataset,
    SyntheticDataset,
    WarmupConfig,
)
from llenergymeasure_contract.lora import LoraConfig
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.sections import PyTorchConfig, TensorRTConfig, VLLMConfig
from llenergymeasure_contract.traffic import SLOConfig, TrafficConfig

#: Names of the registered backends (the registry, ``REGISTRY``, is the source).
BACKENDS: tuple[str, ...] = REGISTRY.names()

__all__ = [
    "BACKENDS",
    "BaselineConfig",
    "DecoderConfig",
    "EnergyConfig",
    "ExperimentConfig",
    "HubDataset",
    "JsonlDataset",
    "LoraConfig",
    "PyTorchConfig",
    "SLOConfig",
    "SyntheticDataset",
    "TensorRTConfig",
    "TrafficConfig",
    "VLLMConfig",
    "WarmupConfig",
]
