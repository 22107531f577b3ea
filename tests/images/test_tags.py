"""Image names, CUDA derivation, release tags and the publish matrix (pure functions)."""

from __future__ import annotations

import json

import pytest

from llenergymeasure import __version__, images
from llenergymeasure.errors import UsageError


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("pytorch", "llenergymeasure/pytorch:2.0-cuda12"),
        ("vllm", "llenergymeasure/vllm:2.0-cuda12"),
        ("tensorrt", "llenergymeasure/trtllm:2.0-cuda13"),
        ("trtllm", "llenergymeasure/trtllm:2.0-cuda13"),
    ],
)
def test_default_image_names(backend: str, expected: str) -> None:
    """Default images follow {backend_image}:{major}.{minor}-cuda{N}; tensorrt maps to trtllm."""
    assert images.default_image(backend, version="2.0.0") == expected


def test_default_image_uses_package_version() -> None:
    """Without a version the package's own major.minor is used."""
    major, minor = __version__.split(".")[:2]
    assert images.default_image("vllm").endswith(f":{major}.{minor}-cuda12")


def test_default_image_cuda13() -> None:
    """Asking for CUDA 13 gives the CUDA 13 variant where one is published."""
    assert images.default_image("vllm", cuda_major=13, version="2.0.0") == (
        "llenergymeasure/vllm:2.0-cuda13"
    )


def test_default_image_falls_back_to_nearest_published_major() -> None:
    """TensorRT-LLM publishes only CUDA 13, so a CUDA 12 request gets the CUDA 13 image."""
    assert images.default_image("tensorrt", cuda_major=12, version="2.0.0").endswith("-cuda13")
    assert images.available_cuda_majors("tensorrt") == [13]
    assert images.available_cuda_majors("vllm") == [12, 13]


def test_unknown_backend_is_a_usage_error() -> None:
    """An unknown backend name is rejected with the known names."""
    with pytest.raises(UsageError, match="pytorch"):
        images.image_name("onnx")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime", "12.8"),
        ("pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime", "13.0"),
        ("vllm/vllm-openai:v0.33.0-cu129", "12.9"),
        ("vllm/vllm-openai:v0.25.0-cu129-ubuntu2404", "12.9"),
        ("vllm/vllm-openai:v0.31.0-cu130", "13.0"),
        ("nvidia/cuda:13.0.3-base-ubuntu22.04", None),  # version without "cuda" in the tag
        ("example.com:5000/team/img:cuda13-dev", "13"),
        ("registry.local:5000/pytorch/pytorch", None),  # a port is not a tag
        ("vllm/vllm-openai:v0.33.0", None),
        ("pytorch/pytorch:2.11.0-cpu", None),
    ],
)
def test_cuda_version_from_tag(ref: str, expected: str | None) -> None:
    """The CUDA version is read from the tag forms the upstream images use."""
    assert images.cuda_version_from_tag(ref) == expected


def test_cuda_version_from_env_wins_over_tag() -> None:
    """An inspected ENV CUDA_VERSION is ground truth, ahead of the tag."""
    env = ["PATH=/usr/bin", "CUDA_VERSION=13.0.3", "NV_CUDA_LIB_VERSION=13.0.3-1"]
    assert images.cuda_version_from_env(env) == "13.0.3"
    assert images.cuda_version_from_env({"CUDA_VERSION": "12.9.1"}) == "12.9.1"
    assert images.cuda_version_from_env(["CUDA_VERSION="]) is None
    assert images.cuda_version_from_base("x/y:cuda12.8", env) == "13.0.3"


def test_cuda_version_of_untagged_known_bases() -> None:
    """vLLM's default tag and TensorRT-LLM release tags map to the CUDA they are built with."""
    assert images.cuda_version_from_base("vllm/vllm-openai:v0.33.0") == "13.0"
    assert images.cuda_version_from_base("nvcr.io/nvidia/tensorrt-llm/release:1.2.1") == "13.0"
    with pytest.raises(UsageError):  # an older vLLM release is not assumed to be CUDA 13
        images.cuda_version_from_base("vllm/vllm-openai:v0.10.1")


def test_cuda_version_unknown_base_is_an_error() -> None:
    """A base whose CUDA cannot be told is an error, never a guessed tag."""
    with pytest.raises(UsageError, match="CUDA version"):
        images.cuda_version_from_base("llem-testbase:bookworm")


@pytest.mark.parametrize(("version", "major"), [("12.8", 12), ("13.0.3", 13), ("13", 13)])
def test_cuda_major_of(version: str, major: int) -> None:
    """The major is the first component."""
    assert images.cuda_major_of(version) == major


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        ("v2.0.1", "2.0.1"),
        ("refs/tags/v2.1.0", "2.1.0"),
        ("2.0.0", "2.0.0"),
        ("v2.1.0rc1", "2.1.0rc1"),
    ],
)
def test_parse_release_version(ref: str, version: str) -> None:
    """Release refs are accepted with or without v and refs/tags/."""
    assert images.parse_release_version(ref) == version


@pytest.mark.parametrize("ref", ["main", "v2", "v2.0", "latest", "v2.0.0-beta"])
def test_parse_release_version_rejects(ref: str) -> None:
    """Anything but MAJOR.MINOR.PATCH[pre] is not a release."""
    with pytest.raises(UsageError):
        images.parse_release_version(ref)


def test_publish_tags_final_release_default_cuda() -> None:
    """A final release on the default CUDA gets version, major.minor and latest, per registry."""
    tags = images.publish_tags("vllm", "v2.0.1", 12)
    assert tags == [
        "llenergymeasure/vllm:2.0.1-cuda12",
        "llenergymeasure/vllm:2.0-cuda12",
        "llenergymeasure/vllm:latest",
        "ghcr.io/llenergymeasure/vllm:2.0.1-cuda12",
        "ghcr.io/llenergymeasure/vllm:2.0-cuda12",
        "ghcr.io/llenergymeasure/vllm:latest",
    ]


def test_publish_tags_other_cuda_has_no_latest() -> None:
    """Only the default CUDA major moves latest."""
    tags = images.publish_tags("vllm", "2.0.1", 13, namespaces=["llenergymeasure"])
    assert tags == ["llenergymeasure/vllm:2.0.1-cuda13", "llenergymeasure/vllm:2.0-cuda13"]


def test_publish_tags_trtllm_latest_on_its_only_cuda() -> None:
    """TensorRT-LLM's only (CUDA 13) image carries latest, under the trtllm image name."""
    tags = images.publish_tags("tensorrt", "2.0.0", 13, namespaces=["llenergymeasure"])
    assert tags[-1] == "llenergymeasure/trtllm:latest"


def test_publish_tags_prerelease_only_exact_tag() -> None:
    """A release candidate never moves major.minor or latest."""
    tags = images.publish_tags("pytorch", "2.1.0rc1", 12, namespaces=["llenergymeasure"])
    assert tags == ["llenergymeasure/pytorch:2.1.0rc1-cuda12"]


def test_default_image_is_a_published_tag() -> None:
    """What `llem run` looks for by default is among the tags a release pushes."""
    for variant in images.MATRIX:
        default = images.default_image(variant.backend, cuda_major=variant.cuda_major)
        assert default in images.publish_tags(variant.backend, __version__, variant.cuda_major)


def test_matrix_covers_backends_and_both_cuda_majors() -> None:
    """The release matrix has every backend, and CUDA 12 and 13 where the engine ships both."""
    entries = images.matrix("v2.0.0")["include"]
    pairs = {(e["image"], e["cuda_major"]) for e in entries}
    assert pairs == {
        ("pytorch", 12),
        ("pytorch", 13),
        ("vllm", 12),
        ("vllm", 13),
        ("trtllm", 13),
    }
    assert len({e["name"] for e in entries}) == len(entries)


def test_matrix_cuda_major_comes_from_the_base_image() -> None:
    """Each entry's CUDA major is the one derived from its base image, not typed by hand."""
    for entry in images.matrix("v2.0.0")["include"]:
        derived = images.cuda_version_from_base(entry["base_image"])
        assert entry["cuda_version"] == derived
        assert entry["cuda_major"] == images.cuda_major_of(derived)
        assert all(
            t.endswith((f"-cuda{entry['cuda_major']}", ":latest")) for t in entry["tags"].split()
        )


def test_matrix_entry_build_args_and_dockerfile() -> None:
    """Build args pin the base, engine and CUDA version and the release version."""
    entry = next(e for e in images.matrix("v2.0.3")["include"] if e["name"] == "vllm-cuda12")
    args = dict(line.split("=", 1) for line in entry["build_args"].splitlines())
    assert args["BASE_IMAGE"] == "vllm/vllm-openai:v0.33.0-cu129"
    assert args["ENGINE_VERSION"] == "0.33.0"
    assert args["CUDA_VERSION"] == "12.9"
    assert args["LLEM_VERSION"] == "2.0.3"
    assert entry["dockerfile"] == "images/vllm/Dockerfile"
    assert entry["cache_ref"] == "ghcr.io/llenergymeasure/vllm:2.0-cuda12"


def test_main_matrix_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m llenergymeasure.images matrix` prints the matrix the workflow consumes."""
    assert images.main(["matrix", "--version", "v2.0.0", "--ghcr-owner", "SomeOrg"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == images.matrix("v2.0.0", namespaces=("llenergymeasure", "ghcr.io/someorg"))


def test_main_tags_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    """The tags and default subcommands print one reference per line."""
    assert (
        images.main(["tags", "--backend", "trtllm", "--cuda-major", "13", "--version", "v2.0.0"])
        == 0
    )
    assert "llenergymeasure/trtllm:2.0.0-cuda13" in capsys.readouterr().out.split()
    assert images.main(["default", "--backend", "tensorrt"]) == 0
    assert capsys.readouterr().out.strip() == images.default_image("tensorrt")


def test_main_cuda_expect_major(capsys: pytest.CaptureFixture[str]) -> None:
    """`cuda --expect-major` exits 1 when the base image's CUDA major differs."""
    base = "pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime"
    assert images.main(["cuda", "--base-image", base, "--expect-major", "12"]) == 0
    assert images.main(["cuda", "--base-image", base, "--expect-major", "13"]) == 1
    assert images.main(["cuda", "--base-image", "unknown:tag"]) == 2
    capsys.readouterr()


def test_import_has_no_side_effects() -> None:
    """Importing the module neither imports docker nor touches the engine."""
    import subprocess
    import sys

    code = "import sys, llenergymeasure.images; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
