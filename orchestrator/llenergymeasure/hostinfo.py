"""What this host offers for running studies, for ``llem config``: :func:`collect_host_info`.

Docker (reachable? version, runtimes, NVIDIA toolkit hints), GPUs (host ``nvidia-smi`` when
present), backends installed for the local runner (``importlib.util.find_spec``; nothing is
imported), and which of the default images are present. Every probe is best effort: a
failing one is recorded in the model, never raised.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure import __version__
from llenergymeasure_contract.registry import REGISTRY


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DockerInfo(_Model):
    """The Docker engine as docker-py sees it."""

    reachable: bool
    host: str
    server_version: str | None = None
    api_version: str | None = None
    runtimes: list[str] = Field(default_factory=list)
    nvidia_runtime: bool = False  # "nvidia" registered as a runtime (nvidia-ctk configure)
    nvidia_hook_on_path: bool = False  # nvidia-container-runtime-hook: enables --gpus
    cdi_specs: list[str] = Field(default_factory=list)  # /etc/cdi, /var/run/cdi
    error: str | None = None


class HostGpu(_Model):
    """A GPU reported by the host's nvidia-smi."""

    index: int
    uuid: str
    name: str
    memory_total_mib: float | None = None
    busy_pids: list[int] = Field(default_factory=list)


class ImagePresence(_Model):
    """One expected image and whether it is present locally."""

    backend: str
    name: str
    present: bool
    id: str | None = None
    size_bytes: int | None = None
    created: str | None = None


class HostInfo(_Model):
    """Everything ``llem config`` reports about this host."""

    hostname: str
    platform: str
    python: str
    llem_version: str
    docker: DockerInfo
    nvidia_smi: bool
    gpus: list[HostGpu] = Field(default_factory=list)
    gpu_error: str | None = None
    harness_installed: bool
    backends_installed: dict[str, bool]
    images: list[ImagePresence] = Field(default_factory=list)
    recommended_runner: str


def _docker_info(client_factory: Callable[[], Any] | None) -> tuple[DockerInfo, Any]:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        from llenergymeasure.runners.docker import connect

        client = connect(client_factory)
    except Exception as exc:  # any failure means "not usable", reported as such
        return DockerInfo(reachable=False, host=host, error=str(exc).splitlines()[0]), None
    info: dict[str, Any] = {}
    version: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        info = client.info()
        version = client.version()
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    cdi = []
    for d in ("/etc/cdi", "/var/run/cdi"):
        with contextlib.suppress(OSError):
            cdi += [str(p) for p in Path(d).glob("*.y*ml")] + [
                str(p) for p in Path(d).glob("*.json")
            ]
    return (
        DockerInfo(
            reachable=True,
            host=host,
            server_version=info.get("ServerVersion") or version.get("Version"),
            api_version=version.get("ApiVersion"),
            runtimes=runtimes,
            nvidia_runtime="nvidia" in runtimes,
            nvidia_hook_on_path=shutil.which("nvidia-container-runtime-hook") is not None,
            cdi_specs=sorted(cdi),
        ),
        client,
    )


def _default_images() -> list[tuple[str, str]]:
    try:
        from llenergymeasure.images import default_image

        return [(spec.name, default_image(spec.name)) for spec in REGISTRY]
    except Exception:  # images module unavailable or changed: report nothing rather than fail
        return []


def collect_host_info(
    *,
    images: Sequence[tuple[str, str]] | None = None,
    docker_client_factory: Callable[[], Any] | None = None,
    nvidia_smi: Callable[[], str | None] | None = None,
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
) -> HostInfo:
    """Probe this host (best effort; see the module docstring).

    Args:
        images: (backend, image) pairs to look for; default: the default image per backend.
        docker_client_factory: Makes the docker client (tests pass a fake).
        nvidia_smi: Returns the preflight probe output or ``None`` (tests).
        find_spec: Module lookup without import (tests).
    """
    from llenergymeasure.runners.preflight import (
        HARNESS_MODULE,
        host_nvidia_smi,
        parse_probe_output,
    )

    def installed(module: str) -> bool:
        try:
            return find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    docker_info, client = _docker_info(docker_client_factory)
    presence: list[ImagePresence] = []
    for backend, name in images if images is not None else _default_images():
        item = ImagePresence(backend=backend, name=name, present=False)
        if client is not None:
            with contextlib.suppress(Exception):
                img = client.images.get(name)
                attrs = img.attrs
                item = ImagePresence(
                    backend=backend,
                    name=name,
                    present=True,
                    id=attrs.get("Id"),
                    size_bytes=attrs.get("Size"),
                    created=attrs.get("Created"),
                )
        presence.append(item)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()

    probe = nvidia_smi or host_nvidia_smi
    text = probe()
    gpus: list[HostGpu] = []
    gpu_error = None
    if text is not None and text.startswith("error:"):
        gpu_error = text[6:].strip()
    elif text is not None:
        seen, procs = parse_probe_output(text)
        for g in seen:
            pids = [p.pid for p in procs if p.gpu_uuid == g.uuid and p.pid is not None]
            gpus.append(
                HostGpu(
                    index=g.index,
                    uuid=g.uuid,
                    name=g.name,
                    memory_total_mib=g.memory_total_mib,
                    busy_pids=pids,
                )
            )
    backends = {spec.name: all(installed(m) for m in spec.modules) for spec in REGISTRY}
    harness = installed(HARNESS_MODULE)
    return HostInfo(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        llem_version=__version__,
        docker=docker_info,
        nvidia_smi=text is not None,
        gpus=gpus,
        gpu_error=gpu_error,
        harness_installed=harness,
        backends_installed=backends,
        images=presence,
        recommended_runner="docker" if docker_info.reachable else "local",
    )
