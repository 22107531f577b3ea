"""The shell helpers shared by the Makefile and .ci/run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.docker
def test_docker_up_is_idempotent() -> None:
    """With an engine already answering, docker-up says so and starts nothing."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker-up.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "already reachable" in proc.stdout


def test_docker_up_refuses_unreachable_remote_engine() -> None:
    """A remote DOCKER_HOST that does not answer is an error, not a local daemon start."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_HOST": "tcp://127.0.0.1:9"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker-up.sh")],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 1
    assert "not a local socket" in proc.stderr


@pytest.mark.parametrize(
    "script",
    [*sorted(p.name for p in (ROOT / "scripts").glob("*.sh")), "../.ci/run"],
)
def test_scripts_are_strict_bash(script: str) -> None:
    """Every helper is bash with `set -euo pipefail` and passes `bash -n`."""
    path = ROOT / "scripts" / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(path)], check=True)
