"""CUDA versions of images: read from a tag, an image's environment, or the registry's
table of upstream bases whose tag does not say (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from llenergymeasure.errors import UsageError
from llenergymeasure_contract.registry import REGISTRY

# Base images whose tag does not carry the CUDA version: the CUDA their maintainers build
# them with, from each backend's registry entry (the reasons are cited there).
_UNTAGGED_BASE_CUDA: tuple[tuple[str, str], ...] = tuple(
    pair for spec in REGISTRY for pair in spec.untagged_base_cuda
)

_CUDA_DOTTED = re.compile(r"(?:^|[-_.:])cuda[-_]?(\d{2})\.(\d)")
_CUDA_MAJOR_ONLY = re.compile(r"(?:^|[-_.:])cuda[-_]?(\d{2})(?:$|[-_])")
_CU_COMPACT = re.compile(r"(?:^|[-_.:])cu(\d{2})(\d)(?:$|[-_])")


def cuda_version_from_tag(image_ref: str) -> str | None:
    """CUDA version written in an image tag, or None.

    Understands ``...-cuda12.8-...`` (PyTorch), ``...-cu129`` (vLLM, ``12.9``) and
    ``...-cuda13-...`` (major only, returned as ``"13"``).
    """
    tag = image_ref.rsplit("/", 1)[-1]
    tag = tag.split(":", 1)[1] if ":" in tag else ""
    tag = tag.split("@", 1)[0].lower()
    if not tag:
        return None
    if m := _CUDA_DOTTED.search(tag):
        return f"{int(m.group(1))}.{m.group(2)}"
    if m := _CU_COMPACT.search(tag):
        return f"{int(m.group(1))}.{m.group(2)}"
    if m := _CUDA_MAJOR_ONLY.search(tag):
        return str(int(m.group(1)))
    return None


def cuda_version_from_env(env: Iterable[str] | Mapping[str, str]) -> str | None:
    """``CUDA_VERSION`` from an image's environment (``Config.Env`` list or a mapping)."""
    if isinstance(env, Mapping):
        value = env.get("CUDA_VERSION")
    else:
        value = next((e.split("=", 1)[1] for e in env if e.startswith("CUDA_VERSION=")), None)
    if value is None or not re.match(r"^\d+(\.\d+)*$", value.strip()):
        return None
    return value.strip()


def cuda_version_from_base(
    base_image: str, env: Iterable[str] | Mapping[str, str] | None = None
) -> str:
    """CUDA version of a base image.

    Order: the image's own ``CUDA_VERSION`` (when ``env`` from ``docker image inspect`` is
    given; it is the ground truth), the tag, then the table of known untagged bases.

    Raises:
        UsageError: when none of them says.
    """
    if env is not None and (version := cuda_version_from_env(env)):
        return version
    if version := cuda_version_from_tag(base_image):
        return version
    for pattern, version in _UNTAGGED_BASE_CUDA:
        if re.match(pattern, base_image):
            return version
    raise UsageError(
        f"cannot tell the CUDA version of base image {base_image!r}: its tag does not say and it"
        " is not a known base; inspect it (llem images build reads ENV CUDA_VERSION) or name a"
        " tag with cudaX.Y"
    )


def cuda_major_of(cuda_version: str) -> int:
    """``"12.8"`` / ``"13.0.3"`` / ``"13"`` -> 12 / 13 / 13."""
    return int(cuda_version.split(".", 1)[0])
