"""End to end through `llem run` and the Docker runner on the CPU pytorch test image.

A sweep of 2 configurations x 2 cycles of examples/cpu-quickstart.yaml: Ctrl-C (SIGINT to the
`llem` process) while the second run is in its container exits 130 with the manifest saved;
`llem run --resume STUDY_DIR` then finishes the study, re-running only what had not
completed. Results, manifest, StudyResult, CSV, Parquet and file ownership are checked.
"""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from tests.conftest import LlemWorkdir

from llenergymeasure.study.manifest import ManifestStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_llem_run_cpu_study_ctrl_c_and_resume(llem_workdir: LlemWorkdir) -> None:
    """llem run → Ctrl-C (130) → llem run --resume (0): 4 results, nothing run twice."""
    wd = llem_workdir
    study = yaml.safe_load((REPO / "examples" / "cpu-quickstart.yaml").read_text())
    study.update(runner="docker", images={"pytorch": wd.image})
    study["docker"] = {**study.get("docker", {}), "network_mode": "none", "ulimits": {}}
    study_file = wd.cwd / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    root = wd.cwd / "results"

    proc = wd.start("run", str(study_file), "--results-dir", str(root))
    wd.wait_for(proc, "run 2 running", lambda: wd.running_run(2), timeout_s=120)
    study_dir = wd.study_dir()
    time.sleep(1.0)  # inside the container
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "--resume" in out
    manifest = ManifestStore.load(study_dir).manifest
    assert manifest.state == "interrupted"
    assert [r.state for r in manifest.runs] == ["completed", "interrupted", "pending", "pending"]
    first = study_dir / manifest.runs[0].attempts[0].run_dir / "result.json"
    first_mtime = first.stat().st_mtime_ns

    proc = wd.start("run", "--resume", str(study_dir))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out

    manifest = ManifestStore.load(study_dir).manifest
    assert manifest.state == "completed"
    assert [len(r.attempts) for r in manifest.runs] == [1, 2, 1, 1]
    assert first.stat().st_mtime_ns == first_mtime  # the completed run was not re-run
    result = wd.study_result()
    assert (result.n_runs, result.n_completed) == (4, 4)
    assert {r.params["pytorch.batch_size"] for r in result.runs} == {1, 4}
    for run in result.runs:
        res = wd.run_result(run)
        assert res.run_id == run.run_id and res.cycle == run.cycle
        assert res.config_hash == run.config_hash  # the harness saw the host's config
        assert res.throughput.output_tokens > 0
        assert res.energy.gpu_energy_j is None  # no GPU: not measured, never 0
    with (study_dir / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows] == ["completed"] * 4
    assert len(pq.read_table(study_dir / "results.parquet")) == 4
    uid = os.getuid()
    for path in study_dir.rglob("*"):
        assert path.stat().st_uid == uid, f"{path} is owned by uid {path.stat().st_uid}"
