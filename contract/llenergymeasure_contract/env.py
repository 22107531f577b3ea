"""The environment and directory contract between the orchestrator and the harness.

The orchestrator (Docker or local runner) starts ``python -m llenergymeasure_harness`` with the
variables below and a results directory; the harness writes its files there and exits.
:class:`HarnessEnv` builds the variables (``to_env``) and reads them back (``from_env``).
Secrets such as ``HF_TOKEN`` are passed through the environment only and never written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from llenergymeasure_contract._version import CONTRACT_VERSION
from llenergymeasure_contract.errors import ConfigError
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

ENV_CONFIG_JSON = "LLEM_CONFIG_JSON"
ENV_RUN_ID = "LLEM_RUN_ID"
ENV_RESULTS_DIR = "LLEM_RESULTS_DIR"
ENV_CYCLE = "LLEM_CYCLE"
ENV_STUDY_ID = "LLEM_STUDY_ID"
ENV_IMAGE = "LLEM_IMAGE"
ENV_IMAGE_DIGEST = "LLEM_IMAGE_DIGEST"
ENV_IMAGE_LABELS_JSON = "LLEM_IMAGE_LABELS_JSON"
ENV_BASELINE_CACHE = "LLEM_BASELINE_CACHE"
ENV_ENGINE_CACHE_DIR = "LLEM_ENGINE_CACHE_DIR"
ENV_COMPILE_CACHE_DIR = "LLEM_COMPILE_CACHE_DIR"
ENV_HOST_UID = "LLEM_HOST_UID"
ENV_HOST_GID = "LLEM_HOST_GID"
ENV_CONTRACT_VERSION = "LLEM_CONTRACT_VERSION"
#: The host's config hash: the identity of the run even when the config handed to the harness
#: has host paths rewritten to container paths (which would change its own hash).
ENV_CONFIG_HASH = "LLEM_CONFIG_HASH"
#: A JSON :class:`~llenergymeasure_contract.reuse.EngineGroup` (a path the harness can read):
#: run every member on one loaded engine. The single-run variables then describe the first.
ENV_GROUP_FILE = "LLEM_GROUP_FILE"

#: Name -> value that turns NVLink multicast (NVLS) off in NCCL, PyTorch's symmetric memory and
#: NVSHMEM. On shared NVSwitch hosts a program that uses multicast can put the host's GPUs out
#: of service, and nothing we measure needs it. The runners put these into every container and
#: harness subprocess, and the harness into every process it starts; a value the user set wins.
MULTICAST_OFF: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}

#: The image label holding the contract version the image was built with, and the one every
#: llenergymeasure image carries (its backend).
LABEL_CONTRACT_VERSION = "io.llenergymeasure.contract.version"
LABEL_BACKEND = "io.llenergymeasure.backend"


class HarnessEnv(BaseModel):
    """Everything the harness is told through its environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: ExperimentConfig
    run_id: str
    results_dir: str
    cycle: int | None = None
    study_id: str | None = None
    image: str | None = None
    image_digest: str | None = None
    image_labels: dict[str, str] = {}
    baseline_cache: str | None = None
    engine_cache_dir: str | None = None
    compile_cache_dir: str | None = None  # torch.compile / Triton / vLLM caches, per image
    host_uid: int | None = None
    host_gid: int | None = None
    config_hash: str | None = None
    group_file: str | None = None

    def to_env(self) -> dict[str, str]:
        """The variables to set for the harness process or container."""
        env = {
            ENV_CONFIG_JSON: self.config.to_json(),
            ENV_RUN_ID: self.run_id,
            ENV_RESULTS_DIR: self.results_dir,
            ENV_CONTRACT_VERSION: str(CONTRACT_VERSION),
        }
        optional: dict[str, Any] = {
            ENV_CYCLE: self.cycle,
            ENV_STUDY_ID: self.study_id,
            ENV_IMAGE: self.image,
            ENV_IMAGE_DIGEST: self.image_digest,
            ENV_BASELINE_CACHE: self.baseline_cache,
            ENV_ENGINE_CACHE_DIR: self.engine_cache_dir,
            ENV_COMPILE_CACHE_DIR: self.compile_cache_dir,
            ENV_HOST_UID: self.host_uid,
            ENV_HOST_GID: self.host_gid,
            ENV_CONFIG_HASH: self.config_hash,
            ENV_GROUP_FILE: self.group_file,
        }
        env.update({k: str(v) for k, v in optional.items() if v is not None})
        if self.image_labels:
            env[ENV_IMAGE_LABELS_JSON] = json.dumps(self.image_labels, sort_keys=True)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HarnessEnv:
        """Read the contract from an environment mapping.

        Raises:
            ConfigError: a required variable is missing or the config JSON is invalid.
        """
        missing = [k for k in (ENV_CONFIG_JSON, ENV_RUN_ID, ENV_RESULTS_DIR) if not environ.get(k)]
        if missing:
            raise ConfigError(
                "harness environment incomplete: missing " + ", ".join(missing),
                hint="the orchestrator sets these; run experiments through `llem run`",
            )
        check_contract_version(environ.get(ENV_CONTRACT_VERSION), side="host")
        try:
            config = ExperimentConfig.model_validate_json(environ[ENV_CONFIG_JSON])
        except ValidationError as exc:
            raise ConfigError(
                f"{ENV_CONFIG_JSON} is not a valid experiment config",
                problems=[
                    f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                    for e in exc.errors()
                ],
            ) from exc
        labels: dict[str, str] = {}
        if environ.get(ENV_IMAGE_LABELS_JSON):
            try:
                labels = {
                    str(k): str(v) for k, v in json.loads(environ[ENV_IMAGE_LABELS_JSON]).items()
                }
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ConfigError(f"{ENV_IMAGE_LABELS_JSON} is not a JSON object") from exc

        def _int(name: str) -> int | None:
            raw = environ.get(name)
            if raw in (None, ""):
                return None
            try:
                return int(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not an integer") from exc

        return cls(
            config=config,
            run_id=environ[ENV_RUN_ID],
            results_dir=environ[ENV_RESULTS_DIR],
            cycle=_int(ENV_CYCLE),
            study_id=environ.get(ENV_STUDY_ID) or None,
            image=environ.get(ENV_IMAGE) or None,
            image_digest=environ.get(ENV_IMAGE_DIGEST) or None,
            image_labels=labels,
            baseline_cache=environ.get(ENV_BASELINE_CACHE) or None,
            engine_cache_dir=environ.get(ENV_ENGINE_CACHE_DIR) or None,
            compile_cache_dir=environ.get(ENV_COMPILE_CACHE_DIR) or None,
            host_uid=_int(ENV_HOST_UID),
            host_gid=_int(ENV_HOST_GID),
            config_hash=environ.get(ENV_CONFIG_HASH) or None,
            group_file=environ.get(ENV_GROUP_FILE) or None,
        )

    @property
    def results_path(self) -> Path:
        """The results directory as a path."""
        return Path(self.results_dir)


def check_contract_version(other: str | int | None, *, side: str) -> None:
    """Refuse to work across two contract versions.

    Args:
        other: The contract version the other side declared (``None``: it declared none).
        side: Which side ``other`` is: ``"host"`` (checked in the harness) or ``"image"``
            (checked by the host's preflight).

    Raises:
        ConfigError: the versions differ; the hint says which side to update.
    """
    if other is not None and str(other) == str(CONTRACT_VERSION):
        return
    if side == "image":
        if other is None:
            what = "declares no contract version (built before contract versioning)"
        else:
            what = f"speaks contract version {other}"
        older = other is None or _as_int(other) < CONTRACT_VERSION
        raise ConfigError(
            f"the image {what}; this llenergymeasure host speaks contract version "
            f"{CONTRACT_VERSION}",
            hint="update the image (llem images build, or pull the image of this release)"
            if older
            else "update the host: pip install -U llenergymeasure",
        )
    if other is None:
        return  # a host that names no version: older tooling; the config check still applies
    older = _as_int(other) < CONTRACT_VERSION
    raise ConfigError(
        f"the host speaks contract version {other}; this harness speaks {CONTRACT_VERSION}",
        hint="update the host: pip install -U llenergymeasure"
        if older
        else "update the image (llem images build, or pull the image of this release)",
    )


def _as_int(value: str | int) -> int:
    try:
        return int(value)
    except ValueError:
        return -1


__all__ = [
    "ENV_BASELINE_CACHE",
    "ENV_COMPILE_CACHE_DIR",
    "ENV_CONFIG_HASH",
    "ENV_CONFIG_JSON",
    "ENV_CONTRACT_VERSION",
    "ENV_CYCLE",
    "ENV_ENGINE_CACHE_DIR",
    "ENV_GROUP_FILE",
    "ENV_HOST_GID",
    "ENV_HOST_UID",
    "ENV_IMAGE",
    "ENV_IMAGE_DIGEST",
    "ENV_IMAGE_LABELS_JSON",
    "ENV_RESULTS_DIR",
    "ENV_RUN_ID",
    "ENV_STUDY_ID",
    "ERROR_FILE",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "LABEL_BACKEND",
    "LABEL_CONTRACT_VERSION",
    "MULTICAST_OFF",
    "REQUESTS_FILE",
    "RESULT_FILE",
    "TIMESERIES_FILE",
    "HarnessEnv",
    "check_contract_version",
]
