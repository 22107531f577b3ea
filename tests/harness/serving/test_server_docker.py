"""Server mode in the pytorch image: `transformers serve` inside the container, via `llem run`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult

pytestmark = [pytest.mark.docker, pytest.mark.torch, pytest.mark.slow]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]


def test_server_mode_in_the_pytorch_image(
    tiny_checkpoint: Path,
    tmp_path: Path,
    pytorch_test_image: str,
    require_in_image: Callable[[str, str, str], None],
) -> None:
    """The container starts transformers serve on the mounted checkpoint, is measured, stops."""
    require_in_image(
        pytorch_test_image,
        "llenergymeasure_harness.serving.backends, fastapi, aiohttp",
        "server mode",
    )
    study = {
        "name": "served-docker",
        "model": str(tiny_checkpoint),
        "precision": "float32",
        "gpus": [],
        "n_prompts": 4,
        "max_input_tokens": 8,
        "max_output_tokens": 3,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "server": {"startup_timeout_s": 300},
        "traffic": {"pattern": "constant", "rate_per_s": 4.0},
        "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "runner": "docker",
        "images": {"pytorch": pytorch_test_image},
        "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    root = tmp_path / "results"
    env = {**os.environ, "LLEM_NO_GPU": "1", "LLEM_USER_CONFIG": str(tmp_path / "none.yaml")}
    proc = subprocess.run(
        [*LLEM, "run", str(path), "--results-dir", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (study_dir,) = root.iterdir()
    run = StudyResult.load(study_dir).runs[0]
    assert run.state == "completed" and run.result_path is not None
    res = ExperimentResult.load(study_dir / run.result_path)
    assert res.traffic is not None and res.traffic.server is not None
    assert res.traffic.server["mode"] == "server"
    assert res.traffic.server["output_length_forced"] is True
    assert res.environment.in_container is True
    assert (study_dir / run.result_path).parent.joinpath("server.log").is_file()
