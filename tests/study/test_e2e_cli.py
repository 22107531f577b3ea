"""End to end through `llem run` and the Docker runner on the CPU pytorch test image.

A sweep of 2 configurations x 2 cycles of examples/cpu-quickstart.yaml: Ctrl-C (SIGINT to the
`llem` process) while the second run is in its container exits 130 with the manifest saved;
`llem run --resume STUDY_DIR` then finishes the study, re-running only what had not
completed. Results, manifest, StudyResult, CSV, Parquet and file ownership are checked.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult
from llenergymeasure.study.manifest import ManifestStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]


def llem(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LLEM, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_running(root: Path, index: int, proc: subprocess.Popen[str], timeout_s: float) -> Path:
    """Wait until run `index` (1-based) of the study under root is running; its study dir."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for path in root.glob("*/manifest.json"):
            try:
                runs = json.loads(path.read_text())["runs"]
            except (OSError, ValueError):
                continue
            if runs[index - 1]["state"] == "running":
                return path.parent
        time.sleep(0.1)
    out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"run {index} never started (llem exited {proc.poll()}): {out}")


def test_llem_run_cpu_study_ctrl_c_and_resume(tmp_path: Path, pytorch_test_image: str) -> None:
    """llem run → Ctrl-C (130) → llem run --resume (0): 4 results, nothing run twice."""
    study = yaml.safe_load((REPO / "examples" / "cpu-quickstart.yaml").read_text())
    study.update(runner="docker", images={"pytorch": pytorch_test_image})
    study["docker"] = {**study.get("docker", {}), "network_mode": "none", "ulimits": {}}
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    root = tmp_path / "results"
    env = {**os.environ, "LLEM_NO_GPU": "1", "LLEM_USER_CONFIG": str(tmp_path / "none.yaml")}

    proc = llem("run", str(study_file), "--results-dir", str(root), env=env)
    study_dir = wait_running(root, 2, proc, timeout_s=120)
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

    proc = llem("run", "--resume", str(study_dir), env=env)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out

    manifest = ManifestStore.load(study_dir).manifest
    assert manifest.state == "completed"
    assert [len(r.attempts) for r in manifest.runs] == [1, 2, 1, 1]
    assert first.stat().st_mtime_ns == first_mtime  # the completed run was not re-run
    result = StudyResult.load(study_dir)
    assert (result.n_runs, result.n_completed) == (4, 4)
    assert {r.params["pytorch.batch_size"] for r in result.runs} == {1, 4}
    for run in result.runs:
        assert run.result_path is not None
        res = ExperimentResult.load(study_dir / run.result_path)
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
