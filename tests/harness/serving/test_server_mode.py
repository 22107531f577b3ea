"""Server mode end to end in the harness: ``transformers serve`` started, measured, stopped."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure_harness.experiment import Deps, run_experiment
from llenergymeasure_harness.serving.server import HOST

pytestmark = pytest.mark.torch


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((HOST, port)) != 0


def test_server_mode_runs_poisson_traffic_through_transformers_serve(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The harness starts transformers serve, drives it with arrivals, keeps its log, stops it."""
    cfg = ExperimentConfig.model_validate(
        {
            "model": str(tiny_checkpoint),
            "precision": "float32",
            "gpus": [],
            "n_prompts": 6,
            "max_input_tokens": 8,
            "max_output_tokens": 4,
            "warmup": {"n_batches": 1},
            "baseline": {"enabled": False},
            "server": {"startup_timeout_s": 180},
            "traffic": {"pattern": "poisson", "rate_per_s": 10.0, "seed": 1},
        }
    )
    env = HarnessEnv(config=cfg, run_id="srv-1", results_dir=str(tmp_path / "out"))
    result = run_experiment(env, Deps(open_nvml=lambda: None))
    out = tmp_path / "out"
    assert result.traffic is not None
    server = result.traffic.server
    assert server is not None
    assert server["mode"] == "server" and server["external"] is False
    assert server["command"][3:5] == ["serve", str(tiny_checkpoint)]
    assert server["startup_s"] > 0
    assert server["models"]["data"][0]["id"] == str(tiny_checkpoint)
    assert server["output_length_forcing"] == "generation_config"
    assert server["output_length_forced"] is True
    port = int(server["url"].rsplit(":", 1)[1])
    assert _port_is_free(port)  # stopped, not left running
    assert result.artifacts["server_log"] == "server.log"
    assert "serve" in (out / "server.log").read_text()
    # Start-up was in the load phase, outside the measured window.
    assert result.timings.load_s is not None and result.timings.load_s >= server["startup_s"]
    assert result.latency.mode == "arrivals"
    assert result.throughput.output_tokens == 6 * 4
    rows = pq.read_table(out / "requests.parquet").to_pylist()
    assert all(r["arrival_s"] is not None and r["submit_s"] >= r["arrival_s"] for r in rows)
    assert result.energy.gpu_energy_j is None  # CPU: not measured, never 0
