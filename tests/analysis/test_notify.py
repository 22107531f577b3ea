"""Webhooks against real HTTP servers in test containers: signature, 500, never answering."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.analysis.conftest import REPO, Hook, llem_env

from llenergymeasure.config.notify import NotifyConfig
from llenergymeasure.errors import ConfigError
from llenergymeasure.notify import Notifier


def cfg(*urls: object, **kw: object) -> NotifyConfig:
    return NotifyConfig.model_validate({"webhooks": list(urls), **kw})


def wait_for(pred: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.docker
def test_signed_post_verifies(start_hook: Callable[[str], Hook]) -> None:
    """The X-LLEM-Signature header is the HMAC-SHA256 of the exact body under the secret."""
    hook = start_hook("ok")
    try:
        n = Notifier.for_study(
            cfg({"url": hook.url, "secret_env": "HOOK_KEY"}), environ={"HOOK_KEY": "k3y"}
        )
        assert n is not None
        n.send("study_end", {"study_id": "s", "state": "completed"})
        n.close(5.0)
        (req,) = hook.received
        expected = "sha256=" + hmac.new(b"k3y", req["body"], hashlib.sha256).hexdigest()
        assert req["headers"]["X-LLEM-Signature"] == expected
        assert json.loads(req["body"]) == {
            "event": "study_end",
            "study_id": "s",
            "state": "completed",
        }
    finally:
        hook.close()


@pytest.mark.docker
def test_500_is_retried_with_backoff_then_dropped(start_hook: Callable[[str], Hook]) -> None:
    """An endpoint that answers 500: 1 + retries attempts, spaced by the doubling backoff."""
    hook = start_hook("fail")
    try:
        n = Notifier(cfg(hook.url, retries=2, backoff_s=0.1))
        n.send("experiment_end", {"run_id": "r"})
        wait_for(lambda: len(hook.received) == 3)
        wait_for(lambda: n.workers[0].failed == 1)
        (line,) = n.close(2.0)
        assert "0 delivered, 1 failed" in line and "HTTP 500" in line
        t = [r["t"] for r in hook.received]
        assert t[1] - t[0] >= 0.09 and t[2] - t[1] >= 0.19
        assert n.workers[0].failed == 1 and n.workers[0].delivered == 0
    finally:
        hook.close()


@pytest.mark.docker
def test_never_answering_server_does_not_block(start_hook: Callable[[str], Hook]) -> None:
    """send() returns at once; close() gives up after its bound, the study goes on."""
    hook = start_hook("hang")
    try:
        n = Notifier(cfg(hook.url, timeout_s=5.0, retries=3))
        t0 = time.monotonic()
        for i in range(20):
            n.send("experiment_end", {"run_id": f"r{i}"})
        assert time.monotonic() - t0 < 0.5
        wait_for(lambda: len(hook.received) >= 1)
        t1 = time.monotonic()
        n.close(0.5)
        assert time.monotonic() - t1 < 1.5
    finally:
        hook.close()


@pytest.mark.docker
def test_events_filter(start_hook: Callable[[str], Hook]) -> None:
    """A webhook subscribed to study_end only gets study_end."""
    hook = start_hook("ok")
    try:
        n = Notifier(cfg({"url": hook.url, "events": ["study_end"]}))
        n.send("experiment_end", {"run_id": "r"})
        n.send("study_end", {"state": "completed"})
        n.close(5.0)
        assert [json.loads(r["body"])["event"] for r in hook.received] == ["study_end"]
    finally:
        hook.close()


def test_missing_secret_env_is_a_config_error() -> None:
    """secret_env naming an unset variable is refused before the study starts."""
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret_env: NOPE_KEY is not set"):
        Notifier.for_study(cfg({"url": "http://127.0.0.1:9/x", "secret_env": "NOPE_KEY"}), {})


def test_without_httpx_the_study_is_refused_naming_the_extra(tmp_path: Path) -> None:
    """No HTTP client installed: `llem run --dry-run` exits 2 naming llenergymeasure[webhooks]."""
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "examples" / "cpu-quickstart.yaml"),
                "notify": {"webhooks": ["http://127.0.0.1:9/hook"]},
            }
        )
    )
    code = (
        "import sys; sys.modules['httpx'] = None\n"  # as if the extra were not installed
        "from llenergymeasure.cli import main; sys.exit(main())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "run", str(study), "--dry-run"],
        env=llem_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install 'llenergymeasure[webhooks]'" in out.stderr
    assert "Traceback" not in out.stderr
