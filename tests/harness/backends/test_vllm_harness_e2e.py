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


def test_result_says_where_the_load_went_and_the_second_load_hits_the_compile_cache(
    tmp_path: Path,
) -> None:
    """timings.load_breakdown_s splits the load into the phases vLLM logs; a second run of
    the same config finds its compiled model (the dummy folder keeps its path), so it loads
    from the cache instead of compiling; the parts sum to load_s."""
    first, _ = _run(tmp_path / "a", n_prompts=20, max_num_seqs=8)
    second, _ = _run(tmp_path / "b", n_prompts=20, max_num_seqs=8)
    b1 = first["timings"]["load_breakdown_s"]
    b2 = second["timings"]["load_breakdown_s"]
    assert b1["compile_cache_hit"] is False and b2["compile_cache_hit"] is True
    assert b1["weights_s"] == pytest.approx(0.1)
    assert b1["dynamo_transform_s"] == pytest.approx(0.2)
    assert b1["inductor_compile_s"] == pytest.approx(0.15)
    assert b2["dynamo_transform_s"] is None and b2["inductor_compile_s"] == pytest.approx(0.05)
    assert b1["kv_cache_profile_s"] == pytest.approx(0.3)
    for result in (first, second):
        parts = result["timings"]["load_breakdown_s"]
        named = sum(v for k, v in parts.items() if k.endswith("_s") and v is not None)
        assert named == pytest.approx(result["timings"]["load_s"], abs=1e-6)
