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
from llenergymeasure.study.manifest import ManifestStore

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


def test_server_group_each_run_folder_carries_the_log(
    tiny_checkpoint: Path,
    tmp_path: Path,
    pytorch_test_image: str,
    require_in_image: Callable[[str, str, str], None],
) -> None:
    """Two traffic rates on one server (reuse_engine): the second run's folder links
    server.log to the first's (the one server's log) and both results name it; each run
    writes started.json, and the second is marked running only after the first ended."""
    require_in_image(
        pytorch_test_image,
        "llenergymeasure_harness.serving.backends, fastapi, aiohttp",
        "server mode",
    )
    study = {
        "name": "served-group",
        "model": str(tiny_checkpoint),
        "precision": "float32",
        "gpus": [],
        "n_prompts": 4,
        "max_input_tokens": 8,
        "max_output_tokens": 3,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "server": {"startup_timeout_s": 300},
        "traffic": {"pattern": "constant"},
        "sweep": {"traffic.rate_per_s": [4.0, 8.0]},
        "execution": {"n_cycles": 1, "config_gap_s": 1, "cycle_gap_s": 0, "reuse_engine": True},
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
    runs = StudyResult.load(study_dir).runs
    assert [r.state for r in runs] == ["completed", "completed"]
    dirs = [(study_dir / str(r.result_path)).parent for r in runs]
    log = dirs[0] / "server.log"
    assert log.is_file() and not log.is_symlink()
    link = dirs[1] / "server.log"
    assert link.is_symlink() and os.readlink(link) == f"../{dirs[0].name}/server.log"
    assert link.resolve() == log.resolve()
    for folder in dirs:
        res = ExperimentResult.load(folder)
        assert res.artifacts["server_log"] == "server.log"
        assert (folder / "started.json").is_file()
    first, second = (r.attempts[-1] for r in ManifestStore.load(study_dir).manifest.runs)
    assert first.finished_at is not None and second.started_at >= first.finished_at
