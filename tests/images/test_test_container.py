"""The suite's containers beside llem's: testcontainers, labelled, waited for, swept by label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tests.conftest import TEST_CONTAINER_LABEL

pytestmark = pytest.mark.docker


def _labelled(client: Any) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{TEST_CONTAINER_LABEL}=1"})


def test_image_probe_passes_for_a_present_module_and_leaves_nothing(
    docker_client: Any,
    pytorch_test_image: str,
    require_in_image: Callable[[str, str, str], None],
) -> None:
    """The image probe returns for a module the image has, and removes its container."""
    require_in_image(pytorch_test_image, "json", "the standard library")
    assert _labelled(docker_client) == []


def test_image_probe_skips_for_a_missing_module(
    docker_client: Any,
    pytorch_test_image: str,
    require_in_image: Callable[[str, str, str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module absent from the image is a skip naming the rebuild, with no container left."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("LLEM_REQUIRE_DOCKER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="predates a feature; rebuild it"):
        require_in_image(pytorch_test_image, "no_such_module_llem", "a feature")
    assert _labelled(docker_client) == []


def test_leftovers_are_found_by_label(
    docker_client: Any, pytorch_test_image: str, test_container: Callable[..., Any]
) -> None:
    """A running test container carries the llem.test label the session sweep removes by."""
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    sleeper = test_container(
        pytorch_test_image,
        ["python3", "-c", "import time; print('up', flush=True); time.sleep(60)"],
    ).waiting_for(LogMessageWaitStrategy("up"))
    with sleeper:
        ids = [c.id for c in _labelled(docker_client)]
        assert sleeper.get_wrapped_container().id in ids
    assert _labelled(docker_client) == []
