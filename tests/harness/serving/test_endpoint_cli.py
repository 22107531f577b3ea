"""``backend: endpoint`` as a user runs it, against a real ``transformers serve`` (not ours)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult

pytestmark = [pytest.mark.torch, pytest.mark.docker, pytest.mark.slow]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]
SECRET = "sk-llem-test-0123456789"


def _study(url: str, checkpoint: Path, **over: object) -> dict[str, object]:
    study: dict[str, object] = {
        "name": "external",
        "backend": "endpoint",
        "model": str(checkpoint),  # the served name: transformers serve names it by its path
        "tokenizer": str(checkpoint),
        "gpus": [],
        "n_prompts": 6,
        "max_input_tokens": 8,
        "max_output_tokens": 4,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "endpoint": {"url": url, "api_key_env": "LLEM_TEST_ENDPOINT_KEY"},
        "traffic": {"pattern": "poisson", "rate_per_s": 8.0, "seed": 4},
        "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "runner": "local",
    }
    study.update(over)
    return study


def _llem(tmp_path: Path, *args: str, key: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLEM_NO_GPU": "1", "LLEM_USER_CONFIG": str(tmp_path / "none.yaml")}
    env.pop("LLEM_TEST_ENDPOINT_KEY", None)
    if key is not None:
        env["LLEM_TEST_ENDPOINT_KEY"] = key
    return subprocess.run(
        [*LLEM, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_llem_run_measures_an_external_endpoint_and_never_writes_the_key(
    transformers_server: str,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The result says external, keeps /v1/models; the API key is in no file of the study."""
    monkeypatch.chdir(tmp_path)
    Path("study.yaml").write_text(
        yaml.safe_dump(_study(transformers_server, tiny_checkpoint)), encoding="utf-8"
    )
    proc = _llem(tmp_path, "run", "study.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (study_dir,) = Path("results").iterdir()
    run = StudyResult.load(study_dir).runs[0]
    assert run.state == "completed" and run.result_path is not None
    res = ExperimentResult.load(study_dir / run.result_path)
    server = res.traffic.server if res.traffic is not None else None
    assert server is not None
    assert server["external"] is True and server["mode"] == "endpoint"
    assert server["models"]["data"][0]["id"] == str(tiny_checkpoint)
    assert server["api_key_env"] == "LLEM_TEST_ENDPOINT_KEY"
    assert res.environment.backend == "endpoint"
    assert res.throughput.output_tokens == 6 * 4
    assert res.latency.mode == "arrivals"
    assert res.energy.gpu_energy_j is None  # gpus: [] - no NVML, not measured
    for path in [*study_dir.rglob("*"), Path("study.yaml")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in proc.stdout + proc.stderr


def test_a_missing_key_variable_fails_the_run_with_its_name(
    transformers_server: str,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """api_key_env naming an unset variable: the run fails, the message names the variable."""
    monkeypatch.chdir(tmp_path)
    study = _study(transformers_server, tiny_checkpoint, n_prompts=2)
    Path("study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    proc = _llem(tmp_path, "run", "study.yaml", key=None)
    assert proc.returncode != 0
    (study_dir,) = Path("results").iterdir()
    logs = "".join(p.read_text() for p in study_dir.rglob("*.json") if p.name == "error.json")
    assert "LLEM_TEST_ENDPOINT_KEY" in logs + proc.stdout + proc.stderr


def test_an_api_key_in_the_name_field_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pasting the key itself into api_key_env is a config error that does not print the key."""
    from llenergymeasure.cli import main

    monkeypatch.chdir(tmp_path)
    study = _study("http://127.0.0.1:9", tmp_path)
    study["endpoint"] = {"url": "http://127.0.0.1:9", "api_key_env": "sk-abc-123/xyz"}
    Path("study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    assert main(["run", "study.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "endpoint.api_key_env" in err and "sk-abc-123/xyz" not in err
