"""One real CPU study per test session, and local webhook servers that watch it.

``cpu_study`` runs, as a user would, ``llem run study.yaml --cycles 3 --runner local`` in a
temporary working directory, where ``study.yaml`` is ``examples/cpu-quickstart.yaml`` (by
``base:``) plus carbon and cost inputs and three webhooks on this machine, each a
``webhook_server.py`` in a test container on the host's network: one that answers 200 and
checks nothing (the test checks the signature), one that always answers 500, one that accepts
the connection and never answers. About two minutes on a 2-core box; every test that uses it
is marked ``torch`` (and needs Docker, for the webhook servers).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]
SECRET_ENV = "LLEM_TEST_WEBHOOK_SECRET"
SECRET = "s3cret-for-tests"


@dataclass
class Hook:
    """A webhook server in a test container (webhook_server.py) and what it received."""

    mode: str  # ok | fail | hang
    port: int
    container: Any  # a started testcontainers DockerContainer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.mode}"

    @property
    def received(self) -> list[dict[str, Any]]:
        """The requests so far, in order: ``headers``, ``body`` (bytes), ``t`` (monotonic)."""
        stdout, _ = self.container.get_logs()
        lines = [json.loads(x) for x in stdout.decode().splitlines() if x.startswith("{")]
        return [{**x, "body": base64.b64decode(x["body"])} for x in lines]

    def close(self) -> None:
        self.container.stop()


@pytest.fixture(scope="session")
def start_hook(
    pytorch_test_image: str, test_container: Callable[..., Any]
) -> Callable[[str], Hook]:
    """``start_hook(mode)``: a webhook server on 127.0.0.1 (a free port), ready when it says so."""
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    from llenergymeasure_harness.serving.server import free_port

    script = Path(__file__).with_name("webhook_server.py")

    def start(mode: str) -> Hook:
        port = free_port()
        command = ["python3", "/webhook_server.py", mode, str(port)]
        container = (
            test_container(pytorch_test_image, command, network_mode="host")
            .with_volume_mapping(script, "/webhook_server.py", "ro")
            .waiting_for(LogMessageWaitStrategy("^ready$").with_startup_timeout(60))
        )
        return Hook(mode, port, container.start())

    return start


@dataclass
class CpuStudy:
    """The study directory and what was seen while it ran."""

    workdir: Path
    study_dir: Path
    output: str
    exited_at: float  # time.time() when llem exited
    hooks: dict[str, Hook]


def llem_env(**extra: str) -> dict[str, str]:
    """The environment of a `llem` subprocess: this checkout first, no user defaults."""
    env = dict(os.environ)
    paths = [str(REPO / "orchestrator"), str(REPO / "harness")]
    if (REPO / "contract").is_dir():
        paths.insert(0, str(REPO / "contract"))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LLEM_USER_CONFIG"] = ""
    env["COLUMNS"] = "250"
    env.update(extra)
    return env


def run_llem(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `llem ARGS` from ``cwd`` and capture its output."""
    return subprocess.run(
        [*LLEM, *args],
        cwd=cwd,
        env=llem_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="session")
def cpu_study(
    tmp_path_factory: pytest.TempPathFactory, start_hook: Callable[[str], Hook]
) -> Iterator[CpuStudy]:
    """The CPU example, 3 cycles, local runner, with carbon/cost inputs and 3 webhooks."""
    work = tmp_path_factory.mktemp("cpu-study")
    hooks = {m: start_hook(m) for m in ("ok", "fail", "hang")}
    study = {
        "base": str(REPO / "examples" / "cpu-quickstart.yaml"),
        "carbon": {"grid_gco2_per_kwh": 400.0, "pue": 1.25},
        "cost": {"price_per_kwh": 0.3, "currency": "EUR"},
        "notify": {
            "webhooks": [
                {"url": hooks["ok"].url, "secret_env": SECRET_ENV},
                hooks["fail"].url,
                hooks["hang"].url,
            ],
            "timeout_s": 1.0,
            "retries": 2,
            "backoff_s": 0.2,
        },
    }
    (work / "study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    try:
        proc = run_llem(
            "run",
            "study.yaml",
            "--cycles",
            "3",
            "--runner",
            "local",
            cwd=work,
            **{SECRET_ENV: SECRET},
        )
        exited = time.time()
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        dirs = sorted((work / "results").glob("cpu-quickstart_*"))
        assert len(dirs) == 1, dirs
        yield CpuStudy(work, dirs[0], out, exited, hooks)
    finally:
        for h in hooks.values():
            h.close()


def study_json(study_dir: Path) -> dict[str, Any]:
    """The study_result.json of a study directory, as plain data."""
    return dict(json.loads((study_dir / "study_result.json").read_text(encoding="utf-8")))
