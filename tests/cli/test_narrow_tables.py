"""Every table ``llem`` prints for people fits 80 columns, piped or on a terminal, with the
values that vary between rows whole (issue 23, "What a user reads").

Each command runs as a user types it: a subprocess from a working directory with its output
piped (no terminal, no ``COLUMNS``: the width falls back to 80), and again with
``COLUMNS=80``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from llenergymeasure.results.study import StudyResult
from llenergymeasure.study.progress import summary_lines

REPO = Path(__file__).resolve().parents[2]
DOC_STUDY = next((REPO / "docs" / "studies").glob("cpu-quickstart_*"))
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]
LONG_MODEL = "org-with-a-long-name/Llama-3.1-8B-Instruct-a-very-long-checkpoint-name-v2"


def llem(*args: str, cwd: Path, columns: str | None = None) -> subprocess.CompletedProcess[str]:
    """``llem ARGS`` from ``cwd`` with stdout piped; ``columns``: set COLUMNS."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    paths = [str(REPO / p) for p in ("contract", "harness", "orchestrator")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LLEM_USER_CONFIG"] = ""
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # images list: no engine needed
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run(
        [*LLEM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def assert_fits(out: str, width: int = 80) -> None:
    """No line wider than ``width`` and no cut cell."""
    long = [line for line in out.splitlines() if len(line) > width]
    assert not long, long
    assert "…" not in out


def cross_backend_study(tmp_path: Path) -> Path:
    """The docs CPU study relabelled as a cross-backend study: experiment 1 pytorch batch 1
    of a long-named model, experiment 2 vLLM max_num_seqs 256 at 12.5 req/s; run order
    reversed, so the first run is of experiment 2."""
    dst = tmp_path / "results" / DOC_STUDY.name
    shutil.copytree(DOC_STUDY, dst)
    data: dict[str, Any] = json.loads((dst / "study_result.json").read_text(encoding="utf-8"))
    plan = json.loads((dst / "plan.json").read_text(encoding="utf-8"))
    first = plan["experiments"][0]["config_hash"]
    for run in data["runs"]:
        if run["config_hash"] == first:
            run.update(model=LONG_MODEL, params={"pytorch.batch_size": 1})
        else:
            run.update(
                backend="vllm",
                params={"vllm.max_num_seqs": 256, "traffic.rate_per_s": 12.5},
            )
    data["runs"].reverse()
    data["confidence_intervals"] = None  # recomputed on load
    (dst / "study_result.json").write_text(json.dumps(data), encoding="utf-8")
    return dst


@pytest.mark.parametrize("columns", [None, "80"], ids=["piped", "COLUMNS=80"])
def test_results_show_fits_80_columns(tmp_path: Path, columns: str | None) -> None:
    """show: fits, numbers the rows, names the varying batch size, says "not measured"."""
    out = llem("results", "show", str(DOC_STUDY), cwd=tmp_path, columns=columns)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout)
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    assert header.split()[:2] == ["#", "batch_size"] and "J/out tok" in header
    assert "out tok/s" in header and "TTFT p50 s" in header and "cycles" in header
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("2", "4")]
    assert all(r[-1] == "3/3" for r in rows)
    assert "not measured" in out.stdout
    assert "every row: backend=pytorch  model=tiny-llama  precision=float32" in out.stdout
    assert "flags #1: " in out.stdout and "no_energy (3/3)" in out.stdout


def test_results_show_wide_has_every_column(tmp_path: Path) -> None:
    """--wide: the full intervals, TTFT p99, mean W, CV and flags, on long lines."""
    out = llem("results", "show", str(DOC_STUDY), "--wide", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for title in ("TTFT p99 s", "mean W", "CV J/tok", "mean [95 % CI]", "flags", "experiment"):
        assert title in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) > 80


@pytest.mark.parametrize("columns", [None, "80"], ids=["piped", "COLUMNS=80"])
def test_cross_backend_show_keeps_varying_values_whole(tmp_path: Path, columns: str | None) -> None:
    """A long model name and both backends' keys: a legend line per row, every value whole,
    and rows numbered as the dry run (plan.json), not by which ran first."""
    study = cross_backend_study(tmp_path)
    out = llem("results", "show", str(study), cwd=tmp_path, columns=columns)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout)
    text = out.stdout
    joined = re.sub(r"\n +", "", text)  # continuation lines (a value longer than a line)
    assert LONG_MODEL in joined
    assert "#1  backend=pytorch" in text and "#2  backend=vllm" in text
    assert "concurrency=1" in joined and "concurrency=256" in joined
    assert "rate_per_s=12.5" in joined
    assert "concurrency: pytorch.batch_size, vllm.max_num_seqs" in text


def test_dry_run_plan_fits_80_columns(tmp_path: Path) -> None:
    """The 12-experiment cross-backend plan: fits, numbered 1-12, backend, precision and
    each backend's concurrency in columns; model and n_prompts said once."""
    example = REPO / "examples" / "multi-backend-sweep.yaml"
    for columns in (None, "80"):
        out = llem("run", str(example), "--dry-run", cwd=tmp_path, columns=columns)
        assert out.returncode == 0, out.stderr
        assert_fits(out.stdout)
        rows = [line.split() for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]
        rows = [r for r in rows if r[1] in ("pytorch", "vllm", "tensorrt")]
        assert [r[0] for r in rows] == [str(i) for i in range(1, 13)]
        assert {(r[1], r[3]) for r in rows} >= {("pytorch", "16"), ("vllm", "256")}
        assert "every experiment: model=meta-llama/Llama-3.1-8B  n_prompts=1024" in out.stdout
        assert "image: pytorch=llenergymeasure/pytorch:" in out.stdout


def test_show_numbers_rows_as_the_dry_run(tmp_path: Path) -> None:
    """Row i of `results show` is experiment i of the study's dry run."""
    dry = llem("run", str(REPO / "examples" / "cpu-quickstart.yaml"), "--dry-run", cwd=tmp_path)
    plan_rows = {
        line.split()[0]: line.split()[1] for line in dry.stdout.splitlines() if line[:1].isdigit()
    }
    shown = llem("results", "show", str(DOC_STUDY), cwd=tmp_path)
    show_rows = {
        line.split()[0]: line.split()[1] for line in shown.stdout.splitlines() if line[:1].isdigit()
    }
    assert plan_rows == show_rows == {"1": "1", "2": "4"}


def test_images_list_fits_80_columns(tmp_path: Path) -> None:
    """images list, piped: every image reference and base image whole within 80 columns."""
    from llenergymeasure import images

    out = llem("images", "list", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout)
    for v in images.MATRIX:
        assert images.default_image(v.backend, cuda_major=v.cuda_major) in out.stdout
        assert f"({v.base_image})" in out.stdout


def test_end_of_run_table_fits_and_says_not_measured() -> None:
    """The end-of-run table at 80 columns: experiment numbers, cycles, "not measured" energy."""
    result = StudyResult.load(DOC_STUDY)
    plan = json.loads((DOC_STUDY / "plan.json").read_text(encoding="utf-8"))
    order = [e["config_hash"] for e in plan["experiments"]]
    con = Console(file=io.StringIO(), width=80)
    for line in summary_lines(result, order, con.width):
        con.print(line, markup=False, highlight=False, soft_wrap=True)
    out = con.file.getvalue()  # type: ignore[attr-defined]
    assert_fits(out)
    rows = [r for r in map(str.split, out.splitlines()) if r[:1] in (["1"], ["2"])]
    assert len(rows) == 6 and {r[0] for r in rows} == {"1", "2"}
    assert all("not measured" in " ".join(r) for r in rows)
    assert "6/6 completed" in out


def test_run_help_shows_whole_option_names_at_80_columns(tmp_path: Path) -> None:
    """`llem run --help` at 80 columns: every option whole, the length options explained,
    no type label on flags."""
    for columns in (None, "80"):
        out = llem("run", "--help", cwd=tmp_path, columns=columns)
        assert out.returncode == 0, out.stderr
        assert_fits(out.stdout)
        for name in ("--max-input-tokens", "--max-output-tokens", "--export-csv / --no-export-csv"):
            assert name in out.stdout
        assert "<bool>" not in out.stdout
        line = next(x for x in out.stdout.splitlines() if "--max-input-tokens" in x)
        assert "Prompt length in tokens" in line
        line = next(x for x in out.stdout.splitlines() if "--max-output-tokens" in x)
        assert "Tokens each request generates" in line


def test_config_prints_readable_text(tmp_path: Path) -> None:
    """`llem config`: labelled lines, no Python dict (None, False, quotes); --json is JSON."""
    out = llem("config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for bad in ("None", "False", "True", "{", "'"):
        assert bad not in out.stdout, bad
    for heading in ("host", "docker", "GPUs", "images in Docker", "user defaults"):
        assert heading in out.stdout.splitlines()[0] or f"\n{heading}" in out.stdout
    as_json = llem("config", "--json", cwd=tmp_path)
    assert as_json.returncode == 0 and "host" in json.loads(as_json.stdout)


def test_compare_by_keeps_the_study_column(tmp_path: Path) -> None:
    """compare --by batch_size of two studies: a study column tells the rows apart, and the
    table fits 80 columns piped."""
    other = tmp_path / "other"
    shutil.copytree(DOC_STUDY, other)
    data = json.loads((other / "study_result.json").read_text(encoding="utf-8"))
    data["study_id"] = "other-host-study"
    (other / "study_result.json").write_text(json.dumps(data), encoding="utf-8")
    out = llem("results", "compare", str(DOC_STUDY), str(other), "--by", "batch_size", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout)
    header = next(line for line in out.stdout.splitlines() if line.lstrip().startswith("#"))
    assert header.split()[:3] == ["#", "batch_size", "study"]
    rows = [r.split()[:3] for r in out.stdout.splitlines() if r.lstrip()[:1].isdigit()]
    assert [r[1:] for r in rows] == [["1", "S1"], ["1", "S2"], ["4", "S1"], ["4", "S2"]]
    assert "S2=other-host-study" in out.stdout and f"S1={DOC_STUDY.name}" in out.stdout
    as_json = llem(
        "results",
        "compare",
        str(DOC_STUDY),
        str(other),
        "--by",
        "batch_size",
        "--json",
        cwd=tmp_path,
    )
    labels = [r["label"]["study"] for r in json.loads(as_json.stdout)["rows"]]
    assert labels == [DOC_STUDY.name, "other-host-study"] * 2


def test_compare_names_only_options_it_has_and_wide_shows_every_column(tmp_path: Path) -> None:
    """compare with six metrics fits 80 columns piped: the varying key moves to a legend and
    the last metrics asked for are named as not shown; ``compare --wide``, the option the hint
    names, exists and shows them all."""
    metrics = [
        "j_per_output_token",
        "output_tokens_per_s",
        "gpu_energy_j",
        "avg_power_w",
        "requests_per_s",
        "j_per_request",
    ]
    args = ["results", "compare", str(DOC_STUDY)]
    for m in metrics:
        args += ["--metric", m]
    narrow = llem(*args, cwd=tmp_path)
    assert narrow.returncode == 0, narrow.stderr
    assert_fits(narrow.stdout)
    wide = llem(*args, "--wide", cwd=tmp_path)
    assert wide.returncode == 0, wide.stderr  # the option the hint names exists
    header = next(line for line in wide.stdout.splitlines() if line.lstrip().startswith("#"))
    narrow_header = next(
        line for line in narrow.stdout.splitlines() if line.lstrip().startswith("#")
    )
    assert "not shown for width: j_per_request, requests_per_s; --wide" in narrow.stdout
    assert {"j_per_request", "requests_per_s", "batch_size"} <= set(header.split())
    assert len(header.split()) > len(narrow_header.split())
