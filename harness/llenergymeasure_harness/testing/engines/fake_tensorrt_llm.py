"""A fake ``tensorrt_llm`` package for contract tests, mirroring the **TensorRT-LLM 1.2** LLM API.

Mirrored from the repository source (``tensorrt_llm/llmapi/llm.py`` with ``BaseLLM``,
``_TorchLLM`` and ``LLM``; ``tensorrt_llm/_tensorrt_engine/`` for the TensorRT-engine flow;
``tensorrt_llm/executor/result.py``; ``tensorrt_llm/sampling_params.py``;
``tensorrt_llm/builder.py``). The 1.2.1 wheel itself could not be fetched here (PyPI carries a
stub that downloads from NVIDIA's index), so the version string is the release these files
belong to, not a byte-for-byte copy. What it reproduces:

* ``tensorrt_llm.LLM`` is the **PyTorch** flow (upstream's default since 1.0); it rejects
  TensorRT-only arguments such as ``build_config`` with upstream's ``ValueError``.
  ``tensorrt_llm._tensorrt_engine.LLM`` is the **TensorRT** flow: it builds an engine from a
  Hugging Face directory (``build_config``, ``quant_config``, ``load_format='dummy'``), or
  loads an engine directory written by ``llm.save(dir)`` without building;
* ``LLM(model, tokenizer=None, tokenizer_mode='auto', skip_tokenizer_init=False,
  trust_remote_code=False, tensor_parallel_size=1, dtype='auto', revision=None,
  tokenizer_revision=None, **kwargs)``; unknown ``kwargs`` raise
  ``ValueError("LLM got invalid argument: <key>")``;
* ``generate_async(inputs, sampling_params=None, ..., streaming=False, ...)`` returning a
  ``RequestOutput`` that is awaitable, async-iterable (one iteration per engine response) and
  has ``result()``; ``outputs[0]`` has ``token_ids``, ``token_ids_diff``, ``finish_reason``;
* ``SamplingParams`` (``end_id``, ``pad_id``, ``max_tokens=32``, ``min_tokens``,
  ``ignore_eos``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``detokenize``...), with
  upstream's "tokenizer is required to reset end_id" error when there is no tokenizer;
* ``BuildConfig`` (dataclass defaults: ``max_input_len=1024``, ``max_batch_size=2048``,
  ``max_num_tokens=8192``...), ``QuantConfig``/``QuantAlgo``, ``KvCacheConfig``;
* LoRA: ``LLM(..., lora_config=tensorrt_llm.lora_manager.LoraConfig(lora_dir, max_lora_rank,
  max_loras, max_cpu_loras, lora_target_modules))`` and ``generate_async(...,
  lora_request=tensorrt_llm.executor.request.LoRARequest(name, id, path))``; a LoRA request
  without ``lora_config`` or with an adapter rank above ``max_lora_rank`` is refused;
* errors: unsupported architecture (TensorRT flow: "... is not supported in TRT-LLM yet";
  PyTorch flow: "Unknown architecture for AutoModelForCausalLM"), CUDA OOM while building,
  loading or running.

Install with :meth:`FakeTRTLLM.installed`; time comes from the shared :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import tempfile
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llenergymeasure_harness.testing.engines._sim import (
    OOM_MESSAGE,
    ContinuousBatcher,
    FakeClock,
    SimRequest,
    cuda_oom,
)

TRTLLM_VERSION = "1.2.1"

#: Keyword arguments both flows accept (BaseLlmArgs fields the harness may pass).
_COMMON_ARGS = frozenset(
    """
    pipeline_parallel_size context_parallel_size gpus_per_node moe_cluster_parallel_size
    moe_tensor_parallel_size moe_expert_parallel_size enable_attention_dp cp_config
    load_format enable_lora lora_config kv_cache_config enable_chunked_prefill
    guided_decoding_backend batched_logits_processor iter_stats_max_iterations
    request_stats_max_iterations peft_cache_config scheduler_config cache_transceiver_config
    speculative_config max_batch_size max_input_len max_seq_len max_beam_width max_num_tokens
    gather_generation_logits num_postprocess_workers postprocess_tokenizer_dir
    reasoning_parser garbage_collection_gen0_threshold return_perf_metrics
    orchestrator_type env_overrides
    """.split()  # noqa: SIM905  # a word list is easier to diff against upstream
)
#: TrtLlmArgs-only fields (``_TorchLLM`` rejects these).
_TRT_ONLY_ARGS = frozenset(
    """
    build_config quant_config calib_config enable_build_cache workspace enable_tqdm
    fast_build embedding_parallel_mode extended_runtime_perf_knob_config
    enable_prompt_adapter max_prompt_adapter_token batching_type normalize_log_probs
    auto_parallel auto_parallel_world_size
    """.split()  # noqa: SIM905
)
#: TorchLlmArgs-only fields (subset).
_TORCH_ONLY_ARGS = frozenset(
    """
    cuda_graph_config torch_compile_config attn_backend moe_config disable_overlap_scheduler
    enable_iter_perf_stats print_iter_log kv_cache_dtype checkpoint_format
    """.split()  # noqa: SIM905
)


# --------------------------------------------------------------------------- config types


class QuantAlgo(enum.StrEnum):
    """``tensorrt_llm.llmapi.QuantAlgo`` (members the harness maps to)."""

    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W4A8_AWQ = "W4A8_AWQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    FP8 = "FP8"
    INT8 = "INT8"
    NVFP4 = "NVFP4"
    NO_QUANT = "NO_QUANT"


@dataclass
class QuantConfig:
    """``tensorrt_llm.llmapi.QuantConfig``."""

    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None
    group_size: int = 128
    exclude_modules: list[str] | None = None


@dataclass
class KvCacheConfig:
    """``tensorrt_llm.llmapi.KvCacheConfig`` (subset)."""

    enable_block_reuse: bool = True
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = None
    dtype: str = "auto"

    def __post_init__(self) -> None:
        fraction = self.free_gpu_memory_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"free_gpu_memory_fraction must be in (0, 1], got {fraction}")


@dataclass
class CalibConfig:
    """``tensorrt_llm.llmapi.CalibConfig``."""

    device: str = "cuda"
    calib_dataset: str = "cnn_dailymail"
    calib_batches: int = 512
    calib_batch_size: int = 1
    calib_max_seq_length: int = 512
    random_seed: int = 1234


@dataclass
class BuildConfig:
    """``tensorrt_llm.BuildConfig`` (``tensorrt_llm/builder.py``), real defaults."""

    max_input_len: int = 1024
    max_seq_len: int | None = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: int | None = None
    max_prompt_embedding_table_size: int = 0
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    strongly_typed: bool = True
    max_draft_len: int = 0
    use_refit: bool = False
    weight_sparsity: bool = False
    weight_streaming: bool = False
    use_strip_plan: bool = False
    monitor_memory: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, **kwargs: Any) -> None:
        for name, value in kwargs.items():
            if not hasattr(self, name):
                raise AttributeError(f"{type(self)} object has no attribute {name}")
            setattr(self, name, value)


@dataclass(kw_only=True)
class SamplingParams:
    """``tensorrt_llm.SamplingParams`` (fields the harness touches; real defaults)."""

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_context_logits: bool = False
    return_generation_logits: bool = False
    return_perf_metrics: bool = False
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.best_of is None:
            self.best_of = self.n


# --------------------------------------------------------------------------- logits

#: The logit of each row's favourite token in :func:`fake_context_logits` (all others: 0).
FAVOURITE_LOGIT = 2.0


def fake_favourite(next_token: int, vocab_size: int) -> int:
    """The token row ``t`` of :func:`fake_context_logits` favours, given the prompt's token
    ``t + 1``: that token when divisible by 3 (greedy agrees), else the next id."""
    return next_token if next_token % 3 == 0 else (next_token + 1) % vocab_size


def fake_context_logits(prompt_token_ids: list[int], vocab_size: int) -> Any:
    """``RequestOutput.context_logits`` of the fake: a float32 ``(tokens, vocab)`` array whose
    row ``t`` is 0 but for :data:`FAVOURITE_LOGIT` at :func:`fake_favourite` of token
    ``t + 1`` (the last row favours token 0). A prompt token's log-probability is then
    ``FAVOURITE_LOGIT - log(e**FAVOURITE_LOGIT + vocab - 1)`` when favoured, else
    ``-log(e**FAVOURITE_LOGIT + vocab - 1)``."""
    import numpy as np

    rows = np.zeros((len(prompt_token_ids), vocab_size), dtype=np.float32)
    for t in range(len(prompt_token_ids)):
        nxt = prompt_token_ids[t + 1] if t + 1 < len(prompt_token_ids) else 0
        rows[t, fake_favourite(nxt, vocab_size)] = FAVOURITE_LOGIT
    return rows


# --------------------------------------------------------------------------- results


@dataclass
class CompletionOutput:
    """``tensorrt_llm.executor.result.CompletionOutput``."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[Any] = field(default_factory=list)
    prompt_logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    generation_logits: Any | None = None
    disaggregated_params: Any | None = None
    _last_token_ids_len: int = field(default=0, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]

    @property
    def text_diff(self) -> str:
        return ""


class RequestOutput:
    """``tensorrt_llm.llmapi.RequestOutput`` (a ``GenerationResult``)."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], streaming: bool) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.prompt: str | None = None
        self.outputs = [CompletionOutput(index=0)]
        self.context_logits: Any | None = None  # set at the end when the request asked
        self._streaming = streaming
        self._done = False
        self._queue: asyncio.Queue[tuple[list[int], str | None, BaseException | None]] | None = None
        self._params: SamplingParams | None = None
        self._vocab_size = 32000
        self._detokenize = False
        self._sync_driver: Any = None

    @property
    def finished(self) -> bool:
        return self._done

    def _apply(self, new_tokens: list[int], finish_reason: str | None) -> None:
        output = self.outputs[0]
        output._last_token_ids_len = len(output.token_ids)
        output.token_ids.extend(new_tokens)
        if finish_reason is not None:
            output.finish_reason = finish_reason
            self._done = True
            if self._params is not None and self._params.return_context_logits:
                self.context_logits = fake_context_logits(self.prompt_token_ids, self._vocab_size)
            if self._detokenize:
                output.text = "x" * len(output.token_ids)

    async def _aresult_step(self) -> None:
        assert self._queue is not None, "created outside a running event loop"
        new_tokens, reason, error = await self._queue.get()
        try:
            if error is not None:
                raise RuntimeError(str(error)) from error
            self._apply(new_tokens, reason)
        finally:
            self._queue.task_done()

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        await self._aresult_step()
        return self

    async def aresult(self) -> RequestOutput:
        while not self._done:
            await self._aresult_step()
        return self

    def __await__(self) -> Any:
        return self.aresult().__await__()

    def result(self, timeout: float | None = None) -> RequestOutput:
        if self._queue is not None:
            raise RuntimeError("use 'await' for results created inside an event loop")
        while not self._done:
            self._sync_driver()
        return self


# --------------------------------------------------------------------------- behaviour


@dataclass
class FakeTRTLLMBehaviour:
    """What the fake does. Defaults: everything works; build 30 s, load 2 s, step 10 ms.

    Attributes:
        clock: Advanced by builds, loads and steps (share it with the backend under test).
        build_time_s: Clock advance for an engine build (TensorRT flow from HF weights).
        load_time_s: Clock advance for loading an engine or a PyTorch-flow model.
        oom_on_build / oom_on_load: Raise ``torch.cuda.OutOfMemoryError`` there.
        oom_at_step: Every pending request fails with an OOM ``RuntimeError`` at this step.
        unsupported_architectures: ``config.json`` architectures to reject.
        Others: see :class:`~llenergymeasure_harness.testing.engines._sim.ContinuousBatcher`.
    """

    clock: FakeClock = field(default_factory=FakeClock)
    step_time_s: float = 0.01
    prefill_time_per_token_s: float = 0.0
    tokens_per_step: int = 1
    eos_after: int | None = None
    kv_capacity_seqs: int | None = None
    build_time_s: float = 30.0
    load_time_s: float = 2.0
    oom_on_build: bool = False
    oom_on_load: bool = False
    oom_at_step: int | None = None
    unsupported_architectures: frozenset[str] = frozenset({"FancyNewForCausalLM"})


# --------------------------------------------------------------------------- LLM


def _read_json(path: Path) -> dict[str, Any] | None:
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return None


@dataclass
class LoraConfig:
    """``tensorrt_llm.lora_manager.LoraConfig`` (the LLM API's ``lora_config``)."""

    lora_dir: list[str] = field(default_factory=list)
    lora_ckpt_source: str = "hf"
    max_lora_rank: int = 64
    lora_target_modules: list[str] = field(default_factory=list)
    trtllm_modules_to_hf_modules: dict[str, str] = field(default_factory=dict)
    max_loras: int | None = None
    max_cpu_loras: int | None = None

    def __post_init__(self) -> None:
        if self.lora_ckpt_source not in ("hf", "nemo"):
            raise ValueError(
                f"lora_ckpt_source must be one of 'hf' or 'nemo', got {self.lora_ckpt_source}"
            )


@dataclass
class LoRARequest:
    """``tensorrt_llm.executor.request.LoRARequest`` (name, id, path; id 0 is allowed)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    lora_ckpt_source: str = "hf"

    def __post_init__(self) -> None:
        if self.lora_ckpt_source not in ("hf", "nemo"):
            raise ValueError(
                f"lora_ckpt_source must be one of 'hf' or 'nemo', got {self.lora_ckpt_source}"
            )


class _FakeLLMBase:
    """Shared by both flows (``BaseLLM``)."""

    _controller: FakeTRTLLM
    _flow = "pytorch"

    def __init__(  # noqa: PLR0917  # upstream's positional signature
        self,
        model: str | Path,
        tokenizer: Any | None = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        controller = type(self)._controller
        behaviour = controller.behaviour
        self._behaviour = behaviour
        if self._flow == "pytorch":
            kwargs.pop("backend", None)
            trt_only = [k for k in kwargs if k in _TRT_ONLY_ARGS]
            if trt_only:
                raise ValueError(
                    "The following arguments are specific to TensorRT backend and cannot be "
                    f"used with PyTorch backend: {trt_only}.\nPlease use 'from "
                    "tensorrt_llm._tensorrt_engine import LLM' instead to use the TensorRT "
                    "backend."
                )
            valid = _COMMON_ARGS | _TORCH_ONLY_ARGS
        else:
            valid = _COMMON_ARGS | _TRT_ONLY_ARGS
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"LLM got invalid argument: {key}")
        world = tensor_parallel_size * int(kwargs.get("pipeline_parallel_size", 1))
        self.args = types.SimpleNamespace(
            model=str(model),
            tokenizer=tokenizer,
            skip_tokenizer_init=skip_tokenizer_init,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            revision=revision,
            backend=self._flow,
            **kwargs,
        )
        record = {
            "flow": self._flow,
            "model": str(model),
            "tokenizer": tokenizer,
            "skip_tokenizer_init": skip_tokenizer_init,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "revision": revision,
            **kwargs,
        }
        controller.llm_kwargs.append(record)
        if world > controller.gpu_count:
            raise RuntimeError(
                f"Only {controller.gpu_count} GPUs are available, but {world} are required."
            )
        self.tokenizer = None if skip_tokenizer_init else object()
        self._engine_dir: Path | None = None
        self._workspace: tempfile.TemporaryDirectory[str] | None = None
        self._shutdown = False
        self._request_counter = 0
        self._hf_config: dict[str, Any] = {}
        self._max_batch_size = 2048
        self._max_seq_len: int | None = None
        # Context logits: the PyTorch flow gathers them per request; an engine only when
        # built with gather_context_logits.
        self._gathers_context_logits = self._flow == "pytorch"
        self._build_model(Path(str(model)), kwargs)
        self._batcher = ContinuousBatcher(
            behaviour.clock,
            max_running=self._max_batch_size,
            step_time_s=behaviour.step_time_s,
            prefill_time_per_token_s=behaviour.prefill_time_per_token_s,
            tokens_per_step=behaviour.tokens_per_step,
            eos_after=behaviour.eos_after,
            kv_capacity_seqs=behaviour.kv_capacity_seqs,
        )
        self._results: dict[str, RequestOutput] = {}
        self._executor_task: asyncio.Task[None] | None = None
        controller.instances.append(self)

    # ----------------------------------------------------------------- model

    def _check_architecture(self, hf_config: dict[str, Any]) -> None:
        archs = list(hf_config.get("architectures") or [])
        bad = [a for a in archs if a in self._behaviour.unsupported_architectures]
        if not bad:
            return
        if self._flow == "pytorch":
            raise ValueError(f"Unknown architecture for AutoModelForCausalLM: {bad[0]}")
        raise ValueError(
            "1 validation error for TrtLlmArgs\n  Value error, Inferred model format "
            "_ModelFormatKind.HF, but failed to load config.json: The given huggingface model "
            f"architecture {bad[0]} is not supported in TRT-LLM yet"
        )

    def _build_model(self, model: Path, kwargs: dict[str, Any]) -> None:
        behaviour = self._behaviour
        hf_config = _read_json(model / "config.json") if model.is_dir() else None
        self._hf_config = hf_config or {"architectures": ["LlamaForCausalLM"]}
        self._check_architecture(self._hf_config)
        if behaviour.oom_on_load:
            raise cuda_oom(OOM_MESSAGE)
        behaviour.clock.advance(behaviour.load_time_s)
        self._max_batch_size = int(kwargs.get("max_batch_size") or 2048)
        self._max_seq_len = kwargs.get("max_seq_len")

    @property
    def llm_id(self) -> str:
        return f"fake-{id(self)}"

    # ----------------------------------------------------------------- generation

    def _prepare_sampling_params(self, sampling_params: SamplingParams | None) -> SamplingParams:
        if sampling_params is None:
            sampling_params = SamplingParams()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(
                "The sampling_params must be type SamplingParams or None, but got "
                f"{type(sampling_params)}"
            )
        if sampling_params.end_id is None:
            if self.tokenizer is None:
                raise ValueError(
                    "tokenizer is required to reset end_id if it is None, or you can "
                    "explicitly specify the end_id for sampling_params"
                )
            sampling_params.end_id = int(self._hf_config.get("eos_token_id", 2) or 2)
        return sampling_params

    def generate_async(  # noqa: PLR0917  # upstream's positional signature
        self,
        inputs: Any,
        sampling_params: SamplingParams | None = None,
        lora_request: Any | None = None,
        prompt_adapter_request: Any | None = None,
        streaming: bool = False,
        kv_cache_retention_config: Any | None = None,
        disaggregated_params: Any | None = None,
        trace_headers: Any | None = None,
        _postproc_params: Any | None = None,
        scheduling_params: Any | None = None,
        conversation_params: Any | None = None,
        cache_salt: str | None = None,
        priority: float = 0.5,
    ) -> RequestOutput:
        if self._shutdown:
            raise RuntimeError("LLM is shutting down")
        if lora_request is not None:
            self._check_lora(lora_request)
        params = self._prepare_sampling_params(sampling_params)
        self._check_logits_request(params)
        if isinstance(inputs, dict) and "prompt_token_ids" in inputs:
            token_ids = list(inputs["prompt_token_ids"])
        elif isinstance(inputs, list) and all(isinstance(t, int) for t in inputs):
            token_ids = list(inputs)
        elif isinstance(inputs, str):
            if self.tokenizer is None:
                raise ValueError("tokenizer is required to tokenize a text prompt")
            token_ids = [10 + ord(c) % 90 for c in inputs]
        else:
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        if self._max_seq_len is not None and len(token_ids) + params.max_tokens > self._max_seq_len:
            raise ValueError(
                f"The sum of prompt length ({len(token_ids)}) and query length (0) max_tokens "
                f"({params.max_tokens}) should not exceed max_seq_len ({self._max_seq_len})"
            )
        request_id = self._request_counter
        self._request_counter += 1
        result = RequestOutput(request_id, token_ids, streaming)
        result._params = params
        result._vocab_size = int(self._hf_config.get("vocab_size") or 32000)
        result._detokenize = params.detokenize and self.tokenizer is not None
        sim = SimRequest(
            request_id=str(request_id),
            prompt_token_ids=token_ids,
            max_tokens=params.max_tokens,
            min_tokens=params.min_tokens or 0,
            ignore_eos=params.ignore_eos,
            eos_token_id=params.end_id,
        )
        self._results[sim.request_id] = result
        self._batcher.add(sim)
        type(self)._controller.requests.append((token_ids, params))
        type(self)._controller.lora_requests.append(lora_request)
        type(self)._controller.cache_salts.append(cache_salt)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            result._sync_driver = self._sync_step
        else:
            result._queue = asyncio.Queue()
            if self._executor_task is None or self._executor_task.done():
                self._executor_task = loop.create_task(self._executor_loop())
        return result

    def _check_logits_request(self, params: SamplingParams) -> None:
        """As ``BaseLLM._check_arguments`` in the TensorRT flow: prompt log-probabilities or
        context logits need an engine built with ``gather_context_logits``."""
        if self._gathers_context_logits:
            return
        if params.prompt_logprobs:
            raise ValueError(
                f"`sampling_params's prompt_logprobs={params.prompt_logprobs}` requires "
                "`gather_context_logits=True` in the `BuildConfig` when constructing the LLM. "
                "Example: LLM(..., build_config=BuildConfig(gather_context_logits=True))."
            )
        if params.return_context_logits:
            raise RuntimeError(
                "[TensorRT-LLM][ERROR] Assertion failed: gather_context_logits must be enabled "
                "in the engine to return context logits"
            )

    def _check_lora(self, lora_request: Any) -> None:
        """As the LoRA manager: a LoRARequest needs ``lora_config``; the adapter's rank must
        fit ``max_lora_rank``."""
        if not isinstance(lora_request, LoRARequest):
            raise TypeError(f"lora_request must be a LoRARequest, got {type(lora_request)}")
        config = getattr(self.args, "lora_config", None)
        if not isinstance(config, LoraConfig):
            raise ValueError("LoRA request given, but the LLM was built without lora_config")
        adapter = _read_json(Path(lora_request.lora_path) / "adapter_config.json")
        if adapter is None:
            raise ValueError(f"No LoRA adapter config found in {lora_request.lora_path}")
        if int(adapter["r"]) > config.max_lora_rank:
            raise ValueError(
                f"LoRA rank {adapter['r']} of {lora_request.lora_name} exceeds max_lora_rank "
                f"{config.max_lora_rank}"
            )

    def _step_events(self) -> list[tuple[RequestOutput, list[int], str | None]]:
        events = self._batcher.step()
        out = []
        for event in events:
            result = self._results[event.request.request_id]
            reason = event.request.finish_reason
            if reason is not None:
                self._results.pop(event.request.request_id, None)
            out.append((result, event.new_token_ids, reason))
        return out

    def _maybe_oom(self) -> BaseException | None:
        step = self._batcher.steps + 1
        at = self._behaviour.oom_at_step
        if at is not None and step >= at:
            return RuntimeError("[TensorRT-LLM][ERROR] " + OOM_MESSAGE)
        return None

    def _sync_step(self) -> None:
        error = self._maybe_oom()
        if error is not None:
            raise error
        pending: dict[int, list[int]] = {}
        for result, tokens, reason in self._step_events():
            if result._streaming or reason is not None:
                full = pending.pop(result.request_id, []) + tokens
                result._apply(full, reason)
            else:
                pending.setdefault(result.request_id, []).extend(tokens)
                result.outputs[0].token_ids.extend(tokens)

    async def _executor_loop(self) -> None:
        held: dict[int, list[int]] = {}
        while self._batcher.has_unfinished:
            error = self._maybe_oom()
            if error is not None:
                for result in list(self._results.values()):
                    assert result._queue is not None
                    result._queue.put_nowait(([], None, error))
                self._results.clear()
                self._batcher.running.clear()
                self._batcher.waiting.clear()
                return
            touched: list[RequestOutput] = []
            for result, tokens, reason in self._step_events():
                assert result._queue is not None
                if result._streaming:
                    result._queue.put_nowait((tokens, reason, None))
                    touched.append(result)
                else:
                    held.setdefault(result.request_id, []).extend(tokens)
                    if reason is not None:
                        result._queue.put_nowait((held.pop(result.request_id), reason, None))
                        touched.append(result)
            for result in touched:  # each consumer sees this step before the next one runs
                assert result._queue is not None
                await result._queue.join()
            await asyncio.sleep(0)

    def generate(
        self,
        inputs: Any,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        **kwargs: Any,
    ) -> RequestOutput | list[RequestOutput]:
        unbatched = not isinstance(inputs, list) or (bool(inputs) and isinstance(inputs[0], int))
        batch = [inputs] if unbatched else list(inputs)
        futures = []
        for i, item in enumerate(batch):
            params = sampling_params[i] if isinstance(sampling_params, list) else sampling_params
            futures.append(self.generate_async(item, sampling_params=params, streaming=False))
        for future in futures:
            future.result()
        return futures[0] if unbatched else futures

    def shutdown(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            type(self)._controller.shutdowns += 1
        if self._workspace is not None:
            self._workspace.cleanup()
            self._workspace = None

    def __enter__(self) -> _FakeLLMBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class _TorchLLM(_FakeLLMBase):
    """``tensorrt_llm.LLM``: the PyTorch flow (no engine build; ``load_format='dummy'`` ok)."""

    _flow = "pytorch"


class _TrtLLM(_FakeLLMBase):
    """``tensorrt_llm._tensorrt_engine.LLM``: builds a TensorRT engine, or loads a saved one."""

    _flow = "tensorrt"

    @property
    def workspace(self) -> Path | None:
        return Path(self._workspace.name) if self._workspace is not None else None

    def _build_model(self, model: Path, kwargs: dict[str, Any]) -> None:
        behaviour = self._behaviour
        controller = type(self)._controller
        engine_config = _read_json(model / "config.json") if model.is_dir() else None
        build_config = kwargs.get("build_config")
        if build_config is not None and not isinstance(build_config, BuildConfig):
            raise ValueError(f"build_config must be a BuildConfig, got {type(build_config)}")
        if engine_config is not None and "build_config" in engine_config:
            # An engine directory (model format TLLM_ENGINE): load, never build.
            if behaviour.oom_on_load:
                raise cuda_oom(OOM_MESSAGE)
            behaviour.clock.advance(behaviour.load_time_s)
            built = engine_config["build_config"]
            self._hf_config = engine_config.get("pretrained_config", {})
            self._engine_dir = model
            self._max_batch_size = int(built["max_batch_size"])
            self._max_seq_len = built.get("max_seq_len")
            self._gathers_context_logits = bool(built.get("gather_context_logits"))
            controller.engine_loads.append(str(model))
            return
        self._hf_config = engine_config or {"architectures": ["LlamaForCausalLM"]}
        self._check_architecture(self._hf_config)
        if behaviour.oom_on_build:
            raise cuda_oom(OOM_MESSAGE)
        build = build_config or BuildConfig()
        if kwargs.get("max_batch_size"):
            build.max_batch_size = int(kwargs["max_batch_size"])
        if build.max_seq_len is None:
            build.max_seq_len = int(self._hf_config.get("max_position_embeddings", 2048))
        behaviour.clock.advance(behaviour.build_time_s)
        self._workspace = tempfile.TemporaryDirectory(suffix="-llm-workspace")
        engine_dir = Path(self._workspace.name) / "tmp.engine"
        engine_dir.mkdir()
        quant = kwargs.get("quant_config")
        world = int(kwargs.get("tensor_parallel_size", self.args.tensor_parallel_size)) * int(
            kwargs.get("pipeline_parallel_size", 1)
        )
        config = {
            "version": TRTLLM_VERSION,
            "pretrained_config": {
                **self._hf_config,
                "dtype": self.args.dtype,
                "quantization": asdict(quant) if quant is not None else None,
                "mapping": {
                    "tp_size": self.args.tensor_parallel_size,
                    "pp_size": int(kwargs.get("pipeline_parallel_size", 1)),
                },
            },
            "build_config": build.to_dict(),
        }
        (engine_dir / "config.json").write_text(json.dumps(config, default=str), encoding="utf-8")
        for rank in range(world):
            (engine_dir / f"rank{rank}.engine").write_bytes(b"fake-engine")
        self._engine_dir = engine_dir
        self._max_batch_size = build.max_batch_size
        self._max_seq_len = build.max_seq_len
        self._gathers_context_logits = build.gather_context_logits
        controller.builds.append(
            {"model": str(model), "build_config": build.to_dict(), "quant_config": quant}
        )

    def save(self, engine_dir: str) -> None:
        """Copy the built engine to ``engine_dir`` (as ``LLM.save`` does)."""
        if self._engine_dir is None:
            raise RuntimeError("The engine is not built yet.")
        target = Path(engine_dir)
        if self._engine_dir.resolve() == target.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        for item in self._engine_dir.iterdir():
            (target / item.name).write_bytes(item.read_bytes())
        type(self)._controller.saves.append(str(target))


# --------------------------------------------------------------------------- installation


class FakeTRTLLM:
    """Controller: builds the fake ``tensorrt_llm`` modules and records what happened.

    Attributes:
        behaviour: The knobs (:class:`FakeTRTLLMBehaviour`).
        gpu_count: GPUs the fake pretends to see.
        llm_kwargs: Every ``LLM(...)`` call (``flow`` tells which class was used).
        builds: One entry per engine build (model, build_config dict, quant_config).
        engine_loads: Engine directories loaded without building.
        saves: Directories passed to ``llm.save``.
        requests: ``(prompt_token_ids, SamplingParams)`` per generate_async.
        lora_requests: The ``lora_request`` of each generate_async (None: the base model).
        shutdowns: ``llm.shutdown()`` calls.
    """

    def __init__(self, behaviour: FakeTRTLLMBehaviour | None = None, *, gpu_count: int = 8) -> None:
        self.behaviour = behaviour or FakeTRTLLMBehaviour()
        self.gpu_count = gpu_count
        self.llm_kwargs: list[dict[str, Any]] = []
        self.builds: list[dict[str, Any]] = []
        self.engine_loads: list[str] = []
        self.saves: list[str] = []
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self.cache_salts: list[str | None] = []
        self.lora_requests: list[LoRARequest | None] = []  # per generate_async
        self.instances: list[_FakeLLMBase] = []
        self.shutdowns = 0

    def modules(self) -> dict[str, types.ModuleType]:
        """The ``sys.modules`` entries that make ``import tensorrt_llm`` resolve to this fake."""
        torch_llm = type("LLM", (_TorchLLM,), {"_controller": self})
        trt_llm = type("LLM", (_TrtLLM,), {"_controller": self})
        mods: dict[str, types.ModuleType] = {}

        def module(name: str, **attrs: Any) -> types.ModuleType:
            mod = types.ModuleType(name, f"Fake {name} (TensorRT-LLM {TRTLLM_VERSION})")
            mod.__path__ = []
            for key, value in attrs.items():
                setattr(mod, key, value)
            mods[name] = mod
            return mod

        api = {
            "BuildConfig": BuildConfig,
            "KvCacheConfig": KvCacheConfig,
            "QuantConfig": QuantConfig,
            "QuantAlgo": QuantAlgo,
            "CalibConfig": CalibConfig,
            "SamplingParams": SamplingParams,
            "RequestOutput": RequestOutput,
            "CompletionOutput": CompletionOutput,
        }
        module(
            "tensorrt_llm",
            __version__=TRTLLM_VERSION,
            LLM=torch_llm,
            SamplingParams=SamplingParams,
            BuildConfig=BuildConfig,
        )
        module("tensorrt_llm.llmapi", LLM=torch_llm, **api)
        module("tensorrt_llm.llmapi.llm", LLM=torch_llm, _TorchLLM=torch_llm, _TrtLLM=trt_llm)
        module("tensorrt_llm._tensorrt_engine", LLM=trt_llm)
        module("tensorrt_llm.sampling_params", SamplingParams=SamplingParams)
        module("tensorrt_llm.builder", BuildConfig=BuildConfig)
        module("tensorrt_llm.executor", LoRARequest=LoRARequest)
        module("tensorrt_llm.executor.result", CompletionOutput=CompletionOutput)
        module("tensorrt_llm.executor.request", LoRARequest=LoRARequest)
        module("tensorrt_llm.lora_manager", LoraConfig=LoraConfig)
        module("tensorrt_llm.version", __version__=TRTLLM_VERSION)
        root = mods["tensorrt_llm"]
        for name in ("llmapi", "_tensorrt_engine", "sampling_params", "builder", "executor"):
            setattr(root, name, mods[f"tensorrt_llm.{name}"])
        return mods

    @contextmanager
    def installed(self) -> Iterator[FakeTRTLLM]:
        """Make ``import tensorrt_llm`` return this fake inside the block (restores on exit)."""
        mods = self.modules()
        saved = {name: sys.modules.get(name) for name in mods}
        sys.modules.update(mods)
        try:
            yield self
        finally:
            for name, previous in saved.items():
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous


def build_config_fields() -> list[str]:
    """Field names of the fake ``BuildConfig`` (what ``tensorrt.build_args`` may set)."""
    return [f.name for f in fields(BuildConfig)]


__all__ = [
    "TRTLLM_VERSION",
    "BuildConfig",
    "CalibConfig",
    "CompletionOutput",
    "FakeTRTLLM",
    "FakeTRTLLMBehaviour",
    "KvCacheConfig",
    "LoRARequest",
    "LoraConfig",
    "QuantAlgo",
    "QuantConfig",
    "RequestOutput",
    "SamplingParams",
    "build_config_fields",
    "fake_context_logits",
    "fake_favourite",
]
