"""Engine reuse through `llem run --runner local` (no Docker): a batch-size sweep is one harness
process; Ctrl-C inside it, then `--resume` runs only the unfinished runs, again together."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from tests.conftest import LlemWorkdir

from llenergymeasure.study.manifest import ManifestStore

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_group_in_one_process_ctrl_c_and_resume(llem_workdir: LlemWorkdir) -> None:
    """Three batch sizes, reuse on, local runner: while the group runs the manifest shows
    each run as it goes (the first completed, the last still queued, not running); Ctrl-C
    after the first run's result exits 130 with that run completed and the others not;
    --resume runs the other two in one process (one new log), the first untouched, the last
    marked running only once it started (after the one before it ended); the study result
    has the time breakdown."""
    wd = llem_workdir
    wd.env["XDG_CACHE_HOME"] = str(wd.cwd.parent / "xdg")
    # the harness runs in this interpreter: this checkout's packages
    wd.env["PYTHONPATH"] = os.pathsep.join(
        str(ROOT / p) for p in ("contract", "harness", "orchestrator")
    )
    wd.write_study(
        name="reuse",
        sweep={"pytorch.batch_size": [1, 2, 4]},
        execution={"config_gap_s": 1, "reuse_engine": True},
        runner="local",
    )
    proc = wd.start("run", "study.yaml")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if wd.result_files():
            break
        time.sleep(0.2)
    study_dir = wd.study_dir()
    # the first run is completed in the manifest as its result appears, while the group runs
    while time.monotonic() < deadline and proc.poll() is None:
        states = [r.state for r in ManifestStore.load(study_dir).manifest.runs]
        if states[0] == "completed":
            break
        time.sleep(0.1)
    # the second is in its gap or running; the third waits behind it, queued
    assert states[0] == "completed" and states[2] == "pending", states
    assert states[1] in ("pending", "running"), states
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    manifest = ManifestStore.load(study_dir).manifest
    assert [r.state for r in manifest.runs] == ["completed", "interrupted", "interrupted"], out
    first = study_dir / manifest.runs[0].attempts[0].run_dir / "result.json"
    first_mtime = first.stat().st_mtime_ns
    logs_before = set((study_dir / "logs").iterdir())

    proc = wd.start("run", "--resume", str(study_dir))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "of the time in runs" in out
    assert first.stat().st_mtime_ns == first_mtime
    assert len(set((study_dir / "logs").iterdir()) - logs_before) == 1  # one process
    result = wd.study_result()
    assert result.n_completed == 3
    assert result.time_breakdown_s is not None and result.measuring_fraction is not None
    shares = []
    for run in result.runs:
        res = wd.run_result(run)
        assert res.engine_share is not None
        shares.append(res.engine_share)
    assert shares[1].loaded_by == shares[2].loaded_by == result.runs[1].run_id
    assert shares[2].members == [result.runs[1].run_id, result.runs[2].run_id]
    runs = ManifestStore.load(study_dir).manifest.runs
    second, third = runs[1].attempts[-1], runs[2].attempts[-1]
    assert second.finished_at is not None and third.started_at >= second.finished_at
    for run in runs[1:]:
        assert (study_dir / run.attempts[-1].run_dir / "started.json").is_file()
