"""Per-backend config sections: ``pytorch:``, ``vllm:``, ``tensorrt:``.

Each section holds the engine's own knobs plus a passthrough dict for engine arguments we have
not modelled. Validators here only validate; cross-field rules that involve the experiment
(precision, GPUs) live in :mod:`llenergymeasure_contract.experiment`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llenergymeasure_contract.strict import StrictModel


def canonical_dict(value: Any) -> Any:
    """Sort mapping keys recursively, so passthrough dicts hash the same in any key order."""
    if isinstance(value, dict):
        return {str(k): canonical_dict(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [canonical_dict(v) for v in value]
    return value


class _Section(StrictModel):
    @field_validator("*", mode="after")
    @classmethod
    def _canonical(cls, value: Any) -> Any:
        return canonical_dict(value) if isinstance(value, dict) else value


class PyTorchConfig(_Section):
    """Knobs of the transformers (PyTorch) backend."""

    batch_size: int = Field(1, ge=1, description="Requests per generate() call.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "sdpa"
    static_kv_cache: bool = Field(False, description="Use transformers' static KV cache.")
    torch_compile: bool = Field(False, description="torch.compile the model's forward.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    quantization: Literal["bnb_8bit", "bnb_4bit"] | None = Field(
        None, description="bitsandbytes weight quantisation (CUDA only)."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = Field(
        None, description="Multi-GPU placement (accelerate); None places the model on one GPU."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to from_pretrained / from_config as-is."
    )
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to generate() as-is, after ours."
    )

    @model_validator(mode="after")
    def _check(self) -> PyTorchConfig:
        if self.torch_compile and self.quantization is not None:
            raise ValueError(
                "pytorch.torch_compile cannot be combined with pytorch.quantization "
                "(bitsandbytes kernels do not compile); turn one of them off"
            )
        return self


#: vLLM quantization methods (``vllm.model_executor.layers.quantization.QuantizationMethods``,
#: vLLM 0.33.0). A pre-quantized checkpoint declares its own method; set this only to force one.
VLLMQuantization = Literal[
    "awq",
    "auto_awq",
    "awq_marlin",
    "gptq",
    "auto_gptq",
    "gptq_marlin",
    "fp8",
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "modelopt",
    "modelopt_fp4",
    "modelopt_mxfp8",
    "compressed-tensors",
    "experts_int8",
    "int8_per_channel_weight_only",
    "mxfp4",
    "mxfp8",
    "nvfp4_per_token",
    "quark",
    "torchao",
    "moe_wna16",
]

#: ``CompilationConfig.cudagraph_mode`` values (``vllm.config.compilation.CUDAGraphMode``).
CudaGraphMode = Literal["NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"]

#: Engine arguments the experiment config already decides; a passthrough may not override them.
_VLLM_RESERVED_ARGS = {
    "model": "model",
    "tokenizer": "tokenizer",
    "revision": "revision",
    "trust_remote_code": "trust_remote_code",
    "dtype": "precision",
    "seed": "random_seed",
    "load_format": "load_format",
    "skip_tokenizer_init": "tokenizer (set by the harness for dummy weights)",
}


class VLLMConfig(_Section):
    """Knobs of the vLLM offline engine (``vllm.LLM`` / ``EngineArgs``, mirrored from 0.33.0).

    Every field maps one-to-one onto an ``EngineArgs`` field of the same name, except the CUDA
    graph fields, which go into ``compilation_config``. ``engine_args`` is merged last and may
    not repeat a modelled knob or a field the experiment itself decides (model, dtype, seed...).
    """

    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Fraction of GPU memory for weights + KV cache."
    )
    max_num_seqs: int = Field(
        256,
        ge=1,
        description=(
            "Max concurrent sequences (the continuous batch). Pinned here because vLLM's own "
            "default depends on the GPU (1024 offline on H100/H200 in 0.33)."
        ),
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="Token budget per engine step; None: vLLM's device default."
    )
    max_model_len: int | None = Field(None, ge=1, description="None: the model's context length.")
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    kv_cache_dtype: Literal["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    block_size: Literal[8, 16, 32, 64, 128, 256] | None = Field(
        None, description="KV cache block size in tokens; None: the attention backend's choice."
    )
    quantization: VLLMQuantization | None = Field(
        None, description="Force a quantization method; None: what the checkpoint declares."
    )
    enforce_eager: bool = Field(False, description="Disable CUDA graphs and torch.compile.")
    cudagraph_mode: CudaGraphMode | None = Field(
        None, description="compilation_config.cudagraph_mode; None: FULL_AND_PIECEWISE."
    )
    cudagraph_capture_sizes: list[int] | None = Field(
        None, description="Batch sizes to capture CUDA graphs for (compilation_config)."
    )
    max_cudagraph_capture_size: int | None = Field(
        None, ge=1, description="Largest batch captured in a CUDA graph (compilation_config)."
    )
    async_scheduling: bool | None = Field(
        None, description="Overlap scheduling with execution; None: vLLM's default."
    )
    speculative_config: dict[str, Any] | None = Field(
        None,
        description=(
            "vLLM speculative_config, e.g. {method: ngram, num_speculative_tokens: 4, "
            "prompt_lookup_max: 4} or {model: <draft>, num_speculative_tokens: 3}."
        ),
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm.LLM keyword arguments, merged last."
    )

    @field_validator("cudagraph_capture_sizes")
    @classmethod
    def _sizes_positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("cudagraph_capture_sizes is empty; leave it out instead")
            if any(size < 1 for size in value):
                raise ValueError(f"cudagraph_capture_sizes must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> VLLMConfig:
        graph_knobs = [
            name
            for name in ("cudagraph_capture_sizes", "max_cudagraph_capture_size")
            if getattr(self, name) is not None
        ]
        if self.cudagraph_mode not in (None, "NONE"):
            graph_knobs.insert(0, "cudagraph_mode")
        if self.enforce_eager and graph_knobs:
            raise ValueError(
                "vllm.enforce_eager disables CUDA graphs, so vllm."
                + ", vllm.".join(graph_knobs)
                + " would have no effect; remove one of them"
            )
        if self.cudagraph_mode == "NONE" and (
            self.cudagraph_capture_sizes is not None or self.max_cudagraph_capture_size is not None
        ):
            raise ValueError(
                "vllm.cudagraph_mode=NONE captures no CUDA graphs, so capture sizes have no "
                "effect; remove them or pick another cudagraph_mode"
            )
        if (
            self.cudagraph_capture_sizes
            and self.max_cudagraph_capture_size is not None
            and max(self.cudagraph_capture_sizes) != self.max_cudagraph_capture_size
        ):
            raise ValueError(
                f"vllm.max_cudagraph_capture_size ({self.max_cudagraph_capture_size}) must "
                f"equal the largest of vllm.cudagraph_capture_sizes "
                f"({max(self.cudagraph_capture_sizes)}); vLLM asserts this; set only one"
            )
        if self.max_num_batched_tokens is not None:
            if self.max_num_batched_tokens < self.max_num_seqs:
                raise ValueError(
                    f"vllm.max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                    f"vllm.max_num_seqs ({self.max_num_seqs}); vLLM rejects this at start-up"
                )
            if (
                self.enable_chunked_prefill is False
                and self.max_model_len is not None
                and self.max_num_batched_tokens < self.max_model_len
            ):
                raise ValueError(
                    f"with vllm.enable_chunked_prefill=false, vllm.max_num_batched_tokens "
                    f"({self.max_num_batched_tokens}) must be >= vllm.max_model_len "
                    f"({self.max_model_len}), or no long prompt could ever be scheduled"
                )
        if self.speculative_config is not None:
            spec = self.speculative_config
            if not spec.get("method") and not spec.get("model"):
                raise ValueError(
                    "vllm.speculative_config needs 'method' (e.g. ngram, eagle, eagle3, mtp, "
                    "draft_model) or a draft 'model'"
                )
            n_spec = spec.get("num_speculative_tokens")
            if not isinstance(n_spec, int) or isinstance(n_spec, bool) or n_spec < 1:
                raise ValueError(
                    "vllm.speculative_config.num_speculative_tokens must be an integer >= 1, "
                    f"got {n_spec!r}"
                )
        problems: list[str] = []
        for key in sorted(self.engine_args):
            if key in _VLLM_RESERVED_ARGS:
                problems.append(f"'{key}' (set {_VLLM_RESERVED_ARGS[key]} instead)")
            elif key in type(self).model_fields and key != "engine_args":
                problems.append(f"'{key}' (set vllm.{key} instead)")
            elif key == "compilation_config" and (self.cudagraph_mode or graph_knobs):
                problems.append(
                    "'compilation_config' together with vllm.cudagraph_* (use one or the other)"
                )
        if problems:
            raise ValueError("vllm.engine_args may not set " + "; ".join(problems))
        return self


#: ``tensorrt.quantization`` → ``tensorrt_llm.llmapi.QuantAlgo`` member name.
TRT_QUANT_ALGOS: dict[str, str] = {
    "fp8": "FP8",
    "int4_awq": "W4A16_AWQ",
    "w4a8_awq": "W4A8_AWQ",
    "w8a8_sq": "W8A8_SQ_PER_CHANNEL",
    "int8_wo": "W8A16",
    "int4_wo": "W4A16",
    "nvfp4": "NVFP4",
}

#: ``tensorrt.kv_cache_quantization`` → ``QuantConfig.kv_cache_quant_algo`` member name.
TRT_KV_QUANT_ALGOS: dict[str, str] = {"fp8": "FP8", "int8": "INT8"}

_TRT_RESERVED_ARGS = {
    "model": "model",
    "tokenizer": "tokenizer",
    "revision": "revision",
    "trust_remote_code": "trust_remote_code",
    "dtype": "precision",
    "load_format": "load_format",
    "backend": "tensorrt.trtllm_backend",
    "build_config": "tensorrt.max_batch_size / max_num_tokens / max_seq_len / build_args",
    "quant_config": "tensorrt.quantization / kv_cache_quantization",
    "kv_cache_config": "tensorrt.kv_cache_free_gpu_memory_fraction / enable_block_reuse",
    "skip_tokenizer_init": "tokenizer (set by the harness for dummy weights)",
}


class TensorRTConfig(_Section):
    """Knobs of the TensorRT-LLM LLM API (build and runtime settings; mirrored from 1.2).

    With ``trtllm_backend: tensorrt`` (our default) the model is compiled into a TensorRT
    engine with the build limits below and the engine is cached across experiments; with
    ``pytorch`` (upstream's default for ``tensorrt_llm.LLM`` since 1.0) nothing is built and
    the build-only knobs are rejected.
    """

    trtllm_backend: Literal["tensorrt", "pytorch"] = Field(
        "tensorrt",
        description="tensorrt: build a TensorRT engine (cached); pytorch: TRT-LLM's PyTorch flow.",
    )
    max_batch_size: int = Field(8, ge=1, description="Build/runtime limit: concurrent requests.")
    max_num_tokens: int | None = Field(
        None, ge=1, description="Build/runtime limit: tokens per engine step (TRT-LLM: 8192)."
    )
    max_seq_len: int | None = Field(
        None, ge=1, description="Build limit: prompt + output tokens; None: the model's context."
    )
    max_input_len: int | None = Field(None, ge=1, description="Build limit: prompt tokens.")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    quantization: (
        Literal["fp8", "int4_awq", "w4a8_awq", "w8a8_sq", "int8_wo", "int4_wo", "nvfp4"] | None
    ) = Field(None, description="Quantize while building (QuantConfig.quant_algo).")
    kv_cache_quantization: Literal["fp8", "int8"] | None = Field(
        None, description="QuantConfig.kv_cache_quant_algo."
    )
    kv_cache_free_gpu_memory_fraction: float = Field(
        0.9, gt=0.0, le=1.0, description="KvCacheConfig.free_gpu_memory_fraction."
    )
    enable_block_reuse: bool | None = Field(
        None, description="KvCacheConfig.enable_block_reuse (prefix reuse); None: TRT-LLM default."
    )
    enable_chunked_prefill: bool | None = None
    engine_cache: bool = Field(True, description="Reuse built engines across experiments.")
    build_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra BuildConfig fields (e.g. opt_num_tokens); part of the engine-cache key.",
    )
    llm_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra tensorrt_llm.LLM keyword arguments, merged last."
    )

    def loglikelihood_gap(self) -> str | None:
        """Why this engine cannot return log-probabilities of given text, with the fix; None
        when it can.

        Scores come from the request's context logits (``return_context_logits``): the
        PyTorch flow gathers them per request; a TensorRT engine only when it was built with
        ``gather_context_logits``, which then computes every prompt token's logits in every
        request, the measured ones too (so it is the user's choice, not set silently).
        """
        if self.trtllm_backend == "pytorch" or self.build_args.get("gather_context_logits"):
            return None
        return (
            "its TensorRT engine is built without gather_context_logits; set "
            "tensorrt.build_args: {gather_context_logits: true} (the engine then computes the "
            "logits of every prompt token, in the measured run too) or "
            "tensorrt.trtllm_backend: pytorch"
        )

    @model_validator(mode="after")
    def _check(self) -> TensorRTConfig:
        if (
            self.max_input_len is not None
            and self.max_seq_len is not None
            and self.max_input_len > self.max_seq_len
        ):
            raise ValueError(
                f"tensorrt.max_input_len ({self.max_input_len}) exceeds tensorrt.max_seq_len "
                f"({self.max_seq_len})"
            )
        if self.kv_cache_quantization is not None and self.quantization is None:
            raise ValueError(
                "tensorrt.kv_cache_quantization needs tensorrt.quantization too (TRT-LLM "
                "calibrates the KV cache scales in the same quantization pass)"
            )
        if self.trtllm_backend == "pytorch":
            build_only = [
                name
                for name in ("quantization", "kv_cache_quantization", "max_input_len")
                if getattr(self, name) is not None
            ]
            if self.build_args:
                build_only.append("build_args")
            if build_only:
                raise ValueError(
                    "tensorrt." + ", tensorrt.".join(build_only) + " only apply when an engine is "
                    "built (trtllm_backend: tensorrt); the pytorch flow loads pre-quantized "
                    "checkpoints as they are"
                )
        problems: list[str] = []
        for key in sorted(self.llm_args):
            if key in _TRT_RESERVED_ARGS:
                problems.append(f"'{key}' (set {_TRT_RESERVED_ARGS[key]} instead)")
            elif key in type(self).model_fields:
                problems.append(f"'{key}' (set tensorrt.{key} instead)")
        if problems:
            raise ValueError("tensorrt.llm_args may not set " + "; ".join(problems))
        return self


#: Names of the built-in backends (the registry, :mod:`llenergymeasure_contract.registry`,
#: holds their specs).
BackendName = Literal["pytorch", "vllm", "tensorrt", "endpoint"]
