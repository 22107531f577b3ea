"""``runner: auto`` picks Docker only when Docker has the images; else this host if it can."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.study.conftest import IMAGE

from llenergymeasure.runners import factory
from llenergymeasure.runners.factory import make_runner
from llenergymeasure.study.options import StudyRunOptions
from llenergymeasure.study.plan import StudyPlan
from llenergymeasure.testing.fake_docker import FakeDockerClient


def choose(plan: StudyPlan, client: FakeDockerClient, runner: str = "auto") -> str:
    return make_runner(plan, StudyRunOptions(runner=runner), None, client).name


def test_auto_uses_docker_when_it_has_every_image(
    plan_factory: Callable[..., StudyPlan],
) -> None:
    """Docker reachable and the image present: the Docker runner."""
    assert choose(plan_factory(), FakeDockerClient(images={IMAGE})) == "docker"


def test_auto_falls_back_to_this_host_when_an_image_is_missing(
    plan_factory: Callable[..., StudyPlan], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker reachable but the image absent, and this host runs the backend: local runner."""
    monkeypatch.setattr(factory, "runs_locally", lambda plan: True)
    assert choose(plan_factory(), FakeDockerClient(images=set())) == "local"


def test_auto_keeps_docker_when_this_host_cannot_run_the_backend(
    plan_factory: Callable[..., StudyPlan], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image absent and no local backend: Docker, whose preflight explains how to get it."""
    monkeypatch.setattr(factory, "runs_locally", lambda plan: False)
    assert choose(plan_factory(), FakeDockerClient(images=set())) == "docker"


def test_explicit_docker_never_falls_back(
    plan_factory: Callable[..., StudyPlan], monkeypatch: pytest.MonkeyPatch
) -> None:
    """runner: docker is obeyed even when the image is missing and the host could run it."""
    monkeypatch.setattr(factory, "runs_locally", lambda plan: True)
    assert choose(plan_factory(), FakeDockerClient(images=set()), runner="docker") == "docker"
