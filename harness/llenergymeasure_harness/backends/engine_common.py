"""Pieces shared by the continuous-batching engine backends (vLLM, TensorRT-LLM).

* :class:`RequestTimeline` accumulates one request's streamed tokens on the harness clock and
  turns into a :class:`~llenergymeasure_harness.backends.base.RequestRecord`.
* :func:`prepare_model_source` gives the engine something to load: the hub id or path as
  configured, or, for ``load_format: dummy``, a directory holding only the architecture's
  ``config.json`` (random weights, no download).
* :func:`translate_engine_error` is the one boundary where engine exceptions become
  llenergymeasure errors::

      CUDA OOM, KV cache does not fit       → EngineOutOfMemoryError (ExperimentError)
      architecture not supported            → UnsupportedModelError  (ConfigError)
      engine rejected its arguments (load)  → ConfigError
      anything else                         → ExperimentError

  Engine exceptions are matched by class name and message rather than imported classes, so
  this module imports no engine, and a wrapped worker-process error (vLLM's multiprocess
  engine core re-raises worker failures as ``RuntimeError``) is still recognised.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llenergymeasure.architecture import ArchitectureSpec, resolve_architecture
from llenergymeasure.config import ExperimentConfig
from llenergymeasure.errors import ConfigError, ExperimentError, LLEMError
from llenergymeasure_harness.backends.base import RequestRecord

logger = logging.getLogger(__name__)


class EngineOutOfMemoryError(ExperimentError):
    """The engine ran out of GPU memory (weights, activations or KV cache)."""


class UnsupportedModelError(ConfigError):
    """The engine does not implement the model's architecture."""


# --------------------------------------------------------------------------- records


@dataclass
class RequestTimeline:
    """One request's life on the harness clock while an engine streams its tokens."""

    request_id: int
    input_tokens: int
    submit_s: float
    token_times_s: list[float] = field(default_factory=list)
    end_s: float | None = None
    finish_reason: str | None = None
    arrival_s: float | None = None  # scheduled arrival (None offline)

    def add_tokens(self, count: int, now: float) -> None:
        """Record ``count`` tokens that became available at ``now``.

        Several tokens can arrive together (speculative decoding, or an engine that batches
        its outputs); they share the timestamp, as in ML.ENERGY's per-token ITL lists.
        """
        if count > 0:
            self.token_times_s.extend([now] * count)

    def finish(self, now: float, reason: str | None) -> None:
        """Mark the request done."""
        self.end_s = now
        self.finish_reason = reason

    def to_record(self) -> RequestRecord:
        """The finished record (``end_s`` falls back to the last token time)."""
        end = self.end_s
        if end is None:
            end = self.token_times_s[-1] if self.token_times_s else self.submit_s
        return RequestRecord(
            request_id=self.request_id,
            input_tokens=self.input_tokens,
            output_tokens=len(self.token_times_s),
            submit_s=self.submit_s,
            end_s=end,
            first_token_s=self.token_times_s[0] if self.token_times_s else None,
            token_times_s=list(self.token_times_s),
            finish_reason=self.finish_reason,
            arrival_s=self.arrival_s,
        )


def warn_short_outputs(
    records: list[RequestRecord], requested: dict[int, int], *, engine: str, ignore_eos: bool
) -> int:
    """Log when fixed-length requests came back shorter than asked; returns how many.

    With ``ignore_eos`` every request should produce exactly ``max_new_tokens``. An engine
    stops early only at its own limits (vLLM: ``max_model_len``; TensorRT-LLM:
    ``max_seq_len``), and the token counts then differ across backends, so say so loudly.
    """
    if not ignore_eos:
        return 0
    short = [r for r in records if r.output_tokens < requested.get(r.request_id, 0)]
    if short:
        logger.warning(
            "%s returned fewer tokens than requested for %d of %d requests (e.g. request %d: "
            "%d of %d); an engine length limit (max_model_len / max_seq_len) cut them short",
            engine,
            len(short),
            len(records),
            short[0].request_id,
            short[0].output_tokens,
            requested[short[0].request_id],
        )
    return len(short)


# --------------------------------------------------------------------------- model source


@dataclass(frozen=True)
class ModelSource:
    """What to hand the engine as ``model``, and what we know about it."""

    model: str  # hub id, local directory, or the dummy config directory
    architecture: ArchitectureSpec | None
    dummy_dir: Path | None  # set when we wrote a config-only directory for dummy weights

    @property
    def parameter_count(self) -> int | None:
        return self.architecture.parameter_count if self.architecture is not None else None


def prepare_model_source(config: ExperimentConfig, workdir: Path) -> ModelSource:
    """Resolve ``config.model`` into something an engine can load.

    For ``load_format: dummy`` with a built-in architecture (e.g. ``llama-3.1-8b``) the
    architecture's ``config.json`` is written to ``workdir/dummy-model/`` so the engine builds
    random weights from it without touching the network; a local path is used as it is; an
    unknown hub id is passed through (the engine then fetches only its config).

    Raises:
        ConfigError: ``config.model`` names a path without a readable ``config.json``.
    """
    spec = resolve_architecture(config.model)
    if config.load_format != "dummy" or spec is None or spec.source != "builtin":
        model = config.model
        if spec is not None and spec.source == "local":
            path = Path(spec.name)
            model = str(path.parent if path.name == "config.json" else path)
        return ModelSource(model=model, architecture=spec, dummy_dir=None)
    target = workdir / "dummy-model"
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(
        json.dumps(spec.hf_config, indent=2, sort_keys=True), encoding="utf-8"
    )
    return ModelSource(model=str(target), architecture=spec, dummy_dir=target)


def eos_token_id(spec: ArchitectureSpec | None, default: int = 2) -> int:
    """The EOS id from an architecture's config (first one when it lists several)."""
    if spec is None:
        return default
    value = spec.hf_config.get("eos_token_id")
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of engine arguments (objects become their repr)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


# --------------------------------------------------------------------------- errors

_OOM_MARKERS = (
    "out of memory",
    "outofmemory",
    "no available memory for the cache blocks",
    "larger than the available kv cache memory",
    "not enough gpu memory",
    "cudaerrormemoryallocation",
    "failed to allocate memory",
)
_UNSUPPORTED_MARKERS = (
    "are not supported for now",  # vLLM ModelRegistry
    "is not supported anymore",  # vLLM, removed architectures
    "is not supported in-tree anymore",  # vLLM, out-of-tree plugins
    "is not supported in trt-llm yet",  # TensorRT-LLM TRT flow (automodel)
    "unknown architecture for automodelforcausallm",  # TensorRT-LLM PyTorch flow
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a GPU out-of-memory condition."""
    for err in _chain(exc):
        if type(err).__name__ == "OutOfMemoryError":
            return True
        text = str(err).lower()
        if any(marker in text for marker in _OOM_MARKERS):
            return True
    return False


def is_unsupported_model(exc: BaseException) -> bool:
    """True when ``exc`` says the engine has no implementation of the architecture."""
    for err in _chain(exc):
        text = str(err).lower()
        if any(marker in text for marker in _UNSUPPORTED_MARKERS):
            return True
    return False


def translate_engine_error(
    exc: BaseException, *, engine: str, phase: str, config: ExperimentConfig
) -> LLEMError:
    """Map an engine exception to the llenergymeasure error a caller branches on.

    Args:
        exc: What the engine raised.
        engine: "vLLM" or "TensorRT-LLM", for the message.
        phase: "load", "build" or "run".
        config: The experiment, for hints that name the right knobs.

    Returns:
        The error to raise ``from exc``; an ``LLEMError`` passes through unchanged.
    """
    if isinstance(exc, LLEMError):
        return exc
    detail = f"{type(exc).__name__}: {exc}".strip()
    if len(detail) > 2000:
        detail = detail[:2000] + "..."
    if is_out_of_memory(exc):
        if config.backend == "vllm":
            hint = (
                "lower vllm.max_num_seqs, vllm.max_model_len or vllm.gpu_memory_utilization "
                "(leave room for other processes), raise tensor_parallel_size, or quantize"
            )
        elif config.backend == "tensorrt":
            hint = (
                "lower tensorrt.max_batch_size, max_num_tokens, max_seq_len or "
                "kv_cache_free_gpu_memory_fraction, raise tensor_parallel_size, or quantize"
            )
        else:
            hint = "use a smaller batch, a shorter sequence, more GPUs or quantization"
        return EngineOutOfMemoryError(
            f"{engine} ran out of GPU memory during {phase} ({config.model}, "
            f"precision={config.precision}): {detail}",
            hint=hint,
        )
    if is_unsupported_model(exc):
        return UnsupportedModelError(
            f"{engine} does not support the architecture of {config.model!r}: {detail}",
            hint=f"pick a model {engine} implements, or run it with backend: pytorch",
        )
    is_validation = type(exc).__name__ in ("ValidationError", "VLLMValidationError")
    if is_validation or (phase in ("load", "build") and isinstance(exc, ValueError | TypeError)):
        return ConfigError(
            f"{engine} rejected the experiment's engine settings during {phase}: {detail}",
            hint=f"check the {config.backend}: section (and its passthrough arguments)",
        )
    if "engine core initialization failed" in str(exc).lower():
        return ExperimentError(
            f"{engine} engine start-up failed: {detail}",
            hint="the root cause is in the engine log above it (often CUDA OOM or a "
            "kernel/driver mismatch); re-run with the harness log kept",
        )
    return ExperimentError(f"{engine} failed during {phase}: {detail}")


__all__ = [
    "EngineOutOfMemoryError",
    "ModelSource",
    "RequestTimeline",
    "UnsupportedModelError",
    "eos_token_id",
    "is_out_of_memory",
    "is_unsupported_model",
    "jsonable",
    "prepare_model_source",
    "translate_engine_error",
    "warn_short_outputs",
]
