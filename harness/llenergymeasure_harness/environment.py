"""Environment snapshot: where the numbers were measured (GPUs, driver, CPU, OS, image)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_harness.energy.nvml import Nvml

#: Libraries whose versions go into the result when installed (plus each registered
#: backend's modules, :func:`key_libraries`).
KEY_LIBRARIES = (
    "llenergymeasure-contract",
    "llenergymeasure-harness",
    "torch",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "nvidia-ml-py",
    "zeus",
    "codecarbon",
    "pydantic",
    "pyarrow",
    "datasets",
)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                name = line.split("=", 1)[1].strip().strip('"')
                return f"{name} ({platform.release()})"
    except OSError:
        pass
    return platform.platform()


def in_container() -> bool:
    """Best guess: Docker/Podman marker files or a container cgroup."""
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        cg = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(k in cg for k in ("docker", "containerd", "kubepods", "libpod"))


def key_libraries() -> tuple[str, ...]:
    """:data:`KEY_LIBRARIES` and every registered backend's modules, without repeats."""
    names = list(KEY_LIBRARIES)
    for spec in REGISTRY:
        names.extend(m for m in spec.modules if m not in names)
    return tuple(names)


def library_versions(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Installed versions of ``names`` (default :func:`key_libraries`); absent ones left out."""
    out: dict[str, str] = {}
    names = key_libraries() if names is None else names
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def snapshot(
    *,
    nvml: Nvml | None,
    gpus: list[tuple[int, int]],
    harness_version: str,
    backend: str,
    backend_version: str | None,
    image: str | None,
    image_digest: str | None,
    image_labels: dict[str, str],
    cuda_runtime_version: str | None = None,
    backend_library: str | None = None,
) -> dict[str, Any]:
    """Fields of ``EnvironmentSnapshot``. ``gpus`` pairs (harness label, NVML index)."""
    gpu_infos: list[dict[str, Any]] = []
    if nvml is not None:
        for label, idx in gpus:
            gpu_infos.append({"index": label, **nvml.info(idx)})
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python_version": sys.version.split()[0],
        "driver_version": nvml.driver_version() if nvml is not None else None,
        "cuda_version": cuda_runtime_version
        or (nvml.cuda_driver_version() if nvml is not None else None),
        "gpus": gpu_infos,
        "harness_version": harness_version,
        "backend": backend,
        "backend_version": backend_version,
        "backend_library": backend_library,
        "library_versions": library_versions(),
        "image": image,
        "image_digest": image_digest,
        "image_labels": dict(image_labels),
        "in_container": in_container(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
        "slurm_node": os.environ.get("SLURMD_NODENAME") or None,
    }
