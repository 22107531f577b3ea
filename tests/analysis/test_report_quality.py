"""The report's accuracy-against-energy plot in headless Chromium, and the accuracy columns of
``llem results show`` / ``export``. A CPU has no energy counter: the GPU edge is faked here
(as in test_report_pages.py) and each run gets an evaluation block."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.analysis.chromium import need_chromium
from tests.analysis.conftest import run_llem
from tests.analysis.test_report_pages import DOC_STUDIES, fake_gpu_figures, open_report

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import RunMetrics, StudyResult
from llenergymeasure_contract.evaluation import EvaluationResult, TaskScore


def add_evaluation(study_dir: Path) -> Path:
    """Batch 1: 0.75 accurate at 2.0 J/token; batch 4: 0.70 at 0.6 J/token (both efficient)."""
    study = StudyResult.load(study_dir)
    runs = []
    for run in study.runs:
        assert run.result_path is not None
        path = study_dir / run.result_path
        res = ExperimentResult.load(path)
        acc = 0.75 if int(run.params["pytorch.batch_size"]) == 1 else 0.70
        energy_j = 80.0
        ev = EvaluationResult(
            lm_eval_version="0.4.13",
            tasks=[
                TaskScore(
                    task="llem_facts_mc",
                    n_items=40,
                    metrics={"acc,none": acc},
                    stderr={"acc,none": 0.07},
                    primary_metric="acc,none",
                    correct=acc * 40,
                )
            ],
            n_items=40,
            correct=acc * 40,
            accuracy=acc,
            gpu_energy_j=energy_j,
            duration_s=2.0,
            input_tokens=1000,
            output_tokens=0,
            j_per_item=energy_j / 40,
            j_per_correct=energy_j / (acc * 40),
            quality_per_joule=acc * 40 / energy_j,
        )
        res = res.model_copy(update={"evaluation": ev})
        res.write(path)
        runs.append(run.model_copy(update={"metrics": RunMetrics.from_result(res)}))
    study = study.model_copy(update={"runs": runs, "confidence_intervals": None})
    (study_dir / "study_result.json").write_text(study.model_dump_json(indent=1))
    return study_dir


def test_report_draws_accuracy_against_energy_with_the_efficient_set(tmp_path: Path) -> None:
    """A study with evaluation blocks gets 'J/output token against accuracy' with points and
    the efficient-set line, drawn in Chromium (screenshot report-quality.png)."""
    need_chromium()
    study_dir = add_evaluation(fake_gpu_figures(DOC_STUDIES[0], tmp_path / "study"))
    value = open_report(study_dir, tmp_path, "report-quality.png")
    plots = {p["title"]: p for p in value["plots"]}
    assert "J/output token against accuracy" in plots
    assert plots["J/output token against accuracy"]["traces"] >= 2  # points + efficient set


def test_show_and_export_carry_accuracy_only_for_quality_studies(tmp_path: Path) -> None:
    """``results show`` adds an 'acc' column and the CSV export accuracy, J per correct and
    quality_per_joule; a study without quality: shows no such column."""
    plain = fake_gpu_figures(DOC_STUDIES[0], tmp_path / "plain")
    shown = run_llem("results", "show", str(plain), cwd=tmp_path)
    assert shown.returncode == 0 and " acc " not in shown.stdout
    study_dir = add_evaluation(fake_gpu_figures(DOC_STUDIES[0], tmp_path / "study"))
    shown = run_llem("results", "show", str(study_dir), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "acc" in shown.stdout.splitlines()[1] or "acc" in shown.stdout
    rows = json.loads(run_llem("results", "show", str(study_dir), "--json", cwd=tmp_path).stdout)
    assert rows[0]["metrics"]["accuracy"]["mean"] == 0.75
    out = tmp_path / "export"
    done = run_llem("results", "export", str(study_dir), "-f", "csv", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with (out / "runs.csv").open() as fh:
        first = next(csv.DictReader(fh))
    assert float(first["evaluation.accuracy"]) in (0.75, 0.70)
    assert float(first["evaluation.j_per_correct"]) > 0
    assert float(first["evaluation.quality_per_joule"]) > 0
    with (out / "experiments.csv").open() as fh:
        exp = next(csv.DictReader(fh))
    assert float(exp["accuracy_mean"]) in (0.75, 0.70)
    assert float(exp["quality_per_joule_mean"]) > 0
