"""Static checks of images/*/Dockerfile: classic-builder syntax, labels, entrypoints, build args."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llenergymeasure import images

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = list(images.IMAGE_BACKENDS)  # one per Dockerfile


def _dockerfile(backend: str) -> str:
    return (ROOT / images.dockerfile_for(backend)).read_text()


def _instructions(text: str) -> list[str]:
    """Instructions with continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_buildkit_only_syntax(backend: str) -> None:
    """The files build with the classic builder: no syntax line, mounts, --chmod or heredocs."""
    text = _dockerfile(backend)
    assert not re.search(r"^#\s*syntax\s*=", text, re.M)
    code = "\n".join(_instructions(text))
    assert "--mount" not in code
    assert "--chmod" not in code
    assert "<<" not in code


@pytest.mark.parametrize("backend", BACKENDS)
def test_base_image_is_an_argument_before_from(backend: str) -> None:
    """ARG BASE_IMAGE comes before FROM ${BASE_IMAGE}, defaulting to the official upstream image."""
    lines = _instructions(_dockerfile(backend))
    from_index = next(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    assert lines[from_index] == "FROM ${BASE_IMAGE}"
    assert any(ln.startswith("ARG BASE_IMAGE=") for ln in lines[:from_index])
    upstream = {
        "pytorch": "pytorch/pytorch:",
        "vllm": "vllm/vllm-openai:",
        "tensorrt": "nvcr.io/nvidia/tensorrt-llm/release:",
    }
    default = next(ln for ln in lines[:from_index] if ln.startswith("ARG BASE_IMAGE="))
    assert upstream[backend] in default


@pytest.mark.parametrize("backend", BACKENDS)
def test_declares_every_build_arg_images_py_passes(backend: str) -> None:
    """Every build argument the matrix passes is declared after FROM (else it is ignored)."""
    lines = _instructions(_dockerfile(backend))
    from_index = next(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    declared = {
        re.split(r"[= ]", ln[4:].strip())[0] for ln in lines[from_index:] if ln.startswith("ARG ")
    }
    variant = images.variant_for(backend)
    assert set(images.build_args(variant)) <= declared
    assert {"PIP_EXTRA_ARGS", "ENGINE_PIP_SPEC", "ENGINE_CHECK"} <= declared


@pytest.mark.parametrize("backend", BACKENDS)
def test_pinned_engine_version_matches_the_matrix(backend: str) -> None:
    """The Dockerfile's default engine version is the one the release matrix pins."""
    text = _dockerfile(backend)
    default = re.search(r"^ARG ENGINE_VERSION=(\S+)$", text, re.M)
    assert default is not None
    versions = {v.engine_version for v in images.MATRIX if v.backend == backend}
    assert default.group(1) in versions


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels(backend: str) -> None:
    """The OCI and llenergymeasure labels the runner records are all set."""
    text = _dockerfile(backend)
    for key in (
        images.LABEL_VERSION,
        images.LABEL_SOURCE,
        images.LABEL_BASE_NAME,
        images.LABEL_BACKEND,
        images.LABEL_ENGINE,
        images.LABEL_ENGINE_VERSION,
        images.LABEL_CUDA_VERSION,
    ):
        assert f"{key}=" in text, key
    assert f'{images.LABEL_BACKEND}="{backend}"' in text
    assert f'{images.LABEL_CONTRACT_VERSION}="${{CONTRACT_VERSION}}"' in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_harness_wheel_and_command(backend: str) -> None:
    """Every image installs the contract and harness wheels (never the host's) and runs the
    harness module."""
    text = _dockerfile(backend)
    assert "COPY build/wheelhouse/ /tmp/wheels/" in text
    assert "/tmp/wheels/llenergymeasure_contract-*.whl" in text
    assert "/tmp/wheels/llenergymeasure_harness-*.whl" in text
    assert "/tmp/wheels/llenergymeasure-*.whl" not in text
    assert 'CMD ["python3", "-m", "llenergymeasure_harness"]' in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_image_installs_the_lm_eval_extra(backend: str) -> None:
    """quality: sections run in every backend's image: each Dockerfile's default harness
    extras include lm-eval (dropping it would make a quality study fail in that image)."""
    default = re.search(r"^ARG HARNESS_EXTRAS=(\S+)$", _dockerfile(backend), re.M)
    assert default is not None
    assert "lm-eval" in default.group(1).split(",")
    assert '"$2[${HARNESS_EXTRAS}]"' in _dockerfile(backend)


def test_entrypoints() -> None:
    """vLLM's `vllm serve` entrypoint is reset; NVIDIA's TensorRT-LLM entrypoint is kept."""
    assert "ENTRYPOINT []" in _instructions(_dockerfile("vllm"))
    assert not any(ln.startswith("ENTRYPOINT") for ln in _instructions(_dockerfile("tensorrt")))
    assert not any(ln.startswith("ENTRYPOINT") for ln in _instructions(_dockerfile("pytorch")))


def test_dockerignore_keeps_context_to_the_wheelhouse() -> None:
    """The build context is the wheelhouse only, not the checkout or caches."""
    lines = (ROOT / ".dockerignore").read_text().split()
    assert "*" in lines
    assert "!build/wheelhouse/" in lines


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_build_gives_the_default_variant(backend: str) -> None:
    """Without build args a Dockerfile builds the default-CUDA variant the default tag names."""
    text = _dockerfile(backend)
    version = re.search(r"^ARG ENGINE_VERSION=(\S+)$", text, re.M)
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert version is not None and base is not None
    resolved = base.group(1).replace("${ENGINE_VERSION}", version.group(1))
    assert resolved == images.variant_for(backend).base_image
    assert images.default_image(backend).endswith(f"-cuda{images.variant_for(backend).cuda_major}")


def test_shared_install_step_is_the_same_in_every_dockerfile() -> None:
    """The wheel-install RUN step, repeated per Dockerfile (the classic builder has no include),
    is the same in all three but for the engine's own version check."""

    def install_step(backend: str) -> str:
        (step,) = [i for i in _instructions(_dockerfile(backend)) if i.startswith("RUN set -eu;")]
        return re.sub(r'if \[ "\$\{ENGINE_CHECK\}" = "1" \]; then .*?; +fi;', "<check>", step)

    steps = {backend: install_step(backend) for backend in BACKENDS}
    assert all("<check>" in s for s in steps.values()), steps
    assert len(set(steps.values())) == 1, steps
