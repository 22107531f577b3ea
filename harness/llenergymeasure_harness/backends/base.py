"""The backend protocol: the one boundary between the measurement harness and an engine.

Every engine (transformers, vLLM, TensorRT-LLM) is wrapped in a class that satisfies
:class:`Backend`. The harness owns timing windows, energy and the result; a backend only loads
the model and turns :class:`GenerationRequest` objects into :class:`RequestRecord` objects with
per-token timestamps.

Timeline the harness drives::

    load() ──► [idle baseline] ──► warmup: run(batch) × n ──► begin window ─ run(all) ─ end window
               (model loaded,       (never measured; same        (measured)          ──► close()
                CUDA context open)   shapes as measured)

The baseline comes before warmup so idle power is not taken on warmup's cooling tail.

Timestamps in records are ``time.perf_counter()`` seconds taken in the harness process, so the
harness can place them on the same clock as its energy window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_harness.traffic import ArrivalPlan


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to generate for. Identical across backends for the same experiment config."""

    request_id: int
    prompt_token_ids: list[int]
    max_new_tokens: int
    prompt_text: str | None = None  # None for synthetic token-id prompts
    # The LoRA adapter (its name in ``lora:``) this request is served through; None: the base
    # model. Chosen by the harness (llenergymeasure_harness.lora.assign_adapters).
    adapter: str | None = None
    # Prompt tokens cut to fit max_input_tokens (text datasets: from the right; chat: from the
    # left, keeping the end of the conversation); counted in the result's input_truncation.
    truncated_input_tokens: int = 0


@dataclass
class RequestRecord:
    """What happened to one request, on the harness's perf_counter clock (seconds).

    ``token_times_s[i]`` is when output token ``i`` became available to the caller; the first
    entry is the first-token time. Backends that cannot observe individual tokens leave
    ``token_times_s`` empty and set ``first_token_s`` from the engine's own metrics, or ``None``.
    """

    request_id: int
    input_tokens: int  # prompt tokens, padding excluded
    output_tokens: int  # generated tokens, padding and tokens after EOS excluded
    submit_s: float
    end_s: float
    first_token_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    finish_reason: str | None = None  # "length", "stop", ...
    # Prompt tokens the engine served from its prefix cache (vLLM's num_cached_tokens);
    # None when the engine does not report it (PyTorch has no cross-request cache).
    cached_input_tokens: int | None = None
    # When the request was due under the traffic plan (None: offline, all due at the start).
    arrival_s: float | None = None
    # sha256 (16 hex) of the generated token ids, where the engine returns them: tells two
    # runs' outputs apart (a LoRA adapter against the base model) without storing the tokens.
    output_sha256: str | None = None


@dataclass(frozen=True)
class LoadInfo:
    """Facts about the loaded model that the result records."""

    backend_version: str  # e.g. transformers.__version__, vllm.__version__
    parameter_count: int | None  # None if the engine does not expose it
    dtype: str  # the dtype actually used, e.g. "bfloat16"
    load_duration_s: float
    devices: Sequence[int]  # device indices the model was placed on (harness-visible indices)
    backend_library: str | None = None  # the library backend_version is of: transformers, vllm
    engine_build_s: float | None = None  # TensorRT-LLM engine build, reported apart from the run
    engine_cache_hit: bool | None = None
    # the parts of the load (vLLM: LoadBreakdown fields), None where the engine logs none
    load_breakdown_s: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # library versions, resolved engine args


@runtime_checkable
class Backend(Protocol):
    """An inference engine behind a small, fakeable interface."""

    name: str

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Load the model (hub id, local path, or dummy weights) and get ready to generate."""
        ...

    @property
    def warmup_unit(self) -> int:
        """How many requests one warmup step sends (the batch the measured run will use)."""
        ...

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        """Generate for every request and return one record per request, in request order.

        With a ``plan`` other than offline, each request is submitted when it is due (see
        :mod:`llenergymeasure_harness.traffic`) and its record carries ``arrival_s``.
        Blocks until all requests finish; the device is synchronised before returning so the
        caller's window edges bound the work.
        """
        ...

    def peak_memory_bytes(self) -> dict[int, int] | None:
        """Peak device memory per device index since load, or None if not observable."""
        ...

    def close(self) -> None:
        """Release the model and device memory. Safe to call twice."""
        ...


def token_ids_digest(token_ids: Sequence[int]) -> str:
    """16 hex of the sha256 of generated token ids (``RequestRecord.output_sha256``)."""
    import hashlib

    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()[:16]


def release_device_memory() -> None:
    """Collect dropped model objects and return cached CUDA blocks to the driver.

    Backends call this from ``close()`` after dropping their model, so the next experiment in
    the same process (tests, the local runner's retries) starts from an empty device.
    """
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- evaluation
# What the accuracy pass (llenergymeasure_harness.evaluation) asks of an engine, beside the
# Backend protocol: an engine that implements these can run quality: tasks.


@dataclass(frozen=True)
class ScoreRequest:
    """Log-probability of ``continuation_ids`` following ``context_ids`` (one lm-eval
    loglikelihood request, already tokenised)."""

    context_ids: list[int]
    continuation_ids: list[int]


@dataclass(frozen=True)
class Score:
    """The summed log-probability of a continuation, and whether greedy decoding would have
    produced every one of its tokens."""

    logprob: float
    is_greedy: bool
    input_tokens: int  # tokens the engine read for it (after truncation to max_length)


@dataclass(frozen=True)
class TextRequest:
    """Greedy or sampled generation from token ids, stopped at any of ``stop`` (text)."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0


@dataclass(frozen=True)
class Generated:
    """What one :class:`TextRequest` produced: its text (a stop string may still be in it:
    the caller cuts there) and how many tokens the engine generated."""

    text: str
    output_tokens: int


@runtime_checkable
class Evaluable(Protocol):
    """An engine that scores text and generates text for the evaluation pass."""

    def loglikelihood(
        self, requests: Sequence[ScoreRequest], *, batch_size: int, max_length: int
    ) -> list[Score]:
        """Score every request (one forward pass per batch); results in request order.

        Inputs longer than ``max_length`` tokens lose tokens from the left, as lm-eval's
        own models do.
        """
        ...

    def generate_texts(
        self, requests: Sequence[TextRequest], *, batch_size: int, tokenizer: Any
    ) -> list[Generated]:
        """What every request generated, in request order (special tokens left out of the
        text)."""
        ...
