"""The vLLM backend against the real vLLM, on a GPU: the knobs users turn, and the errors.

Skipped unless ``vllm`` imports and CUDA is available (the vllm image, or the lent H200 with
vLLM 0.26.0 staged: ``../shared/gpu/vllm/README.md``). CI has neither. Figures from the H200
run are in docs/gpu-results.md. Models are dummy-weight Llama-3.2-1B (and -3.1-8B for the OOM
case) built from ``config.json``: nothing is downloaded.

Set ``LLEM_REAL_OBS=/path/obs.json`` to have the tests write what the engine did (prefix-cache
hits, prompt path, memory) there; the fake engine is pinned to those observations.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.backends.engine_common import (
    EngineOutOfMemoryError,
    UnsupportedModelError,
)
from llenergymeasure_harness.backends.vllm import VLLMBackend

pytestmark = [pytest.mark.vllm, pytest.mark.gpu, pytest.mark.slow]

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (runs in the vllm image)")
torch = pytest.importorskip("torch", reason="vLLM needs torch")
if not torch.cuda.is_available():  # pragma: no cover - depends on the machine
    pytest.skip("vLLM needs a CUDA GPU", allow_module_level=True)

_OBS: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_observations() -> Iterator[None]:
    yield
    target = os.environ.get("LLEM_REAL_OBS")
    if target:
        Path(target).write_text(json.dumps(_OBS, indent=2, default=str), encoding="utf-8")


def _config(**overrides: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "model": "llama-3.2-1b",
        "load_format": "dummy",
        "backend": "vllm",
        "precision": "bfloat16",
        "n_prompts": 32,
        "max_input_tokens": 64,
        "max_output_tokens": 8,
    }
    vllm_section = {"gpu_memory_utilization": 0.3, "enforce_eager": True, "max_model_len": 1024}
    vllm_section.update(overrides.pop("vllm", {}))
    base.update(overrides)
    base["vllm"] = vllm_section
    return ExperimentConfig(**base)


def _requests(
    n: int, length: int = 64, new: int = 8, same: bool = False
) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            request_id=i,
            prompt_token_ids=[1000 + (0 if same else i)] + [2000 + j for j in range(length - 1)],
            max_new_tokens=new,
        )
        for i in range(n)
    ]


def _check_records(records: list[Any], n: int, new: int, length: int) -> None:
    assert [r.output_tokens for r in records] == [new] * n
    assert all(r.input_tokens == length for r in records)
    for record in records:
        assert record.submit_s <= record.token_times_s[0] <= record.end_s
        assert record.token_times_s == sorted(record.token_times_s)


def _gpu_memory_used_bytes() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
            return int(info.used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def test_real_vllm_dummy_llama_1b(tmp_path: Path) -> None:
    """Eager, 4 sequences: exact lengths, ordered token times, a steady-state window."""
    backend = VLLMBackend(workdir=tmp_path)
    try:
        info = backend.load(_config(vllm={"max_num_seqs": 4}))
        assert info.backend_version == vllm.__version__
        records = backend.run(_requests(32))
    finally:
        backend.close()
    _check_records(records, 32, 8, 64)
    window = backend.last_steady_state
    assert window is not None and window.start_s is not None
    _OBS["basic"] = {"vllm": vllm.__version__, "prompt_path": backend.prompt_path}


def test_rendered_and_raw_prompt_paths_and_prefix_cache_hits(tmp_path: Path) -> None:
    """One sequence at a time, prefix caching on (vLLM's default): identical prompts hit whole
    blocks, never the last token; the private renderer and the raw fallback both generate."""
    backend = VLLMBackend(workdir=tmp_path)
    try:
        info = backend.load(_config(vllm={"max_num_seqs": 1}))
        rendered = backend.run(_requests(3, length=40, same=True))
        path_rendered = backend.prompt_path
        backend._render_prompts = False
        raw = backend.run(_requests(3, length=40, same=True))
        path_raw = backend.prompt_path
    finally:
        backend.close()
    _check_records(rendered, 3, 8, 40)
    _check_records(raw, 3, 8, 40)
    _OBS["prefix_cache_sequential"] = {
        "rendered": [r.cached_input_tokens for r in rendered],
        "raw": [r.cached_input_tokens for r in raw],
        "prompt_paths": [path_rendered, path_raw],
        "load_prompt_path": info.extra.get("prompt_path"),
    }
    assert path_rendered == "rendered" and path_raw == "raw"
    # Each run has its own cache salt, so the first request of each run misses.
    assert rendered[0].cached_input_tokens == 0 and raw[0].cached_input_tokens == 0
    hits = [r.cached_input_tokens for r in rendered[1:] + raw[1:]]
    assert all(h is not None and 0 < h < 40 and h % 16 == 0 for h in hits), hits


def test_cuda_graphs_async_scheduling_fp8_kv_chunked_prefill_64_seqs(tmp_path: Path) -> None:
    """torch.compile + CUDA graphs, async scheduling, fp8 KV cache, chunked prefill with a small
    token budget (prompts longer than one step's budget) and 64 sequences."""
    config = _config(
        n_prompts=192,
        max_input_tokens=300,
        vllm={
            "enforce_eager": False,
            "async_scheduling": True,
            "kv_cache_dtype": "fp8",
            "enable_chunked_prefill": True,
            "max_num_batched_tokens": 256,
            "max_num_seqs": 64,
        },
    )
    backend = VLLMBackend(workdir=tmp_path)
    try:
        info = backend.load(config)
        records = backend.run(_requests(192, length=300))
    finally:
        backend.close()
    _check_records(records, 192, 8, 300)
    args = info.extra["engine_args"]
    assert args["kv_cache_dtype"] == "fp8" and args["async_scheduling"] is True
    assert args["enforce_eager"] is False and args["max_num_batched_tokens"] == 256
    window = backend.last_steady_state
    assert window is not None
    _OBS["graphs_fp8_async_chunked"] = {
        "load_s": info.load_duration_s,
        "steady": window.to_dict(),
        "cached": sum(r.cached_input_tokens or 0 for r in records),
    }


def test_prefix_caching_off_256_seqs_half_memory(tmp_path: Path) -> None:
    """Prefix caching off: identical prompts never hit. 256 sequences, chunked prefill off,
    gpu_memory_utilization 0.5 bounds what the engine takes."""
    config = _config(
        n_prompts=300,
        vllm={
            "enable_prefix_caching": False,
            "enable_chunked_prefill": False,
            "max_num_seqs": 256,
            "gpu_memory_utilization": 0.5,
        },
    )
    backend = VLLMBackend(workdir=tmp_path)
    try:
        backend.load(config)
        used = _gpu_memory_used_bytes()
        records = backend.run(_requests(300, same=True))
    finally:
        backend.close()
    _check_records(records, 300, 8, 64)
    assert all(r.cached_input_tokens == 0 for r in records)
    total = torch.cuda.get_device_properties(0).total_memory
    _OBS["prefix_off_256"] = {"memory_used_bytes": used, "total_bytes": total}
    if used is not None:
        assert used <= 0.5 * total + 3 * 2**30  # + CUDA contexts and the allocator's slack


def _tokenizer_dir(tmp_path: Path) -> Path:
    """A Llama-3.2-1B config plus a word-level tokenizer built here (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llenergymeasure_contract.architecture import resolve_architecture

    words = [f"w{i}" for i in range(2000)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    target = tmp_path / "local-model"
    target.mkdir()
    fast.save_pretrained(str(target))
    spec = resolve_architecture("llama-3.2-1b")
    assert spec is not None
    (target / "config.json").write_text(json.dumps(spec.hf_config), encoding="utf-8")
    return target


def test_local_model_dir_with_tokenizer_through_the_harness(tmp_path: Path) -> None:
    """A local directory (config + tokenizer), text prompts from a JSONL file that repeats one
    prompt, the whole harness with real NVML: prefix-cache hits recorded and flagged, phase
    energy, latency mode, compile cache state."""
    model_dir = _tokenizer_dir(tmp_path)
    data = tmp_path / "prompts.jsonl"
    text = " ".join(f"w{i}" for i in range(100))
    data.write_text(json.dumps({"prompt": text}) + "\n", encoding="utf-8")
    config = ExperimentConfig(
        model=str(model_dir),
        tokenizer=str(model_dir),
        load_format="dummy",
        backend="vllm",
        n_prompts=24,
        max_input_tokens=128,
        max_output_tokens=16,
        dataset={"source": "jsonl", "path": str(data)},
        baseline={"duration_s": 1.0},
        warmup={"n_batches": 1},
        energy={"sampler": "nvml", "sample_rate_hz": 50},
        vllm={
            "max_num_seqs": 4,
            "gpu_memory_utilization": 0.3,
            "enforce_eager": True,
            "max_model_len": 1024,
        },
    )
    env = HarnessEnv(
        config=config,
        run_id="real",
        results_dir=str(tmp_path / "out"),
        compile_cache_dir=str(tmp_path / "cc"),
    )
    from llenergymeasure_harness.experiment import run_experiment

    result = run_experiment(env)
    flags = {f.code for f in result.quality_flags}
    _OBS["harness_local_tokenizer"] = {
        "prefix_cache": result.prefix_cache.model_dump() if result.prefix_cache else None,
        "flags": sorted(flags),
        "phase_energy": result.phase_energy.model_dump() if result.phase_energy else None,
        "compile_cache": result.compile_cache.model_dump() if result.compile_cache else None,
        "load_s": result.timings.load_s,
        "j_per_output_token": result.efficiency.j_per_output_token,
    }
    assert result.throughput.output_tokens == 24 * 16
    # 100 words (+ <s> if the tokenizer adds one; this one has no post-processor).
    assert result.throughput.input_tokens in (24 * 100, 24 * 101)
    assert result.extra["load"]["engine_args"].get("skip_tokenizer_init") is None
    assert result.energy.gpu_energy_j is not None and result.energy.gpu_energy_j > 0
    assert result.prefix_cache is not None and result.prefix_cache.cached_input_tokens
    assert "prefix_cache_hits" in flags
    assert result.latency.mode == "offline_queueing"
    assert result.phase_energy is not None and result.phase_energy.prefill_pass is not None
    assert result.phase_energy.prefill_pass.prefill_energy_j is not None
    assert result.compile_cache is not None and result.compile_cache.state == "cold"


def test_second_load_of_a_config_loads_its_compiled_model() -> None:
    """With torch.compile on, a second load of the same dummy-weight config finds vLLM's
    compiled model (the dummy folder keeps its path, which vLLM's cache key holds), and
    load_breakdown_s says where each load's seconds went, adding up to the load."""
    fresh = 1024 + time.time_ns() % 997  # max_model_len: a cache key no earlier run made
    config = _config(vllm={"enforce_eager": False, "max_model_len": fresh})
    seen: list[tuple[str, dict[str, Any]]] = []
    for _ in range(2):
        backend = VLLMBackend()  # no workdir: the default (stable) dummy folder
        try:
            info = backend.load(config)
        finally:
            backend.close()
        assert info.load_breakdown_s is not None
        seen.append((backend.engine_args["model"], info.load_breakdown_s))
    (first_model, first), (second_model, second) = seen
    _OBS["load_breakdown"] = [first, second]
    assert first_model == second_model
    assert first["compile_cache_hit"] is False and second["compile_cache_hit"] is True
    assert first["dynamo_transform_s"] > 0 and first["inductor_compile_s"] > 0
    assert second["dynamo_transform_s"] is None
    for parts in (first, second):
        assert parts["weights_s"] > 0 and parts["python_import_s"] is not None
        assert parts["cuda_graph_capture_s"] is not None and parts["kv_cache_profile_s"] is not None
        assert parts["engine_start_s"] is not None and parts["engine_start_s"] >= 0


def test_out_of_memory_is_translated(tmp_path: Path) -> None:
    """8B weights (16 GB) into 5 % of the card: EngineOutOfMemoryError with the vllm hint."""
    config = _config(model="llama-3.1-8b", vllm={"gpu_memory_utilization": 0.05})
    backend = VLLMBackend(workdir=tmp_path)
    try:
        with pytest.raises(EngineOutOfMemoryError) as info:
            backend.load(config)
    finally:
        backend.close()
    _OBS["oom_message"] = str(info.value)[:2000]
    assert "gpu_memory_utilization" in (info.value.hint or "")


def test_unsupported_architecture_is_translated(tmp_path: Path) -> None:
    """An architecture vLLM does not implement: UnsupportedModelError (a ConfigError)."""
    from llenergymeasure_contract.architecture import resolve_architecture

    spec = resolve_architecture("llama-3.2-1b")
    assert spec is not None
    model_dir = tmp_path / "fancy"
    model_dir.mkdir()
    hf = dict(spec.hf_config)
    hf["architectures"] = ["FancyNewForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(hf), encoding="utf-8")
    backend = VLLMBackend(workdir=tmp_path)
    try:
        with pytest.raises(UnsupportedModelError) as info:
            backend.load(_config(model=str(model_dir)))
    finally:
        backend.close()
    _OBS["unsupported_message"] = str(info.value)[:2000]
