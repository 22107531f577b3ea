"""What a user typed reaches a Slurm job script only checked and quoted.

The ``slurm:`` section refuses control characters and values outside Slurm's formats at load
(tests/config/test_hostile_inputs.py); these tests look at the script itself: a value with a
space is quoted as sbatch reads it, a shell word is ``shlex``-quoted, and a value that slipped
past validation (a settings object built without it, a results path with a quote) is refused
when the script is written rather than written raw.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.runners.conftest import tiny_config

from llenergymeasure.config.slurm import SlurmSettings
from llenergymeasure.errors import ConfigError
from llenergymeasure.runners.slurm import render_job_script
from llenergymeasure.runners.spec import ContainerSettings, RunRequest


def _request(make_request: Callable[..., RunRequest], root: Path) -> RunRequest:
    cfg = tiny_config(gpus=[0])
    run_id = f"{cfg.config_hash}_c1"
    study = root / "study_1234abcd_20260101T000000Z"
    return make_request(
        cfg,
        run_id=run_id,
        run_dir=study / "runs" / run_id,
        log_path=study / "logs" / f"{run_id}.log",
        study_cache_dir=study / "cache",
        image="llenergymeasure/pytorch:test-cpu",
        timeout_s=600.0,
    )


def test_valid_fields_are_written_quoted(
    make_request: Callable[..., RunRequest], tmp_path: Path
) -> None:
    """Every field at a valid, awkward value: one #SBATCH line each, a spaced value in double
    quotes, the interpreter shlex-quoted, setup lines one per line; the script parses."""
    settings = SlurmSettings(
        partition="gpu,debug",
        account="proj-1.a",
        qos="high",
        mem="64G",
        gpu_type="h100",
        sbatch_args=["--constraint=h100&nvlink", "--comment=two words"],
        setup=["module load apptainer", "echo ready\tnow"],
        launcher="local",
        python="/opt/my python/bin/python3",
    )
    text = render_job_script(
        _request(make_request, tmp_path), settings, ContainerSettings(), base_dir="/"
    ).text
    lines = text.splitlines()
    for line in (
        "#SBATCH --partition=gpu,debug",
        "#SBATCH --account=proj-1.a",
        "#SBATCH --qos=high",
        "#SBATCH --mem=64G",
        "#SBATCH --gres=gpu:h100:1",
        "#SBATCH --constraint=h100&nvlink",
        '#SBATCH --comment="two words"',
        "module load apptainer",
    ):
        assert line in lines, (line, text)
    assert shlex.quote("/opt/my python/bin/python3") in text
    if shutil.which("bash"):
        script = tmp_path / "job.sh"
        script.write_text(text)
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"partition": "gpu\n#SBATCH --uid=0\nrm -rf $HOME"},
        {"account": 'a"b'},
        {"mem": "1G\\"},
        {"sbatch_args": ["--comment=x\n#SBATCH --uid=0"]},
    ],
    ids=["partition-newlines", "account-quote", "mem-backslash", "sbatch-arg-newline"],
)
def test_a_value_that_skipped_validation_is_refused_when_written(
    make_request: Callable[..., RunRequest], tmp_path: Path, fields: dict[str, object]
) -> None:
    """A settings object built without validation still cannot write a second line."""
    settings = SlurmSettings.model_construct(**{**SlurmSettings().model_dump(), **fields})
    with pytest.raises(ConfigError, match="cannot be written into a job script"):
        render_job_script(
            _request(make_request, tmp_path), settings, ContainerSettings(), base_dir="/"
        )


def test_a_results_path_with_a_quote_is_refused_when_written(
    make_request: Callable[..., RunRequest], tmp_path: Path
) -> None:
    """--output/--chdir come from results_dir: a quote there is refused, not written raw."""
    with pytest.raises(ConfigError, match="cannot be written into a job script"):
        render_job_script(
            _request(make_request, tmp_path / 'res"ults'),
            SlurmSettings(),
            ContainerSettings(),
            base_dir="/",
        )
