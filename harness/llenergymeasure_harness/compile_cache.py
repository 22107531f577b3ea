"""Compile and kernel caches that outlive one experiment, keyed so a new engine never reuses them.

A compiled vLLM experiment spent 87 s loading on the H200 for 19 s of measurement, most of it
torch.compile (Inductor), Triton autotuning/compilation and CUDA-graph capture. The first two
are cached on disk by the libraries themselves; the cache only has to survive the container.

The orchestrator mounts one host directory per image (``~/.cache/llenergymeasure/compile/
<image key>``) and names it in ``LLEM_COMPILE_CACHE_DIR``. Here the harness picks a
subdirectory keyed by the versions that decide whether compiled artefacts are valid, and points
the libraries at it before any of them is imported::

    $LLEM_COMPILE_CACHE_DIR/<backend>-<engine version>_torch-<v>_triton-<v>_py<major.minor>/
        inductor/   TORCHINDUCTOR_CACHE_DIR
        triton/     TRITON_CACHE_DIR
        vllm/       VLLM_CACHE_ROOT (torch_compile_cache/, its own hash of config and code)

Inside each, the libraries key their entries further (graph hash, device, compiler options),
so two models or two GPUs share the directory safely; what they do not key on is their own
version upgrade in place, which the directory name covers. The state reported in the result is
``cold`` (the directory was empty before load), ``warm`` (it held files) or ``off`` (no cache
directory given); the load time beside it shows what the cache bought.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from llenergymeasure_contract.env import ENV_COMPILE_CACHE_DIR
from llenergymeasure_contract.registry import REGISTRY

logger = logging.getLogger(__name__)


#: Library cache variables pointed into the keyed directory (variable -> subdirectory).
CACHE_VARIABLES = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "VLLM_CACHE_ROOT": "vllm",
}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(backend: str) -> str:
    """The directory name for this environment's compiled artefacts (no engine import)."""
    # the engine distribution whose version keys the backend's cache (its registry entry's)
    named = REGISTRY.get(backend).engine_distribution if backend in REGISTRY else None
    engine = named or backend
    parts = [
        f"{backend}-{_version(engine)}",
        f"torch-{_version('torch')}",
        f"triton-{_version('triton')}",
        f"py{sys.version_info.major}.{sys.version_info.minor}",
    ]
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(parts))


def _size_and_files(path: Path) -> tuple[int, int]:
    size = files = 0
    if not path.is_dir():
        return 0, 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += (Path(root) / name).stat().st_size
                files += 1
            except OSError:
                continue
    return size, files


@dataclass
class CompileCache:
    """Where this experiment's compile caches live and what they held before load."""

    state: str  # "cold", "warm" or "off"
    key: str | None = None
    path: str | None = None
    files_before: int = 0
    bytes_before: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the directory's size now (after load and the run)."""
        after_bytes, after_files = _size_and_files(Path(self.path)) if self.path else (0, 0)
        return {
            "state": self.state,
            "key": self.key,
            "path": self.path,
            "files_before": self.files_before,
            "bytes_before": self.bytes_before,
            "files_after": after_files if self.path else 0,
            "bytes_after": after_bytes if self.path else 0,
        }


def activate(
    root: str | None, backend: str, environ: MutableMapping[str, str] | None = None
) -> CompileCache:
    """Point the compile caches at ``root/<key>`` (creating it) and say whether it was warm.

    Must run before torch, Triton or the engine is imported: some read their variables once.
    With ``root`` None nothing is changed and the state is ``off``.
    """
    env = os.environ if environ is None else environ
    if not root:
        return CompileCache(state="off")
    key = cache_key(backend)
    base = Path(root) / key
    size, files = _size_and_files(base)
    try:
        for variable, sub in CACHE_VARIABLES.items():
            (base / sub).mkdir(parents=True, exist_ok=True)
            env[variable] = str(base / sub)
    except OSError as exc:
        logger.warning("compile cache %s unusable (%s); compiling without it", base, exc)
        return CompileCache(state="off", key=key, path=None)
    state = "warm" if files else "cold"
    logger.info("compile cache %s: %s (%d files)", base, state, files)
    return CompileCache(state=state, key=key, path=str(base), files_before=files, bytes_before=size)


__all__ = [
    "CACHE_VARIABLES",
    "ENV_COMPILE_CACHE_DIR",
    "CompileCache",
    "activate",
    "cache_key",
]
