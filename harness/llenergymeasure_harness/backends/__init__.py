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


#: Entry-point group of engine classes from other distributions (``name = "module:Class"``),
#: beside their ``llenergymeasure.backends`` spec (see the contract's registry module).
ENGINES_ENTRY_POINTS = "llenergymeasure.engines"


def _engine_target(name: str) -> str | None:
    """``"module:Class"`` of the engine for ``name``: built in, else an installed plugin's."""
    if name in ENGINES:
        return ENGINES[name]
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENGINES_ENTRY_POINTS, name=name):
        return str(ep.value)
    return None


def get_backend(name: str) -> Any:
    """A new instance of the named backend.

    Raises:
        ConfigError: unknown backend name.
        ImportError: the backend's engine is not installed here (the harness maps it to a
            load-phase failure).
    """
    target = _engine_target(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; choose from {sorted(ENGINES)}")
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
]
