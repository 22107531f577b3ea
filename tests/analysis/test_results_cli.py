"""`llem results show|compare|export|report` on a real CPU study (3 cycles), as a user runs them.

The intervals are checked against a direct computation from the runs' result.json files:
with 3 cycles the 95 % percentile-bootstrap interval of the mean is exactly [min, max] of the
cycles (each extreme resample has probability 1/27 > 2.5 %).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import shutil
import statistics
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.analysis.chromium import ARTIFACTS, PLOT_CHECK, need_chromium, open_page
from tests.analysis.conftest import SECRET, CpuStudy, run_llem, study_json

from llenergymeasure.analysis.bootstrap import MIN_CYCLES, N_RESAMPLES, SEED
from llenergymeasure.results import ExperimentResult

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def cycle_values(study: CpuStudy, config_hash: str, pick: str) -> list[float]:
    """A metric of every completed cycle of one experiment, read from its result.json."""
    out = []
    for run in study_json(study.study_dir)["runs"]:
        if run["config_hash"] == config_hash and run["state"] == "completed":
            res = ExperimentResult.load(study.study_dir / run["result_path"])
            value = {
                "output_tokens_per_s": res.throughput.output_tokens_per_s,
                "ttft_p99_s": res.latency.ttft_s.p99 if res.latency.ttft_s else None,
            }[pick]
            assert value is not None
            out.append(value)
    return out


def test_study_result_has_intervals_matching_a_direct_computation(cpu_study: CpuStudy) -> None:
    """confidence_intervals: method stored; mean and [min, max] of the 3 cycles per metric."""
    data = study_json(cpu_study.study_dir)
    ci = data["confidence_intervals"]
    assert (ci["n_resamples"], ci["seed"], ci["min_cycles"]) == (N_RESAMPLES, SEED, MIN_CYCLES)
    assert len(ci["experiments"]) == 2
    for h, exp in ci["experiments"].items():
        assert exp["n_cycles_completed"] == 3
        for metric in ("output_tokens_per_s", "ttft_p99_s"):
            values = cycle_values(cpu_study, h, metric)
            iv = exp["metrics"][metric]
            assert iv["n"] == 3
            assert iv["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert (iv["low"], iv["high"]) == pytest.approx((min(values), max(values)))
        # no GPU: energy is not measured, so neither its interval nor its CV exist
        assert exp["metrics"]["j_per_output_token"] == {
            "n": 0,
            "mean": None,
            "low": None,
            "high": None,
            "note": "not measured",
        }
        assert exp["j_per_output_token_cv"] is None and "high_cycle_cv" not in exp["flags"]
        # throughput is checked cycle to cycle even without energy (a CPU host jumps a lot)
        tps = cycle_values(cpu_study, h, "output_tokens_per_s")
        cv = statistics.stdev(tps) / statistics.fmean(tps)
        assert exp["cycle_cv"]["output_tokens_per_s"] == pytest.approx(cv)
        assert ("high_cycle_cv_throughput" in exp["flags"]) == (cv > 0.03)


def test_carbon_and_cost_inputs_are_stored_and_figures_absent_without_energy(
    cpu_study: CpuStudy,
) -> None:
    """The inputs travel with their source; with no energy measured every figure is null."""
    data = study_json(cpu_study.study_dir)
    imp = data["impact_inputs"]
    assert imp["carbon"] == {"grid_gco2_per_kwh": 400.0, "pue": 1.25}
    assert imp["cost"] == {"price_per_kwh": 0.3, "currency": "EUR"}
    assert imp["sources"]["carbon.pue"] == "study file study.yaml"
    for run in data["runs"]:
        m = run["metrics"]
        assert m["gco2e_per_1k_output_tokens"] is None and m["cost_per_request"] is None


def test_tables_have_real_types(cpu_study: CpuStudy) -> None:
    """results.parquet: energy columns typed double (null), flags a list, sampler 'none'."""
    table = pq.read_table(cpu_study.study_dir / "results.parquet")
    schema = {f.name: str(f.type) for f in table.schema}
    assert schema["gpu_energy_j"] == "double" and schema["j_per_output_token"] == "double"
    assert schema["quality_flags"] == "list<element: string>"
    assert schema["failure_kind"] == "string" and schema["image"] == "string"
    rows = table.to_pylist()
    assert {r["energy_sampler"] for r in rows} == {"none"}
    assert all("no_energy" in r["quality_flags"] for r in rows)
    assert {r["backend_library"] for r in rows} == {"transformers"}
    with (cpu_study.study_dir / "summary.csv").open() as fh:
        first = next(csv.DictReader(fh))
    assert first["energy_sampler"] == "none" and first["gpu_energy_j"] == ""


def test_finished_study_says_why_local_and_leaves_no_lock(cpu_study: CpuStudy) -> None:
    """The run line says why the runner is local; the finished folder holds no .lock file."""
    assert "runner local (runner: local asked for)" in cpu_study.output
    # the end-of-run table: energy cells say "not measured" (a CPU has no counter), never blank
    table = cpu_study.output[cpu_study.output.index("cpu-quickstart: completed") :]
    rows = [line.split() for line in table.splitlines() if line[:1] in ("1", "2")]
    assert len(rows) == 6 and all(" ".join(r).count("not measured") == 2 for r in rows)
    assert not (cpu_study.study_dir / ".lock").exists()
    assert (cpu_study.study_dir / "study_result.json").is_file()


def test_show_table_json_and_csv(cpu_study: CpuStudy) -> None:
    """show prints one row per experiment with intervals; --json and --csv carry the same."""
    d = str(cpu_study.study_dir)
    shown = run_llem("results", "show", d, cwd=cpu_study.workdir)
    assert shown.returncode == 0, shown.stderr
    rows_shown = [line.split() for line in shown.stdout.splitlines() if line[:1].isdigit()]
    assert [r[:2] for r in rows_shown] == [["1", "1"], ["2", "4"]]  # #, batch_size
    assert "not measured" in shown.stdout and "3/3" in shown.stdout
    assert "10,000 resamples" in shown.stdout
    assert "SLO met" not in shown.stdout  # offline traffic: no traffic columns
    as_json = run_llem("results", "show", d, "--json", cwd=cpu_study.workdir)
    rows = json.loads(as_json.stdout)
    assert [r["params"]["pytorch.batch_size"] for r in rows] == [1, 4]
    ci = study_json(cpu_study.study_dir)["confidence_intervals"]["experiments"]
    for r in rows:
        assert (
            r["metrics"]["output_tokens_per_s"]
            == ci[r["config_hash"]]["metrics"]["output_tokens_per_s"]
        )
    as_csv = run_llem("results", "show", d, "--csv", cwd=cpu_study.workdir)
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(table) == 2 and table[0]["j_per_output_token_mean"] == ""
    assert float(table[0]["output_tokens_per_s_ci_high"]) == pytest.approx(
        rows[0]["metrics"]["output_tokens_per_s"]["high"]
    )


def test_fewer_than_three_cycles_say_not_enough_cycles(cpu_study: CpuStudy, tmp_path: Path) -> None:
    """With cycle 3 removed, show gives means with "not enough cycles" instead of intervals."""
    copy = tmp_path / "two-cycles"
    shutil.copytree(cpu_study.study_dir, copy)
    data = study_json(copy)
    data["runs"] = [r for r in data["runs"] if r["cycle"] < 3]
    data["confidence_intervals"] = None  # older results: recomputed on load
    (copy / "study_result.json").write_text(json.dumps(data), encoding="utf-8")
    out = run_llem("results", "show", str(copy), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for r in json.loads(out.stdout):
        iv = r["metrics"]["output_tokens_per_s"]
        assert iv["n"] == 2 and iv["low"] is None and iv["note"] == "not enough cycles (2 < 3)"
    table = run_llem("results", "show", str(copy), cwd=tmp_path)
    assert "±" not in table.stdout.split("mean ±x%")[0]  # means, no interval
    assert "no ±: fewer than 3 cycles" in " ".join(table.stdout.split())
    wide = run_llem("results", "show", str(copy), "--wide", cwd=tmp_path)
    assert "(not enough cycles)" in wide.stdout


def test_compare_across_hosts_lists_environment_differences(
    cpu_study: CpuStudy, tmp_path: Path
) -> None:
    """compare: rows by batch size over two studies, ratio to baseline, overlap, env diffs."""
    other = tmp_path / "other-host"
    shutil.copytree(cpu_study.study_dir, other)
    for path in other.glob("runs/*/result.json"):  # the same study "measured on another host"
        data = json.loads(path.read_text())
        data["environment"]["hostname"] = "other-host"
        path.write_text(json.dumps(data))
    data = study_json(other)
    data["study_id"] = "other-host-study"
    (other / "study_result.json").write_text(json.dumps(data))
    out = run_llem(
        "results",
        "compare",
        str(cpu_study.study_dir),
        str(other),
        "--by",
        "batch_size",
        "--baseline",
        "batch_size=1",
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    cmp = json.loads(out.stdout)
    assert cmp["by"] == ["batch_size", "study"] and cmp["baseline"] == 1
    assert [r["label"]["batch_size"] for r in cmp["rows"]] == [1, 1, 4, 4]
    tps = [r["metrics"]["output_tokens_per_s"] for r in cmp["rows"]]
    assert tps[0]["ratio_to_baseline"] == 1.0 and tps[0]["overlaps_baseline"] == "baseline"
    assert tps[1]["ratio_to_baseline"] == pytest.approx(1.0)  # the copy: the same numbers
    assert tps[1]["overlaps_baseline"] == "yes"
    assert tps[2]["ratio_to_baseline"] == pytest.approx(tps[2]["mean"] / tps[0]["mean"])
    assert cmp["rows"][0]["metrics"]["j_per_output_token"]["overlaps_baseline"] == "baseline"
    assert cmp["rows"][2]["metrics"]["j_per_output_token"]["ratio_to_baseline"] is None
    assert set(cmp["environment_differences"]["hostname"].values()) == {
        "other-host",
        study_json(cpu_study.study_dir)["runs"][0] and _host(cpu_study),
    }
    table = run_llem("results", "compare", str(cpu_study.study_dir), str(other), cwd=tmp_path)
    assert table.returncode == 0 and "environment differences" in table.stdout
    assert "hostname" in table.stdout
    bad = run_llem("results", "compare", str(cpu_study.study_dir), "--by", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "--by nope" in bad.stderr and "Traceback" not in bad.stderr


def _host(study: CpuStudy) -> str:
    run = study_json(study.study_dir)["runs"][0]
    res = ExperimentResult.load(study.study_dir / run["result_path"])
    assert res.environment.hostname is not None
    return res.environment.hostname


def test_bad_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A folder without study_result.json: exit 2, the path and a fix, no traceback."""
    out = run_llem("results", "show", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2
    assert f"{tmp_path}: no study_result.json there" in out.stderr and "fix:" in out.stderr
    assert "Traceback" not in out.stderr


def test_export_hf_loads_back_with_datasets(cpu_study: CpuStudy, tmp_path: Path) -> None:
    """export --format hf: Parquet + dataset card; datasets.load_dataset reads it offline."""
    datasets = pytest.importorskip("datasets", reason="datasets (dev extra) not installed")
    out_dir = tmp_path / "hf"
    out = run_llem(
        "results",
        "export",
        str(cpu_study.study_dir),
        "--format",
        "hf",
        "-o",
        str(out_dir),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: runs" in card and "## Method" in card
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    runs = datasets.load_dataset(
        "parquet",
        data_files=str(out_dir / "data" / "runs.parquet"),
        cache_dir=str(tmp_path / "cache"),
    )["train"]
    assert runs.num_rows == 6
    assert runs.features["energy.gpu_energy_j"].dtype == "float64"
    assert runs.features["throughput.output_tokens_per_s"].dtype == "float64"
    assert all(v is None for v in runs["energy.gpu_energy_j"])
    assert sorted(runs["cycle"]) == [1, 1, 2, 2, 3, 3]
    assert all("no_energy" in f for f in runs["quality_flags"])
    by_card = datasets.load_dataset(str(out_dir), "experiments", cache_dir=str(tmp_path / "c2"))
    exps = by_card["train"]
    assert exps.num_rows == 2 and "output_tokens_per_s_ci_low" in exps.column_names
    again = run_llem(
        "results", "export", str(cpu_study.study_dir), "-o", str(out_dir), cwd=tmp_path
    )
    assert again.returncode == 2 and "never overwrites" in again.stderr


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_export_other_formats(cpu_study: CpuStudy, tmp_path: Path, fmt: str) -> None:
    """export --format csv|parquet|json writes runs.* and experiments.* with the same rows."""
    out = run_llem(
        "results",
        "export",
        str(cpu_study.study_dir),
        "--format",
        fmt,
        "-o",
        str(tmp_path / fmt),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    runs = tmp_path / fmt / f"runs.{fmt}"
    if fmt == "parquet":
        n = pq.read_table(runs).num_rows
    elif fmt == "csv":
        with runs.open() as fh:
            n = len(list(csv.DictReader(fh)))
    else:
        n = len(json.loads(runs.read_text()))
    assert n == 6 and (tmp_path / fmt / f"experiments.{fmt}").is_file()


def test_report_renders_in_headless_chromium(cpu_study: CpuStudy, tmp_path: Path) -> None:
    """report -o: one file, no network; Chromium draws every plot, no console error."""
    need_chromium()
    html_path = tmp_path / "report.html"
    out = run_llem(
        "results", "report", str(cpu_study.study_dir), "-o", str(html_path), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    text = html_path.read_text()
    assert "<script src=" not in text and "<link " not in text  # everything inlined
    shot = ARTIFACTS / "report.png"
    page = open_page(html_path, PLOT_CHECK, shot)
    assert page.console_errors == [] and page.exceptions == []
    assert page.requests == [html_path.resolve().as_uri()]  # nothing fetched from anywhere
    value = page.value
    assert value["summary_rows"] == 2
    titles = [p["title"] for p in value["plots"]]
    assert "Output throughput against TTFT p99" in titles
    assert "output tokens/s against concurrency" in titles
    for p in value["plots"]:
        assert p["points"] > 0 and p["traces"] > 0 and p["drawn"] > 0, p
        assert p["width"] > 300 and p["height"] > 200, p
    assert any("J/output token: not measured" in n for n in value["notes"])
    assert any("have no timeseries.parquet" in n for n in value["notes"])
    assert shot.stat().st_size > 20_000


def test_webhooks_received_signed_retried_and_never_blocking(cpu_study: CpuStudy) -> None:
    """ok: 6 experiment_end + study_end, signed; 500: retried; never-answering: no delay."""
    ok = cpu_study.hooks["ok"].received
    events = [json.loads(r["body"]) for r in ok]
    assert [e["event"] for e in events].count("experiment_end") == 6
    assert events[-1]["event"] == "study_end" and events[-1]["state"] == "completed"
    assert events[-1]["n_completed"] == 6 and events[-1]["paths"]["study_result"]
    assert {e["run_id"] for e in events[:-1]} == {
        r["run_id"] for r in study_json(cpu_study.study_dir)["runs"]
    }
    for r in ok:
        expected = "sha256=" + hmac.new(SECRET.encode(), r["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r["headers"]["X-LLEM-Signature"], expected)
        assert r["headers"]["X-LLEM-Event"] in ("experiment_end", "study_end")
    fail = cpu_study.hooks["fail"].received
    assert all("X-LLEM-Signature" not in r["headers"] for r in fail)  # no secret_env there
    per_run: dict[str, int] = {}
    for r in fail:
        body = json.loads(r["body"])
        if body["event"] == "experiment_end":
            per_run[body["run_id"]] = per_run.get(body["run_id"], 0) + 1
    # first try + retries: 2, for every run (the last run's retries may still be going when
    # the study ends and llem stops waiting: it gets at least its first try)
    assert len(per_run) == 6 and all(1 <= n <= 3 for n in per_run.values())
    assert sum(n == 3 for n in per_run.values()) >= 5
    assert cpu_study.hooks["hang"].received  # it was called, and never answered
    # the never-answering endpoint still had events queued at the end; llem waited at most
    # notify.timeout_s (1 s) for them, then exited: a few seconds at most, interpreter included
    finished = datetime.fromisoformat(
        study_json(cpu_study.study_dir)["finished_at"].replace("Z", "+00:00")
    ).timestamp()
    assert 0 <= cpu_study.exited_at - finished < 6.0
    # and said so, without failing the study
    assert f"webhook {cpu_study.hooks['fail'].url}: 0 delivered" in cpu_study.output
