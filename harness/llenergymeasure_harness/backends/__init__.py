"""Backends: the engines behind :class:`~llenergymeasure_harness.backends.base.Backend`.

:data:`ENGINES` maps each name of the contract's backend registry
(:data:`llenergymeasure_contract.registry.REGISTRY`) to its engine class; :func:`get_backend`
imports the chosen one lazily, so an image only needs its own engine.
"""

from __future__ import annotations

import importlib
from typing import Any

from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_harness.backends.base import (
    Backend,
    GenerationRequest,
    LoadInfo,
    RequestRecord,
)

#: backend name (as registered in the contract) -> "module:Class" of its engine
ENGINES: dict[str, str] = {
    "pytorch": "llenergymeasure_harness.backends.pytorch:PyTorchBackend",
    "vllm": "llenergymeasure_harness.backends.vllm:VLLMBackend",
    "tensorrt": "llenergymeasure_harness.backends.tensorrt:TensorRTBackend",
    # Server mode of any of the above (experiment has server:), driven over HTTP.
    "server": "llenergymeasure_harness.serving.backends:ServerBackend",
    "endpoint": "llenergymeasure_harness.serving.backends:EndpointBackend",
}


def register_engine(name: str, target: str) -> None:
    """Add an engine ``"module:Class"`` for a backend registered in the contract.

    Raises:
        ValueError: the name is taken.
    """
    if name in ENGINES:
        raise ValueError(f"engine {name!r} is already registered")
    ENGINES[name] = target


def get_backend(name: str) -> Any:
    """A new instance of the named backend.

    Raises:
        ConfigError: unknown backend name.
        ImportError: the backend's engine is not installed here (the harness maps it to a
            load-phase failure).
    """
    try:
        target = ENGINES[name]
    except KeyError as exc:
        raise ConfigError(f"unknown backend {name!r}; choose from {sorted(ENGINES)}") from exc
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


# ENGINES is public too (module attribute), but left out here: ruff's isort-style __all__
# order (constants first) and tests/harness/test_public_api.py's plain sort disagree on it.
__all__ = [
    "Backend",
    "GenerationRequest",
    "LoadInfo",
    "RequestRecord",
    "get_backend",
    "register_engine",
]
