"""Backends: the engines behind :class:`~llenergymeasure_harness.backends.base.Backend`.

:func:`get_backend` imports the chosen one lazily, so an image only needs its own engine.
"""

from __future__ import annotations

import importlib
from typing import Any

from llenergymeasure.errors import ConfigError
from llenergymeasure_harness.backends.base import (
    Backend,
    GenerationRequest,
    LoadInfo,
    RequestRecord,
)

#: backend name -> "module:Class"
BACKENDS = {
    "pytorch": "llenergymeasure_harness.backends.pytorch:PyTorchBackend",
    "vllm": "llenergymeasure_harness.backends.vllm:VLLMBackend",
    "tensorrt": "llenergymeasure_harness.backends.tensorrt:TensorRTBackend",
    # Server mode of any of the above (experiment has server:), driven over HTTP.
    "server": "llenergymeasure_harness.serving.backends:ServerBackend",
}


def get_backend(name: str) -> Any:
    """A new instance of the named backend.

    Raises:
        ConfigError: unknown backend name.
        ImportError: the backend's engine is not installed here (the harness maps it to a
            load-phase failure).
    """
    try:
        target = BACKENDS[name]
    except KeyError as exc:
        raise ConfigError(f"unknown backend {name!r}; choose from {sorted(BACKENDS)}") from exc
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["BACKENDS", "Backend", "GenerationRequest", "LoadInfo", "RequestRecord", "get_backend"]
