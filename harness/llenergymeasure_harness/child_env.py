"""Variables every process the harness starts must carry: NVLink multicast off.

vLLM and TensorRT-LLM start worker processes (one per GPU) that inherit the harness's
environment, and NCCL, PyTorch's symmetric memory and NVSHMEM turn on NVLink multicast (NVLS)
by themselves on NVSwitch machines. On shared multi-GPU hosts a program that uses multicast can
put the host's GPUs out of service (the lent H200 machines keep these three variables set for
that reason), and nothing we measure needs it. So the harness sets them in its own environment
before any engine is imported, which is the environment every child inherits; a value the user
set is kept (``setdefault``), so someone who needs NVLS can still ask for it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: Name -> value that turns NVLink multicast off in NCCL, PyTorch and NVSHMEM.
MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def apply_child_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`MULTICAST_OFF` where unset; return the values now in force."""
    env = os.environ if environ is None else environ
    for name, value in MULTICAST_OFF.items():
        env.setdefault(name, value)
    return {name: env[name] for name in MULTICAST_OFF}


def child_env(base: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) for a child process, multicast off."""
    env = dict(os.environ if base is None else base)
    apply_child_env(env)
    return env


__all__ = ["MULTICAST_OFF", "apply_child_env", "child_env"]
