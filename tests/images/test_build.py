"""Building the Dockerfiles through images.build_image (docker SDK, classic builder), offline."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure import __version__, images
from llenergymeasure.errors import RunnerError

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"PIP_EXTRA_ARGS": "--no-index --find-links=/tmp/wheels", "ENGINE_CHECK": "0"}
FAKE_CUDA_BASE = "llem-test/fake-cuda-base:12.9"


@pytest.fixture(scope="module")
def offline_context(local_image: Callable[[str], str], skip_or_fail: Callable[[str], None]) -> Path:
    """The checkout, once the local base image and a full wheelhouse exist."""
    local_image(images.TEST_BASE_IMAGE)
    wheelhouse = ROOT / "build" / "wheelhouse"
    if not list(wheelhouse.glob("llenergymeasure_harness-*.whl")) or not list(
        wheelhouse.glob("pydantic-*.whl")
    ):
        skip_or_fail("build/wheelhouse is not filled; run `make test-images`")
    return ROOT


@pytest.fixture(scope="module")
def fake_cuda_base(docker_client: Any, offline_context: Path) -> Iterator[str]:
    """The local base plus ENV CUDA_VERSION=12.9.1, standing in for an upstream CUDA image."""
    dockerfile = f"FROM {images.TEST_BASE_IMAGE}\nENV CUDA_VERSION=12.9.1\n"
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=FAKE_CUDA_BASE, network_mode="none", rm=True
    )
    yield FAKE_CUDA_BASE
    docker_client.images.remove(FAKE_CUDA_BASE, force=True)


def test_build_vllm_harness_layer_on_a_cuda_base(
    docker_client: Any, fake_cuda_base: str, offline_context: Path
) -> None:
    """The vLLM Dockerfile builds to the harness layer; CUDA comes from the base's environment."""
    tag = "llem-test/vllm:sdk-build"
    lines: list[str] = []
    image_id = images.build_image(
        "vllm",
        tag=tag,
        context=offline_context,
        base_image=fake_cuda_base,
        extra_build_args=OFFLINE,
        network_mode="none",
        client=docker_client,
        on_line=lines.append,
    )
    try:
        image = docker_client.images.get(tag)
        assert image.id == image_id or image.id.endswith(image_id.removeprefix("sha256:"))
        labels = image.labels
        assert labels[images.LABEL_CUDA_VERSION] == "12.9.1"
        assert images.cuda_major_of(labels[images.LABEL_CUDA_VERSION]) == 12
        assert labels[images.LABEL_BASE_NAME] == fake_cuda_base
        assert labels[images.LABEL_VERSION] == __version__
        assert labels[images.LABEL_ENGINE] == "vllm"
        assert not image.attrs["Config"].get("Entrypoint")
        assert any("Step" in line for line in lines)
    finally:
        docker_client.images.remove(tag, force=True)


def _wheelhouse_layers(client: Any) -> set[str]:
    """Untagged images whose last step copied our wheelhouse (a failed build leaves one)."""
    found = set()
    for image in client.images.list(filters={"dangling": True}):
        cmd = " ".join(image.attrs.get("ContainerConfig", {}).get("Cmd") or [])
        if "COPY" in cmd and "/tmp/wheels/" in cmd:
            found.add(image.id)
    return found


def test_engine_pin_is_enforced(docker_client: Any, offline_context: Path) -> None:
    """With the engine check on, a base without the pinned TensorRT-LLM fails the build."""
    before = _wheelhouse_layers(docker_client)
    try:
        with pytest.raises(RunnerError, match=r"tensorrt_llm|tensorrt-llm"):
            images.build_image(
                "tensorrt",
                tag="llem-test/trtllm:pin-check",
                context=offline_context,
                base_image=images.TEST_BASE_IMAGE,
                extra_build_args={**OFFLINE, "ENGINE_CHECK": "1"},
                network_mode="none",
                client=docker_client,
            )
    finally:
        for image_id in _wheelhouse_layers(docker_client) - before:
            docker_client.images.remove(image_id, force=True)
