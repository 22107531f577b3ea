"""The local runner: same contract as containers, timeouts and Ctrl-C forwarding."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from tests.runners.dockerutil import FAKE_HARNESS

from llenergymeasure.runners.local import LocalRunner
from llenergymeasure.runners.spec import RunRequest, build_local_spec
from llenergymeasure.testing.fake_docker import make_fake_result


def local(req: RunRequest, mode: str) -> LocalRunner:
    result = make_fake_result(build_local_spec(req, python="python3", base_env={}).env)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "LLEM_FAKE_MODE": mode,
        "LLEM_FAKE_RESULT": result.model_dump_json(),
    }
    return LocalRunner(
        command=(sys.executable, "-c", FAKE_HARNESS), base_env=env, stop_grace_s=1, poll_s=0.02
    )


def test_completed(make_request: Callable[..., RunRequest]) -> None:
    """A harness that writes a valid result completes; its output is in the log."""
    req = make_request()
    lines: list[str] = []
    out = local(req, "ok").run(req, echo=lines.append)
    assert out.status == "completed", out.message
    assert any("fake harness ok" in line for line in lines)
    assert b"fake harness ok" in req.log_path.read_bytes()


def test_harness_error(make_request: Callable[..., RunRequest]) -> None:
    """error.json is read and reported."""
    req = make_request()
    out = local(req, "error").run(req)
    assert out.failure_kind == "harness_error" and "no weights" in (out.message or "")


def test_crash_by_signal(make_request: Callable[..., RunRequest]) -> None:
    """A child killed by a signal is reported with the signal's name."""
    req = make_request()
    out = local(req, "crash").run(req)
    assert out.failure_kind == "exit_nonzero" and out.exit_code == -11
    assert "SIGSEGV" in (out.message or "")


def test_timeout_terminates(make_request: Callable[..., RunRequest]) -> None:
    """A hang is terminated at the timeout."""
    req = make_request(timeout_s=0.5)
    t0 = time.monotonic()
    out = local(req, "hang").run(req)
    assert out.failure_kind == "timeout" and time.monotonic() - t0 < 5


def test_ctrl_c_is_forwarded(make_request: Callable[..., RunRequest]) -> None:
    """Ctrl-C in the orchestrator stops the child and yields an interrupted outcome."""
    # Python's own Ctrl-C handler, also where pytest started with SIGINT ignored (a background
    # job of a non-interactive shell, which Python then leaves ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        req = make_request()
        runner = local(req, "hang")
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        out = runner.run(req)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.status == "interrupted" and time.monotonic() - t0 < 5
