"""Contract tests of the TensorRT-LLM backend against the fake ``tensorrt_llm`` (1.2 LLM API)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.harness.backends.engine_inputs import engine_config, engine_requests

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.errors import ConfigError, ExperimentError
from llenergymeasure_harness.backends.base import Backend
from llenergymeasure_harness.backends.engine_common import (
    EngineOutOfMemoryError,
    UnsupportedModelError,
    prepare_model_source,
)
from llenergymeasure_harness.backends.tensorrt import (
    TensorRTBackend,
    build_config_dict,
    build_llm_kwargs,
    build_sampling_kwargs,
    kv_cache_config_dict,
    quant_config_dict,
)
from llenergymeasure_harness.testing.engines import FakeTRTLLM, FakeTRTLLMBehaviour
from llenergymeasure_harness.testing.engines.fake_tensorrt_llm import (
    BuildConfig,
    KvCacheConfig,
    QuantAlgo,
)


def _config(**overrides: Any) -> ExperimentConfig:
    return engine_config("tensorrt", **overrides)


_requests = engine_requests


@pytest.fixture
def fake() -> Iterator[FakeTRTLLM]:
    controller = FakeTRTLLM(FakeTRTLLMBehaviour())
    with controller.installed():
        yield controller


@pytest.fixture
def backend(fake: FakeTRTLLM, tmp_path: Path) -> Iterator[TensorRTBackend]:
    instance = TensorRTBackend(
        clock=fake.behaviour.clock,
        engine_cache_dir=tmp_path / "cache",
        gpu_identity="NVIDIA H100 80GB HBM3 sm90",
        workdir=tmp_path / "work",
    )
    yield instance
    instance.close()


# --------------------------------------------------------------------------- mapping


def test_satisfies_backend_protocol() -> None:
    """TensorRTBackend is a Backend in the runtime-checkable protocol's sense."""
    assert isinstance(TensorRTBackend(environ={}), Backend)
    assert TensorRTBackend.name == "tensorrt"


def test_build_config_maps_limits_and_passthrough() -> None:
    """Build limits and build_args land in BuildConfig; max_input_len defaults to the workload."""
    config = _config(
        tensorrt={
            "max_batch_size": 64,
            "max_num_tokens": 4096,
            "max_seq_len": 1024,
            "build_args": {"opt_num_tokens": 2048},
        }
    )
    assert build_config_dict(config) == {
        "max_batch_size": 64,
        "max_input_len": 8,
        "max_num_tokens": 4096,
        "max_seq_len": 1024,
        "opt_num_tokens": 2048,
    }
    explicit = _config(tensorrt={"max_input_len": 6})
    assert build_config_dict(explicit)["max_input_len"] == 6


@pytest.mark.parametrize(
    ("quantization", "kv", "expected"),
    [
        ("fp8", None, {"quant_algo": "FP8"}),
        ("fp8", "fp8", {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}),
        ("int4_awq", None, {"quant_algo": "W4A16_AWQ"}),
        ("w8a8_sq", "int8", {"quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": "INT8"}),
        ("int8_wo", None, {"quant_algo": "W8A16"}),
        ("int4_wo", None, {"quant_algo": "W4A16"}),
        ("nvfp4", None, {"quant_algo": "NVFP4"}),
    ],
)
def test_quantization_maps_to_quant_algo(
    quantization: str, kv: str | None, expected: dict[str, str]
) -> None:
    """tensorrt.quantization names map onto QuantAlgo members."""
    section: dict[str, Any] = {"quantization": quantization}
    if kv:
        section["kv_cache_quantization"] = kv
    assert quant_config_dict(_config(tensorrt=section)) == expected


def test_no_quantization_sends_no_quant_config(tmp_path: Path) -> None:
    """Without quantization no quant_config is passed."""
    config = _config(load_format="auto", model="meta-llama/Llama-3.1-8B")
    assert quant_config_dict(config) is None
    assert "quant_config" not in build_llm_kwargs(config, prepare_model_source(config, tmp_path))


def test_trt_flow_build_kwargs(tmp_path: Path) -> None:
    """The TensorRT flow builds with dtype, parallelism, build/quant/KV configs, dummy weights."""
    config = _config(
        precision="float16",
        gpus=[0, 1],
        tensorrt={
            "tensor_parallel_size": 2,
            "max_batch_size": 16,
            "quantization": "fp8",
            "kv_cache_free_gpu_memory_fraction": 0.7,
            "enable_block_reuse": False,
            "enable_chunked_prefill": True,
            "llm_args": {"enable_tqdm": False},
        },
    )
    source = prepare_model_source(config, tmp_path)
    kwargs = build_llm_kwargs(config, source)
    assert kwargs == {
        "model": source.model,
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "trust_remote_code": False,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.7, "enable_block_reuse": False},
        "skip_tokenizer_init": True,
        "enable_chunked_prefill": True,
        "dtype": "float16",
        "load_format": "dummy",
        "build_config": {"max_batch_size": 16, "max_input_len": 8},
        "quant_config": {"quant_algo": "FP8"},
        "enable_tqdm": False,
    }


def test_trt_flow_engine_load_kwargs_drop_build_settings(tmp_path: Path) -> None:
    """Loading a built engine passes runtime settings only (no build/quant config, no dtype)."""
    config = _config(load_format="auto", model=str(tmp_path), tensorrt={"quantization": "fp8"})
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    source = prepare_model_source(config, tmp_path / "w")
    kwargs = build_llm_kwargs(config, source, engine_dir="/cache/abc")
    assert kwargs["model"] == "/cache/abc"
    assert kwargs["tokenizer"] == str(tmp_path)  # the engine dir may lack the tokenizer
    for absent in ("build_config", "quant_config", "dtype", "load_format"):
        assert absent not in kwargs


def test_pytorch_flow_kwargs(tmp_path: Path) -> None:
    """The PyTorch flow passes limits as LLM arguments and never a build_config."""
    config = _config(
        tensorrt={"trtllm_backend": "pytorch", "max_batch_size": 32, "max_num_tokens": 2048}
    )
    kwargs = build_llm_kwargs(config, prepare_model_source(config, tmp_path))
    assert kwargs["max_batch_size"] == 32
    assert kwargs["max_num_tokens"] == 2048
    assert kwargs["load_format"] == "dummy"
    assert kwargs["dtype"] == "bfloat16"
    assert "build_config" not in kwargs and "quant_config" not in kwargs


def test_kv_cache_config_defaults() -> None:
    """The KV cache fraction is always stated; block reuse only when set."""
    assert kv_cache_config_dict(_config()) == {"free_gpu_memory_fraction": 0.9}


def test_sampling_fixed_length_greedy_with_end_id() -> None:
    """Fixed length (min_tokens = max_tokens, ignore_eos), greedy via top_k=1, explicit end_id."""
    kwargs = build_sampling_kwargs(_config(), 5, 2, end_id=2)
    assert kwargs == {
        "max_tokens": 5,
        "min_tokens": 5,
        "ignore_eos": True,
        "detokenize": False,
        "top_k": 1,
        "end_id": 2,
        "pad_id": 2,
    }


def test_sampling_stochastic_seeds_per_request() -> None:
    """Sampling passes temperature/top_p/top_k and seeds each request with random_seed + id."""
    config = _config(ignore_eos=False, random_seed=10, decoder={"preset": "creative"})
    kwargs = build_sampling_kwargs(config, 5, 4)
    assert "min_tokens" not in kwargs
    assert kwargs["temperature"] == 1.0
    assert kwargs["top_p"] == 0.95
    assert kwargs["top_k"] == 0
    assert kwargs["seed"] == 14
    assert "end_id" not in kwargs


# --------------------------------------------------------------------------- load / run


def test_first_load_builds_then_loads_engine_from_cache(
    fake: FakeTRTLLM, backend: TensorRTBackend, tmp_path: Path
) -> None:
    """A miss builds with BuildConfig/QuantConfig objects, saves to the cache, loads from it."""
    info = backend.load(_config(tensorrt={"max_batch_size": 4, "quantization": "int4_awq"}))
    assert len(fake.builds) == 1
    build = fake.builds[0]
    assert build["build_config"]["max_batch_size"] == 4
    assert build["quant_config"].quant_algo is QuantAlgo.W4A16_AWQ
    assert fake.llm_kwargs[0]["flow"] == "tensorrt"
    assert isinstance(fake.llm_kwargs[0]["build_config"], BuildConfig)
    assert isinstance(fake.llm_kwargs[0]["kv_cache_config"], KvCacheConfig)
    assert fake.engine_loads == [str(tmp_path / "cache" / backend.cache_key)]  # type: ignore[operator]
    assert info.engine_build_s == pytest.approx(fake.behaviour.build_time_s)
    assert info.load_duration_s == pytest.approx(fake.behaviour.load_time_s)
    assert info.engine_cache_hit is False
    assert info.backend_version == "1.2.1"
    assert info.extra["engine_cache_key"] == backend.cache_key
    assert fake.shutdowns == 1  # the build instance is shut down before measuring
    assert info.extra["vocab_size"] == 2048
    assert info.devices == [0]


def test_pytorch_flow_builds_nothing(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """trtllm_backend: pytorch uses tensorrt_llm.LLM, no build, no cache."""
    info = backend.load(_config(tensorrt={"trtllm_backend": "pytorch", "max_batch_size": 4}))
    assert fake.builds == [] and fake.saves == []
    assert fake.llm_kwargs[0]["flow"] == "pytorch"
    assert info.engine_build_s is None and info.engine_cache_hit is None
    records = backend.run(_requests(6))
    assert all(r.output_tokens == 5 for r in records)


def test_run_counts_tokens_and_streams(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """Each request reports its prompt length and exactly max_new_tokens streamed tokens."""
    backend.load(_config(tensorrt={"max_batch_size": 4}))
    records = backend.run(_requests(10, prompt_len=8, max_new=5))
    assert [r.request_id for r in records] == list(range(10))
    assert all(r.input_tokens == 8 and r.output_tokens == 5 for r in records)
    assert all(r.finish_reason == "length" for r in records)
    _, params = fake.requests[0]
    assert params.max_tokens == params.min_tokens == 5
    assert params.end_id == 2 and params.pad_id == 2  # dummy weights: no tokenizer
    assert params.detokenize is False


def test_each_run_has_its_own_kv_reuse_salt(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """Warmup cannot leave reusable KV blocks for the measured run: each run() salts requests."""
    backend.load(_config(tensorrt={"max_batch_size": 4}))
    backend.run(_requests(2))
    backend.run(_requests(2))
    assert fake.cache_salts == ["llem-run-1", "llem-run-1", "llem-run-2", "llem-run-2"]


def test_latency_records_follow_engine_steps(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """TTFT and token times equal the fake engine's step times on the shared clock."""
    backend.load(_config(tensorrt={"max_batch_size": 2}))
    clock = fake.behaviour.clock
    t0 = clock()
    records = backend.run(_requests(4, max_new=3))
    assert records[0].submit_s == pytest.approx(t0)
    assert records[0].token_times_s == pytest.approx([t0 + 0.01, t0 + 0.02, t0 + 0.03])
    assert records[1].token_times_s == pytest.approx(records[0].token_times_s)
    assert records[2].first_token_s == pytest.approx(t0 + 0.04)
    assert records[3].end_s == pytest.approx(t0 + 0.06)


def test_eos_without_ignore_eos(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """With ignore_eos off, EOS ends requests early with reason 'stop'."""
    fake.behaviour.eos_after = 3
    backend.load(_config(ignore_eos=False, tensorrt={"max_batch_size": 4}))
    records = backend.run(_requests(2, max_new=5))
    assert [r.output_tokens for r in records] == [3, 3]
    assert {r.finish_reason for r in records} == {"stop"}


def test_steady_state_uses_max_batch_size(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """The steady-state target is tensorrt.max_batch_size; the window is set after run()."""
    fake.behaviour.step_time_s = 0.5
    backend.load(_config(n_prompts=30, tensorrt={"max_batch_size": 3}))
    backend.run(_requests(30, max_new=40))
    window = backend.last_steady_state
    assert window is not None and window.target_concurrency == 3
    assert window.valid, window.reason


def test_close_shuts_down_once(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """close() shuts the measured LLM down and is safe to repeat."""
    backend.load(_config())
    before = fake.shutdowns
    backend.close()
    backend.close()
    assert fake.shutdowns == before + 1


def test_run_before_load(backend: TensorRTBackend) -> None:
    """run() without load() fails clearly."""
    with pytest.raises(ExperimentError, match="before load"):
        backend.run(_requests(1))


# --------------------------------------------------------------------------- errors


def test_oom_while_building(fake: FakeTRTLLM, backend: TensorRTBackend, tmp_path: Path) -> None:
    """OOM during the engine build is EngineOutOfMemoryError and leaves no cache entry behind."""
    fake.behaviour.oom_on_build = True
    with pytest.raises(EngineOutOfMemoryError, match="during build") as info:
        backend.load(_config())
    assert "max_batch_size" in (info.value.hint or "")
    cache = tmp_path / "cache"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_oom_while_loading_engine(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """OOM loading the measured engine is EngineOutOfMemoryError (phase load)."""
    fake.behaviour.oom_on_load = True
    with pytest.raises(EngineOutOfMemoryError, match="during load"):
        backend.load(_config(tensorrt={"trtllm_backend": "pytorch"}))


def test_oom_mid_run(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """An OOM reported through the streamed results becomes EngineOutOfMemoryError."""
    backend.load(_config(tensorrt={"max_batch_size": 2}))
    fake.behaviour.oom_at_step = 2
    with pytest.raises(EngineOutOfMemoryError, match="during run"):
        backend.run(_requests(4))


@pytest.mark.parametrize("flow", ["tensorrt", "pytorch"])
def test_unsupported_architecture(fake: FakeTRTLLM, tmp_path: Path, flow: str) -> None:
    """Both flows' 'architecture not supported' errors become UnsupportedModelError."""
    model_dir = tmp_path / "odd"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["FancyNewForCausalLM"]}))
    backend = TensorRTBackend(clock=fake.behaviour.clock, environ={}, workdir=tmp_path / "w")
    with pytest.raises(UnsupportedModelError) as info:
        backend.load(
            _config(model=str(model_dir), load_format="auto", tensorrt={"trtllm_backend": flow})
        )
    assert isinstance(info.value, ConfigError)


def test_rejected_llm_argument_is_config_error(fake: FakeTRTLLM, backend: TensorRTBackend) -> None:
    """An llm_args key TensorRT-LLM does not accept becomes a ConfigError."""
    with pytest.raises(ConfigError, match="rejected"):
        backend.load(_config(tensorrt={"llm_args": {"no_such_argument": 1}}))


def test_missing_tensorrt_llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without tensorrt_llm importable, load() names the trtllm image."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(ExperimentError, match="not installed") as info:
        TensorRTBackend(environ={}, workdir=tmp_path).load(_config())
    assert "trtllm image" in (info.value.hint or "")
