"""StudyResult round-trips; the CSV and Parquet tables have one row per planned run."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.results.aggregate import export_study, summary_rows
from llenergymeasure.results.study import RunMetrics, RunSummary, StudyResult


def study() -> StudyResult:
    runs = [
        RunSummary(
            index=1,
            run_id="a_c1",
            config_hash="a",
            cycle=1,
            state="completed",
            attempts=1,
            params={"pytorch.batch_size": 1},
            backend="pytorch",
            model="tiny-llama",
            metrics=RunMetrics(
                output_tokens_per_s=10.0, gpu_energy_j=None, quality_flags=["short_run"]
            ),
        ),
        RunSummary(
            index=2,
            run_id="b_c1",
            config_hash="b",
            cycle=1,
            state="failed",
            attempts=1,
            failure_kind="oom_killed",
            message="killed, by the OOM killer",
            params={"pytorch.batch_size": 8},
        ),
        RunSummary(index=3, run_id="a_c2", config_hash="a", cycle=2, state="pending"),
    ]
    return StudyResult(
        study_id="s",
        study_name="s",
        study_design_hash="d",
        llem_version="2.0.0",
        runner="docker",
        state="failed",
        study_dir="/x",
        started_at="t0",
        finished_at="t1",
        wall_s=3.0,
        experiments_s=2.0,
        gaps_s=0.0,
        n_runs=3,
        n_completed=1,
        n_failed=1,
        n_interrupted=0,
        n_pending=1,
        runs=runs,
    )


def test_round_trip_and_exit_code(tmp_path: Path) -> None:
    """write/load round-trips; not every run completed means exit status 1."""
    s = study()
    s.write(tmp_path / "study_result.json")
    again = StudyResult.load(tmp_path)
    assert again == s and int(again) == 1


def test_rows_are_rectangular_with_params_and_nulls() -> None:
    """Every row has the same columns; unmeasured figures are None, never 0."""
    rows = summary_rows(study())
    assert len({tuple(r) for r in rows}) == 1
    assert rows[0]["param.pytorch.batch_size"] == 1 and rows[0]["gpu_energy_j"] is None
    assert rows[0]["quality_flags"] == ["short_run"]
    assert rows[2]["param.pytorch.batch_size"] is None and rows[2]["state"] == "pending"


def test_export_csv_and_parquet(tmp_path: Path) -> None:
    """CSV writes None as an empty cell; Parquet keeps nulls and types."""
    export_study(study(), tmp_path)
    table = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert [r["run_id"] for r in table] == ["a_c1", "b_c1", "a_c2"]
    assert table[0]["output_tokens_per_s"] == 10.0 and table[1]["output_tokens_per_s"] is None
    with (tmp_path / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[1]["message"] == "killed, by the OOM killer" and rows[1]["gpu_energy_j"] == ""


def test_time_budget_adds_up_and_defines_the_measuring_fraction(tmp_path: Path) -> None:
    """The study's time breakdown adds up to the runs' wall time plus the gaps between runs,
    and the measuring fraction is measure over the time in runs without in-run gaps."""
    from tests.harness.conftest import World, harness_env, make_config

    from llenergymeasure.results.study import time_budget
    from llenergymeasure_harness.experiment import run_experiment

    result = run_experiment(harness_env(tmp_path, make_config()), World().deps())
    grouped = result.model_copy(
        update={
            "timings": result.timings.model_copy(
                update={"gap_s": 5.0, "total_s": (result.timings.total_s or 0) + 5.0}
            )
        }
    )
    runs_s = 2 * (result.timings.total_s or 0) + 5.0 + 30.0  # 30 s of container overhead
    budget = time_budget([result, grouped], experiments_s=runs_s, gaps_s=60.0)
    parts = budget["time_breakdown_s"]
    assert sum(parts.values()) == pytest.approx(runs_s + 60.0, abs=0.01)
    assert parts["gaps"] == pytest.approx(65.0)
    measure = 2 * (result.timings.measure_s or 0)
    assert budget["measuring_fraction"] == pytest.approx(measure / (runs_s - 5.0))
    assert time_budget([], 0.0, 0.0)["measuring_fraction"] is None
