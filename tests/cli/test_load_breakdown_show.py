"""``llem results show`` and the end of ``llem run`` say where the engine loads' time went
(``load_breakdown_s``, vLLM), in one line that fits 80 columns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.cli.test_narrow_tables import DOC_STUDY, assert_fits, llem

from llenergymeasure.results.study import StudyResult, time_budget
from llenergymeasure.study.progress import summary_lines
from llenergymeasure_contract.results import ExperimentResult, LoadBreakdown

#: The 512-seqs H100 run of 2026-12-07 (tests/harness/backends/data), as the harness splits it.
H100_LOAD = {
    "python_import": 24.583,
    "engine_start": 3.13,
    "weights": 1.977,
    "dynamo_transform": 8.84,
    "inductor_compile": 6.69,
    "compile_other": 6.58,
    "cuda_graph_capture": 6.0,
    "kv_cache_profile": 3.11,
    "other": 0.0,
}
LINE = "load 61 s: imports 25, engine start 3, weights 2, dynamo 9, inductor 7, compile other 7,"


def _study_with_load(tmp_path: Path) -> Path:
    dst = tmp_path / "results" / DOC_STUDY.name
    shutil.copytree(DOC_STUDY, dst)
    data: dict[str, Any] = json.loads((dst / "study_result.json").read_text(encoding="utf-8"))
    data["load_breakdown_s"] = H100_LOAD
    (dst / "study_result.json").write_text(json.dumps(data), encoding="utf-8")
    return dst


def test_results_show_prints_the_load_line(tmp_path: Path) -> None:
    """A study whose runs reported load parts shows them summed, in 80 columns."""
    proc = llem("results", "show", str(_study_with_load(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout)
    flat = " ".join(proc.stdout.split())
    assert " ".join(LINE.split()) in flat
    assert "cuda graphs 6, kv cache/profile 3" in flat


def test_results_show_without_load_parts_has_no_load_line(tmp_path: Path) -> None:
    """A study without them (PyTorch, an older study) prints no load line."""
    proc = llem("results", "show", str(DOC_STUDY), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "load " not in proc.stdout.replace("load_", "")


def test_run_summary_prints_the_load_line(tmp_path: Path) -> None:
    """The summary ``llem run`` prints at the end carries the same line."""
    study = _study_with_load(tmp_path)
    result = StudyResult.model_validate_json((study / "study_result.json").read_text("utf-8"))
    order = [r.config_hash for r in result.runs]
    flat = " ".join(" ".join(summary_lines(result, order, 80)).split())
    assert " ".join(LINE.split()) in flat


def test_study_sums_the_runs_load_parts() -> None:
    """time_budget adds each load part over the completed runs that reported one."""
    run = json.loads(next(DOC_STUDY.glob("runs/*/result.json")).read_text("utf-8"))
    with_parts = ExperimentResult.model_validate(run)
    parts = LoadBreakdown(**{f"{k}_s": v for k, v in H100_LOAD.items()})
    timings = with_parts.timings.model_copy(update={"load_breakdown_s": parts})
    with_parts = with_parts.model_copy(update={"timings": timings})
    plain = ExperimentResult.model_validate(run)
    budget = time_budget([with_parts, with_parts, plain], 500.0, 0.0)
    assert budget["load_breakdown_s"]["dynamo_transform"] == 17.68
    assert budget["load_breakdown_s"]["python_import"] == 49.166
    assert time_budget([plain], 100.0, 0.0)["load_breakdown_s"] is None
