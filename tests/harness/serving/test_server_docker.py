"""Server mode in the pytorch image: `transformers serve` inside the container, via `llem run`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import LlemWorkdir

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult
from llenergymeasure.study.manifest import ManifestStore

pytestmark = [pytest.mark.docker, pytest.mark.torch, pytest.mark.slow]


def _run_served(wd: LlemWorkdir, tiny_checkpoint: Path, **fields: Any) -> Path:
    """``llem run study.yaml`` of a server-mode study on the tiny checkpoint, in the pytorch
    test image, from the working directory; exit 0; the study folder."""
    wd.require_in_image("llenergymeasure_harness.serving.backends, fastapi, aiohttp", "server mode")
    wd.write_study(
        model=str(tiny_checkpoint),
        load_format="auto",
        n_prompts=4,
        max_input_tokens=8,
        max_output_tokens=3,
        server={"startup_timeout_s": 300},
        runner="docker",
        execution={"n_cycles": 1, **fields.pop("execution", {})},
        **fields,
    )
    proc = wd.run("run", "study.yaml", timeout_s=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return wd.study_dir()


def test_server_mode_in_the_pytorch_image(tiny_checkpoint: Path, llem_workdir: LlemWorkdir) -> None:
    """The container starts transformers serve on the mounted checkpoint, is measured, stops."""
    study_dir = _run_served(
        llem_workdir,
        tiny_checkpoint,
        name="served-docker",
        traffic={"pattern": "constant", "rate_per_s": 4.0},
    )
    run = StudyResult.load(study_dir).runs[0]
    assert run.state == "completed" and run.result_path is not None
    res = ExperimentResult.load(study_dir / run.result_path)
    assert res.traffic is not None and res.traffic.server is not None
    assert res.traffic.server["mode"] == "server"
    assert res.traffic.server["output_length_forced"] is True
    assert res.environment.in_container is True
    assert (study_dir / run.result_path).parent.joinpath("server.log").is_file()


def test_server_group_each_run_folder_carries_the_log(
    tiny_checkpoint: Path, llem_workdir: LlemWorkdir
) -> None:
    """Two traffic rates on one server (reuse_engine): the second run's folder links
    server.log to the first's (the one server's log) and both results name it; each run
    writes started.json, and the second is marked running only after the first ended."""
    study_dir = _run_served(
        llem_workdir,
        tiny_checkpoint,
        name="served-group",
        traffic={"pattern": "constant"},
        sweep={"traffic.rate_per_s": [4.0, 8.0]},
        execution={"config_gap_s": 1, "reuse_engine": True},
    )
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
