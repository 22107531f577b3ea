"""Smoke tests of the offline-built images (``make test-images``) inside a real Docker engine."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure import __version__, images

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scripts" / "smoke-test-image.sh"
# LLEM_TEST_TAG_SUFFIX: the same suffix scripts/build-test-images.sh appended to its tags.
_SUFFIX = os.environ.get("LLEM_TEST_TAG_SUFFIX", "")
HARNESS_ONLY = {
    "vllm": f"llenergymeasure/vllm:test-harness{_SUFFIX}",
    "tensorrt": f"llenergymeasure/trtllm:test-harness{_SUFFIX}",
}
#: Host-side packages no image may hold: the llem CLI and its Docker SDK, typer and rich.
HOST_ONLY_MODULES = ("llenergymeasure", "docker", "typer", "rich")


def _run(
    client: Any, image: str, command: list[str], env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a command to completion with no network; return (exit code, combined output)."""
    container = client.containers.create(image, command, environment=env or {}, network_mode="none")
    try:
        container.start()
        code = int(container.wait(timeout=300)["StatusCode"])
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.fixture(params=sorted(HARNESS_ONLY))
def harness_only_image(
    request: pytest.FixtureRequest, local_image: Callable[[str], str]
) -> tuple[str, str]:
    """(backend, tag) of a vllm/trtllm image built on the local base up to the harness layer."""
    backend = str(request.param)
    return backend, local_image(HARNESS_ONLY[backend])


def test_smoke_script_passes_on_pytorch_image(pytorch_test_image: str) -> None:
    """The pre-push smoke test (--help, --version, --check-config) passes on the pytorch image."""
    proc = subprocess.run(
        ["bash", str(SMOKE), pytorch_test_image], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pytorch_image_labels(docker_client: Any, pytorch_test_image: str) -> None:
    """The pytorch image records version, backend, engine and its pinned torch version."""
    labels = docker_client.images.get(pytorch_test_image).labels
    assert labels[images.LABEL_VERSION] == __version__
    assert labels[images.LABEL_BACKEND] == "pytorch"
    assert labels[images.LABEL_ENGINE] == "torch"
    assert labels[images.LABEL_ENGINE_VERSION] == os.environ.get("LLEM_TEST_TORCH", "2.13.0")
    assert labels[images.LABEL_SOURCE].startswith("https://github.com/")
    assert labels[images.LABEL_BASE_NAME]


def test_pytorch_image_has_cpu_torch_and_transformers(
    docker_client: Any, pytorch_test_image: str
) -> None:
    """torch, transformers and the harness import inside the image with no network."""
    code, out = _run(
        docker_client,
        pytorch_test_image,
        [
            "python3",
            "-c",
            "import torch, transformers, llenergymeasure_harness; print(torch.__version__)",
        ],
    )
    assert code == 0, out
    assert out.strip().splitlines()[-1].split("+")[0] == os.environ.get("LLEM_TEST_TORCH", "2.13.0")


def test_pytorch_image_default_command_is_the_harness(
    docker_client: Any, pytorch_test_image: str
) -> None:
    """With no command the image runs the harness, which rejects a missing config cleanly."""
    attrs = docker_client.images.get(pytorch_test_image).attrs["Config"]
    assert attrs["Cmd"] == ["python3", "-m", "llenergymeasure_harness"]
    code, out = _run(docker_client, pytorch_test_image, [])
    assert code != 0
    assert "Traceback" not in out


def test_harness_only_images_smoke(harness_only_image: tuple[str, str]) -> None:
    """The vllm and trtllm Dockerfiles, built on the local base, pass the same smoke test."""
    _, tag = harness_only_image
    proc = subprocess.run(["bash", str(SMOKE), tag], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_harness_only_images_carry_the_streaming_client(
    docker_client: Any, harness_only_image: tuple[str, str]
) -> None:
    """Server mode runs in the vllm and trtllm images too: the streaming client (aiohttp)
    imports there, from the image's own harness install."""
    _, tag = harness_only_image
    code, out = _run(
        docker_client,
        tag,
        [
            "python3",
            "-c",
            "import aiohttp, llenergymeasure_harness.serving.client as c; print(c.__name__)",
        ],
    )
    assert code == 0, out
    assert "llenergymeasure_harness.serving.client" in out


def test_harness_only_images_carry_lm_eval(
    docker_client: Any, harness_only_image: tuple[str, str]
) -> None:
    """quality: sections run in the vllm and trtllm images too: lm_eval (the harness's
    lm-eval extra, at the pinned release) and the harness's lm-eval adapter import there."""
    from llenergymeasure_contract.evaluation import LM_EVAL_VERSION

    _, tag = harness_only_image
    probe = (
        "import importlib.metadata as m, lm_eval, lm_eval.tasks, "
        "llenergymeasure_harness.evaluation_lm as e; print(m.version('lm_eval'), e.__name__)"
    )
    code, out = _run(docker_client, tag, ["python3", "-c", probe])
    assert code == 0, out
    assert f"{LM_EVAL_VERSION} llenergymeasure_harness.evaluation_lm" in out, out


def test_harness_only_images_metadata(
    docker_client: Any, harness_only_image: tuple[str, str]
) -> None:
    """Labels name the backend and engine (absent here); vLLM's server entrypoint is reset."""
    backend, tag = harness_only_image
    image = docker_client.images.get(tag)
    labels = image.labels
    assert labels[images.LABEL_BACKEND] == backend
    assert labels[images.LABEL_ENGINE] == {"vllm": "vllm", "tensorrt": "tensorrt_llm"}[backend]
    assert labels[images.LABEL_ENGINE_VERSION] == "none"  # built without the engine
    assert labels[images.LABEL_VERSION] == __version__
    assert image.attrs["Config"]["Cmd"] == ["python3", "-m", "llenergymeasure_harness"]
    assert not image.attrs["Config"].get("Entrypoint")


def test_images_hold_the_contract_and_harness_only(
    docker_client: Any, harness_only_image: tuple[str, str], pytorch_test_image: str
) -> None:
    """An image installs the contract and the harness, never the host CLI or its dependencies
    (the pytorch image may hold typer and rich only because transformers needs them), and its
    contract label is the version the harness inside speaks."""
    from llenergymeasure_contract import CONTRACT_VERSION

    probe = (
        "import importlib.util as u; "
        f"print(' '.join(m for m in {HOST_ONLY_MODULES!r} if u.find_spec(m)) or '-')"
    )
    _, tag = harness_only_image
    for image, allowed in ((tag, set()), (pytorch_test_image, {"typer", "rich"})):
        code, out = _run(docker_client, image, ["python3", "-c", probe])
        assert code == 0, out
        found = set(out.split()) - {"-"}
        assert found <= allowed, f"{image} holds host packages {sorted(found - allowed)}"
        labels = docker_client.images.get(image).labels
        assert labels[images.LABEL_CONTRACT_VERSION] == str(CONTRACT_VERSION)
        code, out = _run(
            docker_client, image, ["python3", "-m", "llenergymeasure_harness", "--version"]
        )
        assert f"(contract {CONTRACT_VERSION})" in out, out
