"""The harness runs a whole experiment through the vLLM backend (fake vLLM, fake NVML).

This pins the integration between the harness's experiment loop and the engine backends:
registration, warmup with the backend's warmup unit, per-request records, and the steady-state
window the harness reports beside the whole-run figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure_harness.backends import ENGINES
from llenergymeasure_harness.backends.vllm import VLLMBackend
from llenergymeasure_harness.experiment import Deps, run_experiment
from llenergymeasure_harness.testing.engines import FakeVLLM, FakeVLLMBehaviour
from llenergymeasure_harness.testing.fake_nvml import FakeNvml


def test_vllm_registered() -> None:
    """The registry maps backend 'vllm' to this module's class."""
    assert ENGINES["vllm"] == "llenergymeasure_harness.backends.vllm:VLLMBackend"


def _run(tmp_path: Path, n_prompts: int, **vllm: Any) -> Any:
    fake = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.05))
    clock = fake.behaviour.clock
    config = ExperimentConfig(
        model="tiny-llama",
        load_format="dummy",
        backend="vllm",
        n_prompts=n_prompts,
        max_input_tokens=16,
        max_output_tokens=64,
        baseline={"enabled": False},
        energy={"sampler": "nvml"},
        vllm=vllm,
    )
    env = HarnessEnv(config=config, run_id="e2e", results_dir=str(tmp_path))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: VLLMBackend(clock=clock),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        return run_experiment(env, deps).model_dump(mode="json"), fake


def test_harness_runs_vllm_experiment(tmp_path: Path) -> None:
    """Exact token counts, per-request latency, and a valid steady-state window."""
    result, fake = _run(tmp_path, n_prompts=200, max_num_seqs=8)
    assert result["throughput"]["output_tokens"] == 200 * 64
    assert result["throughput"]["input_tokens"] == 200 * 16
    assert result["latency"]["itl_s"]["p50"] == pytest.approx(0.05)
    steady = result["steady_state"]
    assert steady is not None and steady["valid"], steady
    assert steady["duration_s"] > 30
    assert result["extra"]["load"]["engine_args"]["max_num_seqs"] == 8
    assert fake.instances[0].llm_engine.max_running_seen == 8


def test_harness_reports_invalid_window(tmp_path: Path) -> None:
    """A run too short for a steady state still reports whole-run figures, window flagged."""
    result, _ = _run(tmp_path, n_prompts=20, max_num_seqs=8)
    assert result["throughput"]["output_tokens"] == 20 * 64
    steady = result["steady_state"]
    assert steady is not None and steady["valid"] is False
    assert "minimum" in steady["reason"]
