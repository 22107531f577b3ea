"""Our steady state and ML.ENERGY's, side by side in ``llem results show`` and the exports.

The CPU study (PyTorch, static batching) has no steady state: its tables carry the columns,
empty, and ``show`` prints no steady-state block. A copy whose runs carry the figures a vLLM
run records shows the block, under 80 columns, with the cycles each rule accepted.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.analysis.conftest import CpuStudy, run_llem, study_json

pytestmark = [pytest.mark.torch, pytest.mark.slow]

COLUMNS = (
    "steady_j_per_output_token",
    "steady_window_s",
    "steady_valid",
    "mlenergy_j_per_output_token",
    "mlenergy_window_s",
    "mlenergy_stable",
    "avg_running_batch",
)


def test_export_tables_carry_both_rules_typed(cpu_study: CpuStudy) -> None:
    """results.parquet and summary.csv have every steady-state column, typed, empty here."""
    table = pq.read_table(cpu_study.study_dir / "results.parquet")
    schema = {f.name: str(f.type) for f in table.schema}
    assert schema["mlenergy_j_per_output_token"] == "double"
    assert schema["mlenergy_stable"] == "bool" and schema["steady_valid"] == "bool"
    assert all(r[c] is None for r in table.to_pylist() for c in COLUMNS)
    with (cpu_study.study_dir / "summary.csv").open() as fh:
        header = next(csv.reader(fh))
    assert set(COLUMNS) <= set(header)


def test_show_prints_both_windows_side_by_side(cpu_study: CpuStudy, tmp_path: Path) -> None:
    """With steady-state figures in the runs, show prints ours and ML.ENERGY's per experiment
    (means over cycles, cycles accepted by each rule, average batch) in 80 columns, and --csv
    gives their means."""
    copy = tmp_path / "steady"
    shutil.copytree(cpu_study.study_dir, copy)
    data = study_json(copy)
    for run in data["runs"]:
        run["metrics"].update(
            steady_j_per_output_token=0.05,
            steady_window_s=25.0,
            steady_valid=False,  # under our 30 s
            mlenergy_j_per_output_token=0.05,
            mlenergy_window_s=25.0,
            mlenergy_stable=run["cycle"] != 3,
            avg_running_batch=3.5,
        )
    data["confidence_intervals"] = None  # recomputed on load
    (copy / "study_result.json").write_text(json.dumps(data), encoding="utf-8")

    out = run_llem("results", "show", str(copy), cwd=tmp_path, COLUMNS="80")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("Steady state")))
    block = lines[start : start + 5]
    assert all(len(ln) <= 80 for ln in block), block
    assert block[1].startswith("#1") and "ours" in block[1] and "valid 0/3" in block[1]
    assert "J/tok    0.05" in block[1] and "window    25 s" in block[1]
    assert "ML.ENERGY" in block[2] and "stable 2/3" in block[2] and "batch 3.5" in block[2]
    assert block[3].startswith("#2")

    rows = list(
        csv.DictReader(
            io.StringIO(run_llem("results", "show", str(copy), "--csv", cwd=tmp_path).stdout)
        )
    )
    assert float(rows[0]["mlenergy_j_per_output_token_mean"]) == pytest.approx(0.05)
    assert float(rows[0]["avg_running_batch_mean"]) == pytest.approx(3.5)


def test_show_without_steady_state_prints_no_block(cpu_study: CpuStudy) -> None:
    """A static-batching study has no steady state: no block, the table as before."""
    out = run_llem("results", "show", str(cpu_study.study_dir), cwd=cpu_study.workdir)
    assert out.returncode == 0, out.stderr
    assert "Steady state" not in out.stdout
