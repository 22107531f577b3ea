"""What a study needs from the host: the input of every runner's ``preflight``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llenergymeasure.config.study import PullPolicy
from llenergymeasure.runners.preflight import (
    DEFAULT_MIN_FREE_BYTES,
    Confirm,
    PreflightReport,
    PreflightRequest,
    run_preflight,
)

if TYPE_CHECKING:
    from llenergymeasure.study.plan import PlannedExperiment


@dataclass(frozen=True)
class StudyNeeds:
    """What a study's runs need from the host: the input of every runner's ``preflight``.

    Attributes:
        experiments: The experiments about to run (a resumed study: those not completed).
        results_dir: Where the study folder is (free disk space is checked there).
        input_paths: Host paths the experiments read (model, tokenizer, dataset).
        pull_policy: How a missing image is obtained.
        request_gpus: Whether the runs get GPUs (off on CPU-only hosts).
        min_free_bytes: The free-disk threshold under ``results_dir``.
        env_passthrough: ``docker.env_passthrough`` names (a note names the unset ones).
        confirm: Asks the user a yes/no question (``None``: not interactive).
        assume_yes: Answer yes to questions (pull a missing image).
        resumed: A resumed study (its folder was proven when it started).
    """

    experiments: tuple[PlannedExperiment, ...]
    results_dir: Path
    input_paths: tuple[str, ...] = ()
    pull_policy: PullPolicy = "missing"
    request_gpus: bool = True
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    env_passthrough: tuple[str, ...] = ()
    confirm: Confirm | None = None
    assume_yes: bool = False
    resumed: bool = False

    def host_request(
        self,
        runner: Literal["docker", "local"],
        *,
        ulimits: Mapping[str, Mapping[str, int | tuple[int, int]]] | None = None,
    ) -> PreflightRequest:
        """The :class:`PreflightRequest` of these needs for the Docker or local runner."""
        images: dict[str, set[int]] = {}
        for e in self.experiments:
            images.setdefault(e.image, set()).update(e.config.gpus)
        return PreflightRequest(
            ulimits=ulimits or {},
            runner=runner,
            results_dir=self.results_dir,
            images={k: frozenset(v) for k, v in images.items()} if runner == "docker" else {},
            backends=frozenset(e.config.backend for e in self.experiments),
            gpus=frozenset(g for e in self.experiments for g in e.config.gpus),
            input_paths=self.input_paths,
            pull_policy=self.pull_policy,
            request_gpus=self.request_gpus,
            min_free_bytes=self.min_free_bytes,
        )

    def check_host(self, request: PreflightRequest, client: Any = None) -> PreflightReport:
        """:func:`run_preflight` of ``request`` with these needs' question and answer."""
        return run_preflight(
            request, client=client, confirm=self.confirm, assume_yes=self.assume_yes
        )
