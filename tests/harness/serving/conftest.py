"""A real ``transformers serve`` on a tiny checkpoint built on the spot (no download).

The server is started once per session (about 10 s on the CPU) in a testcontainers container
of the pytorch test image (host network, a log-line wait) and removed at the end. The
tests skip when transformers' serving dependencies (fastapi, uvicorn, openai) are missing,
except under CI (``CI=true``), where they must be there (``make install`` installs them).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SERVE_MODULES = ("torch", "transformers", "fastapi", "uvicorn", "openai", "aiohttp")


def serving_unavailable_reason() -> str | None:
    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"transformers serve needs {', '.join(missing)} (make install)"
    return None


def require_serving() -> None:
    reason = serving_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the serving tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a locally trained tokenizer."""
    require_serving()
    from llenergymeasure_harness.testing.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama-ckpt")


@pytest.fixture(scope="session")
def transformers_server(
    tiny_checkpoint: Path, pytorch_test_image: str, test_container: Callable[..., Any]
) -> Iterator[str]:
    """Base URL of a ``transformers serve`` for the tiny checkpoint, in a test container of the
    pytorch image on the host's network (the checkpoint mounted at its own path, so the served
    model name is that path), ready once uvicorn says the application started."""
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    from llenergymeasure_harness.serving.server import HOST, free_port

    port = free_port()
    command = [
        "python3",
        "-m",
        "transformers.cli.transformers",
        "serve",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    server = (
        test_container(pytorch_test_image, command, network_mode="host")
        .with_env("HF_HUB_OFFLINE", "1")
        .with_volume_mapping(tiny_checkpoint, str(tiny_checkpoint), "ro")
        .waiting_for(
            LogMessageWaitStrategy("Application startup complete").with_startup_timeout(180)
        )
    )
    with server:
        yield f"http://{HOST}:{port}"
