"""The tensorrt: config section: knobs, defaults and invalid combinations (config errors)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llenergymeasure.config import ExperimentConfig, TensorRTConfig
from llenergymeasure_contract.sections import TRT_KV_QUANT_ALGOS, TRT_QUANT_ALGOS


def _trt(**section: Any) -> TensorRTConfig:
    config = ExperimentConfig(
        model="tiny-llama", load_format="dummy", backend="tensorrt", tensorrt=section
    )
    assert config.tensorrt is not None
    return config.tensorrt


def test_defaults() -> None:
    """The TensorRT engine flow with the cache on is the default."""
    section = _trt()
    assert section.trtllm_backend == "tensorrt"
    assert section.engine_cache is True
    assert section.kv_cache_free_gpu_memory_fraction == 0.9


def test_every_quantization_has_a_quant_algo() -> None:
    """Each allowed quantization name maps to a QuantAlgo member name."""
    field = TensorRTConfig.model_fields["quantization"]
    allowed = set(field.annotation.__args__[0].__args__)  # type: ignore[union-attr]
    assert allowed == set(TRT_QUANT_ALGOS)
    assert set(TRT_KV_QUANT_ALGOS) == {"fp8", "int8"}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"max_input_len": 4096, "max_seq_len": 2048}, "exceeds tensorrt.max_seq_len"),
        ({"kv_cache_quantization": "fp8"}, "needs tensorrt.quantization"),
        ({"trtllm_backend": "pytorch", "quantization": "fp8"}, "only apply when an engine"),
        ({"trtllm_backend": "pytorch", "build_args": {"opt_num_tokens": 8}}, "build_args"),
        ({"trtllm_backend": "pytorch", "max_input_len": 128}, "max_input_len"),
        ({"quantization": "int3"}, "quantization"),
        ({"trtllm_backend": "onnx"}, "trtllm_backend"),
        ({"kv_cache_free_gpu_memory_fraction": 0.0}, "kv_cache_free_gpu_memory_fraction"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"llm_args": {"build_config": {}}}, "build_config"),
        ({"llm_args": {"dtype": "float16"}}, "set precision instead"),
        ({"llm_args": {"backend": "pytorch"}}, "trtllm_backend"),
        ({"llm_args": {"max_batch_size": 4}}, "set tensorrt.max_batch_size instead"),
        ({"llm_args": {"kv_cache_config": {}}}, "kv_cache_config"),
        ({"engine_cahce": False}, "extra"),
    ],
)
def test_invalid_sections_are_config_errors(section: dict[str, Any], message: str) -> None:
    """Each invalid knob or combination is rejected at load time with a message naming it."""
    with pytest.raises(ValidationError, match=message):
        _trt(**section)


@pytest.mark.parametrize(
    "section",
    [
        {"quantization": "fp8", "kv_cache_quantization": "fp8"},
        {"quantization": "int4_awq", "max_batch_size": 256, "max_num_tokens": 8192},
        {"trtllm_backend": "pytorch", "max_batch_size": 64, "enable_chunked_prefill": True},
        {"build_args": {"opt_num_tokens": 1024}, "llm_args": {"fast_build": True}},
        {"max_input_len": 512, "max_seq_len": 640},
    ],
)
def test_valid_sections(section: dict[str, Any]) -> None:
    """Sensible sections validate."""
    _trt(**section)


def test_quantization_needs_half_precision() -> None:
    """Quantized builds with precision float32 are refused by the experiment validator."""
    with pytest.raises(ValidationError, match="float16/bfloat16"):
        ExperimentConfig(
            model="tiny-llama",
            backend="tensorrt",
            precision="float32",
            tensorrt={"quantization": "fp8"},
        )
