"""``run_experiment``: one experiment measured through the library, on the tiny CPU model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.runners.conftest import tiny_config

from llenergymeasure import ConfigError, ExperimentResult, run_experiment

pytestmark = [pytest.mark.torch, pytest.mark.slow]

#: The runners' tiny config, made quick on a CPU.
CONFIG = tiny_config(
    precision="float32",
    n_prompts=2,
    max_output_tokens=4,
    gpus=[],
    warmup={"n_batches": 0},
    baseline={"enabled": False},
)
TINY = CONFIG.model_dump(mode="json", exclude_unset=True)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)


def test_run_experiment_returns_the_result_of_an_experiment_config(tmp_path: Path) -> None:
    """An ExperimentConfig, local runner: the ExperimentResult, in a study folder under cwd."""
    result = run_experiment(CONFIG, runner="local", quiet=True)
    assert isinstance(result, ExperimentResult)
    assert result.config.model == "tiny-llama"
    assert result.config.n_prompts == 2
    folders = list((tmp_path / "results").glob("experiment_*/runs/*/result.json"))
    assert len(folders) == 1


def test_run_experiment_takes_a_yaml_path(tmp_path: Path) -> None:
    """A YAML file of one experiment, with results_dir given: the result lands there."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "one", **TINY}), encoding="utf-8")
    result = run_experiment(path, runner="local", quiet=True, results_dir="out")
    assert result.config.max_output_tokens == 4
    assert list((tmp_path / "out").glob("one_*/runs/*/result.json"))


def test_run_experiment_refuses_a_sweep() -> None:
    """A dict that expands to two experiments: a ConfigError pointing to run_study."""
    with pytest.raises(ConfigError, match="run_study"):
        run_experiment({**TINY, "sweep": {"pytorch.batch_size": [1, 2]}}, runner="local")
