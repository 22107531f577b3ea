"""LoRA adapters end to end: `llem run study.yaml`, default runner (Docker), pytorch image, CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]


def test_two_generated_adapters_in_docker_change_outputs_and_are_accounted(
    tmp_path: Path,
    pytorch_test_image: str,
    monkeypatch: pytest.MonkeyPatch,
    require_in_image: Callable[[str, str, str], None],
) -> None:
    """A study of the tiny model without and with two generated adapters (peft, mixed batches):
    every request's adapter is in requests.parquet, the adapters' outputs differ from the base
    model's on the same prompts, and requests and tokens are accounted per adapter."""
    require_in_image(pytorch_test_image, "peft, llenergymeasure_harness.lora", "LoRA support")
    study = {
        "name": "lora-cpu",
        "model": "tiny-llama",
        "load_format": "dummy",
        "precision": "float32",
        "n_prompts": 8,
        "max_input_tokens": 16,
        "max_output_tokens": 8,
        "gpus": [],
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "pytorch": {"batch_size": 4},
        "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "images": {"pytorch": pytorch_test_image},
        "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
        "experiments": [
            {"name": "base"},
            {
                "name": "two-adapters",
                "lora": {
                    "adapters": [
                        {
                            "generate": {
                                "count": 2,
                                "rank": 8,
                                "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"],
                            }
                        }
                    ]
                },
            },
        ],
    }
    monkeypatch.chdir(tmp_path)
    Path("study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    env = {**os.environ, "LLEM_NO_GPU": "1", "LLEM_USER_CONFIG": str(tmp_path / "none.yaml")}
    proc = subprocess.run(
        [*LLEM, "run", "study.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (study_dir,) = Path("results").iterdir()
    result = StudyResult.load(study_dir)
    assert (result.n_runs, result.n_completed) == (2, 2)
    runs: dict[str, tuple[ExperimentResult, dict[str, list[object]]]] = {}
    for run in result.runs:
        assert run.result_path is not None
        res = ExperimentResult.load(study_dir / run.result_path)
        rows = pq.read_table(
            study_dir / run.result_path.replace("result.json", "requests.parquet")
        ).to_pydict()
        runs[res.config.name or ""] = (res, rows)
    base, base_rows = runs["base"]
    lora, lora_rows = runs["two-adapters"]
    assert base.environment.in_container and lora.environment.in_container  # Docker ran them
    assert base.lora is None and base_rows["adapter"] == [None] * 8
    assert lora_rows["adapter"] == ["lora-0", "lora-1"] * 4  # round robin, every request
    # Same prompts (same seed), greedy: every adapter request generated other tokens.
    assert all(h is not None for h in base_rows["output_sha256"] + lora_rows["output_sha256"])
    for a, b in zip(base_rows["output_sha256"], lora_rows["output_sha256"], strict=True):
        assert a != b
    assert lora.lora is not None
    assert (lora.lora.n_adapters, lora.lora.adapter_loads, lora.lora.adapter_swaps) == (2, 2, 0)
    # peft's counts say where they come from; in-flight counts are vLLM's only (None, why).
    why = lora.lora.counts_provenance
    assert why["adapter_loads"].startswith("peft:") and "none is unloaded" in why["adapter_swaps"]
    assert lora.lora.max_adapters_running is None and "peft" in why["max_adapters_running"]
    shares = {s.adapter: s for s in lora.lora.per_adapter}
    assert {k: s.requests for k, s in shares.items()} == {"lora-0": 4, "lora-1": 4}
    assert sum(s.output_tokens for s in shares.values()) == lora.throughput.output_tokens == 64
    assert sum(s.input_tokens for s in shares.values()) == lora.throughput.input_tokens
    # CPU: no energy counter, so no energy to apportion (None, never 0).
    assert all(s.energy_j is None for s in shares.values())

    # What a person reads next: compare and the report put the adapters beside the base run.
    env["COLUMNS"] = "80"
    cmp = subprocess.run(
        [*LLEM, "results", "compare", str(study_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert "LoRA adapters against the same study's run without them" in cmp.stdout
    assert all(len(line) <= 80 for line in cmp.stdout.splitlines())
    doc = json.loads(
        subprocess.run(
            [*LLEM, "results", "compare", str(study_dir), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    )
    (row,) = doc["lora"]
    assert row["requests_per_adapter"] == {"lora-0": 4, "lora-1": 4}
    assert row["adapter_loads"] == 2 and row["counts_provenance"] == why
    assert row["base_output_tokens_per_s"] == pytest.approx(base.throughput.output_tokens_per_s)
    report = subprocess.run(
        [*LLEM, "results", "report", str(study_dir), "-o", "report.html"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert "LoRA adapters against the base model" in Path("report.html").read_text("utf-8")
    summary = (study_dir / "summary.csv").read_text("utf-8").splitlines()
    assert "lora_n_adapters" in summary[0]
