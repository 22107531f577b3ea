"""Per-backend config sections: ``pytorch:``, ``vllm:``, ``tensorrt:``.

Each section holds the engine's own knobs plus a passthrough dict for engine arguments we have
not modelled. Validators here only validate; cross-field rules that involve the experiment
(precision, GPUs) live in :mod:`llenergymeasure.config.experiment`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PyTorchConfig(_Section):
    """Knobs of the transformers (PyTorch) backend."""

    batch_size: int = Field(1, ge=1, description="Requests per generate() call.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = (
        "sdpa"
    )
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


class VLLMConfig(_Section):
    """Knobs of the vLLM offline engine (``vllm.LLM`` engine arguments)."""

    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_num_seqs: int | None = Field(None, ge=1, description="Max concurrent sequences.")
    max_num_batched_tokens: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    block_size: Literal[8, 16, 32, 64, 128] | None = None
    quantization: str | None = Field(None, description="vLLM quantization method, e.g. 'fp8'.")
    enforce_eager: bool = False
    cudagraph_capture_sizes: list[int] | None = None
    speculative_config: dict[str, Any] | None = None
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm.LLM keyword arguments, merged last."
    )

    @model_validator(mode="after")
    def _check(self) -> VLLMConfig:
        if self.enforce_eager and self.cudagraph_capture_sizes:
            raise ValueError(
                "vllm.enforce_eager disables CUDA graphs, so vllm.cudagraph_capture_sizes "
                "has no effect; remove one of them"
            )
        return self


class TensorRTConfig(_Section):
    """Knobs of the TensorRT-LLM LLM API (build and runtime settings)."""

    max_batch_size: int = Field(8, ge=1)
    max_num_tokens: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    quantization: Literal["fp8", "int4_awq", "w8a8_sq", "int8_wo", "int4_wo"] | None = None
    kv_cache_free_gpu_memory_fraction: float = Field(0.9, gt=0.0, le=1.0)
    engine_cache: bool = Field(True, description="Reuse built engines across experiments.")
    llm_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra tensorrt_llm.LLM keyword arguments."
    )


BackendName = Literal["pytorch", "vllm", "tensorrt"]
BACKENDS: tuple[str, ...] = ("pytorch", "vllm", "tensorrt")
SECTION_MODELS: dict[str, type[BaseModel]] = {
    "pytorch": PyTorchConfig,
    "vllm": VLLMConfig,
    "tensorrt": TensorRTConfig,
}
