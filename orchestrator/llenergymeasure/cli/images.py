"""``llem images``: build the backend images locally and list what is published and present.

The main app registers :data:`images_app` with ``app.add_typer(images_app, name="images")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from llenergymeasure import images
from llenergymeasure.errors import PreflightError, UsageError
from llenergymeasure_contract.registry import REGISTRY

__all__ = ["images_app"]

images_app = typer.Typer(
    rich_markup_mode=None,  # plain click help: whole option names at 80 columns, no <bool>
    help="Build the backend images locally, or list them.",
    no_args_is_help=True,
)

_OFFLINE_PIP = "--no-index --find-links=/tmp/wheels"


def _parse_build_args(values: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {value!r}: expected KEY=VALUE")
        parsed[key] = val
    return parsed


@images_app.command("build")
def build_command(
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend", "-b", help=", ".join(REGISTRY.names()) + " (repeatable; default all)."
        ),
    ] = None,
    base_image: Annotated[
        str | None, typer.Option(help="Build on this base instead of the pinned upstream image.")
    ] = None,
    cuda_major: Annotated[
        int, typer.Option(help="Which published variant to build (12 or 13).")
    ] = images.DEFAULT_CUDA_MAJOR,
    tag: Annotated[
        str | None, typer.Option(help="Image tag (default: the default image name).")
    ] = None,
    build_arg: Annotated[
        list[str] | None, typer.Option("--build-arg", help="Extra KEY=VALUE build argument.")
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            help="--network=none and wheels only from build/wheelhouse "
            "(fill it first with scripts/build-wheelhouse.sh)."
        ),
    ] = False,
    context: Annotated[
        Path | None, typer.Option(help="Repository checkout holding images/ (default: search up).")
    ] = None,
) -> None:
    """Build backend images from this checkout's Dockerfiles with the local Docker engine.

    Example: llem images build --backend vllm --cuda-major 12
    """
    console = Console(stderr=True)
    root = images.find_project_root(context)
    if root is None:
        raise UsageError(
            "no images/ folder found here or above; run from a llenergymeasure checkout "
            "or pass --context"
        )
    backends = backend or list(images.IMAGE_BACKENDS)
    if tag is not None and len(backends) > 1:
        raise UsageError("--tag needs exactly one --backend")
    extra = _parse_build_args(build_arg or [])
    if offline:
        extra.setdefault("PIP_EXTRA_ARGS", _OFFLINE_PIP)

    wheels = images.build_image_wheels(root)
    console.print("wheels: " + ", ".join(w.name for w in wheels))
    for name in backends:
        target = tag or _default_tag(name, base_image, cuda_major)
        console.print(f"building [bold]{target}[/] from {images.dockerfile_for(name)}")
        image_id = images.build_image(
            name,
            tag=target,
            context=root,
            base_image=base_image,
            cuda_major=cuda_major,
            extra_build_args=extra,
            network_mode="none" if offline else None,
            on_line=lambda line: console.print(line, markup=False, highlight=False),
        )
        typer.echo(f"{target} {image_id}")


def _default_tag(backend: str, base_image: str | None, cuda_major: int) -> str:
    if base_image is None:
        return images.default_image(backend, cuda_major=cuda_major)
    try:
        major = images.cuda_major_of(images.cuda_version_from_base(base_image))
    except UsageError:
        return f"{images.DOCKERHUB_NAMESPACE}/{images.image_name(backend)}:local"
    return images.default_image(backend, cuda_major=major)


@images_app.command("list")
def list_command() -> None:
    """List the published image variants and whether each is present locally.

    Example: llem images list
    """
    from llenergymeasure.textable import Column, grid

    present = _local_tags()
    rows = []
    for variant in images.MATRIX:
        ref = images.default_image(variant.backend, cuda_major=variant.cuda_major)
        local = "?" if present is None else ("yes" if ref in present else "no")
        rows.append((variant, ref, local))
    # the image and its base on two lines of one cell: 80 columns hold both whole
    lines = grid(
        [
            Column("backend", [v.backend for v, _, _ in rows]),
            Column("CUDA", [v.cuda_version for v, _, _ in rows]),
            Column("engine", [v.engine_version for v, _, _ in rows]),
            Column("local", [local for _, _, local in rows]),
            Column("image\n(base image)", [f"{ref}\n({v.base_image})" for v, ref, _ in rows]),
        ]
    )
    typer.echo("\n".join(["llenergymeasure images", *lines]))
    if present is None:
        typer.echo("local ?: Docker is not reachable")


def _local_tags() -> set[str] | None:
    """Tags of local llenergymeasure images, or None when Docker is unreachable."""
    try:
        client: Any = images.docker_client()
    except PreflightError:
        return None
    tags: set[str] = set()
    for image in client.images.list():
        tags.update(t for t in image.tags if t.startswith(f"{images.DOCKERHUB_NAMESPACE}/"))
    return tags
