"""LoRA adapters end to end: `llem run study.yaml`, default runner (Docker), pytorch image, CPU."""

from __future__ import annotations

import json

import pytest
from tests.conftest import LlemWorkdir

from llenergymeasure.results import ExperimentResult

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_two_generated_adapters_in_docker_change_outputs_and_are_accounted(
    llem_workdir: LlemWorkdir,
) -> None:
    """A study of the tiny model without and with two generated adapters (peft, mixed batches):
    every request's adapter is in requests.parquet, the adapters' outputs differ from the base
    model's on the same prompts, and requests and tokens are accounted per adapter."""
    wd = llem_workdir
    wd.require_in_image("peft, llenergymeasure_harness.lora", "LoRA support")
    wd.write_study(
        name="lora-cpu",
        pytorch={"batch_size": 4},
        execution={"n_cycles": 1},
        experiments=[
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
    )
    proc = wd.run("run", "study.yaml", timeout_s=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study_dir = wd.study_dir()
    result = wd.study_result()
    assert (result.n_runs, result.n_completed) == (2, 2)
    runs: dict[str, tuple[ExperimentResult, dict[str, list[object]]]] = {}
    for run in result.runs:
        res = wd.run_result(run)
        runs[res.config.name or ""] = (res, wd.run_requests(run))
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
    wd.env["COLUMNS"] = "80"
    cmp = wd.run("results", "compare", str(study_dir))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert "LoRA adapters against the same study's run without them" in cmp.stdout
    assert all(len(line) <= 80 for line in cmp.stdout.splitlines())
    as_json = wd.run("results", "compare", str(study_dir), "--json")
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    doc = json.loads(as_json.stdout)
    (row,) = doc["lora"]
    assert row["requests_per_adapter"] == {"lora-0": 4, "lora-1": 4}
    assert row["adapter_loads"] == 2 and row["counts_provenance"] == why
    assert row["base_output_tokens_per_s"] == pytest.approx(base.throughput.output_tokens_per_s)
    report = wd.run("results", "report", str(study_dir), "-o", "report.html")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "LoRA adapters against the base model" in (wd.cwd / "report.html").read_text("utf-8")
    summary = (study_dir / "summary.csv").read_text("utf-8").splitlines()
    assert "lora_n_adapters" in summary[0]
