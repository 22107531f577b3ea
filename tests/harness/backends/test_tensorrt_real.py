"""The TensorRT-LLM backend against the real TensorRT-LLM, on a GPU.

Skipped unless ``tensorrt_llm`` imports and CUDA is available (the trtllm image). Nothing here
has run in this repository's CI, which has neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.backends.tensorrt import TensorRTBackend

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]

tensorrt_llm = pytest.importorskip(
    "tensorrt_llm", reason="TensorRT-LLM is not installed (runs in the trtllm image)"
)
torch = pytest.importorskip("torch", reason="TensorRT-LLM needs torch")
if not torch.cuda.is_available():  # pragma: no cover - depends on the machine
    pytest.skip("TensorRT-LLM needs a CUDA GPU", allow_module_level=True)


def _config(**section: Any) -> ExperimentConfig:
    return ExperimentConfig(
        model="llama-3.2-1b",  # head_dim 64: supported by every attention kernel
        load_format="dummy",
        backend="tensorrt",
        precision="float16",
        n_prompts=16,
        max_input_tokens=16,
        max_output_tokens=8,
        tensorrt={"max_batch_size": 4, "kv_cache_free_gpu_memory_fraction": 0.3, **section},
    )


def _run(backend: TensorRTBackend, config: ExperimentConfig) -> list[Any]:
    requests = [
        GenerationRequest(request_id=i, prompt_token_ids=[5 + i] * 16, max_new_tokens=8)
        for i in range(16)
    ]
    try:
        backend.load(config)
        return backend.run(requests)
    finally:
        backend.close()


def test_real_trt_engine_is_cached(tmp_path: Path) -> None:
    """Build once, hit the cache the second time; exact output lengths both times."""
    cache = tmp_path / "engines"
    first = TensorRTBackend(engine_cache_dir=cache, workdir=tmp_path / "a")
    records = _run(first, _config())
    assert [r.output_tokens for r in records] == [8] * 16
    second = TensorRTBackend(engine_cache_dir=cache, workdir=tmp_path / "b")
    records = _run(second, _config(kv_cache_free_gpu_memory_fraction=0.2))
    assert first.cache_key == second.cache_key
    assert [r.output_tokens for r in records] == [8] * 16


def test_real_pytorch_flow(tmp_path: Path) -> None:
    """TensorRT-LLM's PyTorch flow with dummy weights generates fixed-length outputs."""
    backend = TensorRTBackend(environ={}, workdir=tmp_path)
    records = _run(backend, _config(trtllm_backend="pytorch"))
    assert [r.output_tokens for r in records] == [8] * 16
