"""The vLLM backend against the real vLLM, on a GPU.

Skipped unless ``vllm`` imports and CUDA is available (the vllm image, or the GPU machine with
vLLM installed). Nothing here has run in this repository's CI, which has neither.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.backends.vllm import VLLMBackend

pytestmark = [pytest.mark.vllm, pytest.mark.gpu, pytest.mark.slow]

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (runs in the vllm image)")
torch = pytest.importorskip("torch", reason="vLLM needs torch")
if not torch.cuda.is_available():  # pragma: no cover - depends on the machine
    pytest.skip("vLLM needs a CUDA GPU", allow_module_level=True)


def test_real_vllm_dummy_llama_1b(tmp_path: Path) -> None:
    """Dummy Llama-3.2-1B: exact output lengths, ordered token times, a steady-state window."""
    config = ExperimentConfig(
        model="llama-3.2-1b",
        load_format="dummy",
        backend="vllm",
        precision="bfloat16",
        n_prompts=32,
        max_input_tokens=16,
        max_output_tokens=8,
        vllm={"max_num_seqs": 4, "gpu_memory_utilization": 0.3, "enforce_eager": True},
    )
    backend = VLLMBackend(workdir=tmp_path)
    try:
        info = backend.load(config)
        assert info.backend_version == vllm.__version__
        requests = [
            GenerationRequest(request_id=i, prompt_token_ids=[5 + i] * 16, max_new_tokens=8)
            for i in range(32)
        ]
        records = backend.run(requests)
    finally:
        backend.close()
    assert [r.output_tokens for r in records] == [8] * 32
    assert all(r.input_tokens == 16 for r in records)
    for record in records:
        assert record.submit_s <= record.token_times_s[0] <= record.end_s
        assert record.token_times_s == sorted(record.token_times_s)
    window = backend.last_steady_state
    assert window is not None and window.start_s is not None
