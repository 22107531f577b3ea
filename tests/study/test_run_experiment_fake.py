"""``run_experiment`` through the Docker runner on the fake engine: its result, or its cause."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from tests.runners.conftest import tiny_config
from tests.study.conftest import IMAGE

from llenergymeasure import ExperimentError, ExperimentResult, run_experiment
from llenergymeasure.runners.docker import DockerRunner
from llenergymeasure.runners.spec import ContainerSettings
from llenergymeasure.testing.fake_docker import (
    FakeDockerClient,
    FakeHarness,
    write_fake_error,
    write_fake_result,
)

CONFIG = tiny_config(gpus=[]).model_dump(mode="json", exclude_unset=True)


def measure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, harness: FakeHarness) -> Any:
    monkeypatch.chdir(tmp_path)
    client = FakeDockerClient(images={IMAGE}, harness=harness)
    runner = DockerRunner(ContainerSettings(request_gpus=False), client=client, poll_s=0.01)
    return run_experiment(
        {**CONFIG, "images": {"pytorch": IMAGE}},
        runner=runner,
        console=Console(file=io.StringIO()),
        quiet=True,
        preflight=False,
    )


def test_completed_run_returns_its_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A completed run: the ExperimentResult of its result.json, in a folder under cwd."""
    result = measure(tmp_path, monkeypatch, FakeHarness(write=write_fake_result))
    assert isinstance(result, ExperimentResult)
    assert list((tmp_path / "results").glob(f"*/runs/{result.run_id}/result.json"))


def test_failed_run_raises_experiment_error_with_cause_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A harness error: ExperimentError naming the failure kind and the study folder."""
    with pytest.raises(ExperimentError, match="harness_error") as info:
        measure(tmp_path, monkeypatch, FakeHarness(exit_code=1, write=write_fake_error))
    assert str(tmp_path / "results") in str(info.value)
