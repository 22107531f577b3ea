"""A fake ``vllm`` package for contract tests, mirroring **vLLM 0.33.0** (commit ``4ba787ec9``).

It reproduces, at the boundary our backend uses, the real signatures and return shapes:

* ``vllm.LLM(model, *, tokenizer=..., skip_tokenizer_init=..., tensor_parallel_size=..., dtype=...,
  quantization=..., seed=0, gpu_memory_utilization=0.92, enforce_eager=..., compilation_config=...,
  **kwargs)`` where ``kwargs`` must be ``EngineArgs`` fields (unknown names raise ``TypeError``
  as the real dataclass does), and ``disable_log_stats`` defaults to True;
* ``llm._preprocess_cmpl_one(prompt)`` rendering a ``TokensPrompt`` into an ``EngineInput``
  (``{"type": "token", "prompt_token_ids": [...]}``), as ``LLM.generate`` does;
* ``llm.llm_engine`` (``vllm.v1.engine.llm_engine.LLMEngine``): ``add_request(request_id, prompt,
  params, ...)`` returning the *internal* id (external id + ``-`` + 8 random characters),
  ``step() -> list[RequestOutput]``, ``has_unfinished_requests()``,
  ``get_num_unfinished_requests()``, ``abort_request(ids, internal=False)``;
* ``SamplingParams`` keyword fields and defaults (``max_tokens=16``, ``min_tokens=0``,
  ``ignore_eos=False``, ``temperature=1.0``, ``top_p=1.0``, ``top_k=0``, ``seed=None``,
  ``detokenize=True``, ``output_kind=RequestOutputKind.CUMULATIVE``);
* ``RequestOutput(request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished,
  metrics, ...)`` with ``CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs,
  finish_reason, stop_reason)``; ``metrics`` is a ``RequestStateStats`` only when
  ``disable_log_stats=False``; ``DELTA`` outputs carry only the new token ids;
* LoRA: ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)`` passed to
  ``add_request(..., lora_request=...)``; refused unless the engine was built with
  ``enable_lora=True``, and an adapter whose ``adapter_config.json`` rank exceeds
  ``max_lora_rank`` fails as the real loader does (``max_lora_rank`` must be one of vLLM's
  ``MaxLoRARanks``, ``max_cpu_loras >= max_loras``); with stat logging on, every step with
  outputs sets the ``vllm:lora_requests_info`` gauge (vLLM 0.26's labels,
  :mod:`llenergymeasure_harness.testing.vllm_metrics`), read by ``LLM.get_metrics()``
  (``vllm.v1.metrics.reader.Gauge``; an ``AssertionError`` with stat logging off, as upstream);
* errors: ``ValueError("Model architectures [...] are not supported for now. ...")``,
  ``ValueError("No available memory for the cache blocks. ...")``,
  ``RuntimeError("Engine core initialization failed. ...")``, ``torch.cuda.OutOfMemoryError``
  and ``vllm.v1.engine.exceptions.EngineDeadError``.

Behaviour is set with :class:`FakeVLLMBehaviour`; time comes from a :class:`FakeClock` that the
engine advances per step, so a backend given the same clock records exact timestamps.
Install with :meth:`FakeVLLM.installed` (a context manager patching ``sys.modules``).
"""

from __future__ import annotations

import enum
import json
import os
import sys
import threading
import types
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from llenergymeasure_harness.testing.engines._sim import (
    OOM_MESSAGE,
    ContinuousBatcher,
    FakeClock,
    SimRequest,
    cuda_oom,
)
from llenergymeasure_harness.testing.vllm_metrics import Gauge, LoraGauge, Metric

VLLM_VERSION = "0.33.0"
VLLM_COMMIT = "g4ba787ec9"

#: ``vllm.engine.arg_utils.EngineArgs`` field names in vLLM 0.33.0 (what ``**kwargs`` may hold).
ENGINE_ARG_FIELDS = frozenset(
    """
    model enable_return_routed_experts return_sampling_mask model_weights served_model_name
    tokenizer hf_config_path runner convert skip_tokenizer_init enable_prompt_embeds
    tokenizer_mode trust_remote_code allowed_local_media_path allowed_media_domains
    download_dir safetensors_load_strategy safetensors_prefetch_num_threads
    safetensors_prefetch_block_size load_format config_format dtype kv_cache_dtype seed
    max_model_len cudagraph_capture_sizes max_cudagraph_capture_size ir_op_priority
    distributed_executor_backend pipeline_parallel_size master_addr master_port nnodes
    node_rank distributed_timeout_seconds cpu_distributed_timeout_seconds numa_bind
    numa_bind_nodes numa_bind_cpus device_ids tensor_parallel_size
    prefill_context_parallel_size decode_context_parallel_size dcp_comm_backend
    dcp_q_replicate dcp_kv_cache_interleave_size cp_kv_cache_interleave_size
    data_parallel_size data_parallel_rank data_parallel_start_rank data_parallel_size_local
    data_parallel_address data_parallel_rpc_port data_parallel_hybrid_lb
    data_parallel_external_lb data_parallel_multi_port_external_lb data_parallel_backend
    enable_hc_sp enable_expert_parallel enable_batch_sharded_sampling enable_ep_weight_filter
    moe_backend linear_backend sparse_indexer_topk_backend all2all_backend enable_elastic_ep
    elastic_ep_max_dp_size enable_dbo ubatch_size dbo_decode_token_threshold dp_sync_interval
    dbo_prefill_token_threshold disable_nccl_for_dp_synchronization eplb_config enable_eplb
    expert_placement_strategy max_parallel_loading_workers block_size enable_prefix_caching
    prefix_caching_hash_algo prefix_cache_retention_interval disable_sliding_window
    disable_cascade_attn offload_backend cpu_offload_gb cpu_offload_params offload_group_size
    offload_num_in_group offload_prefetch_step offload_params gpu_memory_utilization
    kv_cache_memory_bytes max_num_batched_tokens max_num_scheduled_tokens
    long_prefill_token_threshold long_prefill_token_threshold_adaptive max_num_seqs
    max_num_active_seqs max_num_queued_reqs max_num_queued_tokens max_logprobs logprobs_mode
    use_fp64_gumbel enable_trace_replay disable_log_stats aggregate_engine_logging revision
    code_revision hf_token hf_overrides model_class_overrides tokenizer_revision quantization
    quantization_config allow_deprecated_quantization enforce_eager disable_custom_all_reduce
    enable_shm_tensor_arena language_model_only limit_mm_per_prompt enable_mm_embeds
    interleave_mm_strings media_io_kwargs mm_processor_kwargs mm_processor_cache_gb
    mm_processor_cache_type mm_hasher_algorithm enable_lora max_loras max_lora_rank
    fully_sharded_loras max_cpu_loras lora_dtype num_gpu_blocks_override
    model_loader_extra_config ignore_patterns enable_chunked_prefill disable_chunked_mm_input
    structured_outputs_config reasoning_parser speculative_config spec_method spec_model
    spec_tokens show_hidden_metrics_for_version otlp_traces_endpoint collect_detailed_traces
    scheduling_policy scheduler_cls pooler_config compilation_config attention_config
    kernel_config worker_cls worker_extension_cls profiler_config logging_config log_level
    kv_transfer_config kv_events_config generation_config enable_sleep_mode
    override_generation_config model_impl attention_backend mamba_cache_dtype
    mamba_ssm_cache_dtype mamba_block_size additional_config use_tqdm_on_load
    pt_load_map_location logits_processors async_scheduling stream_interval
    kv_sharing_fast_prefill optimization_level performance_mode kv_offloading_size
    kv_offloading_backend tokens_only shutdown_timeout
    """.split()  # noqa: SIM905  # a word list is easier to diff against upstream
)


# --------------------------------------------------------------------------- public API types


class RequestOutputKind(enum.Enum):
    """``vllm.sampling_params.RequestOutputKind``."""

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass(kw_only=True)
class SamplingParams:
    """``vllm.SamplingParams`` (the fields the harness and its tests touch, real defaults)."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        # The checks and wording of SamplingParams._verify_args in vLLM 0.33 (a subset).
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.min_tokens < 0:
            raise VLLMValidationError(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}."
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise VLLMValidationError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}."
            )
        if self.temperature < 0.0:
            raise VLLMValidationError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise VLLMValidationError(
                f"top_k must be 0 (disable), or at least 1, got {self.top_k}."
            )
        if self.repetition_penalty <= 0.0:
            raise VLLMValidationError(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}."
            )


@dataclass
class Logprob:
    """``vllm.logprobs.Logprob``: one token's log-probability and its rank (1 = the top)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def fake_prompt_logprob(token_id: int, position: int) -> Logprob:
    """The fake engine's log-probability of prompt token ``token_id`` at ``position``
    (deterministic; rank 1, the greedy choice, for ids divisible by 3)."""
    return Logprob(
        logprob=-0.1 - ((token_id * 7 + position) % 13) / 4, rank=1 if token_id % 3 == 0 else 2
    )


def _prompt_logprobs(token_ids: list[int], k: int) -> list[dict[int, Logprob] | None]:
    """vLLM's ``prompt_logprobs``: None for the first token, then each position's actual
    token with its Logprob plus the top ``k`` (here: one rival, ranked first when the actual
    token is not)."""
    out: list[dict[int, Logprob] | None] = [None]
    for pos, tok in enumerate(token_ids[1:], start=1):
        own = fake_prompt_logprob(tok, pos)
        entry = {tok: own}
        if own.rank != 1 and k >= 1:
            entry[tok + 1] = Logprob(logprob=own.logprob + 0.5, rank=1)
        out.append(entry)
    return out


class TokensPrompt(TypedDict):
    """``vllm.inputs.TokensPrompt``."""

    prompt_token_ids: list[int]
    prompt: NotRequired[str]
    cache_salt: NotRequired[str]


@dataclass
class CompletionOutput:
    """``vllm.outputs.CompletionOutput``."""

    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: Any | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestStateStats:
    """``vllm.v1.metrics.stats.RequestStateStats`` (present only with log stats on)."""

    num_generation_tokens: int = 0
    num_preemptions: int = 0
    arrival_time: float = 0.0
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0


class RequestOutput:
    """``vllm.outputs.RequestOutput``."""

    def __init__(  # noqa: PLR0917  # upstream's positional signature
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int] | None,
        prompt_logprobs: Any | None,
        outputs: list[CompletionOutput],
        finished: bool,
        metrics: RequestStateStats | None = None,
        lora_request: Any | None = None,
        encoder_prompt: str | None = None,
        encoder_prompt_token_ids: list[int] | None = None,
        num_cached_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished
        self.metrics = metrics
        self.lora_request = lora_request
        self.encoder_prompt = encoder_prompt
        self.encoder_prompt_token_ids = encoder_prompt_token_ids
        self.num_cached_tokens = num_cached_tokens


class VLLMError(Exception):
    """``vllm.exceptions.VLLMError`` (not a ValueError subclass, as upstream)."""


class VLLMClientError(VLLMError):
    """``vllm.exceptions.VLLMClientError``."""


class VLLMServerError(VLLMError):
    """``vllm.exceptions.VLLMServerError``."""


class VLLMValidationError(VLLMClientError):
    """``vllm.exceptions.VLLMValidationError``: a request or its parameters are invalid."""


class EngineDeadError(VLLMServerError):
    """``vllm.v1.engine.exceptions.EngineDeadError``."""

    ENGINE_DEAD_MESSAGE = (
        "EngineCore encountered an issue. See stack trace (above) for the root cause."
    )

    def __init__(self, *args: Any, suppress_context: bool = False, **kwargs: Any) -> None:
        super().__init__(self.ENGINE_DEAD_MESSAGE, *args)
        if suppress_context:
            self.__suppress_context__ = True


# --------------------------------------------------------------------------- behaviour


@dataclass
class FakeVLLMBehaviour:
    """What the fake engine does. Defaults: everything works, 10 ms per step.

    Attributes:
        clock: Advanced by each engine step (share it with the backend under test).
        step_time_s: One decode step.
        prefill_time_per_token_s: Extra step time per admitted prompt token.
        tokens_per_step: Tokens per running request per step (>1: speculative decoding).
        eos_token_id: The model's EOS id.
        eos_after: Requests that do not ignore EOS stop with EOS after this many tokens.
        kv_capacity_seqs: Cap on concurrently running requests below max_num_seqs.
        load_time_s: Clock advance while the engine loads.
        model_max_len: The model's context length (max_model_len when not configured).
        oom_on_load: ``LLM(...)`` raises ``torch.cuda.OutOfMemoryError`` (single-process mode).
        kv_cache_too_small: ``LLM(...)`` raises vLLM's "No available memory for the cache
            blocks" ``ValueError``.
        engine_init_failure: ``LLM(...)`` raises the multiprocess "Engine core initialization
            failed" ``RuntimeError`` (what a worker-side OOM looks like from the front end).
        engine_init_root_cause: With ``engine_init_failure``, what the engine core process
            writes to stderr (file descriptor 2) first, as the real child does, e.g.
            ``"ValueError: No available memory for the cache blocks. ..."``, in vLLM's log
            format, ``engine_init_root_cause_delay_s`` after ``LLM(...)`` raised.
        oom_at_step: ``step()`` raises ``torch.cuda.OutOfMemoryError`` from this step on.
        engine_dead_at_step: ``step()`` raises ``EngineDeadError`` from this step on.
        unsupported_architectures: Architectures (config.json ``architectures``) to reject.
        version: ``vllm.__version__``; "0.26.0" also drops the ``add_request`` parameters
            0.33 added (``session_id``, ``kv_hints``), as the real 0.26.0 has them not.
        renderer: "present" (``LLM._preprocess_cmpl_one`` as in 0.26 and 0.33), "absent" (an
            older release) or "broken" (present, raises ``TypeError``: a changed signature).

    Prefix caching is on unless ``enable_prefix_caching=False`` (vLLM's default for generative
    models): a prompt's full blocks (``block_size``, default 16) are looked up by their token
    prefix and cache salt, and ``RequestOutput.num_cached_tokens`` says how many prompt tokens
    hit, whole blocks only and never the last prompt token (it must be computed), as in vLLM.
    """

    clock: FakeClock = field(default_factory=FakeClock)
    step_time_s: float = 0.01
    prefill_time_per_token_s: float = 0.0
    tokens_per_step: int = 1
    eos_token_id: int = 2
    eos_after: int | None = None
    kv_capacity_seqs: int | None = None
    load_time_s: float = 1.0
    model_max_len: int = 8192
    oom_on_load: bool = False
    kv_cache_too_small: bool = False
    engine_init_failure: bool = False
    engine_init_root_cause: str | None = None
    engine_init_root_cause_delay_s: float = 0.0
    oom_at_step: int | None = None
    engine_dead_at_step: int | None = None
    unsupported_architectures: frozenset[str] = frozenset({"FancyNewForCausalLM"})
    version: str = VLLM_VERSION
    renderer: str = "present"


# --------------------------------------------------------------------------- engine


class _FakeEngineCore:
    def __init__(self) -> None:
        self.shutdown_calls = 0

    def shutdown(self, timeout: float | None = None) -> None:
        self.shutdown_calls += 1


@dataclass
class _ModelConfig:
    model: str
    dtype: str
    max_model_len: int
    hf_config: dict[str, Any]
    runner_type: str = "generate"

    def get_vocab_size(self) -> int:
        return int(self.hf_config.get("vocab_size", 32000))


@dataclass
class LoRARequest:
    """``vllm.lora.request.LoRARequest`` (a msgspec struct upstream; same fields and checks)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None
    tensorizer_config_dict: dict[str, Any] | None = None
    load_inplace: bool = False

    def __post_init__(self) -> None:
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        if not self.lora_path:
            raise ValueError("lora_path cannot be empty")


#: vLLM's ``MaxLoRARanks`` (``vllm/config/lora.py``).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LLMEngine:
    """``vllm.v1.engine.llm_engine.LLMEngine`` (the offline request/step surface)."""

    def __init__(self, controller: FakeVLLM, engine_args: dict[str, Any]) -> None:
        behaviour = controller.behaviour
        self._controller = controller
        self._behaviour = behaviour
        self._log_stats = not engine_args.get("disable_log_stats", False)
        self._skip_tokenizer = bool(engine_args.get("skip_tokenizer_init", False))
        self.engine_core = _FakeEngineCore()
        max_num_seqs = engine_args.get("max_num_seqs") or 1024
        self._batcher = ContinuousBatcher(
            behaviour.clock,
            max_running=max_num_seqs,
            step_time_s=behaviour.step_time_s,
            prefill_time_per_token_s=behaviour.prefill_time_per_token_s,
            tokens_per_step=behaviour.tokens_per_step,
            eos_after=behaviour.eos_after,
            kv_capacity_seqs=behaviour.kv_capacity_seqs,
        )
        self._states: dict[str, dict[str, Any]] = {}
        self._steps = 0
        self._prefix_caching = engine_args.get("enable_prefix_caching") is not False
        self._block_size = int(engine_args.get("block_size") or 16)
        self._cached_blocks: set[tuple[Any, ...]] = set()
        self.max_model_len = engine_args.get("max_model_len") or behaviour.model_max_len
        self._lora = bool(engine_args.get("enable_lora"))
        self._max_lora_rank = int(engine_args.get("max_lora_rank") or 16)
        self._lora_ranks: dict[int, int] = {}  # lora_int_id -> rank, as the worker caches them
        # vllm:lora_requests_info, registered with LoRA on and filled only with stat logging
        self.lora_gauge = (
            LoraGauge(int(engine_args.get("max_loras") or 1), clock=behaviour.clock)
            if self._lora
            else None
        )

    @property
    def max_running_seen(self) -> int:
        return self._batcher.max_running_seen

    def add_request(  # noqa: PLR0917  # upstream's positional signature
        self,
        request_id: str,
        prompt: Any,
        params: SamplingParams,
        arrival_time: float | None = None,
        lora_request: Any | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Any | None = None,
        priority: int = 0,
        session_id: str | None = None,
        prompt_text: str | None = None,
        kv_hints: Any | None = None,
    ) -> str:
        if self._behaviour.version.startswith("0.26") and (
            session_id is not None or kv_hints is not None
        ):
            bad = "session_id" if session_id is not None else "kv_hints"
            raise TypeError(f"LLMEngine.add_request() got an unexpected keyword argument '{bad}'")
        salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params)}")
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            # A rendered EngineInput ({"type": "token", ...}) or a raw TokensPrompt; vLLM 0.33
            # logs a one-time deprecation warning for the raw form.
            self._controller.prompt_forms.append("rendered" if "type" in prompt else "raw")
            self._controller.cache_salts.append(prompt.get("cache_salt"))
            token_ids = list(prompt["prompt_token_ids"])
        elif isinstance(prompt, str):
            if self._skip_tokenizer:
                raise ValueError("You must set skip_tokenizer_init=False to pass a text prompt.")
            token_ids = [10 + (ord(c) % 90) for c in prompt]
        else:
            raise TypeError(f"unsupported prompt type {type(prompt)}")
        if not token_ids:
            raise ValueError("The decoder prompt cannot be empty")
        if lora_request is not None:
            self._check_lora(lora_request)
        max_tokens = params.max_tokens if params.max_tokens is not None else 16
        if len(token_ids) > self.max_model_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {len(token_ids)}) is longer than the maximum "
                f"model length of {self.max_model_len}. Make sure that `max_model_len` is no "
                "smaller than the number of text tokens."
            )
        if len(token_ids) == self.max_model_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {len(token_ids)}) plus the number of requested "
                "output tokens (at least 1) is longer than the maximum model length of "
                f"{self.max_model_len}."
            )
        # Like vLLM, a request that would run past max_model_len is not refused: the
        # scheduler stops it there with finish_reason "length" (a shorter output).
        max_tokens = min(max_tokens, self.max_model_len - len(token_ids))
        if request_id in self._states:
            raise ValueError(f"Request id {request_id} already running.")
        now = self._behaviour.clock()
        stats = (
            RequestStateStats(arrival_time=arrival_time if arrival_time is not None else now)
            if self._log_stats
            else None
        )
        sim = SimRequest(
            request_id=request_id,
            prompt_token_ids=token_ids,
            max_tokens=max_tokens,
            min_tokens=params.min_tokens,
            ignore_eos=params.ignore_eos,
            eos_token_id=self._behaviour.eos_token_id,
        )
        self._states[request_id] = {
            "sim": sim,
            "params": params,
            "stats": stats,
            "cached": self._lookup_prefix(token_ids, salt),
            "lora": getattr(lora_request, "lora_name", None),
        }
        self._batcher.add(sim)
        self._controller.added_requests.append((request_id, token_ids, params))
        self._controller.lora_requests.append((request_id, lora_request))
        return f"{request_id}-{uuid.uuid4().hex[:8]}"

    def _check_lora(self, lora_request: Any) -> None:
        """As vLLM's input processor and LoRA loader: LoRA must be enabled, the adapter
        directory must hold an adapter config whose rank fits ``max_lora_rank``."""
        if not isinstance(lora_request, LoRARequest):
            raise TypeError(f"lora_request must be a LoRARequest, got {type(lora_request)}")
        if not self._lora:
            raise ValueError(f"Got lora_request {lora_request} but LoRA is not enabled!")
        if lora_request.lora_int_id in self._lora_ranks:
            return
        config = Path(lora_request.lora_path) / "adapter_config.json"
        if not config.is_file():
            raise ValueError(
                f"Loading lora {lora_request.lora_name} failed: No adapter found for "
                f"{lora_request.lora_path}"
            )
        rank = int(json.loads(config.read_text(encoding="utf-8"))["r"])
        if rank > self._max_lora_rank:
            raise ValueError(
                f"LoRA rank {rank} is greater than max_lora_rank {self._max_lora_rank}."
            )
        self._lora_ranks[lora_request.lora_int_id] = rank

    def list_loras(self) -> set[int]:
        """The ``lora_int_id`` of every adapter the engine has loaded."""
        return set(self._lora_ranks)

    def _lookup_prefix(self, token_ids: list[int], salt: Any) -> int:
        """Prompt tokens served from the prefix cache; caches this prompt's full blocks."""
        if not self._prefix_caching:
            return 0
        block = self._block_size
        hit = 0
        missed = False
        for end in range(block, len(token_ids) + 1, block):
            key = (salt, tuple(token_ids[:end]))
            if not missed and key in self._cached_blocks:
                hit = end
            else:
                missed = True
            self._cached_blocks.add(key)
        # The last prompt token is always computed (its logits give the first output token).
        return min(hit, ((len(token_ids) - 1) // block) * block)

    def has_unfinished_requests(self) -> bool:
        return self._batcher.has_unfinished

    def get_num_unfinished_requests(self) -> int:
        return self._batcher.num_unfinished

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        for request_id in request_ids:
            self._batcher.abort(request_id)
            self._states.pop(request_id, None)

    def step(self) -> list[RequestOutput]:
        self._steps += 1
        behaviour = self._behaviour
        if (
            behaviour.engine_dead_at_step is not None
            and self._steps >= behaviour.engine_dead_at_step
        ):
            raise EngineDeadError()
        if behaviour.oom_at_step is not None and self._steps >= behaviour.oom_at_step:
            raise cuda_oom(OOM_MESSAGE)
        events = self._batcher.step()
        now = behaviour.clock()
        outputs: list[RequestOutput] = []
        for event in events:
            state = self._states[event.request.request_id]
            sim: SimRequest = state["sim"]
            params: SamplingParams = state["params"]
            stats: RequestStateStats | None = state["stats"]
            if stats is not None:
                if stats.first_token_ts == 0.0:
                    stats.first_token_ts = now
                    stats.first_token_latency = now - stats.arrival_time
                stats.last_token_ts = now
                stats.num_generation_tokens = len(sim.output_token_ids)
            kind = params.output_kind
            if kind is RequestOutputKind.FINAL_ONLY and not sim.finished:
                continue
            token_ids = (
                list(event.new_token_ids)
                if kind is RequestOutputKind.DELTA
                else list(sim.output_token_ids)
            )
            completion = CompletionOutput(
                index=0,
                text="" if self._skip_tokenizer or not params.detokenize else "x" * len(token_ids),
                token_ids=token_ids,
                cumulative_logprob=None,
                logprobs=None,
                finish_reason=sim.finish_reason,
                stop_reason=None,
            )
            outputs.append(
                RequestOutput(
                    request_id=sim.request_id,
                    prompt=None,
                    prompt_token_ids=list(sim.prompt_token_ids),
                    prompt_logprobs=(
                        _prompt_logprobs(list(sim.prompt_token_ids), params.prompt_logprobs)
                        if params.prompt_logprobs is not None
                        else None
                    ),
                    outputs=[completion],
                    finished=sim.finished,
                    metrics=stats,
                    num_cached_tokens=state["cached"],
                )
            )
            if sim.finished:
                self._states.pop(sim.request_id, None)
        if self.lora_gauge is not None and self._log_stats and outputs:
            # PrometheusStatLogger.record after the step (finished requests already dropped)
            self.lora_gauge.record(st["lora"] for st in self._states.values() if st["lora"])
        return outputs

    def get_metrics(self) -> list[Gauge]:
        """``LLMEngine.get_metrics``: the Prometheus snapshot (vllm:* metrics) of this process;
        only with stat logging on, as upstream asserts."""
        assert self._log_stats, "Stat logging disabled"
        running = Gauge(
            name="vllm:num_requests_running",
            labels={"model_name": "fake", "engine": "0"},
            value=float(len(self._states)),
        )
        lora = self.lora_gauge.reader_metrics() if self.lora_gauge is not None else []
        return [running, *lora]


class LLM:
    """``vllm.LLM`` (constructor checks, ``llm_engine``, ``generate``)."""

    _controller: FakeVLLM  # set on the class bound into each installed module

    def __init__(
        self,
        model: str,
        *,
        runner: str = "auto",
        convert: str = "auto",
        tokenizer: str | None = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        allowed_local_media_path: str = "",
        allowed_media_domains: list[str] | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        chat_template: Any | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        cpu_offload_gb: float = 0,
        enforce_eager: bool = False,
        disable_custom_all_reduce: bool = False,
        hf_token: bool | str | None = None,
        hf_overrides: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        kv_cache_memory_bytes: int | None = None,
        compilation_config: int | dict[str, Any] | None = None,
        spec_method: str | None = None,
        spec_model: str | None = None,
        spec_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        controller = type(self)._controller
        behaviour = controller.behaviour
        unknown = sorted(set(kwargs) - ENGINE_ARG_FIELDS)
        if unknown:
            raise TypeError(
                f"EngineArgs.__init__() got an unexpected keyword argument '{unknown[0]}'"
            )
        if compilation_config is not None and not isinstance(compilation_config, int | dict):
            raise TypeError("compilation_config must be an int, a dict or a CompilationConfig")
        if "disable_log_stats" not in kwargs:
            kwargs["disable_log_stats"] = True
        engine_args: dict[str, Any] = {
            "model": model,
            "tokenizer": tokenizer,
            "skip_tokenizer_init": skip_tokenizer_init,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "quantization": quantization,
            "revision": revision,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "compilation_config": compilation_config,
            **kwargs,
        }
        controller.llm_kwargs.append(engine_args)
        if engine_args.get("enable_lora"):
            rank = engine_args.get("max_lora_rank", 16)
            if rank not in MAX_LORA_RANKS:
                raise ValueError(
                    f"max_lora_rank ({rank}) must be one of {MAX_LORA_RANKS}"  # pydantic's gist
                )
            max_loras = engine_args.get("max_loras", 1)
            max_cpu = engine_args.get("max_cpu_loras")
            if max_cpu is not None and max_cpu < max_loras:
                raise ValueError(f"max_cpu_loras ({max_cpu}) must be >= max_loras ({max_loras})")
        hf_config = _read_hf_config(model)
        architectures = list(hf_config.get("architectures") or [])
        bad = [a for a in architectures if a in behaviour.unsupported_architectures]
        if bad:
            raise ValueError(
                f"Model architectures {architectures} are not supported for now. "
                "Supported architectures: dict_keys(['LlamaForCausalLM', 'MistralForCausalLM', "
                "'Qwen2ForCausalLM'])"
            )
        if behaviour.oom_on_load:
            raise cuda_oom(OOM_MESSAGE)
        if behaviour.kv_cache_too_small:
            raise ValueError(
                "No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine."
            )
        if behaviour.engine_init_failure:
            if behaviour.engine_init_root_cause:
                # As on the H200: the child's traceback may land after the front end raised.
                text = (
                    "(EngineCore pid=1234) ERROR 12-01 22:49:29 [core.py:1330] EngineCore "
                    "failed to start.\n(EngineCore pid=1234) ERROR 12-01 22:49:29 "
                    f"[core.py:1330] {behaviour.engine_init_root_cause}\n"
                ).encode()
                delay = behaviour.engine_init_root_cause_delay_s
                if delay > 0:
                    threading.Timer(delay, os.write, args=(2, text)).start()
                else:
                    os.write(2, text)
            raise RuntimeError(
                "Engine core initialization failed. See root cause above. "
                "Failed core proc(s): {'EngineCore_DP0': 1}"
            )
        behaviour.clock.advance(behaviour.load_time_s)
        self.llm_engine = LLMEngine(controller, engine_args)
        resolved_dtype = {"auto": "bfloat16", "half": "float16"}.get(dtype, dtype)
        self.model_config = _ModelConfig(
            model=model,
            dtype=f"torch.{resolved_dtype}",
            max_model_len=self.llm_engine.max_model_len,
            hf_config=hf_config,
        )
        self.llm_engine.model_config = self.model_config  # type: ignore[attr-defined]
        self.engine_class = LLMEngine
        self._counter = 0
        controller.instances.append(self)

    def get_metrics(self) -> list[Gauge]:
        """``LLM.get_metrics``: ``self.llm_engine.get_metrics()``."""
        return self.llm_engine.get_metrics()

    def _preprocess_cmpl_one(
        self,
        prompt: Any,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``LLM._preprocess_cmpl_one``: render one prompt into an ``EngineInput``."""
        if type(self)._controller.behaviour.renderer == "broken":
            raise TypeError("_preprocess_cmpl_one() missing 1 required positional argument")
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            rendered = {"type": "token", "prompt_token_ids": list(prompt["prompt_token_ids"])}
            if "cache_salt" in prompt:
                rendered["cache_salt"] = prompt["cache_salt"]
            return rendered
        if isinstance(prompt, str) and not self.llm_engine._skip_tokenizer:
            return {"type": "token", "prompt_token_ids": [10 + (ord(c) % 90) for c in prompt]}
        raise ValueError(f"cannot render prompt of type {type(prompt)}")

    def get_tokenizer(self) -> Any:
        if self.llm_engine._skip_tokenizer:
            raise ValueError("Unable to get tokenizer because `skip_tokenizer_init=True`")
        return object()

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Any | None = None,
        priority: Any | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        seq = prompts if isinstance(prompts, list | tuple) else [prompts]
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_seq: list[SamplingParams] = (
            list(sampling_params)
            if isinstance(sampling_params, list | tuple)
            else [sampling_params] * len(seq)  # type: ignore[list-item]
        )
        for prompt, params in zip(seq, params_seq, strict=True):
            params.output_kind = RequestOutputKind.FINAL_ONLY
            self.llm_engine.add_request(str(self._counter), prompt, params)
            self._counter += 1
        outputs: list[RequestOutput] = []
        while self.llm_engine.has_unfinished_requests():
            outputs.extend(o for o in self.llm_engine.step() if o.finished)
        return sorted(outputs, key=lambda o: int(o.request_id))


def _read_hf_config(model: str) -> dict[str, Any]:
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {"architectures": ["LlamaForCausalLM"]}


# --------------------------------------------------------------------------- installation


class FakeVLLM:
    """Controller: builds the fake ``vllm`` modules and records what the backend did.

    Attributes:
        behaviour: The knobs (see :class:`FakeVLLMBehaviour`).
        llm_kwargs: Every ``LLM(...)`` call's engine arguments, ``model`` included.
        instances: Every successfully constructed ``LLM``.
        added_requests: ``(request_id, prompt_token_ids, SamplingParams)`` per add_request.
        lora_requests: ``(request_id, LoRARequest | None)`` per add_request.
        prompt_forms: Per add_request, "rendered" (an EngineInput) or "raw" (deprecated).
    """

    def __init__(self, behaviour: FakeVLLMBehaviour | None = None) -> None:
        self.behaviour = behaviour or FakeVLLMBehaviour()
        self.llm_kwargs: list[dict[str, Any]] = []
        self.instances: list[LLM] = []
        self.added_requests: list[tuple[str, list[int], SamplingParams]] = []
        self.prompt_forms: list[str] = []  # "rendered" (EngineInput) or "raw" (TokensPrompt)
        self.cache_salts: list[str | None] = []  # the prompt's cache_salt, per add_request
        self.lora_requests: list[tuple[str, Any]] = []  # (request_id, LoRARequest or None)

    def modules(self) -> dict[str, types.ModuleType]:
        """The ``sys.modules`` entries that make ``import vllm`` resolve to this fake."""
        attrs: dict[str, Any] = {"_controller": self, "__module__": "vllm.entrypoints.llm"}
        if self.behaviour.renderer == "absent":
            attrs["_preprocess_cmpl_one"] = None  # an older release: no renderer at all
        llm_cls = type("LLM", (LLM,), attrs)
        version_string = self.behaviour.version
        root = types.ModuleType("vllm", "Fake vLLM " + version_string)
        root.__path__ = []  # a package, so submodules import
        for key, value in {
            "__version__": version_string,
            "LLM": llm_cls,
            "SamplingParams": SamplingParams,
            "TokensPrompt": TokensPrompt,
            "RequestOutput": RequestOutput,
            "CompletionOutput": CompletionOutput,
        }.items():
            setattr(root, key, value)
        mods = {"vllm": root}

        def sub(name: str, **attrs: Any) -> types.ModuleType:
            module = types.ModuleType(name)
            module.__path__ = []
            for key, value in attrs.items():
                setattr(module, key, value)
            mods[name] = module
            return module

        sub(
            "vllm.sampling_params",
            SamplingParams=SamplingParams,
            RequestOutputKind=RequestOutputKind,
        )
        sub("vllm.inputs", TokensPrompt=TokensPrompt)
        sub("vllm.logprobs", Logprob=Logprob)
        sub("vllm.lora")
        sub("vllm.lora.request", LoRARequest=LoRARequest)
        sub("vllm.outputs", RequestOutput=RequestOutput, CompletionOutput=CompletionOutput)
        sub(
            "vllm.exceptions",
            VLLMError=VLLMError,
            VLLMClientError=VLLMClientError,
            VLLMServerError=VLLMServerError,
            VLLMValidationError=VLLMValidationError,
        )
        sub("vllm.entrypoints")
        sub("vllm.entrypoints.llm", LLM=llm_cls)
        sub("vllm.v1")
        sub("vllm.v1.engine")
        sub("vllm.v1.engine.exceptions", EngineDeadError=EngineDeadError)
        sub("vllm.v1.engine.llm_engine", LLMEngine=LLMEngine)
        sub("vllm.v1.metrics")
        sub("vllm.v1.metrics.stats", RequestStateStats=RequestStateStats)
        sub("vllm.v1.metrics.reader", Metric=Metric, Gauge=Gauge)
        version = sub("vllm.version", __version__=version_string, __commit__=VLLM_COMMIT)
        setattr(root, "version", version)  # noqa: B010  # ModuleType has no declared attribute
        return mods

    @contextmanager
    def installed(self) -> Iterator[FakeVLLM]:
        """Make ``import vllm`` return this fake inside the block (restores on exit)."""
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


__all__ = [
    "ENGINE_ARG_FIELDS",
    "VLLM_COMMIT",
    "VLLM_VERSION",
    "CompletionOutput",
    "EngineDeadError",
    "FakeVLLM",
    "FakeVLLMBehaviour",
    "LoRARequest",
    "Logprob",
    "RequestOutput",
    "RequestOutputKind",
    "RequestStateStats",
    "SamplingParams",
    "TokensPrompt",
    "VLLMError",
    "VLLMValidationError",
    "fake_prompt_logprob",
]
