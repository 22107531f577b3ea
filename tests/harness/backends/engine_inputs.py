"""The small config and requests the vLLM and TensorRT-LLM backend tests drive their fakes with."""

from __future__ import annotations

from typing import Any

from llenergymeasure.config import ExperimentConfig
from llenergymeasure_harness.backends.base import GenerationRequest


def engine_config(backend: str, **overrides: Any) -> ExperimentConfig:
    """A tiny dummy-weight config of ``backend`` (12 prompts of 8 tokens, 5 out)."""
    base: dict[str, Any] = {
        "model": "tiny-llama",
        "load_format": "dummy",
        "backend": backend,
        "n_prompts": 12,
        "max_input_tokens": 8,
        "max_output_tokens": 5,
    }
    base.update(overrides)
    return ExperimentConfig(**base)


def engine_requests(n: int, prompt_len: int = 8, max_new: int = 5) -> list[GenerationRequest]:
    """``n`` requests with distinct prompts."""
    return [
        GenerationRequest(
            request_id=i, prompt_token_ids=[3 + i] * prompt_len, max_new_tokens=max_new
        )
        for i in range(n)
    ]
