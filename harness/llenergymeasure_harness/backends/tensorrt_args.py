"""TensorRT-LLM arguments: the ``tensorrt:`` section and the experiment as ``BuildConfig``,
``QuantConfig``, ``KvCacheConfig``, LoRA, ``LLM`` and ``SamplingParams`` keyword arguments.

Pure functions of the config (no ``tensorrt_llm`` import), used by
:class:`~llenergymeasure_harness.backends.tensorrt.TensorRTBackend`; re-exported from
:mod:`~llenergymeasure_harness.backends.tensorrt`.
"""

from __future__ import annotations

from typing import Any

from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.sections import TRT_KV_QUANT_ALGOS, TRT_QUANT_ALGOS, TensorRTConfig
from llenergymeasure_harness.backends.engine_common import ModelSource

_DTYPES = {"auto": "auto", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def tensorrt_section(config: ExperimentConfig) -> TensorRTConfig:
    section = config.tensorrt
    if section is None:
        raise ConfigError(f"backend is {config.backend!r}, not 'tensorrt'; no tensorrt: section")
    return section


# --------------------------------------------------------------------------- pure mapping


def build_config_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The ``BuildConfig`` fields the TensorRT flow builds with (pure).

    ``max_input_len`` defaults to the experiment's ``max_input_tokens`` because TensorRT-LLM's
    own default (1024) would reject longer prompts; ``max_num_tokens``/``max_seq_len`` are left
    to TensorRT-LLM when not set (8192; the model's context length).
    """
    section = tensorrt_section(config)
    build: dict[str, Any] = {
        "max_batch_size": section.max_batch_size,
        "max_input_len": section.max_input_len or config.max_input_tokens,
    }
    if section.max_num_tokens is not None:
        build["max_num_tokens"] = section.max_num_tokens
    if section.max_seq_len is not None:
        build["max_seq_len"] = section.max_seq_len
    build.update(section.build_args)
    return build


def quant_config_dict(config: ExperimentConfig) -> dict[str, str] | None:
    """``QuantConfig`` fields as ``QuantAlgo`` member names, or None (pure)."""
    section = tensorrt_section(config)
    if section.quantization is None:
        return None
    out = {"quant_algo": TRT_QUANT_ALGOS[section.quantization]}
    if section.kv_cache_quantization is not None:
        out["kv_cache_quant_algo"] = TRT_KV_QUANT_ALGOS[section.kv_cache_quantization]
    return out


def kv_cache_config_dict(config: ExperimentConfig) -> dict[str, Any]:
    """``KvCacheConfig`` fields (runtime only; not part of the engine-cache key)."""
    section = tensorrt_section(config)
    out: dict[str, Any] = {"free_gpu_memory_fraction": section.kv_cache_free_gpu_memory_fraction}
    if section.enable_block_reuse is not None:
        out["enable_block_reuse"] = section.enable_block_reuse
    return out


def build_llm_kwargs(
    config: ExperimentConfig, source: ModelSource, *, engine_dir: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``LLM(...)`` with config objects still as plain dicts (pure).

    Args:
        config: The experiment.
        source: What to load (hub id, path, or dummy config directory).
        engine_dir: For the TensorRT flow, load this built engine instead of building: the
            build-only arguments (build_config, quant_config, load_format, dtype) are dropped.

    The caller turns ``build_config``/``quant_config``/``kv_cache_config`` into TensorRT-LLM
    objects. ``tensorrt.llm_args`` is merged last (the schema refuses keys it must not set).
    """
    section = tensorrt_section(config)
    kwargs: dict[str, Any] = {
        "model": engine_dir or source.model,
        "tensor_parallel_size": section.tensor_parallel_size,
        "pipeline_parallel_size": section.pipeline_parallel_size,
        "trust_remote_code": config.trust_remote_code,
        "kv_cache_config": kv_cache_config_dict(config),
    }
    if config.tokenizer is not None:
        kwargs["tokenizer"] = config.tokenizer
    elif config.load_format == "dummy":
        kwargs["skip_tokenizer_init"] = True
    elif engine_dir is not None:
        # An engine directory need not hold the tokenizer; take it from the checkpoint.
        kwargs["tokenizer"] = source.model
    if section.enable_chunked_prefill is not None:
        kwargs["enable_chunked_prefill"] = section.enable_chunked_prefill
    if section.trtllm_backend == "pytorch":
        kwargs["dtype"] = _DTYPES[config.precision]
        if config.revision is not None:
            kwargs["revision"] = config.revision
        if config.load_format == "dummy":
            kwargs["load_format"] = "dummy"
        kwargs["max_batch_size"] = section.max_batch_size
        if section.max_num_tokens is not None:
            kwargs["max_num_tokens"] = section.max_num_tokens
        if section.max_seq_len is not None:
            kwargs["max_seq_len"] = section.max_seq_len
    elif engine_dir is None:
        kwargs["dtype"] = _DTYPES[config.precision]
        if config.revision is not None:
            kwargs["revision"] = config.revision
        if config.load_format == "dummy":
            kwargs["load_format"] = "dummy"
        kwargs["build_config"] = build_config_dict(config)
        quant = quant_config_dict(config)
        if quant is not None:
            kwargs["quant_config"] = quant
    lora = lora_config_dict(config)
    if lora is not None:
        kwargs["lora_config"] = lora
    kwargs.update(section.llm_args)
    return kwargs


#: Hugging Face module names -> TensorRT-LLM's LoRA module names (its default mapping).
TRTLLM_LORA_MODULES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_dense",
    "gate_proj": "mlp_h_to_4h",
    "up_proj": "mlp_gate",
    "down_proj": "mlp_4h_to_h",
}


def lora_config_dict(config: ExperimentConfig) -> dict[str, Any] | None:
    """``LoraConfig`` arguments of the ``lora:`` section (None without it; pure).

    ``lora_dir`` stays empty (adapters come with each request's ``LoRARequest``);
    ``lora_target_modules`` is the union of the generated adapters' modules (TensorRT-LLM's
    names), empty when only path or hub adapters are given (TensorRT-LLM then reads them).
    """
    lora = config.lora
    if lora is None:
        return None
    modules: list[str] = []
    for ref in lora.refs():
        for module in ref.spec.target_modules if ref.spec is not None else []:
            name = TRTLLM_LORA_MODULES[module]
            if name not in modules:
                modules.append(name)
    out: dict[str, Any] = {
        "lora_dir": [],
        "max_lora_rank": lora.resolved_max_lora_rank(),
        "max_loras": lora.resolved_max_loras,
        "lora_target_modules": modules,
    }
    if lora.max_cpu_loras is not None:
        out["max_cpu_loras"] = lora.max_cpu_loras
    return out


def build_sampling_kwargs(
    config: ExperimentConfig,
    max_new_tokens: int,
    request_id: int,
    *,
    end_id: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``tensorrt_llm.SamplingParams`` for one request (pure).

    Fixed length as on every backend (``ignore_eos`` and ``min_tokens = max_tokens``). Greedy
    is ``top_k=1`` (TensorRT-LLM: "Setting top_k = 1 results in greedy sampling"); sampling
    passes temperature/top_p/top_k (0 = all logits) with seed ``random_seed + request_id``.
    ``end_id``/``pad_id`` are set when the engine has no tokenizer (dummy weights), as
    TensorRT-LLM then requires.
    """
    decoder = config.decoder
    kwargs: dict[str, Any] = {
        "max_tokens": max_new_tokens,
        "ignore_eos": config.ignore_eos,
        "detokenize": False,
    }
    if config.ignore_eos:
        kwargs["min_tokens"] = max_new_tokens
    if decoder.do_sample:
        kwargs.update(
            temperature=decoder.temperature,
            top_p=decoder.top_p,
            top_k=decoder.top_k,
            seed=config.random_seed + request_id,
        )
    else:
        kwargs["top_k"] = 1
    if decoder.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = decoder.repetition_penalty
    if end_id is not None:
        kwargs["end_id"] = end_id
        kwargs["pad_id"] = end_id
    return kwargs
