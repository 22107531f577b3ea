"""Per-request lengths through the real CLI: ``llem run study.yaml`` from a working directory.

A tiny Llama (dummy weights, CPU) on the PyTorch backend, with prompt and output lengths drawn
from distributions (one of them an empirical file next to the study). Every request must
produce exactly the length it asked for (``requests.parquet``), the result must carry the
realised length statistics and the static-batch waste, and ``llem results show`` must show
them. Once locally (``--runner local``) and once in the pytorch test image (default runner
resolution, which picks Docker where it is reachable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_harness.lengths import request_lengths

REPO = Path(__file__).resolve().parents[2]
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]

STUDY: dict[str, Any] = {
    "name": "lengths",
    "model": "tiny-llama",
    "load_format": "dummy",
    "precision": "float32",
    "n_prompts": 12,
    "gpus": [],
    "random_seed": 5,
    "dataset": {
        "input_len": {"dist": "uniform", "min": 4, "max": 24},
        "output_len": {"dist": "empirical", "path": "out_lengths.csv"},
    },
    "max_output_tokens": 16,
    "pytorch": {"batch_size": 4},
    "warmup": {"n_batches": 1},
    "baseline": {"enabled": False},
    "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
    "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
}


def _env(**extra: str) -> dict[str, str]:
    paths = [str(REPO / "contract"), str(REPO / "orchestrator"), str(REPO / "harness")]
    env = {**os.environ, "LLEM_USER_CONFIG": "", "COLUMNS": "80"}
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _llem(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLEM, *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _write_study(cwd: Path, **extra: Any) -> None:
    (cwd / "out_lengths.csv").write_text("length\n1\n2\n5\n9\n16\n", encoding="utf-8")
    (cwd / "study.yaml").write_text(yaml.safe_dump({**STUDY, **extra}), encoding="utf-8")


def _check_exact_lengths(cwd: Path, show: str) -> None:
    (result_path,) = sorted((cwd / "results").glob("*/runs/*/result.json"))
    result = json.loads(result_path.read_text(encoding="utf-8"))
    config = ExperimentConfig.model_validate(result["config"])
    asked = request_lengths(config, "output_len")
    prompts = request_lengths(config, "input_len")
    assert len(set(asked)) > 2, asked  # the lengths really vary
    table = pq.read_table(result_path.parent / "requests.parquet").to_pydict()
    by_id = dict(zip(table["request_id"], table["output_tokens"], strict=True))
    assert [by_id[i] for i in range(len(asked))] == asked
    assert table["max_new_tokens"] == [asked[i] for i in table["request_id"]]
    inputs = dict(zip(table["request_id"], table["input_tokens"], strict=True))
    assert [inputs[i] for i in range(len(prompts))] == prompts

    workload = result["workload"]
    assert workload["output_tokens_generated"] == workload["output_tokens_requested"]
    assert workload["output_tokens_generated"]["max"] == max(asked)
    # 3 batches of 4: each row holds its slot until its batch's longest request ends.
    slots = sum(4 * max(asked[i : i + 4]) for i in range(0, len(asked), 4))
    assert workload["static_batch_tokens_generated"] == slots
    assert workload["static_batch_tokens_requested"] == sum(asked)
    assert workload["static_batch_waste_fraction"] == pytest.approx(1 - sum(asked) / slots)
    assert "empirical" in show and "waste" in show


@pytest.mark.torch
@pytest.mark.slow
def test_local_run_produces_every_requests_own_length(tmp_path: Path) -> None:
    """``llem run study.yaml --runner local``: each request's output length is exact."""
    pytest.importorskip("transformers")
    _write_study(tmp_path)
    proc = _llem(tmp_path, "run", "study.yaml", "--runner", "local")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (study_dir,) = (tmp_path / "results").glob("lengths_*")
    show = _llem(tmp_path, "results", "show", str(study_dir))
    assert show.returncode == 0, show.stdout + show.stderr
    mine = show.stdout[show.stdout.index("lengths in tokens") :].splitlines()
    assert all(len(line) <= 80 for line in mine), show.stdout
    _check_exact_lengths(tmp_path, show.stdout)
    pytest.importorskip("plotly")
    report = _llem(tmp_path, "results", "report", str(study_dir), "-o", "report.html")
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Request lengths</h2>" in html and "static batching:" in html


@pytest.mark.docker
def test_docker_run_produces_every_requests_own_length(
    tmp_path: Path, pytorch_test_image: str
) -> None:
    """The same study in the pytorch image (default runner): lengths exact, file embedded."""
    _write_study(tmp_path, images={"pytorch": pytorch_test_image})
    proc = _llem(tmp_path, "run", "study.yaml", LLEM_NO_GPU="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    (study_dir,) = (tmp_path / "results").glob("lengths_*")
    study = json.loads((study_dir / "study_result.json").read_text(encoding="utf-8"))
    assert study["runner"] == "docker", study["runner"]
    (result_path,) = (study_dir / "runs").glob("*/result.json")
    assert json.loads(result_path.read_text())["environment"]["image"] == pytorch_test_image
    show = _llem(tmp_path, "results", "show", str(study_dir))
    assert show.returncode == 0, show.stdout + show.stderr
    _check_exact_lengths(tmp_path, show.stdout)


def test_workloads_list_names_every_profile_within_80_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``llem workloads list`` shows each built-in profile, its lines at most 80 wide."""
    from llenergymeasure.cli import main

    assert main(["workloads", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("lm-arena-chat", "mlenergy-length-control"):
        assert name in out
    assert all(len(line) <= 80 for line in out.splitlines()), out


def test_workloads_show_gives_source_and_statistics(capsys: pytest.CaptureFixture[str]) -> None:
    """``llem workloads show NAME`` prints the source, the statistics and how to use it."""
    from llenergymeasure.cli import main

    assert main(["workloads", "show", "mlenergy-length-control"]) == 0
    out = capsys.readouterr().out
    assert "ml-energy/benchmark" in out and "pareto mean 500 shape 2.5" in out
    assert "use: dataset: {profile: mlenergy-length-control}" in out
    assert main(["workloads", "show", "lm-arena-chat", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["reproduces"]["output_len"]["mean"] == 400


def test_workloads_show_unknown_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown profile name exits 2 and names the built-in ones."""
    from llenergymeasure.cli import main

    assert main(["workloads", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert "lm-arena-chat" in err and "Traceback" not in err
