"""The harness runs whole experiments through the TensorRT-LLM backend (fake engine, fake NVML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure_harness.backends import ENGINES
from llenergymeasure_harness.backends.tensorrt import TensorRTBackend
from llenergymeasure_harness.experiment import Deps, run_experiment
from llenergymeasure_harness.testing.engines import FakeTRTLLM, FakeTRTLLMBehaviour
from llenergymeasure_harness.testing.fake_nvml import FakeNvml


def test_tensorrt_registered() -> None:
    """The registry maps backend 'tensorrt' to this module's class."""
    assert ENGINES["tensorrt"] == "llenergymeasure_harness.backends.tensorrt:TensorRTBackend"


def _run(tmp_path: Path, fake: FakeTRTLLM, run_id: str, **section: Any) -> Any:
    clock = fake.behaviour.clock
    config = ExperimentConfig(
        model="tiny-llama",
        load_format="dummy",
        backend="tensorrt",
        n_prompts=120,
        max_input_tokens=16,
        max_output_tokens=64,
        baseline={"enabled": False},
        energy={"sampler": "nvml"},
        tensorrt={"max_batch_size": 8, **section},
    )
    out = tmp_path / run_id
    out.mkdir()
    env = HarnessEnv(
        config=config,
        run_id=run_id,
        results_dir=str(out),
        engine_cache_dir=str(tmp_path / "engines"),
    )
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: TensorRTBackend(
            clock=clock, engine_cache_dir=env.engine_cache_dir, gpu_identity="H100 sm90"
        ),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        return run_experiment(env, deps).model_dump(mode="json")


def test_second_experiment_reuses_engine(tmp_path: Path) -> None:
    """Build time is reported apart from the run; the second experiment hits the cache."""
    fake = FakeTRTLLM(FakeTRTLLMBehaviour(step_time_s=0.05, build_time_s=40.0))
    first = _run(tmp_path, fake, "a")
    second = _run(tmp_path, fake, "b", kv_cache_free_gpu_memory_fraction=0.5)
    assert len(fake.builds) == 1
    assert first["timings"]["engine_build_s"] == 40.0
    assert first["extra"]["engine_cache_hit"] is False
    assert second["timings"]["engine_build_s"] == 0.0
    assert second["extra"]["engine_cache_hit"] is True
    assert first["throughput"]["output_tokens"] == second["throughput"]["output_tokens"] == 120 * 64
    assert first["steady_state"] is not None and first["steady_state"]["valid"]
