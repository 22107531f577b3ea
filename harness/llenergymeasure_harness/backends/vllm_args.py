"""vLLM engine arguments: the ``vllm:`` section and the experiment as ``EngineArgs`` and
``SamplingParams`` keyword arguments, the resolved engine config and the loaded model's facts.

Pure functions of the config (no ``vllm`` import), used by
:class:`~llenergymeasure_harness.backends.vllm.VLLMBackend` and the vLLM server
(:mod:`~llenergymeasure_harness.serving.server`); re-exported from
:mod:`~llenergymeasure_harness.backends.vllm`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.sections import VLLMConfig
from llenergymeasure_harness.backends.engine_common import ModelSource, jsonable

logger = logging.getLogger("llenergymeasure_harness.backends.vllm")

_DTYPES = {"auto": "auto", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def dummy_models_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where dummy-weight model folders stay between runs: ``llem-dummy-models`` in vLLM's
    cache root (``VLLM_CACHE_ROOT``, which the harness points into the compile cache, else
    vLLM's default ``$XDG_CACHE_HOME/vllm`` or ``~/.cache/vllm``), beside the compiled
    artefacts whose cache key holds the folder's path."""
    env = os.environ if environ is None else environ
    root = env.get("VLLM_CACHE_ROOT")
    if not root:
        cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "vllm")
    return Path(root) / "llem-dummy-models"


def vllm_section(config: ExperimentConfig) -> VLLMConfig:
    section = config.vllm
    if section is None:
        raise ConfigError(f"backend is {config.backend!r}, not 'vllm'; no vllm: section")
    return section


def build_engine_args(config: ExperimentConfig, source: ModelSource) -> dict[str, Any]:
    """The keyword arguments for ``vllm.LLM`` (pure: no import of vLLM, no I/O).

    Mapping (experiment → ``EngineArgs``): model/revision/trust_remote_code/tokenizer as given;
    ``precision`` → ``dtype``; ``random_seed`` → ``seed``; ``load_format`` as is; every
    ``vllm:`` knob to the field of the same name, except the CUDA graph knobs, which go into
    ``compilation_config``; ``vllm.engine_args`` merged last (the config schema has already
    refused keys that would override any of the above).

    Dummy weights without a tokenizer set ``skip_tokenizer_init=True``: prompts are token ids
    and outputs are not detokenized, so no tokenizer is needed.
    """
    section = vllm_section(config)
    args: dict[str, Any] = {
        "model": source.model,
        "dtype": _DTYPES[config.precision],
        "seed": config.random_seed,
        "trust_remote_code": config.trust_remote_code,
        "load_format": config.load_format,
        "tensor_parallel_size": section.tensor_parallel_size,
        "pipeline_parallel_size": section.pipeline_parallel_size,
        "gpu_memory_utilization": section.gpu_memory_utilization,
        "max_num_seqs": section.max_num_seqs,
        "kv_cache_dtype": section.kv_cache_dtype,
        "enforce_eager": section.enforce_eager,
        # Offline LLM's own default, stated so the resolved arguments are complete.
        "disable_log_stats": True,
    }
    if config.revision is not None:
        args["revision"] = config.revision
    if config.tokenizer is not None:
        args["tokenizer"] = config.tokenizer
    elif config.load_format == "dummy":
        args["skip_tokenizer_init"] = True
    optional = {
        "max_num_batched_tokens": section.max_num_batched_tokens,
        "max_model_len": section.max_model_len,
        "enable_chunked_prefill": section.enable_chunked_prefill,
        "enable_prefix_caching": section.enable_prefix_caching,
        "block_size": section.block_size,
        "quantization": section.quantization,
        "async_scheduling": section.async_scheduling,
        "speculative_config": dict(section.speculative_config)
        if section.speculative_config is not None
        else None,
    }
    args.update({k: v for k, v in optional.items() if v is not None})
    compilation: dict[str, Any] = {}
    if section.cudagraph_mode is not None:
        compilation["cudagraph_mode"] = section.cudagraph_mode
    if section.cudagraph_capture_sizes is not None:
        compilation["cudagraph_capture_sizes"] = sorted(set(section.cudagraph_capture_sizes))
    if section.max_cudagraph_capture_size is not None:
        compilation["max_cudagraph_capture_size"] = section.max_cudagraph_capture_size
    if compilation:
        args["compilation_config"] = compilation
    args.update(build_lora_engine_args(config))
    args.update(section.engine_args)
    return args


def build_lora_engine_args(config: ExperimentConfig) -> dict[str, Any]:
    """``EngineArgs`` of the ``lora:`` section (empty without it; pure).

    ``max_loras`` defaults to every adapter (all resident, no swapping), ``max_lora_rank`` to
    the largest adapter rank rounded up to one vLLM accepts; ``max_cpu_loras`` only when set
    (vLLM's default is ``max_loras``). In server mode the same keys become ``--enable-lora
    --max-loras N --max-lora-rank R [--max-cpu-loras M]``.
    """
    lora = config.lora
    if lora is None:
        return {}
    from llenergymeasure_contract.lora import VLLM_MAX_LORA_RANKS

    args: dict[str, Any] = {
        "enable_lora": True,
        "max_loras": lora.resolved_max_loras,
        "max_lora_rank": lora.resolved_max_lora_rank(VLLM_MAX_LORA_RANKS),
    }
    if lora.max_cpu_loras is not None:
        args["max_cpu_loras"] = lora.max_cpu_loras
    return args


#: The scheduler and cache settings vLLM resolves at start-up (its defaults depend on how it
#: is started: the offline ``LLM`` class and ``vllm serve`` pick different
#: ``max_num_batched_tokens``, 16384 and 8192 for vLLM 0.26 on the H200), recorded so an
#: in-process and a server result can be compared knob for knob.
RESOLVED_KNOBS = (
    ("scheduler_config", "max_num_batched_tokens"),
    ("scheduler_config", "max_num_seqs"),
    ("scheduler_config", "enable_chunked_prefill"),
    ("scheduler_config", "async_scheduling"),
    ("cache_config", "enable_prefix_caching"),
    ("cache_config", "block_size"),
)


def resolved_engine_config(vllm_config: Any) -> dict[str, Any] | None:
    """What vLLM resolved for :data:`RESOLVED_KNOBS` (None where it does not say)."""
    if vllm_config is None:
        return None
    out: dict[str, Any] = {}
    for section, name in RESOLVED_KNOBS:
        value = getattr(getattr(vllm_config, section, None), name, None)
        out[name] = value if isinstance(value, bool | int | float | str) else None
    return out


def build_sampling_kwargs(
    config: ExperimentConfig, max_new_tokens: int, request_id: int
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` for one request (pure).

    Fixed output length: ``ignore_eos`` plus ``min_tokens = max_tokens``. Greedy decoding is
    ``temperature=0``; when sampling, each request gets seed ``random_seed + request_id`` so the
    run is reproducible without every request drawing the same random stream. Outputs are not
    detokenized (``detokenize=False``): we count tokens, and the PyTorch backend does not
    decode during generation either.
    """
    decoder = config.decoder
    kwargs: dict[str, Any] = {
        "max_tokens": max_new_tokens,
        "min_tokens": max_new_tokens if config.ignore_eos else 0,
        "ignore_eos": config.ignore_eos,
        "temperature": decoder.temperature,
        "top_p": decoder.top_p,
        "top_k": decoder.top_k,
        "repetition_penalty": decoder.repetition_penalty,
        "detokenize": False,
    }
    if decoder.do_sample:
        kwargs["seed"] = config.random_seed + request_id
    return kwargs


def dtype_name(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text.removeprefix("torch.")


def model_facts(model_config: Any, source: ModelSource) -> tuple[dict[str, Any] | None, int | None]:
    """The loaded model's HF config dict and vocabulary size, when vLLM exposes them."""
    hf_config: dict[str, Any] | None = None
    vocab_size: int | None = None
    try:
        hf: Any = getattr(model_config, "hf_config", None)
        if hasattr(hf, "to_dict"):
            hf_config = dict(hf.to_dict())
        elif isinstance(hf, dict):
            hf_config = dict(hf)
        get_vocab = getattr(model_config, "get_vocab_size", None)
        if callable(get_vocab):
            vocab_size = int(get_vocab())
    except Exception:  # informational only
        logger.debug("could not read the model config from vLLM", exc_info=True)
    if hf_config is None and source.architecture is not None:
        hf_config = dict(source.architecture.hf_config)
    if vocab_size is None and hf_config is not None:
        value = hf_config.get("vocab_size")
        vocab_size = value if isinstance(value, int) else None
    return jsonable(hf_config), vocab_size
