"""Runners: run one experiment's harness in a container (:class:`DockerRunner`), a
subprocess (:class:`LocalRunner`) or a Slurm job (:class:`SlurmRunner`), behind the
:class:`Runner` protocol."""

from llenergymeasure.runners.base import FailureKind, Runner, RunOutcome, RunState, classify
from llenergymeasure.runners.docker import DockerRunner
from llenergymeasure.runners.local import LocalRunner
from llenergymeasure.runners.mounts import Mount
from llenergymeasure.runners.slurm import JobInfo, SlurmCli, SlurmRunner
from llenergymeasure.runners.slurm_script import render_job_script
from llenergymeasure.runners.spec import (
    ContainerSettings,
    ContainerSpec,
    LocalSpec,
    RunRequest,
    build_container_spec,
    build_local_spec,
)

__all__ = [
    "ContainerSettings",
    "ContainerSpec",
    "DockerRunner",
    "FailureKind",
    "JobInfo",
    "LocalRunner",
    "LocalSpec",
    "Mount",
    "RunOutcome",
    "RunRequest",
    "RunState",
    "Runner",
    "SlurmCli",
    "SlurmRunner",
    "build_container_spec",
    "build_local_spec",
    "classify",
    "render_job_script",
]
