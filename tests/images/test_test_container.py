"""The suite's containers beside llem's: testcontainers, labelled by session, waited for, swept."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

import pytest
from tests.conftest import (
    TEST_CONTAINER_LABEL,
    TEST_SESSION,
    _remove_leftovers,
    labelled_containers,
)

pytestmark = pytest.mark.docker


def _ids(client: Any) -> set[str]:
    return {c.id for c in labelled_containers(client)}


def test_image_probe_passes_for_a_present_module_and_leaves_nothing(
    docker_client: Any,
    pytorch_test_image: str,
    require_in_image: Callable[[str, str, str], None],
) -> None:
    """The image probe returns for a module the image has, and removes its container
    (session-scoped servers of this session may run beside it; they are not the probe's)."""
    before = _ids(docker_client)
    require_in_image(pytorch_test_image, "json", "the standard library")
    assert _ids(docker_client) <= before


def test_image_probe_skips_for_a_missing_module(
    docker_client: Any,
    pytorch_test_image: str,
    require_in_image: Callable[[str, str, str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module absent from the image is a skip naming the rebuild, with no container left."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("LLEM_REQUIRE_DOCKER", raising=False)
    before = _ids(docker_client)
    with pytest.raises(pytest.skip.Exception, match="predates a feature; rebuild it"):
        require_in_image(pytorch_test_image, "no_such_module_llem", "a feature")
    assert _ids(docker_client) <= before


def test_a_test_container_carries_this_sessions_label_and_is_removed_on_exit(
    docker_client: Any, pytorch_test_image: str, test_container: Callable[..., Any]
) -> None:
    """A running test container is labelled with this session (host:pid) and gone after use."""
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    sleeper = test_container(
        pytorch_test_image,
        ["python3", "-c", "import time; print('up', flush=True); time.sleep(60)"],
    ).waiting_for(LogMessageWaitStrategy("up"))
    with sleeper:
        wrapped = sleeper.get_wrapped_container()
        assert wrapped.id in _ids(docker_client)
        assert wrapped.labels[TEST_CONTAINER_LABEL] == TEST_SESSION
    assert wrapped.id not in _ids(docker_client)


def test_the_start_sweep_removes_an_ended_sessions_container_and_keeps_a_live_ones(
    docker_client: Any, pytorch_test_image: str
) -> None:
    """Leftovers of a pytest process that has ended are removed; a container of a session whose
    process still runs (another pytest beside this one) is kept."""
    import subprocess

    import docker.errors

    ended = subprocess.Popen(["true"])
    ended.wait()
    host = socket.gethostname()
    made = {}
    for name, session in (("ended", f"{host}:{ended.pid}"), ("live", f"{host}:1")):
        made[name] = docker_client.containers.create(
            pytorch_test_image,
            ["true"],
            labels={TEST_CONTAINER_LABEL: session},
            network_mode="none",
        )
    try:
        _remove_leftovers(docker_client)
        left = {c.id for c in labelled_containers(docker_client, session=None)}
        assert made["ended"].id not in left
        assert made["live"].id in left
    finally:
        for container in made.values():
            with contextlib.suppress(docker.errors.NotFound):  # removed by the sweep
                container.remove(force=True)
