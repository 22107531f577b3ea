"""Engine reuse end to end through `llem run`, the Docker runner and the CPU pytorch image.

A batch-size x traffic-rate sweep with ``execution.reuse_engine: true`` is one engine group:
one container (counted through the Docker engine's events), every run its own result.json.
Ctrl-C while the group's container runs its second run exits 130; `llem run --resume` then
runs only the unfinished runs, again in one container. With reuse off, one container per run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult
from llenergymeasure.study.manifest import ManifestStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]


def _study(tmp_path: Path, image: str, *, reuse: bool, sweep: dict[str, Any]) -> Path:
    study = {
        "name": "reuse",
        "model": "tiny-llama",
        "load_format": "dummy",
        "precision": "float32",
        "n_prompts": 8,
        "max_input_tokens": 16,
        "max_output_tokens": 8,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "gpus": [],
        "sweep": sweep,
        "execution": {"config_gap_s": 0, "cycle_gap_s": 0, "reuse_engine": reuse},
        "runner": "docker",
        "images": {"pytorch": image},
        "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LLEM_NO_GPU": "1",
        "LLEM_USER_CONFIG": str(tmp_path / "none.yaml"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }


def _llem(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LLEM, *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _containers_created(study_id: str, since: float) -> list[dict[str, str]]:
    """The containers the Docker engine created for ``study_id`` since ``since`` (events)."""
    proc = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            str(int(since) - 1),
            "--until",
            str(int(time.time()) + 1),
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            f"label=llem.study={study_id}",
            "--format",
            "{{json .Actor.Attributes}}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _study_dir(root: Path) -> Path:
    (path,) = root.glob("reuse_*")
    return path


def _wait_result(study_dir_root: Path, n: int, proc: subprocess.Popen[str]) -> Path:
    """Wait until ``n`` result.json files exist under the study; its directory."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(study_dir_root.glob("reuse_*/runs/*/result.json"))
        if len(found) >= n:
            return found[0].parents[2]
        time.sleep(0.2)
    out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"no {n} results (llem exited {proc.poll()}): {out}")


def test_sweep_group_ctrl_c_and_resume_one_container_each(
    tmp_path: Path, pytorch_test_image: str
) -> None:
    """Batch size x rate with reuse on: one container for the group; Ctrl-C after the first
    run's result -> 130, that run completed; --resume runs the other three in one container;
    every run has its own result.json recording the shared engine, and the started.json it
    wrote as it began on that engine."""
    sweep = {"pytorch.batch_size": [1, 2], "traffic.rate_per_s": [2.0, 4.0]}
    _study(tmp_path, pytorch_test_image, reuse=True, sweep=sweep)
    (tmp_path / "study.yaml").write_text(
        (tmp_path / "study.yaml").read_text() + "traffic: {pattern: poisson}\n"
    )
    t0 = time.time()
    proc = _llem(tmp_path, "run", "study.yaml")
    study_dir = _wait_result(tmp_path / "results", 1, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    manifest = ManifestStore.load(study_dir).manifest
    states = [r.state for r in manifest.runs]
    assert states[0] == "completed" and "completed" not in states[2:], states
    first = study_dir / manifest.runs[0].attempts[0].run_dir / "result.json"
    first_mtime = first.stat().st_mtime_ns
    created = _containers_created(manifest.study_id, t0)
    assert len(created) == 1, created
    assert created[0]["llem.group"] == "g1"

    t1 = time.time()
    proc = _llem(tmp_path, "run", "--resume", str(study_dir))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "measuring" in out and "of the time in runs" in out
    assert len(_containers_created(manifest.study_id, t1)) == 1
    assert first.stat().st_mtime_ns == first_mtime  # nothing measured twice
    result = StudyResult.load(study_dir)
    assert (result.n_runs, result.n_completed) == (4, 4)
    assert result.measuring_fraction is not None and 0 < result.measuring_fraction <= 1
    assert result.time_breakdown_s is not None and result.time_breakdown_s["measure"] > 0
    rates = set()
    for run in result.runs:
        assert run.result_path is not None
        res = ExperimentResult.load(study_dir / run.result_path)
        assert res.run_id == run.run_id and res.config_hash == run.config_hash
        assert res.engine_share is not None
        assert (study_dir / run.result_path).parent.joinpath("started.json").is_file()
        rates.add(res.config.traffic.rate_per_s)
    assert rates == {2.0, 4.0}


def test_reuse_off_one_container_per_run(tmp_path: Path, pytorch_test_image: str) -> None:
    """Without reuse_engine: today's behaviour, one container per run, no group label."""
    _study(tmp_path, pytorch_test_image, reuse=False, sweep={"pytorch.batch_size": [1, 2]})
    t0 = time.time()
    proc = _llem(tmp_path, "run", "study.yaml")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    study_dir = _study_dir(tmp_path / "results")
    manifest = ManifestStore.load(study_dir).manifest
    created = _containers_created(manifest.study_id, t0)
    assert len(created) == 2
    assert all("llem.group" not in c for c in created)
    for rec in manifest.runs:
        res = ExperimentResult.load(study_dir / rec.attempts[-1].run_dir)
        assert res.engine_share is None
