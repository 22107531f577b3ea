"""Server mode as a user runs it: `llem run study.yaml` (local runner) from a working directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult

pytestmark = [pytest.mark.torch, pytest.mark.slow]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]


def test_llem_run_server_mode_with_poisson_traffic(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative checkpoint path, server: {}, poisson traffic: the server is measured."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_checkpoint, "ckpt")
    study = {
        "name": "served",
        "model": "./ckpt",
        "precision": "float32",
        "gpus": [],
        "n_prompts": 6,
        "max_input_tokens": 8,
        "max_output_tokens": 4,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "server": {"startup_timeout_s": 180},
        "traffic": {"pattern": "poisson", "rate_per_s": 8.0, "seed": 2, "slo": {"ttft_s": 60.0}},
        "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "runner": "local",
    }
    Path("study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    env = {**os.environ, "LLEM_NO_GPU": "1", "LLEM_USER_CONFIG": str(tmp_path / "none.yaml")}
    proc = subprocess.run(
        [*LLEM, "run", "study.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (study_dir,) = Path("results").iterdir()
    run = StudyResult.load(study_dir).runs[0]
    assert run.state == "completed" and run.result_path is not None
    res = ExperimentResult.load(study_dir / run.result_path)
    assert res.traffic is not None and res.traffic.server is not None
    server = res.traffic.server
    assert server["mode"] == "server" and server["external"] is False
    assert server["command"][3:5] == ["serve", str(Path("ckpt").resolve())]
    assert server["models"]["data"][0]["id"] == str(Path("ckpt").resolve())
    assert server["output_length_forcing"] == "generation_config"
    assert server["output_length_forced"] is True
    # Start-up was in the load phase, outside the measured window.
    assert res.timings.load_s is not None and res.timings.load_s >= server["startup_s"] > 0
    port = int(server["url"].rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # stopped, not left running
    assert res.latency.mode == "arrivals"
    assert res.throughput.output_tokens == 6 * 4
    assert res.energy.gpu_energy_j is None  # CPU: not measured, never 0
    run_dir = (study_dir / run.result_path).parent
    assert res.artifacts["server_log"] == "server.log"
    assert "serve" in (run_dir / "server.log").read_text()
    rows = pq.read_table(run_dir / "requests.parquet").to_pylist()
    assert all(r["submit_s"] >= r["arrival_s"] for r in rows)
    # The person then looks at it: `llem results show` adds the traffic columns.
    show = subprocess.run(
        [*LLEM, "results", "show", str(study_dir)],
        env={**env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert show.returncode == 0, show.stdout + show.stderr
    for title in ("TPOT p50 s", "SLO met", "goodput req/s"):
        assert title in show.stdout, show.stdout
    # J per SLO request is not measured on a CPU: the compact table leaves out a column of
    # blanks; --wide shows every column.
    wide = subprocess.run(
        [*LLEM, "results", "show", str(study_dir), "--wide"],
        env={**env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert wide.returncode == 0 and "J/SLO req" in wide.stdout, wide.stdout + wide.stderr
    # A generous TTFT objective: a request misses it only when the server streamed no text
    # for it at all (the tiny random model's tokens often decode to nothing, and `transformers
    # serve` sends no chunk for those), so no first token was seen.
    seen = sum(1 for r in rows if r["first_token_s"] is not None)
    assert res.traffic.slo is not None and res.traffic.slo.slo_attainment == seen / 6
    assert run.metrics is not None and run.metrics.slo_attainment == seen / 6
    assert run.metrics.goodput_requests_per_s == res.traffic.slo.goodput_requests_per_s
    assert run.metrics.j_per_slo_request is None  # CPU: energy not measured
    codes = {f.code for f in res.quality_flags}
    assert ("first_token_not_observed" in codes) == (seen < 6)
