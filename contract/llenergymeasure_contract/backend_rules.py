"""Per-backend cross-field rules of an experiment config: each backend's ``validate`` hook.

:class:`~llenergymeasure_contract.registry.BackendSpec` names its rule; the experiment config
calls the rule of its backend after the checks every backend shares. A rule raises
``ValueError`` with the fix (pydantic reports it against the config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llenergymeasure_contract.sections import PyTorchConfig, TensorRTConfig, VLLMConfig

if TYPE_CHECKING:
    from llenergymeasure_contract.experiment import ExperimentConfig


def _sequence_fits(name: str, limit: int | None, config: ExperimentConfig) -> None:
    """``limit`` (a maximum sequence length) holds max_input_tokens + max_output_tokens."""
    needed = config.max_input_tokens + config.max_output_tokens
    if limit is not None and limit < needed:
        raise ValueError(
            f"{name} ({limit}) is shorter than max_input_tokens + max_output_tokens ({needed})"
        )


def check_pytorch(config: ExperimentConfig) -> None:
    """transformers: flash attention needs half precision; a batch must fill; server mode
    (``transformers serve``) cannot build dummy weights."""
    if config.server is not None and config.load_format == "dummy":
        raise ValueError(
            "server mode with backend pytorch runs `transformers serve`, which loads a "
            "checkpoint (weights and tokenizer) and cannot build dummy weights; use "
            "load_format: auto with a local model directory or hub id"
        )
    section = config.pytorch
    if not isinstance(section, PyTorchConfig):
        return
    if section.attn_implementation.startswith("flash") and config.precision in (
        "float32",
        "auto",
    ):
        raise ValueError(
            f"pytorch.attn_implementation={section.attn_implementation} runs only "
            f"in float16/bfloat16, not precision={config.precision}; use sdpa or set "
            "precision: bfloat16"
        )
    if section.batch_size > config.n_prompts:
        raise ValueError(
            f"pytorch.batch_size ({section.batch_size}) exceeds n_prompts "
            f"({config.n_prompts}), so no batch is ever full; raise n_prompts"
        )


def check_vllm(config: ExperimentConfig) -> None:
    """vLLM: fp8 needs half-precision activations; max_model_len holds input + output."""
    section = config.vllm
    if not isinstance(section, VLLMConfig):
        return
    if (section.quantization or "").lower() == "fp8" and config.precision == "float32":
        raise ValueError(
            "vllm.quantization=fp8 needs float16/bfloat16 activations, not precision=float32"
        )
    _sequence_fits("vllm.max_model_len", section.max_model_len, config)


def check_tensorrt(config: ExperimentConfig) -> None:
    """TensorRT-LLM: quantization needs half precision; max_seq_len holds input + output."""
    section = config.tensorrt
    if not isinstance(section, TensorRTConfig):
        return
    if config.lora is not None and section.trtllm_backend != "pytorch":
        raise ValueError(
            "lora: with backend tensorrt runs on TensorRT-LLM's PyTorch flow; set "
            "tensorrt.trtllm_backend: pytorch (an engine build needs the LoRA plugin)"
        )
    if section.quantization is not None and config.precision == "float32":
        raise ValueError(
            f"tensorrt.quantization={section.quantization} needs float16/bfloat16, "
            "not precision=float32"
        )
    _sequence_fits("tensorrt.max_seq_len", section.max_seq_len, config)
    _evaluation_fits(section, config)


def _evaluation_fits(section: TensorRTConfig, config: ExperimentConfig) -> None:
    """quality: prompts reach ``quality.max_length`` tokens; TensorRT-LLM refuses a prompt
    over the engine's ``max_input_len`` (or, unchunked, over ``max_num_tokens``) instead of
    cutting it, so the limits must hold them (they are build limits: the user sets them)."""
    quality = config.quality
    if quality is None:
        return
    need = quality.max_length
    if section.trtllm_backend == "tensorrt":
        limit = section.max_input_len or config.max_input_tokens
        if limit < need:
            source = "tensorrt.max_input_len" if section.max_input_len else "max_input_tokens"
            raise ValueError(
                f"quality.max_length ({need}) exceeds the TensorRT engine's max_input_len "
                f"({limit}, from {source}), which refuses longer evaluation prompts; set "
                f"tensorrt.max_input_len: {need} (a build limit, part of the engine) or "
                f"quality.max_length: {limit}"
            )
    if section.max_seq_len is not None and section.max_seq_len <= need:
        raise ValueError(
            f"quality.max_length ({need}) needs tensorrt.max_seq_len above it (the scored "
            f"text plus one token), got {section.max_seq_len}; raise it or lower "
            "quality.max_length"
        )
    if (
        section.max_num_tokens is not None
        and section.max_num_tokens < need
        and not section.enable_chunked_prefill
    ):
        raise ValueError(
            f"quality.max_length ({need}) exceeds tensorrt.max_num_tokens "
            f"({section.max_num_tokens}), which refuses longer prompts without chunked "
            "prefill; raise it, set tensorrt.enable_chunked_prefill: true or lower "
            "quality.max_length"
        )


def check_endpoint(config: ExperimentConfig) -> None:
    """endpoint: measures a server that already runs, so it starts none (no ``server:``)."""
    if config.server is not None:
        raise ValueError(
            "server: starts the engine's own server; backend endpoint measures one that is "
            "already running; remove server: or pick backend pytorch/vllm/tensorrt"
        )
