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
  this module imports no engine. A failure inside an engine's own process is a different
  case: vLLM's multiprocess engine core dies during start-up and the front end raises only
  ``RuntimeError("Engine core initialization failed. See root cause above.")``; the root cause
  (a CUDA OOM, "No available memory for the cache blocks") exists only in the child's stderr.
  :class:`StderrTail` tees file descriptor 2 (which the children inherit) through a pipe and
  keeps its last bytes, and the translation searches them too. Seen on the H200 with vLLM
  0.26.0 (docs/gpu-results.md).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llenergymeasure_contract.architecture import ArchitectureSpec, resolve_architecture
from llenergymeasure_contract.errors import ConfigError, ExperimentError, LLEMError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_harness.backends.base import GenerationRequest, RequestRecord, token_ids_digest
from llenergymeasure_harness.backends.steady_state import SteadyStateWindow, steady_state_window

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
    cached_input_tokens: int | None = None
    arrival_s: float | None = None  # scheduled arrival (None offline)
    # The generated ids, where the backend keeps them (vLLM): their digest goes in the record.
    token_ids: list[int] = field(default_factory=list)

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
            cached_input_tokens=self.cached_input_tokens,
            arrival_s=self.arrival_s,
            output_sha256=token_ids_digest(self.token_ids) if self.token_ids else None,
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


class _EngineBackend(Protocol):
    """What :func:`finish_run` and :func:`remove_own_workdir` read of a backend."""

    steady_state_target: int | None
    last_steady_state: SteadyStateWindow | None
    _own_workdir: Path | None


def finish_run(
    backend: _EngineBackend,
    records: list[RequestRecord],
    requests: Sequence[GenerationRequest],
    *,
    engine: str,
    ignore_eos: bool,
) -> list[RequestRecord]:
    """The end of a continuous-batching engine's ``run()``: warn about short outputs and
    compute the steady-state window (when the backend has a target); the records."""
    warn_short_outputs(
        records,
        {r.request_id: r.max_new_tokens for r in requests},
        engine=engine,
        ignore_eos=ignore_eos,
    )
    if backend.steady_state_target is not None:
        backend.last_steady_state = steady_state_window(records, backend.steady_state_target)
    return records


def remove_own_workdir(backend: _EngineBackend) -> None:
    """The end of ``close()``: remove the work directory the backend made itself, once."""
    if backend._own_workdir is not None:
        shutil.rmtree(backend._own_workdir, ignore_errors=True)
        backend._own_workdir = None


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


def prepare_model_source(
    config: ExperimentConfig, workdir: Path, *, dummy_root: Path | None = None
) -> ModelSource:
    """Resolve ``config.model`` into something an engine can load.

    For ``load_format: dummy`` with a built-in architecture (e.g. ``llama-3.1-8b``) the
    architecture's ``config.json`` is written to ``workdir/dummy-model/`` so the engine builds
    random weights from it without touching the network; a local path is used as it is; an
    unknown hub id is passed through (the engine then fetches only its config).

    With ``dummy_root`` the folder is ``dummy_root/<name>-<digest of config.json>/dummy-model``
    instead, the same path for the same config in every run: vLLM keys its torch.compile
    cache on the model path (``ModelConfig.compute_hash`` hashes ``model``), so a fresh
    temporary folder per run made every warm load compile again. Written atomically, kept
    after the run (one small file), and the work directory when it cannot be written.

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
    text = json.dumps(spec.hf_config, indent=2, sort_keys=True)
    if dummy_root is not None:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", spec.name)
        target = dummy_root / f"{name}-{digest}" / "dummy-model"
        try:
            _write_if_changed(target / "config.json", text)
            return ModelSource(model=str(target), architecture=spec, dummy_dir=target)
        except OSError as exc:
            logger.warning("cannot keep the dummy model in %s (%s); using %s", target, exc, workdir)
    target = workdir / "dummy-model"
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(text, encoding="utf-8")
    return ModelSource(model=str(target), architecture=spec, dummy_dir=target)


def _write_if_changed(path: Path, text: str) -> None:
    """``text`` into ``path`` unless it holds it already; atomic, so a run beside this one
    never reads half a file."""
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return
    from llenergymeasure_contract.results import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


class StderrTail:
    """Tee this process's fd 2 (or ``fd``) through a pipe and keep its last ``limit`` bytes.

    Child processes started while it runs inherit the pipe as their stderr, so their log lines
    (the engine core's traceback) pass through here on their way to the real stderr, which
    still gets every byte. The reader thread runs until every writer has closed the pipe (the
    children exit), so :meth:`stop` only restores fd 2 for this process. Never raises: a tee
    that cannot start leaves stderr alone and :meth:`text` returns "". ``fd=1`` tees stdout
    the same way (vLLM's log lines, for the load breakdown).
    """

    def __init__(self, limit: int = 65536, *, fd: int = 2) -> None:
        self.limit = limit
        self.fd = fd
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._received = 0
        self._lock = threading.Lock()
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StderrTail:
        """Begin teeing (idempotent)."""
        if self._saved is not None:
            return self
        stream = {1: sys.stdout, 2: sys.stderr}.get(self.fd)
        with contextlib.suppress(Exception):  # what Python buffered goes out before the switch
            if stream is not None:
                stream.flush()
        try:
            saved = os.dup(self.fd)
            out = os.dup(saved)
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, self.fd)
            os.close(write_fd)
        except OSError:
            logger.debug("stderr tee unavailable", exc_info=True)
            return self
        self._saved = saved
        self._thread = threading.Thread(
            target=self._pump, args=(read_fd, out), name=f"llem-fd{self.fd}-tail", daemon=True
        )
        self._thread.start()
        return self

    def _pump(self, read_fd: int, out: int) -> None:
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            # Keep draining even if the real stderr is gone: a full pipe blocks every writer.
            with contextlib.suppress(OSError):
                os.write(out, chunk)
            with self._lock:
                self._chunks.append(chunk)
                self._size += len(chunk)
                self._received += len(chunk)
                while self._size > self.limit and len(self._chunks) > 1:
                    self._size -= len(self._chunks.popleft())
        for fd in (read_fd, out):
            with contextlib.suppress(OSError):
                os.close(fd)

    def text(self) -> str:
        """What passed through so far (the last ``limit`` bytes), decoded leniently."""
        with self._lock:
            data = b"".join(self._chunks)
        return data[-self.limit :].decode("utf-8", errors="replace")

    def wait_for(
        self, predicate: Callable[[str], bool], timeout_s: float, poll_s: float = 0.05
    ) -> str:
        """The text once ``predicate`` holds for it (or ``timeout_s`` passed), plus 0.2 s more.

        A dead engine process can write its traceback after the front end has already raised:
        on the H200 (vLLM 0.26.0) the "Engine core initialization failed" error came before
        the child's ``ValueError`` line in one of two runs.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not predicate(self.text()):
            time.sleep(poll_s)
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.text()

    def stop(self) -> None:
        """Give this process its own stderr back (children keep the pipe until they exit)."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        stream = {1: sys.stdout, 2: sys.stderr}.get(self.fd)
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
        try:
            os.dup2(saved, self.fd)
        finally:
            os.close(saved)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_out_of_memory(exc: BaseException, log: str = "") -> bool:
    """True when ``exc`` (or what it wraps, or the engine's ``log``) is a GPU OOM condition."""
    for err in _chain(exc):
        if type(err).__name__ == "OutOfMemoryError":
            return True
        text = str(err).lower()
        if any(marker in text for marker in _OOM_MARKERS):
            return True
    lowered = log.lower()
    return "outofmemoryerror" in lowered or any(m in lowered for m in _OOM_MARKERS)


def is_unsupported_model(exc: BaseException, log: str = "") -> bool:
    """True when ``exc`` (or the engine's ``log``) says the architecture is not implemented."""
    texts = [str(err).lower() for err in _chain(exc)] + [log.lower()]
    return any(marker in text for text in texts for marker in _UNSUPPORTED_MARKERS)


#: "ValueError: ...", "torch.OutOfMemoryError: ..." anywhere in a line (vLLM prefixes its
#: child processes' lines with "(EngineCore pid=N)" and, for log records, a timestamp).
_EXCEPTION_LINE = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception): \S")


def _root_cause_line(log: str) -> str | None:
    """The last exception line of an engine log ("ValueError: ..."), for the message."""
    for line in reversed(log.splitlines()):
        if _EXCEPTION_LINE.search(line):
            return line.strip()[:500]
    return None


def is_generic_engine_failure(exc: BaseException) -> bool:
    """True for an error that says the root cause is elsewhere (an engine process's log)."""
    text = str(exc).lower()
    return "engine core initialization failed" in text or "root cause" in text


def has_root_cause(log: str) -> bool:
    """True once an engine log holds an exception line (see :class:`StderrTail.wait_for`)."""
    return _root_cause_line(log) is not None


def translate_engine_error(
    exc: BaseException,
    *,
    engine: str,
    phase: str,
    config: ExperimentConfig,
    log: str = "",
) -> LLEMError:
    """Map an engine exception to the llenergymeasure error a caller branches on.

    Args:
        exc: What the engine raised.
        engine: "vLLM" or "TensorRT-LLM", for the message.
        phase: "load", "build" or "run".
        config: The experiment, for hints that name the right knobs.
        log: The engine's recent stderr (:class:`StderrTail`), where a child process's root
            cause is; searched only when ``exc`` is the generic start-up failure.

    Returns:
        The error to raise ``from exc``; an ``LLEMError`` passes through unchanged.
    """
    if isinstance(exc, LLEMError):
        return exc
    detail = f"{type(exc).__name__}: {exc}".strip()
    if not is_generic_engine_failure(exc):
        log = ""
    cause = _root_cause_line(log) if log else None
    if cause:
        detail = f"{detail} (root cause in the engine process: {cause})"
    if len(detail) > 2000:
        detail = detail[:2000] + "..."
    if is_out_of_memory(exc, log):
        hint = REGISTRY.get(config.backend).oom_hint
        return EngineOutOfMemoryError(
            f"{engine} ran out of GPU memory during {phase} ({config.model}, "
            f"precision={config.precision}): {detail}",
            hint=hint,
        )
    if is_unsupported_model(exc, log):
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
    "StderrTail",
    "UnsupportedModelError",
    "eos_token_id",
    "finish_run",
    "has_root_cause",
    "is_generic_engine_failure",
    "is_out_of_memory",
    "is_unsupported_model",
    "jsonable",
    "prepare_model_source",
    "remove_own_workdir",
    "translate_engine_error",
    "warn_short_outputs",
]
