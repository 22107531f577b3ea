"""`llem images list` / `llem images build` argument handling (no image is built here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llenergymeasure import images
from llenergymeasure.cli.images import images_app
from llenergymeasure.errors import UsageError

runner = CliRunner()


def test_list_without_docker_shows_every_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    """`llem images list` prints the whole matrix, with '?' for presence when Docker is away."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = runner.invoke(images_app, ["list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for variant in images.MATRIX:
        assert images.default_image(variant.backend, cuda_major=variant.cuda_major) in result.output
    assert "?" in result.output


def test_build_outside_a_checkout_is_a_usage_error(tmp_path: Path) -> None:
    """Building needs the images/ folder of a checkout; elsewhere it says so."""
    result = runner.invoke(images_app, ["build", "--context", str(tmp_path)])
    assert isinstance(result.exception, UsageError)
    assert "images/" in str(result.exception)


def test_build_tag_needs_one_backend() -> None:
    """--tag with several backends is refused before anything is built."""
    root = Path(__file__).resolve().parents[2]
    result = runner.invoke(images_app, ["build", "--context", str(root), "--tag", "x:y"])
    assert isinstance(result.exception, UsageError)


def test_build_arg_must_be_key_value() -> None:
    """A --build-arg without '=' is refused."""
    root = Path(__file__).resolve().parents[2]
    args = ["build", "--context", str(root), "-b", "vllm", "--build-arg", "NOVALUE"]
    result = runner.invoke(images_app, args)
    assert isinstance(result.exception, UsageError)
