"""Runners: run one experiment's harness in a container (:class:`DockerRunner`) or a
subprocess (:class:`LocalRunner`), behind the :class:`Runner` protocol."""

from llenergymeasure.runners.base import FailureKind, Runner, RunOutcome, RunState, classify
from llenergymeasure.runners.docker import DockerRunner
from llenergymeasure.runners.local import LocalRunner
from llenergymeasure.runners.spec import (
    ContainerSettings,
    ContainerSpec,
    LocalSpec,
    Mount,
    RunRequest,
    build_container_spec,
    build_local_spec,
)

__all__ = [
    "ContainerSettings",
    "ContainerSpec",
    "DockerRunner",
    "FailureKind",
    "LocalRunner",
    "LocalSpec",
    "Mount",
    "RunOutcome",
    "RunRequest",
    "RunState",
    "Runner",
    "build_container_spec",
    "build_local_spec",
    "classify",
]
