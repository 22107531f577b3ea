"""TensorRT-LLM backend: the LLM API behind the harness's backend protocol, with an engine cache.

Written against the **TensorRT-LLM 1.2** LLM API (``tensorrt_llm/llmapi/llm.py``,
``tensorrt_llm/_tensorrt_engine``, ``tensorrt_llm/executor/result.py``,
``tensorrt_llm/sampling_params.py``, ``tensorrt_llm/builder.py``). ``tensorrt_llm`` is imported
inside :meth:`TensorRTBackend.load` only.

Two flows, chosen by ``tensorrt.trtllm_backend``:

* ``tensorrt`` (our default): ``tensorrt_llm._tensorrt_engine.LLM`` compiles the model into a
  TensorRT engine with the ``BuildConfig`` limits and ``QuantConfig``. Upstream's plain
  ``tensorrt_llm.LLM`` has been the PyTorch flow since 1.0; the engine flow is what this
  backend exists to measure, and the only one with something to cache.
* ``pytorch``: ``tensorrt_llm.LLM``; nothing is built (``engine_build_s`` is None).

Engine cache (TensorRT flow)::

    LLEM_ENGINE_CACHE_DIR/
      <key>/                 a complete engine: config.json, rank*.engine, llem-engine.json
      <key>.lock             flock held while one process builds <key>
      .tmp-<key>-<uuid>/     a build in progress (renamed to <key> when complete)

``<key>`` hashes everything that changes the engine (model identity and config, dtype,
quantization, parallelism, build limits, extra build arguments, TensorRT-LLM version, GPU
model) and nothing that does not (KV-cache memory fraction, decoding, workload). A miss builds
under the lock, saves with ``llm.save`` into a temporary directory, writes the marker and
renames it into place, so a reader never sees half an engine. Hit or miss, the measured engine
is then loaded from the cache directory, so both paths measure the same thing; the build time
is reported as ``LoadInfo.engine_build_s``, apart from ``load_duration_s``.

Evaluation (``quality:``) scores text from each request's context logits and generates with
stop strings: :mod:`~llenergymeasure_harness.backends.tensorrt_eval`.

Per-request timing streams every request (``generate_async(..., streaming=True)``) under one
asyncio loop and stamps each response's new tokens (``outputs[0].token_ids_diff``) on the
harness clock when it arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llenergymeasure_contract.env import ENV_ENGINE_CACHE_DIR
from llenergymeasure_contract.errors import ExperimentError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_harness.backends.base import GenerationRequest, LoadInfo, RequestRecord
from llenergymeasure_harness.backends.engine_common import (
    ModelSource,
    RequestTimeline,
    eos_token_id,
    finish_run,
    jsonable,
    prepare_model_source,
    remove_own_workdir,
    translate_engine_error,
)
from llenergymeasure_harness.backends.steady_state import SteadyStateWindow
from llenergymeasure_harness.backends.tensorrt_args import (
    TRTLLM_LORA_MODULES,
    build_config_dict,
    build_llm_kwargs,
    build_sampling_kwargs,
    kv_cache_config_dict,
    lora_config_dict,
    quant_config_dict,
    tensorrt_section,
)
from llenergymeasure_harness.backends.tensorrt_cache import (
    CACHE_SCHEMA,
    MARKER_FILE,
    CachedEngine,
    EngineCache,
    engine_cache_key,
    engine_cache_key_payload,
    model_fingerprint,
)
from llenergymeasure_harness.backends.tensorrt_eval import TensorRTEvaluationMethods
from llenergymeasure_harness.lora import AdapterSet, prepare_adapters
from llenergymeasure_harness.traffic import ArrivalPlan

logger = logging.getLogger(__name__)

ENGINE = "TensorRT-LLM"
#: The TensorRT-LLM release line this module was written and fake-tested against.
MIRRORED_TRTLLM_VERSION = "1.2.1"


# --------------------------------------------------------------------------- backend


def _hf_config_of(source: ModelSource, loaded_from: str) -> dict[str, Any] | None:
    """The model's HF config: known architecture, or a local config.json / engine config."""
    if source.architecture is not None:
        return dict(source.architecture.hf_config)
    path = Path(loaded_from) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("pretrained_config"), dict):
        return dict(data["pretrained_config"])  # an engine directory
    return data if isinstance(data, dict) else None


def _gpu_identity() -> str:
    """GPU model and compute capability of device 0 (engines are specific to both)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"{torch.cuda.get_device_name(0)} sm{major}{minor}"
    except Exception:  # an unreadable GPU only weakens the key; the build will fail loudly
        logger.debug("could not read the GPU identity for the engine-cache key", exc_info=True)
    return "unknown-gpu"


class TensorRTBackend(TensorRTEvaluationMethods):
    """TensorRT-LLM's LLM API as a :class:`~llenergymeasure_harness.backends.base.Backend`.

    Args:
        clock: Timestamp source (``time.perf_counter``, the harness clock, by default).
        engine_cache_dir: Root of the engine cache. Defaults to ``$LLEM_ENGINE_CACHE_DIR``
            (mounted by the orchestrator) read here, in the constructor; without either,
            engines are built into a temporary directory and not kept.
        async_sleep: Waits for the next arrival (a fake clock's advance in tests).
        gpu_identity: Overrides the GPU part of the cache key (tests).
        workdir: Where dummy configs and uncached engines go (temporary if None).

    Attributes:
        steady_state_target: ``K`` for :func:`steady_state_window` (``tensorrt.max_batch_size``).
        last_steady_state: The steady-state window of the most recent :meth:`run`.
        cache_key: The engine-cache key of the loaded engine (TensorRT flow).
        llm_kwargs: The resolved ``LLM(...)`` arguments of the measured engine (JSON-safe).
    """

    name = "tensorrt"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.perf_counter,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        engine_cache_dir: str | Path | None = None,
        gpu_identity: str | None = None,
        workdir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        root = engine_cache_dir if engine_cache_dir is not None else env.get(ENV_ENGINE_CACHE_DIR)
        self._clock = clock
        self._async_sleep = async_sleep
        self._cache = EngineCache(Path(root)) if root else None
        self._gpu_identity = gpu_identity
        self._workdir = workdir
        self._own_workdir: Path | None = None
        self._config: ExperimentConfig | None = None
        self._llm: Any = None
        self._trtllm: Any = None
        self._end_id: int | None = None
        self._runs = 0
        self.cache_key: str | None = None
        self.llm_kwargs: dict[str, Any] = {}
        self.adapters = AdapterSet()
        self._lora_requests: dict[str, Any] = {}
        self.steady_state_target: int | None = None
        self.last_steady_state: SteadyStateWindow | None = None

    # ----------------------------------------------------------------- protocol

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Build (or find in the cache) the engine, then load it for measurement.

        Raises:
            ConfigError: no tensorrt section; unsupported architecture
                (``UnsupportedModelError``); arguments TensorRT-LLM rejects.
            ExperimentError: TensorRT-LLM not installed; CUDA OOM
                (``EngineOutOfMemoryError``); any other build or load failure.
        """
        section = tensorrt_section(config)
        try:
            import tensorrt_llm
        except ImportError as exc:
            raise ExperimentError(
                "TensorRT-LLM is not installed in this environment",
                hint="run tensorrt experiments in the trtllm image (or pip install "
                "'llenergymeasure[trtllm]' for the local runner)",
            ) from exc
        self._trtllm = tensorrt_llm
        self._config = config
        self.steady_state_target = section.max_batch_size
        workdir = self._workdir
        if workdir is None:
            workdir = self._own_workdir = Path(tempfile.mkdtemp(prefix="llem-trtllm-"))
        source = prepare_model_source(config, workdir)
        if config.lora is not None:
            from tensorrt_llm.executor.request import LoRARequest

            self.adapters = prepare_adapters(config, workdir)
            self._lora_requests = {
                a.name: LoRARequest(a.name, a.int_id, a.path or "") for a in self.adapters.adapters
            }
        if config.tokenizer is None and config.load_format == "dummy":
            self._end_id = eos_token_id(source.architecture)
        version = str(getattr(tensorrt_llm, "__version__", "unknown"))
        build_s: float | None = None
        cache_hit: bool | None = None
        extra: dict[str, Any] = {
            "trtllm_version": version,
            "mirrored_trtllm_version": MIRRORED_TRTLLM_VERSION,
            "trtllm_backend": section.trtllm_backend,
            "steady_state_target": section.max_batch_size,
            "timestamps": "harness perf_counter at receipt of each streamed response",
        }
        if section.trtllm_backend == "pytorch":
            kwargs = build_llm_kwargs(config, source)
            start = self._clock()
            self._llm = self._construct(tensorrt_llm.LLM, kwargs, phase="load")
            load_s = self._clock() - start
        else:
            engine_dir, build_s, cache_hit = self._engine_dir_for(config, source, version, extra)
            kwargs = build_llm_kwargs(config, source, engine_dir=str(engine_dir))
            from tensorrt_llm._tensorrt_engine import LLM as TrtLLM

            start = self._clock()
            self._llm = self._construct(TrtLLM, kwargs, phase="load")
            load_s = self._clock() - start
        self.llm_kwargs = jsonable(kwargs)
        extra["llm_args"] = self.llm_kwargs
        hf_config = _hf_config_of(source, kwargs["model"])
        extra["hf_config"] = jsonable(hf_config)
        vocab = (hf_config or {}).get("vocab_size")
        extra["vocab_size"] = vocab if isinstance(vocab, int) else None
        world = section.tensor_parallel_size * section.pipeline_parallel_size
        return LoadInfo(
            backend_version=version,
            backend_library="tensorrt_llm",
            parameter_count=source.parameter_count,
            dtype=config.precision,
            load_duration_s=load_s,
            # Ranks go to the first tp x pp visible devices; config.gpus holds the CUDA-visible
            # indices the harness passes, as for the PyTorch backend.
            devices=list(config.gpus[:world]),
            engine_build_s=build_s,
            engine_cache_hit=cache_hit,
            extra=extra,
        )

    def rebind(self, config: ExperimentConfig) -> None:
        """Take another experiment's run-time settings on the loaded engine (engine reuse):
        sampling parameters, lengths and traffic are read from the config at each run."""
        self._config = config

    @property
    def warmup_unit(self) -> int:
        """One full in-flight batch: ``min(n_prompts, tensorrt.max_batch_size)`` requests."""
        if self._config is None:
            return 1
        return max(1, self._config.concurrency)

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        """Submit requests (streaming) and record tokens as they arrive.

        Offline (no plan): every request is enqueued at once; with a plan, each at its
        arrival time (closed loop: when its user's previous request finished).

        Raises:
            ExperimentError: the engine failed mid-run (OOM → ``EngineOutOfMemoryError``).
        """
        if self._llm is None or self._config is None:
            raise ExperimentError("TensorRTBackend.run() called before load()")
        if not requests:
            return []
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ExperimentError("duplicate request_id in one run")
        config = self._config
        try:
            records = asyncio.run(self._run_async(requests, plan))
        except ExperimentError:
            raise
        except Exception as exc:
            raise translate_engine_error(exc, engine=ENGINE, phase="run", config=config) from exc
        return finish_run(self, records, requests, engine=ENGINE, ignore_eos=config.ignore_eos)

    def peak_memory_bytes(self) -> dict[int, int] | None:
        """Not observable here: the executor runs in worker processes (use NVML's reading)."""
        return None

    def close(self) -> None:
        """Shut the executor down. Safe to call twice."""
        llm, self._llm = self._llm, None
        if llm is not None:
            try:
                llm.shutdown()
            except Exception:  # closing must not mask the experiment's own error
                logger.warning("TensorRT-LLM shutdown failed", exc_info=True)
        self.adapters.close()
        remove_own_workdir(self)

    # ----------------------------------------------------------------- engine

    def _objects(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Turn the plain-dict config arguments into TensorRT-LLM objects."""
        from tensorrt_llm.llmapi import BuildConfig, KvCacheConfig, QuantAlgo, QuantConfig

        out = dict(kwargs)
        if isinstance(out.get("build_config"), dict):
            out["build_config"] = BuildConfig(**out["build_config"])
        if isinstance(out.get("quant_config"), dict):
            out["quant_config"] = QuantConfig(
                **{k: getattr(QuantAlgo, v) for k, v in out["quant_config"].items()}
            )
        if isinstance(out.get("kv_cache_config"), dict):
            out["kv_cache_config"] = KvCacheConfig(**out["kv_cache_config"])
        if isinstance(out.get("lora_config"), dict):
            from tensorrt_llm.lora_manager import LoraConfig

            out["lora_config"] = LoraConfig(**out["lora_config"])
        return out

    def _construct(self, cls: Any, kwargs: dict[str, Any], *, phase: str) -> Any:
        assert self._config is not None
        try:
            return cls(**self._objects(kwargs))
        except Exception as exc:
            raise translate_engine_error(
                exc, engine=ENGINE, phase=phase, config=self._config
            ) from exc

    def _build_into(self, config: ExperimentConfig, source: ModelSource, target: Path) -> float:
        """Build the engine and ``save`` it into ``target``; returns the build seconds."""
        from tensorrt_llm._tensorrt_engine import LLM as TrtLLM

        kwargs = build_llm_kwargs(config, source)
        start = self._clock()
        llm = self._construct(TrtLLM, kwargs, phase="build")
        try:
            llm.save(str(target))
        except Exception as exc:
            raise translate_engine_error(exc, engine=ENGINE, phase="build", config=config) from exc
        finally:
            llm.shutdown()
        return self._clock() - start

    def _engine_dir_for(
        self, config: ExperimentConfig, source: ModelSource, version: str, extra: dict[str, Any]
    ) -> tuple[Path, float, bool | None]:
        """A directory holding the built engine: from the cache, or built now."""
        section = tensorrt_section(config)
        gpu = self._gpu_identity or _gpu_identity()
        fingerprint = model_fingerprint(source)
        key = engine_cache_key(
            config, trtllm_version=version, gpu_identity=gpu, fingerprint=fingerprint
        )
        self.cache_key = key
        extra["engine_cache_key"] = key
        if config.revision is None and source.dummy_dir is None and source.architecture is None:
            logger.warning(
                "model %s has no pinned revision: a cached engine will not notice hub updates",
                config.model,
            )
        if self._cache is None or not section.engine_cache:
            workdir = self._own_workdir or self._workdir or Path(tempfile.gettempdir())
            target = workdir / f"engine-{key}"
            target.mkdir(parents=True, exist_ok=True)
            build_s = self._build_into(config, source, target)
            extra["engine_cache"] = "disabled" if not section.engine_cache else "no cache dir"
            return target, build_s, None
        cache = self._cache
        extra["engine_cache_dir"] = str(cache.root)
        hit = cache.lookup(key)
        if hit is not None:
            extra["engine_cache"] = "hit"
            extra["cached_engine_build_s"] = hit.meta.get("build_s")
            return hit.path, 0.0, True
        with cache.lock(key):
            hit = cache.lookup(key)  # someone may have built it while we waited
            if hit is not None:
                extra["engine_cache"] = "hit (built by another process while waiting)"
                extra["cached_engine_build_s"] = hit.meta.get("build_s")
                return hit.path, 0.0, True
            staging = cache.staging_dir(key)
            try:
                build_s = self._build_into(config, source, staging)
                meta = {
                    "key": key,
                    "key_payload": engine_cache_key_payload(
                        config, trtllm_version=version, gpu_identity=gpu, fingerprint=fingerprint
                    ),
                    "build_s": build_s,
                    "built_at_unix_s": time.time(),
                    "config_hash": config.config_hash,
                }
                entry = cache.publish(key, staging, meta)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        extra["engine_cache"] = "miss (built and stored)"
        return entry.path, build_s, False

    # ----------------------------------------------------------------- streaming

    async def _run_async(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        assert self._config is not None
        tensorrt_llm = self._trtllm
        config = self._config
        timelines: list[RequestTimeline] = []
        tasks = []
        # One KV-reuse salt per run: warmup repeats the measured prompts and must not leave
        # their KV blocks for the measured run to reuse (see the vLLM backend).
        self._runs += 1
        salt = f"llem-run-{self._runs}"

        async def consume(result: Any, timeline: RequestTimeline) -> None:
            async for output in result:
                now = self._clock()
                completion = output.outputs[0]
                timeline.add_tokens(len(completion.token_ids_diff), now)
                if output.finished:
                    timeline.finish(now, completion.finish_reason)
            prompt_ids = getattr(result, "prompt_token_ids", None)
            if prompt_ids is not None:
                timeline.input_tokens = len(prompt_ids)

        plan = plan or ArrivalPlan.offline()
        users = asyncio.Semaphore(plan.concurrency or 1) if plan.pattern == "closed_loop" else None
        t0 = self._clock()

        async def consume_and_release(result: Any, timeline: RequestTimeline) -> None:
            try:
                await consume(result, timeline)
            finally:
                if users is not None:
                    users.release()  # this user sends its next request now

        def enqueue(request: GenerationRequest, arrival: float | None) -> None:
            params = tensorrt_llm.SamplingParams(
                **build_sampling_kwargs(
                    config, request.max_new_tokens, request.request_id, end_id=self._end_id
                )
            )
            timeline = RequestTimeline(
                request_id=request.request_id,
                input_tokens=len(request.prompt_token_ids),
                submit_s=self._clock(),
                arrival_s=arrival,
            )
            timelines.append(timeline)
            lora: dict[str, Any] = {}
            if request.adapter is not None:
                lora["lora_request"] = self._lora_requests[request.adapter]
            result = self._llm.generate_async(
                {"prompt_token_ids": list(request.prompt_token_ids)},
                sampling_params=params,
                streaming=True,
                cache_salt=salt,
                **lora,
            )
            tasks.append(asyncio.ensure_future(consume_and_release(result, timeline)))

        try:
            # Each request is enqueued to the executor at its arrival time (open loop), or
            # when a closed-loop user's previous request finished; offline, all at once.
            for i, request in enumerate(requests):
                arrival: float | None = None
                if users is not None:
                    await users.acquire()
                    arrival = self._clock()
                elif plan.offsets_s is not None:
                    arrival = t0 + plan.offsets_s[i]
                    while (delay := arrival - self._clock()) > 0:
                        await self._async_sleep(delay)
                enqueue(request, arrival)
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        unfinished = [t.request_id for t in timelines if t.end_s is None]
        if unfinished:
            raise ExperimentError(
                f"TensorRT-LLM stopped streaming {len(unfinished)} requests before they "
                f"finished (first: {unfinished[:5]})"
            )
        return [t.to_record() for t in timelines]


__all__ = [
    "CACHE_SCHEMA",
    "MARKER_FILE",
    "MIRRORED_TRTLLM_VERSION",
    "TRTLLM_LORA_MODULES",
    "CachedEngine",
    "EngineCache",
    "TensorRTBackend",
    "build_config_dict",
    "build_llm_kwargs",
    "build_sampling_kwargs",
    "engine_cache_key",
    "engine_cache_key_payload",
    "kv_cache_config_dict",
    "lora_config_dict",
    "model_fingerprint",
    "quant_config_dict",
]
