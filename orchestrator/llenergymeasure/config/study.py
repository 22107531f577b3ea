"""Study-level settings: execution (cycles, order, gaps), runner and images, and the study.

:class:`StudyConfig` is a fully expanded study: its experiments are validated
:class:`~llenergymeasure.config.ExperimentConfig` objects in expansion order, de-duplicated.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, field_validator

from llenergymeasure.config.impact import ImpactInputs
from llenergymeasure.config.notify import NotifyConfig
from llenergymeasure.config.slurm import SlurmSettings
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.strict import MAX_SEED, StrictModel

CycleOrder = Literal["sequential", "interleaved", "shuffled"]
RunnerName = Literal["docker", "local", "auto", "slurm"]
PullPolicy = Literal["missing", "always", "never"]


#: A ``docker.env`` key that names a credential (its value must not be written anywhere).
SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW(OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH", re.IGNORECASE
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


#: Longest rest between experiments or cycles (a day).
MAX_GAP_S = 86_400.0
#: Longest single run (a week).
MAX_TIMEOUT_S = 604_800.0


class _Model(StrictModel):
    """Frozen, strict input (:mod:`llenergymeasure_contract.strict`)."""


class ExecutionConfig(_Model):
    """How the study's runs are repeated and spaced. Not part of the study design hash."""

    n_cycles: int = Field(1, ge=1, le=1000, description="Times every experiment is run.")
    cycle_order: CycleOrder = Field(
        "sequential",
        description="sequential: A A B B; interleaved: A B A B; shuffled: each cycle in a "
        "seeded random order.",
    )
    shuffle_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the shuffled order (reproducible)."
    )
    config_gap_s: float = Field(
        60.0, ge=0.0, le=MAX_GAP_S, description="Thermal rest between experiments."
    )
    cycle_gap_s: float = Field(
        120.0, ge=0.0, le=MAX_GAP_S, description="Thermal rest between cycles."
    )
    experiment_timeout_s: float = Field(
        3600.0, gt=0.0, le=MAX_TIMEOUT_S, description="Stop a run after this."
    )
    max_consecutive_failures: int = Field(
        3, ge=0, description="Stop the study after this many failures in a row (0 = never)."
    )
    reuse_engine: bool = Field(
        False,
        description="Run experiments that differ only in run-time settings (traffic, batch "
        "size, lengths, decoder) in one container on one loaded engine, each in its own "
        "measured window; off: one fresh container per run.",
    )


class DockerSettings(_Model):
    """Container settings applied to every experiment's container."""

    # None: the backend's own default (its registry entry: host IPC for vLLM/TensorRT-LLM,
    # an 8 GB /dev/shm for PyTorch, TensorRT-LLM's memlock/stack ulimits), so a setting made
    # for one engine never leaks into another's containers.
    shm_size: str | None = Field(
        None, description="/dev/shm size when ipc_mode is not host (default: the backend's)."
    )
    ipc_mode: str | None = Field(
        None, description="IPC namespace, e.g. host (default: the backend's; vLLM/TRT-LLM: host)."
    )
    network_mode: Literal["host", "none", "bridge"] = Field(
        "host", description="host lets the container reach the model hub; none for offline."
    )
    ulimits: dict[str, int | list[int]] | None = Field(
        None,
        description="name -> limit, or [soft, hard]; -1 is unlimited "
        "(default: the backend's; TensorRT-LLM: memlock=-1, stack=67108864).",
    )
    mem_limit: str | None = Field(None, description="Container memory limit, e.g. '64g'.")
    hf_cache_dir: str | None = Field(
        None,
        description="Host Hugging Face cache mounted into containers "
        "(default ~/.cache/huggingface).",
    )
    engine_cache_dir: str | None = Field(
        None, description="Host directory for built TensorRT-LLM engines."
    )
    compile_cache_dir: str | None = Field(
        None,
        description="Host root for torch.compile/Triton/vLLM compile caches, one "
        "subdirectory per image (default ~/.cache/llenergymeasure/compile); '' turns it off.",
    )
    run_as_host_user: bool = Field(True, description="Run as the invoking uid:gid.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment (non-secret) for the harness. Written into plan.json: "
        "credentials go in env_passthrough instead.",
    )
    env_passthrough: list[str] = Field(
        default_factory=list,
        description="Names of host environment variables (e.g. HF_TOKEN) handed to every "
        "container by name; their values are never written to any file, log or printed plan.",
    )

    @field_validator("env")
    @classmethod
    def _no_literal_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        # The message names the key only: the value must not reach the console either.
        secret = sorted(k for k, v in env.items() if v != "" and SECRET_NAME.search(k))
        if secret:
            names = ", ".join(secret)
            raise ValueError(
                f"{names}: looks like a credential, and docker.env values are written into "
                f"plan.json; pass it by name from your environment instead: "
                f"docker: {{env_passthrough: [{names}]}} (and export it before llem run)"
            )
        return env

    @field_validator("env_passthrough")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not ENV_NAME.fullmatch(n)]
        if bad:
            raise ValueError(
                f"{bad}: not environment variable names (letters, digits, _; e.g. HF_TOKEN); "
                "give the name, not the value"
            )
        return names


class RunnerSettings(_Model):
    """Which runner, which images, and how images are obtained."""

    runner: RunnerName = "auto"
    images: dict[str, str] = Field(
        default_factory=dict, description="backend -> image reference overriding the default."
    )
    pull_policy: PullPolicy = "missing"
    cuda_major: int = Field(12, ge=11, le=99, description="CUDA major of the default images.")
    docker: DockerSettings = Field(default_factory=DockerSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


class DuplicateExperiment(_Model):
    """An experiment that expanded to the same config as an earlier one and runs once."""

    source: str  # where it came from, e.g. "sweep point 3" or "experiments[1]"
    same_as: str
    config_hash: str


class StudyConfig(_Model):
    """A whole, expanded study."""

    name: str
    source: str | None = Field(None, description="The study file, if any.")
    experiments: list[ExperimentConfig] = Field(min_length=1)
    experiment_sources: list[str] = Field(default_factory=list)
    experiment_params: list[dict[str, Any]] = Field(
        default_factory=list, description="Per experiment: the sweep values or entry keys."
    )
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    results_dir: str = "./results"
    duplicates: list[DuplicateExperiment] = Field(default_factory=list)
    impact: ImpactInputs = Field(
        default_factory=ImpactInputs,
        description="carbon: and cost: inputs (study file over user defaults), with sources.",
    )
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="Webhooks.")

    @cached_property
    def study_design_hash(self) -> str:
        """Identity of what is measured: the ordered experiment hashes (execution ignored)."""
        payload = json.dumps([e.config_hash for e in self.experiments])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
