"""The HTML report in headless Chromium without torch: the committed docs study, and the same
study with GPU figures added (a CPU has no energy counter: the GPU edge is faked here).

``docs/studies/*/`` holds real study directories; each one's report is built with
``llem results report`` and opened in Chromium (console errors, plots present and drawn, no
network request), its screenshot kept in ``build/artifacts/``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.analysis.chromium import ARTIFACTS, PLOT_CHECK, need_chromium, open_page
from tests.analysis.conftest import REPO, run_llem

from llenergymeasure.analysis.bootstrap import HIGH_CV_FLAG
from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import RunMetrics, StudyResult
from llenergymeasure_contract.results import SteadyState

DOC_STUDIES = sorted(p for p in (REPO / "docs" / "studies").glob("*/") if p.is_dir())


def open_report(study_dir: Path, tmp_path: Path, shot_name: str) -> dict:
    out = tmp_path / "report.html"
    done = run_llem("results", "report", str(study_dir), "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = open_page(out, PLOT_CHECK, ARTIFACTS / shot_name)
    assert page.console_errors == [] and page.exceptions == []
    assert page.requests == [out.resolve().as_uri()]
    for p in page.value["plots"]:
        assert p["points"] > 0 and p["traces"] > 0 and p["drawn"] > 0, p
        assert p["width"] > 300 and p["height"] > 200, p
    return dict(page.value)


def test_docs_studies_exist() -> None:
    """docs/studies has at least the CPU example study, each with its study_result.json."""
    assert DOC_STUDIES and all((d / "study_result.json").is_file() for d in DOC_STUDIES)


@pytest.mark.parametrize("study_dir", DOC_STUDIES, ids=[d.name for d in DOC_STUDIES])
def test_docs_study_report(study_dir: Path, tmp_path: Path) -> None:
    """The report of each docs study renders in Chromium (screenshot: docs-<name>.png)."""
    need_chromium()
    value = open_report(study_dir, tmp_path, f"docs-{study_dir.name}.png")
    assert value["summary_rows"] >= 1 and value["plots"]


#: Samples 0-9 baseline, 10-19 warmup, 20-49 measured, 50-59 prefill pass (10 Hz from t=1000).
PHASE_OF_SAMPLE = ["baseline", "warmup", "measure", "measure", "measure", "prefill_pass"]
PHASE_WINDOWS = {
    "baseline": [1000.0, 1000.95],
    "warmup": [1001.0, 1001.95],
    "measure": [1002.0, 1004.95],
    "prefill_pass": [1005.0, 1005.9],
}


def fake_gpu_figures(src: Path, dst: Path) -> Path:
    """Copy a CPU study and give every run GPU energy and a time series, as NVML would.

    Batch 1: 2.0 J/output token, cycles ±1 %; batch 4: 0.6 J/token, cycles ±5 % (flagged).
    """
    shutil.copytree(src, dst)
    study = StudyResult.load(dst)
    runs = []
    for run in study.runs:
        assert run.result_path is not None and run.run_dir is not None
        path = dst / run.result_path
        res = ExperimentResult.load(path)
        batch = int(run.params["pytorch.batch_size"])
        spread = 0.01 if batch == 1 else 0.05
        jpt = (2.0 if batch == 1 else 0.6) * (1 + spread * (run.cycle - 2))
        tokens = res.throughput.output_tokens
        energy_j = jpt * tokens
        power_w = energy_j / res.throughput.duration_s
        res = res.model_copy(
            update={
                "energy": res.energy.model_copy(
                    update={
                        "sampler": "nvml",
                        "gpu_energy_j": energy_j,
                        "avg_power_w": power_w,
                        "gpu_energy_j_per_gpu": {"0": energy_j},
                    }
                ),
                "efficiency": res.efficiency.model_copy(
                    update={
                        "j_per_output_token": jpt,
                        "j_per_request": energy_j / res.throughput.n_requests,
                    }
                ),
                "quality_flags": [f for f in res.quality_flags if f.code != "no_energy"],
                # cycle 1 records its phase windows (contract 3); the others leave the report
                # to find them in the samples' phase column, as results of contract 1 do
                "timings": res.timings.model_copy(
                    update={"phase_windows_s": dict(PHASE_WINDOWS) if run.cycle == 1 else {}}
                ),
                "steady_state": SteadyState(
                    start_s=1002.5, end_s=1004.5, duration_s=2.0, valid=False, reason="short"
                ),
            }
        )
        res.write(path)
        n = 60
        pq.write_table(
            pa.table(
                {
                    "t_s": [1000.0 + i / 10 for i in range(n)],
                    "phase": [PHASE_OF_SAMPLE[i // 10] for i in range(n)],
                    "gpu": [0] * n,
                    "power_w": [power_w * (1 + 0.1 * math.sin(i / 5)) for i in range(n)],
                    "sm_clock_mhz": [1980 - (i % 7) for i in range(n)],
                    "temperature_c": [45 + i / 10 for i in range(n)],
                }
            ),
            dst / run.run_dir / "timeseries.parquet",
        )
        runs.append(run.model_copy(update={"metrics": RunMetrics.from_result(res)}))
    study = study.model_copy(update={"runs": runs, "confidence_intervals": None})
    (dst / "study_result.json").write_text(study.model_dump_json(indent=1))
    return dst


def test_report_with_gpu_figures(tmp_path: Path) -> None:
    """With energy: both Pareto plots, J per axis, one time series per run, the CV flag."""
    need_chromium()
    study_dir = fake_gpu_figures(DOC_STUDIES[0], tmp_path / "study")
    value = open_report(study_dir, tmp_path, "report-gpu-figures.png")
    titles = [p["title"] for p in value["plots"]]
    for t in (
        "J/output token against output throughput",
        "J/output token against TTFT p99",
        "J/output token against concurrency",
        "output tokens/s against concurrency",
    ):
        assert t in titles
    assert sum(t.endswith(("_c1", "_c2", "_c3")) for t in titles) == 6  # time series
    # each run's phases shaded and listed: cycle 1 from phase_windows_s, the others from the
    # samples' phase column; the steady state from steady_state
    html_text = (tmp_path / "report.html").read_text(encoding="utf-8")
    shaded = [line for line in html_text.splitlines() if line.startswith('<p class="phases">')]
    assert len(shaded) == 6
    exact = "baseline (idle) 0.0–1.0 s; warmup 1.0–2.0 s; measured window 2.0–5.0 s"
    from_samples = "baseline (idle) 0.0–0.9 s; warmup 1.0–1.9 s; measured window 2.0–4.9 s"
    assert all("steady state 2.5–4.5 s" in x and "prefill pass 5.0–5.9 s" in x for x in shaded)
    assert (sum(exact in x for x in shaded), sum(from_samples in x for x in shaded)) == (2, 4)
    assert not any("not measured" in n for n in value["notes"])
    shown = run_llem("results", "show", str(study_dir), "--json", cwd=tmp_path)
    rows = json.loads(shown.stdout)
    assert [HIGH_CV_FLAG in r["flags"] for r in rows] == [False, True]
    assert rows[0]["j_per_output_token_cv"] == pytest.approx(0.01)
    assert rows[1]["metrics"]["j_per_output_token"]["low"] == pytest.approx(0.6 * 0.95)


#: Every plot's title, traces (name, x, labels) and the point labels drawn on it.
TRACES = """new Promise(resolve => setTimeout(() => resolve(
  Array.from(document.querySelectorAll('.llem-plot')).map(p => {
    const gd = p.querySelector('.js-plotly-plot');
    return {
      title: (p.previousElementSibling || {}).textContent || '',
      traces: gd.data.map(t => ({name: t.name, x: Array.from(t.x || []),
                                 text: Array.from(t.text || [])})),
      drawn_labels: Array.from(gd.querySelectorAll('.textpoint text')).map(e => e.textContent),
    };
  }).concat([{study_table: Array.from(document.querySelectorAll('#study tr')).map(
    r => r.textContent)}])), 1000))"""


def cross_backend_study(src: Path, dst: Path) -> Path:
    """The GPU-figures study plus a vLLM copy of each experiment: pytorch batch 1 and 4,
    vLLM max_num_seqs 64 and 256 (half the J/token, 3x the throughput); n_prompts differs
    between the backends (8 and 16), as a cross-backend study sized per backend would."""
    fake_gpu_figures(src, dst)
    study = StudyResult.load(dst)
    runs = []
    for run in study.runs:
        batch = int(run.params["pytorch.batch_size"])
        runs.append(
            run.model_copy(update={"params": {"pytorch.batch_size": batch, "n_prompts": 8}})
        )
    for run in study.runs:
        assert run.metrics is not None
        batch = int(run.params["pytorch.batch_size"])
        h = "f" + run.config_hash[1:]
        m = run.metrics
        assert m.j_per_output_token is not None and m.output_tokens_per_s is not None
        metrics = m.model_copy(
            update={
                "j_per_output_token": m.j_per_output_token / 2,
                "output_tokens_per_s": m.output_tokens_per_s * 3,
            }
        )
        runs.append(
            run.model_copy(
                update={
                    "index": run.index + len(study.runs),
                    "config_hash": h,
                    "run_id": f"{h}_c{run.cycle}",
                    "backend": "vllm",
                    "params": {"vllm.max_num_seqs": 64 if batch == 1 else 256, "n_prompts": 16},
                    "metrics": metrics,
                }
            )
        )
    study = study.model_copy(update={"runs": runs, "confidence_intervals": None})
    (dst / "study_result.json").write_text(study.model_dump_json(indent=1))
    return dst


def test_cross_backend_report_plots_concurrency_per_backend(tmp_path: Path) -> None:
    """A pytorch + vLLM study: J/token and throughput against each backend's concurrency
    with one line per backend at its own values; no n_prompts or per-backend key drawn
    against energy, no point at "None"; points labelled #i (screenshot: report-cross.png)."""
    need_chromium()
    study_dir = cross_backend_study(DOC_STUDIES[0], tmp_path / "study")
    out = tmp_path / "report.html"
    done = run_llem("results", "report", str(study_dir), "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = open_page(out, TRACES, ARTIFACTS / "report-cross.png")
    assert page.console_errors == [] and page.exceptions == []
    *plots, header = page.value
    titles = [p["title"] for p in plots]
    assert "J/output token against concurrency" in titles
    assert "output tokens/s against concurrency" in titles
    assert not any("n_prompts" in t or "batch_size" in t or "max_num_seqs" in t for t in titles)
    for p in plots:
        for t in p["traces"]:
            assert "None" not in [str(x) for x in t["x"]], (p["title"], t)
    conc = next(p for p in plots if p["title"] == "J/output token against concurrency")
    lines = {t["name"]: t["x"] for t in conc["traces"]}
    assert lines == {"pytorch": [1, 4], "vllm": [64, 256]}
    labels = [x for t in conc["traces"] for x in t["text"]]
    assert labels == [
        "#1 concurrency=1 n_prompts=8",
        "#2 concurrency=4 n_prompts=8",
        "#3 concurrency=64 n_prompts=16",
        "#4 concurrency=256 n_prompts=16",
    ]
    assert sorted(conc["drawn_labels"]) == sorted(labels)  # visible, not only on hover
    pareto = next(p for p in plots if p["title"] == "J/output token against output throughput")
    assert {t["name"] for t in pareto["traces"]} >= {"pytorch", "vllm"}
    facts = " | ".join(header["study_table"])
    for fact in ("model", "precision", "input length, tokens", "output length, tokens"):
        assert fact in facts
    assert "n_prompts" in facts and "SLO thresholds" in facts
