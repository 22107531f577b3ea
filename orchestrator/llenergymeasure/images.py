"""Backend images: names, CUDA majors, release tags, the publish matrix, and local builds.

One Dockerfile per backend under ``images/`` (``pytorch``, ``vllm``, ``trtllm``), each on
that engine's official upstream image. Everything about *which* image is called *what* lives
here, as pure functions, so the release workflow (``.github/workflows/images.yml``), the
``llem images`` commands and the runner's default image all agree and are unit-tested::

    default_image("vllm")                      -> "llenergymeasure/vllm:2.0-cuda12"
    publish_tags("vllm", "2.0.1", 13)          -> "llenergymeasure/vllm:2.0.1-cuda13", ...
    cuda_version_from_base("pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime") -> "12.8"

The CUDA major in a tag is derived from the base image (its tag, or its ``CUDA_VERSION``
environment variable read with ``docker image inspect``), never typed by hand.

Only :func:`build_image`, :func:`inspect_base_env`, :func:`build_image_wheels` and
:func:`main` touch Docker, a subprocess or the file system, and only when called.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from llenergymeasure import __version__
from llenergymeasure._version import CONTRACT_VERSION
from llenergymeasure.cuda_tags import (
    cuda_major_of,
    cuda_version_from_base,
    cuda_version_from_env,
    cuda_version_from_tag,
)
from llenergymeasure.errors import PreflightError, RunnerError, UsageError
from llenergymeasure_contract.env import LABEL_BACKEND, LABEL_CONTRACT_VERSION
from llenergymeasure_contract.registry import REGISTRY

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_IMAGES",
    "DEFAULT_CUDA_MAJOR",
    "DOCKERHUB_NAMESPACE",
    "GHCR_NAMESPACE",
    "IMAGE_BACKENDS",
    "IMAGE_DISTRIBUTIONS",
    "LABEL_BACKEND",
    "LABEL_BASE_NAME",
    "LABEL_CONTRACT_VERSION",
    "LABEL_CUDA_VERSION",
    "LABEL_ENGINE",
    "LABEL_ENGINE_VERSION",
    "LABEL_SOURCE",
    "LABEL_VERSION",
    "MATRIX",
    "TEST_BASE_IMAGE",
    "TEST_PYTORCH_IMAGE",
    "ImageVariant",
    "available_cuda_majors",
    "build_args",
    "build_image",
    "build_image_wheels",
    "cuda_major_of",
    "cuda_version_from_base",
    "cuda_version_from_env",
    "cuda_version_from_tag",
    "default_cuda_major",
    "default_image",
    "docker_client",
    "dockerfile_for",
    "find_project_root",
    "image_name",
    "inspect_base_env",
    "main",
    "matrix",
    "minor_version",
    "parse_release_version",
    "publish_tags",
    "variant_for",
]

#: config backend name -> image (and images/ folder) name, from the backend registry.
BACKEND_IMAGES: Mapping[str, str] = MappingProxyType({spec.name: spec.image for spec in REGISTRY})


def _image_owners() -> tuple[str, ...]:
    owners: dict[str, str] = {}
    for spec in REGISTRY:
        owners.setdefault(spec.image, spec.name)
    return tuple(owners.values())


#: One backend per image, the first registered with it: ``endpoint`` runs in the pytorch
#: image, so "build every image" builds that image once, as pytorch.
IMAGE_BACKENDS: tuple[str, ...] = _image_owners()

DOCKERHUB_NAMESPACE = "llenergymeasure"
GHCR_NAMESPACE = "ghcr.io/llenergymeasure"

#: CUDA major of the default images. 12 runs on every driver from R525 on; the CUDA 13
#: images need R580+. A backend that publishes no CUDA 12 image falls back to its nearest.
DEFAULT_CUDA_MAJOR = 12

#: Local offline test images (built by scripts/build-base.sh and scripts/build-test-images.sh).
TEST_BASE_IMAGE = "llem-testbase:bookworm"
TEST_PYTORCH_IMAGE = "llenergymeasure/pytorch:test-cpu"

# OCI annotation keys plus our own; the Dockerfiles set exactly these, and the runner copies
# all labels into each result's environment snapshot (LLEM_IMAGE_LABELS_JSON).
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_SOURCE = "org.opencontainers.image.source"
LABEL_BASE_NAME = "org.opencontainers.image.base.name"
LABEL_ENGINE = "io.llenergymeasure.engine"
LABEL_ENGINE_VERSION = "io.llenergymeasure.engine.version"
LABEL_CUDA_VERSION = "io.llenergymeasure.cuda.version"

_RELEASE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)((?:a|b|rc|\.dev|\.post)\d+)?$")


@dataclass(frozen=True)
class ImageVariant:
    """One published image: a backend on one upstream base image (hence one CUDA major)."""

    backend: str
    base_image: str
    engine_version: str

    @property
    def image(self) -> str:
        """Image name (and ``images/`` folder), e.g. ``trtllm``."""
        return image_name(self.backend)

    @property
    def cuda_version(self) -> str:
        """CUDA version of the base image, from its tag or the known-base table."""
        return cuda_version_from_base(self.base_image)

    @property
    def cuda_major(self) -> int:
        return cuda_major_of(self.cuda_version)


#: What a release publishes: backend x CUDA major, both majors where the engine ships both
#: (each backend's ``release_bases`` in the registry).
MATRIX: tuple[ImageVariant, ...] = tuple(
    ImageVariant(spec.name, base.image, base.engine_version)
    for spec in REGISTRY
    for base in spec.release_bases
)


# --------------------------------------------------------------------------- names


def image_name(backend: str) -> str:
    """Image name for a backend; accepts config names (``tensorrt``) and image names (``trtllm``).

    Raises:
        UsageError: for an unknown backend.
    """
    if backend in BACKEND_IMAGES:
        return BACKEND_IMAGES[backend]
    if backend in BACKEND_IMAGES.values():
        return backend
    known = ", ".join(sorted({*BACKEND_IMAGES, *BACKEND_IMAGES.values()}))
    raise UsageError(f"unknown backend {backend!r}; expected one of {known}")


def dockerfile_for(backend: str) -> str:
    """Dockerfile path, relative to the repository root, for a backend."""
    return f"images/{image_name(backend)}/Dockerfile"


def parse_release_version(ref: str) -> str:
    """``v2.0.1`` / ``refs/tags/v2.0.1`` / ``2.0.1rc1`` -> the version without ``v``.

    Raises:
        UsageError: if the ref is not a release version.
    """
    tag = ref.removeprefix("refs/tags/")
    match = _RELEASE.match(tag)
    if match is None:
        raise UsageError(f"{ref!r} is not a release version (expected vMAJOR.MINOR.PATCH)")
    return tag.removeprefix("v")


def minor_version(version: str) -> str:
    """``2.0.1`` -> ``2.0``."""
    match = _RELEASE.match(version)
    if match is None:
        raise UsageError(f"{version!r} is not a release version (expected MAJOR.MINOR.PATCH)")
    return f"{match.group(1)}.{match.group(2)}"


def _is_prerelease(version: str) -> bool:
    match = _RELEASE.match(version)
    return bool(match and match.group(4) and not match.group(4).startswith(".post"))


def available_cuda_majors(backend: str, variants: Iterable[ImageVariant] = MATRIX) -> list[int]:
    """CUDA majors published for a backend, ascending."""
    image = image_name(backend)
    return sorted({v.cuda_major for v in variants if v.image == image})


def _published_major(backend: str, cuda_major: int, variants: Sequence[ImageVariant]) -> int:
    majors = available_cuda_majors(backend, variants)
    if not majors or cuda_major in majors:
        return cuda_major
    # Nearest published major; ties go to the newer one (it runs on the newer drivers).
    return min(majors, key=lambda m: (abs(m - cuda_major), -m))


def default_image(
    backend: str,
    *,
    cuda_major: int = DEFAULT_CUDA_MAJOR,
    version: str = __version__,
    namespace: str = DOCKERHUB_NAMESPACE,
    variants: Sequence[ImageVariant] = MATRIX,
) -> str:
    """Default image reference for a backend: ``{namespace}/{image}:{major}.{minor}-cuda{N}``.

    A backend that publishes no image for ``cuda_major`` (TensorRT-LLM has no CUDA 12 build)
    gets its nearest published major instead of a name that can never be pulled.

    Example:
        >>> default_image("tensorrt", version="2.0.0")
        'llenergymeasure/trtllm:2.0-cuda13'
    """
    major = _published_major(backend, cuda_major, variants)
    return f"{namespace}/{image_name(backend)}:{minor_version(version)}-cuda{major}"


def default_cuda_major(backend: str, variants: Sequence[ImageVariant] = MATRIX) -> int:
    """The CUDA major that carries ``latest`` for a backend."""
    return _published_major(backend, DEFAULT_CUDA_MAJOR, variants)


def publish_tags(
    backend: str,
    version: str,
    cuda_major: int,
    *,
    namespaces: Sequence[str] = (DOCKERHUB_NAMESPACE, GHCR_NAMESPACE),
    variants: Sequence[ImageVariant] = MATRIX,
) -> list[str]:
    """Every tag a release pushes for one variant, in every namespace.

    ``{version}-cuda{N}`` always; ``{major}.{minor}-cuda{N}`` and, for the backend's default
    CUDA major, ``latest`` only for final releases (a release candidate must not move them).

    Example:
        >>> publish_tags("vllm", "2.0.1", 12, namespaces=["llenergymeasure"])[-1]
        'llenergymeasure/vllm:latest'
    """
    version = parse_release_version(version)
    suffixes = [f"{version}-cuda{cuda_major}"]
    if not _is_prerelease(version):
        suffixes.append(f"{minor_version(version)}-cuda{cuda_major}")
        if cuda_major == default_cuda_major(backend, variants):
            suffixes.append("latest")
    image = image_name(backend)
    return [f"{ns.rstrip('/')}/{image}:{s}" for ns in namespaces for s in suffixes]


# --------------------------------------------------------------------------- CUDA


# --------------------------------------------------------------------------- matrix


def variant_for(
    backend: str, cuda_major: int = DEFAULT_CUDA_MAJOR, variants: Sequence[ImageVariant] = MATRIX
) -> ImageVariant:
    """The published variant of a backend for a CUDA major (nearest if not published)."""
    major = _published_major(backend, cuda_major, variants)
    image = image_name(backend)
    for variant in variants:
        if variant.image == image and variant.cuda_major == major:
            return variant
    raise UsageError(f"no image variant for backend {backend!r}")


def build_args(
    variant: ImageVariant, *, version: str = __version__, revision: str = ""
) -> dict[str, str]:
    """The ``--build-arg`` values for a variant's Dockerfile."""
    return {
        "BASE_IMAGE": variant.base_image,
        "ENGINE_VERSION": variant.engine_version,
        "CUDA_VERSION": variant.cuda_version,
        "LLEM_VERSION": version,
        "CONTRACT_VERSION": str(CONTRACT_VERSION),
        "VCS_REF": revision,
    }


def matrix(
    version: str,
    *,
    namespaces: Sequence[str] = (DOCKERHUB_NAMESPACE, GHCR_NAMESPACE),
    variants: Sequence[ImageVariant] = MATRIX,
    revision: str = "",
) -> dict[str, list[dict[str, Any]]]:
    """The GitHub Actions ``strategy.matrix`` for a release: ``{"include": [...]}``.

    Each entry has everything a job needs: the Dockerfile, build args, the CUDA major it must
    verify on the pulled base, the tags (newline-joined for docker/build-push-action), a
    local smoke-test tag and the image whose inline cache the build may reuse.
    """
    version = parse_release_version(version)
    include: list[dict[str, Any]] = []
    for v in variants:
        tags = publish_tags(v.backend, version, v.cuda_major, namespaces=namespaces)
        include.append(
            {
                "name": f"{v.image}-cuda{v.cuda_major}",
                "backend": v.backend,
                "image": v.image,
                "cuda_major": v.cuda_major,
                "cuda_version": v.cuda_version,
                "base_image": v.base_image,
                "engine_version": v.engine_version,
                "dockerfile": dockerfile_for(v.backend),
                "build_args": "\n".join(
                    f"{k}={val}"
                    for k, val in build_args(v, version=version, revision=revision).items()
                ),
                "tags": "\n".join(tags),
                "smoke_tag": f"llem-smoke/{v.image}:cuda{v.cuda_major}",
                # The same minor's previous push: inline build cache for this build.
                "cache_ref": f"{namespaces[-1].rstrip('/')}/{v.image}:"
                f"{minor_version(version)}-cuda{v.cuda_major}",
            }
        )
    return {"include": include}


# --------------------------------------------------------------------------- I/O, on call


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest directory at or above ``start`` holding ``images/pytorch/Dockerfile``."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "images" / "pytorch" / "Dockerfile").is_file():
            return directory
    return None


#: The distributions every image installs (their folders in the checkout): the contract and
#: the harness only, never the host CLI.
IMAGE_DISTRIBUTIONS: tuple[tuple[str, str], ...] = (
    ("contract", "llenergymeasure_contract"),
    ("harness", "llenergymeasure_harness"),
)


def build_image_wheels(root: Path, python: str = sys.executable) -> list[Path]:
    """Build the contract and harness wheels into ``root/build/wheelhouse`` (what images COPY).

    Raises:
        RunnerError: if pip fails.
    """
    wheelhouse = root / "build" / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    built: list[Path] = []
    for folder, stem in IMAGE_DISTRIBUTIONS:
        for old in wheelhouse.glob(f"{stem}-*.whl"):
            old.unlink()
        cmd = [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheelhouse)]
        proc = subprocess.run(
            [*cmd, str(root / folder)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RunnerError(f"building the {folder} wheel failed:\n{proc.stderr.strip()}")
        wheels = sorted(wheelhouse.glob(f"{stem}-*.whl"))
        if not wheels:
            raise RunnerError(f"pip wheel produced no {stem} wheel in {wheelhouse}")
        built.append(wheels[-1])
    return built


def docker_client() -> Any:
    """A pinged ``docker.DockerClient`` with the long API timeout an image build needs.

    Raises:
        PreflightError: if no engine answers.
    """
    from llenergymeasure.runners.docker import connect

    try:
        return connect(timeout_s=600.0)
    except RunnerError as exc:
        raise PreflightError([f"Docker is not reachable: {exc.message}"], hint=exc.hint) from exc


def inspect_base_env(image_ref: str, client: Any = None) -> list[str]:
    """``Config.Env`` of a local image (for :func:`cuda_version_from_base`).

    Raises:
        PreflightError: if Docker is unreachable or the image is not present.
    """
    import docker.errors

    client = client or docker_client()
    try:
        image = client.images.get(image_ref)
    except docker.errors.ImageNotFound as exc:
        raise PreflightError(
            [f"image {image_ref} is not present locally (docker pull it)"]
        ) from exc
    env = image.attrs.get("Config", {}).get("Env") or []
    return [str(e) for e in env]


def build_image(
    backend: str,
    *,
    tag: str,
    context: Path,
    base_image: str | None = None,
    cuda_major: int = DEFAULT_CUDA_MAJOR,
    extra_build_args: Mapping[str, str] | None = None,
    network_mode: str | None = None,
    client: Any = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Build one backend image with the Docker SDK (classic builder); returns the image id.

    ``context`` is the repository root with ``build/wheelhouse/`` filled. Without
    ``base_image`` the published variant for ``cuda_major`` is built. When the base image is
    local, its CUDA version is read from its environment; otherwise from its tag.

    Raises:
        PreflightError: Docker unreachable.
        RunnerError: the build failed (the message holds the builder's last lines).
    """
    import docker.errors

    client = client or docker_client()
    variant = variant_for(backend, cuda_major)
    args = build_args(variant)
    if base_image is not None and base_image != variant.base_image:
        args["BASE_IMAGE"] = base_image
        try:
            env: list[str] | None = inspect_base_env(base_image, client)
        except PreflightError:
            env = None
        try:
            args["CUDA_VERSION"] = cuda_version_from_base(base_image, env)
        except UsageError:
            args["CUDA_VERSION"] = ""
    args.update(extra_build_args or {})

    tail: list[str] = []
    image_id: str | None = None
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=dockerfile_for(backend),
            tag=tag,
            buildargs=args,
            network_mode=network_mode,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                tail.append(str(chunk["error"]).rstrip())
                raise RunnerError(f"building {tag} failed:\n" + "\n".join(tail[-30:]))
            line = str(chunk.get("stream", "")).rstrip("\n")
            if line:
                tail.append(line)
                del tail[:-60]
                if on_line is not None:
                    on_line(line)
            if "aux" in chunk and isinstance(chunk["aux"], dict):
                image_id = str(chunk["aux"].get("ID", image_id))
    except docker.errors.APIError as exc:
        raise RunnerError(f"building {tag} failed: {exc.explanation or exc}") from exc
    if image_id is None:
        image_id = str(client.images.get(tag).id)
    logger.info("built %s (%s)", tag, image_id)
    return image_id


# --------------------------------------------------------------------------- CLI for CI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llenergymeasure.images {matrix,tags,cuda,default}``, used by images.yml."""
    parser = argparse.ArgumentParser(prog="python -m llenergymeasure.images")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_matrix = sub.add_parser("matrix", help="print the release build matrix as JSON")
    p_matrix.add_argument("--version", default=__version__, help="release tag or version")
    p_matrix.add_argument("--ghcr-owner", default="llenergymeasure")
    p_matrix.add_argument("--revision", default="")
    p_tags = sub.add_parser("tags", help="print the tags of one variant, one per line")
    p_tags.add_argument("--backend", required=True)
    p_tags.add_argument("--cuda-major", type=int, required=True)
    p_tags.add_argument("--version", default=__version__)
    p_tags.add_argument("--ghcr-owner", default="llenergymeasure")
    p_cuda = sub.add_parser("cuda", help="print the CUDA version of a base image")
    p_cuda.add_argument("--base-image", required=True)
    p_cuda.add_argument("--inspect", action="store_true", help="read ENV CUDA_VERSION (local)")
    p_cuda.add_argument("--expect-major", type=int, help="exit 1 unless the major matches")
    p_default = sub.add_parser("default", help="print the default image of a backend")
    p_default.add_argument("--backend", required=True)
    p_default.add_argument("--cuda-major", type=int, default=DEFAULT_CUDA_MAJOR)
    ns = parser.parse_args(argv)

    def ghcr(owner: str) -> str:
        return f"ghcr.io/{owner.lower()}"

    out = sys.stdout
    try:
        if ns.cmd == "matrix":
            namespaces = (DOCKERHUB_NAMESPACE, ghcr(ns.ghcr_owner))
            out.write(json.dumps(matrix(ns.version, namespaces=namespaces, revision=ns.revision)))
            out.write("\n")
        elif ns.cmd == "tags":
            namespaces = (DOCKERHUB_NAMESPACE, ghcr(ns.ghcr_owner))
            tags = publish_tags(ns.backend, ns.version, ns.cuda_major, namespaces=namespaces)
            out.write("\n".join(tags) + "\n")
        elif ns.cmd == "cuda":
            env = inspect_base_env(ns.base_image) if ns.inspect else None
            version = cuda_version_from_base(ns.base_image, env)
            out.write(version + "\n")
            if ns.expect_major is not None and cuda_major_of(version) != ns.expect_major:
                sys.stderr.write(
                    f"{ns.base_image}: CUDA {version}, expected major {ns.expect_major}\n"
                )
                return 1
        else:
            out.write(default_image(ns.backend, cuda_major=ns.cuda_major) + "\n")
    except (UsageError, PreflightError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
