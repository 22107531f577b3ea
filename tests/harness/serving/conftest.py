"""A real ``transformers serve`` on a tiny checkpoint built on the spot (no download).

The server is started once per session (about 10 s on the CPU) with the project's own
:class:`~llenergymeasure_harness.serving.server.ManagedServer` and stopped at the end. The
tests skip when transformers' serving dependencies (fastapi, uvicorn, openai) are missing,
except under CI (``CI=true``), where they must be there (``make install`` installs them).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

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
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of a running ``transformers serve`` for the tiny checkpoint."""
    import sys

    from llenergymeasure_harness.serving.server import HOST, ManagedServer, free_port

    port = free_port()
    argv = [
        sys.executable,
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
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = ManagedServer(argv, port=port, log_path=log)
    server.start()
    try:
        server.wait_healthy(180.0)
        yield server.base_url
    finally:
        server.stop()
