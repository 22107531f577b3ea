"""A study with Poisson traffic, end to end through `llem run` and the Docker runner (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from llenergymeasure.config import TrafficConfig
from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult
from llenergymeasure_harness.traffic.arrivals import arrival_offsets

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]


def test_poisson_study_runs_in_docker_and_records_arrivals(
    tmp_path: Path,
    pytorch_test_image: str,
    monkeypatch: pytest.MonkeyPatch,
    require_in_image: Callable[[str, str, str], None],
) -> None:
    """`llem run study.yaml` (poisson, tiny model, CPU): arrivals drawn, honoured, recorded."""
    require_in_image(pytorch_test_image, "llenergymeasure_harness.traffic", "traffic support")
    traffic = {"pattern": "poisson", "rate_per_s": 20.0, "seed": 5, "slo": {"ttft_s": 5.0}}
    study = {
        "name": "poisson-cpu",
        "model": "tiny-llama",
        "load_format": "dummy",
        "precision": "float32",
        "n_prompts": 8,
        "max_input_tokens": 16,
        "max_output_tokens": 4,
        "gpus": [],
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "pytorch": {"batch_size": 2},
        "traffic": traffic,
        "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "runner": "docker",
        "images": {"pytorch": pytorch_test_image},
        "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
    }
    monkeypatch.chdir(tmp_path)
    Path("study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    env = {**os.environ, "LLEM_NO_GPU": "1", "LLEM_USER_CONFIG": str(tmp_path / "none.yaml")}
    root = Path("results")  # the default, relative to the working directory
    proc = subprocess.run(
        [*LLEM, "run", "study.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (study_dir,) = root.iterdir()
    result = StudyResult.load(study_dir)
    assert (result.n_runs, result.n_completed) == (1, 1)
    run = result.runs[0]
    assert run.result_path is not None
    res = ExperimentResult.load(study_dir / run.result_path)
    assert res.config.traffic.pattern == "poisson"
    assert res.latency.mode == "arrivals"
    assert res.traffic is not None and res.traffic.slo is not None
    assert res.traffic.rate_per_s == 20.0
    rows = pq.read_table(study_dir / run.result_path.replace("result.json", "requests.parquet"))
    arrivals = rows.column("arrival_s").to_pylist()
    offsets = arrival_offsets(TrafficConfig.model_validate(traffic), 8)
    assert offsets is not None
    assert [a - arrivals[0] for a in arrivals] == pytest.approx(offsets, abs=1e-9)
    for row in rows.to_pylist():
        assert row["submit_s"] >= row["arrival_s"]
