"""The vllm: config section: knobs, defaults and invalid combinations (config errors)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llenergymeasure.config import ExperimentConfig, VLLMConfig


def _vllm(**section: Any) -> VLLMConfig:
    config = ExperimentConfig(model="tiny-llama", load_format="dummy", backend="vllm", vllm=section)
    assert config.vllm is not None
    return config.vllm


def test_defaults_pin_max_num_seqs() -> None:
    """max_num_seqs defaults to 256 explicitly (vLLM's own default varies by GPU)."""
    section = _vllm()
    assert section.max_num_seqs == 256
    assert section.enforce_eager is False
    assert section.engine_args == {}


def test_section_is_frozen_and_strict() -> None:
    """Unknown keys are rejected and the section cannot be mutated."""
    with pytest.raises(ValidationError, match="extra"):
        _vllm(max_num_seq=8)
    section = _vllm()
    with pytest.raises(ValidationError):
        section.max_num_seqs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"enforce_eager": True, "cudagraph_mode": "FULL"}, "enforce_eager disables CUDA graphs"),
        ({"enforce_eager": True, "cudagraph_capture_sizes": [1, 2]}, "enforce_eager"),
        ({"enforce_eager": True, "max_cudagraph_capture_size": 64}, "enforce_eager"),
        ({"cudagraph_mode": "NONE", "cudagraph_capture_sizes": [1, 2]}, "captures no CUDA graphs"),
        (
            {"cudagraph_capture_sizes": [1, 8], "max_cudagraph_capture_size": 16},
            "must equal the largest",
        ),
        ({"cudagraph_capture_sizes": []}, "empty"),
        ({"cudagraph_capture_sizes": [0, 4]}, ">= 1"),
        ({"max_num_seqs": 512, "max_num_batched_tokens": 256}, "must be >= vllm.max_num_seqs"),
        (
            {
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": 1024,
                "max_model_len": 4096,
            },
            "enable_chunked_prefill=false",
        ),
        ({"speculative_config": {"num_speculative_tokens": 3}}, "needs 'method'"),
        ({"speculative_config": {"method": "ngram"}}, "num_speculative_tokens"),
        ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 0}}, ">= 1"),
        ({"quantization": "not-a-method"}, "quantization"),
        ({"kv_cache_dtype": "int4"}, "kv_cache_dtype"),
        ({"block_size": 7}, "block_size"),
        ({"cudagraph_mode": "sometimes"}, "cudagraph_mode"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"engine_args": {"dtype": "half"}}, "set precision instead"),
        ({"engine_args": {"seed": 1}}, "set random_seed instead"),
        ({"engine_args": {"max_num_seqs": 8}}, "set vllm.max_num_seqs instead"),
        (
            {"cudagraph_mode": "FULL", "engine_args": {"compilation_config": {"mode": 0}}},
            "compilation_config",
        ),
    ],
)
def test_invalid_combinations_are_config_errors(section: dict[str, Any], message: str) -> None:
    """Each invalid knob or combination is rejected at load time with a message naming it."""
    with pytest.raises(ValidationError, match=message):
        _vllm(**section)


@pytest.mark.parametrize(
    "section",
    [
        {"enforce_eager": True},
        {"enforce_eager": True, "cudagraph_mode": "NONE"},
        {"cudagraph_mode": "FULL_AND_PIECEWISE", "cudagraph_capture_sizes": [1, 2, 4]},
        {"cudagraph_capture_sizes": [1, 8], "max_cudagraph_capture_size": 8},
        {"max_num_seqs": 64, "max_num_batched_tokens": 64},
        {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192, "max_model_len": 4096},
        {"speculative_config": {"method": "eagle3", "model": "x/y", "num_speculative_tokens": 3}},
        {"speculative_config": {"model": "x/draft", "num_speculative_tokens": 2}},
        {"quantization": "awq_marlin", "kv_cache_dtype": "fp8_e4m3"},
        {"engine_args": {"compilation_config": {"mode": 3}}},
        {"engine_args": {"swap_space": 0}},
    ],
)
def test_valid_combinations_pass(section: dict[str, Any]) -> None:
    """Sensible combinations validate."""
    _vllm(**section)


def test_fp8_quantization_needs_half_precision() -> None:
    """vllm.quantization=fp8 with precision float32 is refused by the experiment validator."""
    with pytest.raises(ValidationError, match="fp8"):
        ExperimentConfig(
            model="tiny-llama", backend="vllm", precision="float32", vllm={"quantization": "fp8"}
        )


def test_concurrency_is_max_num_seqs_capped_by_prompts() -> None:
    """The experiment's concurrency (warmup batch) is min(n_prompts, max_num_seqs)."""
    config = ExperimentConfig(
        model="tiny-llama", backend="vllm", n_prompts=10, vllm={"max_num_seqs": 64}
    )
    assert config.concurrency == 10
