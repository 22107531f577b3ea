"""One real CPU study per test session, and local webhook servers that watch it.

``cpu_study`` runs, as a user would, ``llem run study.yaml --cycles 3 --runner local`` in a
temporary working directory, where ``study.yaml`` is ``examples/cpu-quickstart.yaml`` (by
``base:``) plus carbon and cost inputs and three webhooks on this machine: one that answers
200 and checks nothing (the test checks the signature), one that always answers 500, one that
accepts the connection and never answers. About two minutes on a 2-core box; every test that
uses it is marked ``torch``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    """A local HTTP server and what it received."""

    mode: str  # ok | fail | hang
    server: ThreadingHTTPServer
    received: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{self.mode}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def start_hook(mode: str) -> Hook:
    """Start a webhook server on 127.0.0.1 (a free port) in a daemon thread."""
    holder: dict[str, Hook] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hook = holder["hook"]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hook.received.append(
                {"headers": dict(self.headers), "body": body, "t": time.monotonic()}
            )
            if hook.mode == "hang":
                hook.release.wait(60)
                return
            self.send_response(200 if hook.mode == "ok" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook = Hook(mode=mode, server=server)
    holder["hook"] = hook
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hook


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
def cpu_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpuStudy]:
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
