"""Fixtures for the study-file tests: write a study into tmp_path, isolate user defaults."""

from __future__ import annotations

import gc
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llenergymeasure.config.user import ENV_USER_CONFIG


@pytest.fixture(autouse=True)
def _no_user_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the developer's ~/.config/llenergymeasure/config.yaml in a test."""
    monkeypatch.setenv(ENV_USER_CONFIG, "")


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    """``llem run --dry-run`` turns the cyclic GC off for its short-lived process; undo it."""
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """``write("study.yaml", text)`` writes dedented text under tmp_path and returns the path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write
