"""Engine reuse end to end through `llem run`, the Docker runner and the CPU pytorch image.

A batch-size x traffic-rate sweep with ``execution.reuse_engine: true`` is one engine group:
one container (counted through the Docker engine's events), every run its own result.json.
Ctrl-C while the group's container runs its second run exits 130; `llem run --resume` then
runs only the unfinished runs, again in one container. With reuse off, one container per run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest
from tests.conftest import LlemWorkdir

from llenergymeasure.results import ExperimentResult
from llenergymeasure.study.manifest import ManifestStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _study(wd: LlemWorkdir, *, reuse: bool, sweep: dict[str, Any], **fields: Any) -> None:
    """The tiny-model sweep in the Docker runner, with its own cache folder."""
    wd.env["XDG_CACHE_HOME"] = str(wd.cwd.parent / "xdg")
    wd.write_study(
        name="reuse",
        sweep=sweep,
        execution={"reuse_engine": reuse},
        runner="docker",
        **fields,
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


def test_sweep_group_ctrl_c_and_resume_one_container_each(llem_workdir: LlemWorkdir) -> None:
    """Batch size x rate with reuse on: one container for the group; Ctrl-C after the first
    run's result -> 130, that run completed; --resume runs the other three in one container;
    every run has its own result.json recording the shared engine, and the started.json it
    wrote as it began on that engine."""
    wd = llem_workdir
    sweep = {"pytorch.batch_size": [1, 2], "traffic.rate_per_s": [2.0, 4.0]}
    _study(wd, reuse=True, sweep=sweep, traffic={"pattern": "poisson"})
    t0 = time.time()
    proc = wd.start("run", "study.yaml")
    wd.wait_for(proc, "the first result.json", wd.result_files, timeout_s=300)
    study_dir = wd.study_dir()
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
    proc = wd.start("run", "--resume", str(study_dir))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "measuring" in out and "of the time in runs" in out
    assert len(_containers_created(manifest.study_id, t1)) == 1
    assert first.stat().st_mtime_ns == first_mtime  # nothing measured twice
    result = wd.study_result()
    assert (result.n_runs, result.n_completed) == (4, 4)
    assert result.measuring_fraction is not None and 0 < result.measuring_fraction <= 1
    assert result.time_breakdown_s is not None and result.time_breakdown_s["measure"] > 0
    rates = set()
    for run in result.runs:
        res = wd.run_result(run)
        assert res.run_id == run.run_id and res.config_hash == run.config_hash
        assert res.engine_share is not None
        assert (study_dir / run.result_path).parent.joinpath("started.json").is_file()
        rates.add(res.config.traffic.rate_per_s)
    assert rates == {2.0, 4.0}


def test_reuse_off_one_container_per_run(llem_workdir: LlemWorkdir) -> None:
    """Without reuse_engine: today's behaviour, one container per run, no group label."""
    wd = llem_workdir
    _study(wd, reuse=False, sweep={"pytorch.batch_size": [1, 2]})
    t0 = time.time()
    proc = wd.start("run", "study.yaml")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    study_dir = wd.study_dir()
    manifest = ManifestStore.load(study_dir).manifest
    created = _containers_created(manifest.study_id, t0)
    assert len(created) == 2
    assert all("llem.group" not in c for c in created)
    for rec in manifest.runs:
        res = ExperimentResult.load(study_dir / rec.attempts[-1].run_dir)
        assert res.engine_share is None
