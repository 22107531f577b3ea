"""A study through the real Docker engine: Ctrl-C mid-study, then resume; nothing lost or re-run."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from tests.runners.dockerutil import FAKE_COMMAND, result_template
from tests.study.conftest import make_plan

from llenergymeasure.errors import InterruptedStudy
from llenergymeasure.images import TEST_BASE_IMAGE
from llenergymeasure.study.executor import StudyRunOptions, resume, run_study
from llenergymeasure.study.manifest import ManifestStore

pytestmark = pytest.mark.docker


def opts(**extra_env: str) -> StudyRunOptions:
    env = {"LLEM_FAKE_RESULT": result_template(), "LLEM_FAKE_MODE": "ok"}
    env.update(extra_env)
    return StudyRunOptions(
        quiet=True,
        interactive=False,
        request_gpus=False,
        min_free_bytes=0,
        container_command=FAKE_COMMAND,
        extra_env=env,
    )


def interrupt_when_running(study_root: Path, run_id: str) -> threading.Thread:
    """Send SIGINT to this process once the manifest says run_id is running."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for path in study_root.glob("*/manifest.json"):
                try:
                    runs = json.loads(path.read_text())["runs"]
                except (OSError, ValueError):
                    continue
                if any(r["run_id"] == run_id and r["state"] == "running" for r in runs):
                    time.sleep(0.5)  # let the container start
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_ctrl_c_mid_study_then_resume(
    tmp_path: Path, docker_client: Any, local_image: Callable[[str], str]
) -> None:
    """Ctrl-C stops run 3's container cleanly; resume completes runs 3-4 only; no leftovers."""
    image = local_image(os.environ.get("LLEM_TEST_BASE_IMAGE") or TEST_BASE_IMAGE)
    root = tmp_path / "results"
    plan = make_plan(
        root,
        runner={"images": {"pytorch": image}, "docker": {"network_mode": "none", "ulimits": {}}},
    )
    third = plan.runs[2].run_id
    watcher = interrupt_when_running(root, third)
    con = Console(file=io.StringIO())
    t0 = time.monotonic()
    with pytest.raises(InterruptedStudy) as info:
        run_study(plan, opts(LLEM_FAKE_HANG_RUN=third), docker_client=docker_client, console=con)
    watcher.join(5)
    assert time.monotonic() - t0 < 40
    assert info.value.exit_code == 130
    (study_dir,) = [p.parent for p in root.glob("*/manifest.json")]
    manifest = ManifestStore.load(study_dir).manifest
    assert [r.state for r in manifest.runs] == ["completed", "completed", "interrupted", "pending"]
    first_results = {
        r.run_id: (study_dir / r.attempts[0].run_dir / "result.json").stat().st_mtime_ns
        for r in manifest.runs[:2]
    }
    mine = {"label": f"llem.study={study_dir.name}"}  # other suites may run containers too
    assert docker_client.containers.list(all=True, filters=mine) == []

    result = resume(study_dir, opts(), docker_client=docker_client, console=con)
    assert result.state == "completed" and result.n_completed == 4
    manifest = ManifestStore.load(study_dir).manifest
    assert [len(r.attempts) for r in manifest.runs] == [1, 1, 2, 1]
    for run_id, mtime in first_results.items():
        rec = next(r for r in manifest.runs if r.run_id == run_id)
        assert (study_dir / rec.attempts[0].run_dir / "result.json").stat().st_mtime_ns == mtime
    assert docker_client.containers.list(all=True, filters=mine) == []
