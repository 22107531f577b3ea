"""The engine's adapter counts in ``llem results compare`` and ``show --json``: a docs CPU
study whose batch-4 runs are given a ``lora:`` section and the counts vLLM's gauge gives (as
the harness records them); the batch-1 runs stay without adapters."""

from __future__ import annotations

import json
from pathlib import Path

from tests.analysis.conftest import run_llem
from tests.analysis.test_report_pages import DOC_STUDIES, fake_gpu_figures

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import RunMetrics, StudyResult
from llenergymeasure_contract.results import AdapterShare, LoraOutcome

#: What the gauge gave in each batch-4 cycle (the row shows the most).
IN_FLIGHT = [3, 4, 2]
SOURCE = "vllm:lora_requests_info label running_lora_adapters, GET /metrics of the vllm serve"


def add_lora_counts(study_dir: Path) -> Path:
    """Batch-4 runs get four adapters and in-flight counts (loads and swaps stay None); the
    batch-1 runs become their base (the same config without lora:)."""
    study = StudyResult.load(study_dir)
    results = {}
    for run in study.runs:
        assert run.result_path is not None
        results[run.result_path] = ExperimentResult.load(study_dir / run.result_path)
    base_config = next(
        results[r.result_path].config
        for r in study.runs
        if r.result_path is not None and int(r.params["pytorch.batch_size"]) == 4
    )
    runs = []
    cycle = 0
    for run in study.runs:
        assert run.result_path is not None
        path = study_dir / run.result_path
        res = results[run.result_path]
        if int(run.params["pytorch.batch_size"]) == 1:
            res = res.model_copy(update={"config": base_config})
            res.write(path)
        else:
            data = res.config.model_dump(mode="json")
            data["lora"] = {"adapters": [{"generate": {"count": 4, "rank": 8}}]}
            config = type(res.config).model_validate(data)
            lora = LoraOutcome(
                n_adapters=4,
                selection="round_robin",
                max_loras=4,
                max_adapters_running=IN_FLIGHT[cycle],
                max_adapters_waiting=IN_FLIGHT[cycle],
                counts_provenance={
                    "max_adapters_running": SOURCE,
                    "adapter_loads": "vLLM exports no adapter load or eviction count",
                },
                per_adapter=[
                    AdapterShare(adapter=f"lora-{i}", requests=1, input_tokens=8, output_tokens=8)
                    for i in range(4)
                ],
            )
            cycle += 1
            res = res.model_copy(update={"config": config, "lora": lora})
            res.write(path)
        runs.append(run.model_copy(update={"metrics": RunMetrics.from_result(res)}))
    study = study.model_copy(update={"runs": runs})
    (study_dir / "study_result.json").write_text(study.model_dump_json(indent=1))
    return study_dir


def test_compare_shows_the_most_adapters_in_flight_and_json_says_where_from(
    tmp_path: Path,
) -> None:
    """compare's LoRA table says the most adapters in flight (the most over the cycles) within
    80 columns; --json carries the counts and their provenance; each run's stays in
    study_result.json."""
    study_dir = add_lora_counts(fake_gpu_figures(DOC_STUDIES[0], tmp_path / "study"))
    shown = run_llem("results", "compare", str(study_dir), cwd=tmp_path, COLUMNS="80")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    start = lines.index("LoRA adapters against the same study's run without them")
    table = "\n".join(lines[start:])
    assert "most adapters in flight at one engine step (vllm:lora_requests_info), by row: 1: 4" in (
        " ".join(lines[start:])
    ), table

    doc = json.loads(run_llem("results", "compare", str(study_dir), "--json", cwd=tmp_path).stdout)
    (row,) = doc["lora"]
    assert (row["max_adapters_running"], row["max_adapters_waiting"]) == (4, 4)
    assert row["adapter_loads"] is None
    assert row["counts_provenance"]["max_adapters_running"] == SOURCE

    assert row["base_config_hash"] is not None and row["j_per_output_token_ratio"] is not None
    study = StudyResult.load(study_dir)
    per_run = sorted(
        r.metrics.lora_max_adapters_running
        for r in study.runs
        if r.metrics is not None and r.metrics.lora_max_adapters_running is not None
    )
    assert per_run == sorted(IN_FLIGHT)
