"""vLLM backend: the offline engine (``vllm.LLM``) behind the harness's backend protocol.

Written against **vLLM 0.33.0** (V1 engine; ``vllm/entrypoints/llm.py``,
``vllm/engine/arg_utils.py``, ``vllm/v1/engine/llm_engine.py``, ``vllm/sampling_params.py``,
``vllm/outputs.py``) and run for real on **vLLM 0.26.0** (the newest release for torch 2.11,
on the lent H200; docs/gpu-results.md). ``vllm`` is imported inside :meth:`VLLMBackend.load`
only. What differs between the two at this boundary, and how the backend copes:

* prompt rendering: both have the private ``LLM._preprocess_cmpl_one`` (0.26 in
  ``entrypoints/offline_utils.py``, 0.33 in ``entrypoints/llm.py``), which turns a
  ``TokensPrompt`` into the ``EngineInput`` that ``add_request`` wants; 0.33 deprecates raw
  prompts there. Releases without it, or a renderer that raises ``TypeError``/``AttributeError``
  on its (private, changing) signature, fall back to the raw ``TokensPrompt``, which both
  releases' ``add_request`` still accept. ``LoadInfo.extra["prompt_path"]`` records which one
  ran ("rendered" or "raw");
* ``add_request``: 0.33 added ``session_id`` and ``kv_hints``; the backend passes only the
  three positional arguments both share;
* ``EngineArgs``: 0.26 lacks some 0.33 fields (none that the ``vllm:`` section sets); a
  passthrough ``engine_args`` key the installed release does not have is refused by vLLM
  (``TypeError``, translated to a ``ConfigError``).

Why a streaming loop instead of ``LLM.generate``: ``generate`` forces
``RequestOutputKind.FINAL_ONLY`` and the offline ``LLM`` turns per-request stats off
(``disable_log_stats=True``, so ``RequestOutput.metrics`` is ``None``), and even when on, the
stats carry only first/last token times on the engine core's clock. So the backend drives the
same loop ``LLM._run_engine`` does, on the engine ``LLM`` built::

    llm.llm_engine.add_request(id, llm._preprocess_cmpl_one(TokensPrompt(...)),
                               SamplingParams(output_kind=DELTA, ...))  x N  (submit_s = clock())
    while llm.llm_engine.has_unfinished_requests():
        for out in llm.llm_engine.step():              # new tokens of every request that
            now = clock()                              # advanced in this engine step
            timeline[out.request_id].add_tokens(len(out.outputs[0].token_ids), now)

Each token is stamped when the harness process receives it (after the engine core's
process-to-front-end hop, tens of microseconds), on the harness's own ``perf_counter`` clock,
so the records line up with the energy window without clock translation.

Output length is fixed like every backend: ``max_tokens = min_tokens = max_new_tokens`` and
``ignore_eos=True`` when the experiment says ``ignore_eos`` (the default). Token counts come
from the engine's outputs (``prompt_token_ids`` and the streamed ``token_ids``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llenergymeasure_contract.errors import ExperimentError, LLEMError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_harness.backends.base import (
    Generated,
    GenerationRequest,
    LoadInfo,
    RequestRecord,
    Score,
    ScoreRequest,
    TextRequest,
    release_device_memory,
)
from llenergymeasure_harness.backends.engine_common import (
    RequestTimeline,
    StderrTail,
    finish_run,
    has_root_cause,
    is_generic_engine_failure,
    jsonable,
    prepare_model_source,
    remove_own_workdir,
    translate_engine_error,
)
from llenergymeasure_harness.backends.steady_state import SteadyStateWindow
from llenergymeasure_harness.backends.vllm_args import (
    RESOLVED_KNOBS,
    build_engine_args,
    build_lora_engine_args,
    build_sampling_kwargs,
    dtype_name,
    model_facts,
    resolved_engine_config,
    vllm_section,
)
from llenergymeasure_harness.lora import (
    AdapterSet,
    FixedProbe,
    GaugeProbe,
    LoraProbe,
    lora_gauge_from_metrics,
    prepare_adapters,
    vllm_unreported,
)
from llenergymeasure_harness.traffic import ArrivalPlan, ArrivalQueue

logger = logging.getLogger(__name__)

ENGINE = "vLLM"
#: The vLLM release this module was written and fake-tested against.
MIRRORED_VLLM_VERSION = "0.33.0"

#: Why the offline engine's adapter counts are None by default. vLLM fills its LoRA gauge only
#: with stat logging on (``LLMEngine.get_metrics`` asserts it), which then costs every engine
#: step scheduler stats, request events and Prometheus updates inside the measured window.
STATS_OFF = (
    "vLLM reports adapters in flight only with stat logging on; the offline LLM turns it off "
    "(disable_log_stats=True) and llem keeps that, so the measured engine does no per-step "
    "stats work. vllm.engine_args: {disable_log_stats: false} records these counts (with that "
    "work in the window); server mode always has them"
)


class _EvaluationMethods:
    """The :class:`~.base.Evaluable` methods of :class:`VLLMBackend`: scores from
    ``prompt_logprobs`` (prefill only, one generated token), text from ``generate`` with
    vLLM's own stop strings; both through ``LLM.generate``, which batches continuously."""

    _llm: Any
    _vllm: Any

    def loglikelihood(
        self, requests: Sequence[ScoreRequest], *, batch_size: int, max_length: int
    ) -> list[Score]:
        """As lm-eval's ``vllm`` model: context + continuation cut to the last
        ``max_length`` tokens, the continuation's prompt log-probabilities summed, greedy
        when each of its tokens ranks first."""
        vllm = self._vllm
        prompts = []
        for req in requests:
            whole = (req.context_ids + req.continuation_ids)[-max_length:]
            prompts.append(vllm.TokensPrompt(prompt_token_ids=whole))
        params = vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        scores = []
        for req, prompt, out in zip(requests, prompts, outputs, strict=True):
            n = len(req.continuation_ids)
            ids = prompt["prompt_token_ids"]
            total, greedy = 0.0, True
            for tok, entry in zip(ids[-n:], out.prompt_logprobs[-n:], strict=True):
                own = entry[tok]
                total += float(own.logprob)
                best = max(entry.items(), key=lambda kv: kv[1].logprob)[0]
                greedy = greedy and best == tok
            scores.append(Score(logprob=total, is_greedy=greedy, input_tokens=len(ids)))
        return scores

    def generate_texts(
        self, requests: Sequence[TextRequest], *, batch_size: int, tokenizer: Any
    ) -> list[Generated]:
        """What each request generated; vLLM stops at EOS or a stop string."""
        vllm = self._vllm
        prompts = [vllm.TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [
            vllm.SamplingParams(
                temperature=r.temperature, max_tokens=r.max_new_tokens, stop=list(r.stop) or None
            )
            for r in requests
        ]
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        return [
            Generated(str(out.outputs[0].text), len(out.outputs[0].token_ids)) for out in outputs
        ]


class VLLMBackend(_EvaluationMethods):
    """vLLM's offline engine as a :class:`~llenergymeasure_harness.backends.base.Backend`.

    Args:
        clock: Timestamp source; ``time.perf_counter`` (the harness clock) unless a test
            passes a fake clock.
        sleep: Waits for the next arrival while the engine is idle (a fake clock's advance
            in tests).
        workdir: Where a dummy-weights config directory is written; a temporary directory
            (removed by :meth:`close`) when None.

    Attributes:
        steady_state_target: ``K`` for :func:`steady_state_window` (``vllm.max_num_seqs``).
        last_steady_state: The steady-state window of the most recent :meth:`run`.
        engine_args: The resolved ``vllm.LLM`` keyword arguments (after :meth:`load`).
    """

    name = "vllm"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        workdir: Path | None = None,
        render_prompts: bool = True,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._render_prompts = render_prompts
        self.prompt_path: str | None = None
        self._render_next: Callable[[Any], Any] = _raw
        self._stderr: StderrTail | None = None
        self._workdir = workdir
        self._own_workdir: Path | None = None
        self._config: ExperimentConfig | None = None
        self._llm: Any = None
        self._vllm: Any = None
        self._runs = 0
        self.engine_args: dict[str, Any] = {}
        self.steady_state_target: int | None = None
        self.last_steady_state: SteadyStateWindow | None = None
        self.adapters = AdapterSet()
        self._lora_requests: dict[str, Any] = {}
        self.lora_probe: LoraProbe | None = None

    # ----------------------------------------------------------------- protocol

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Build the engine (weights, KV cache, CUDA graphs); its time is ``load_duration_s``.

        Raises:
            ConfigError: no vllm section; an unsupported architecture
                (``UnsupportedModelError``); engine arguments vLLM rejects.
            ExperimentError: vLLM not installed; CUDA OOM (``EngineOutOfMemoryError``);
                engine start-up failure.
        """
        section = vllm_section(config)
        try:
            import vllm
        except ImportError as exc:
            raise ExperimentError(
                "vLLM is not installed in this environment",
                hint="run vLLM experiments in the vllm image (or pip install "
                "'llenergymeasure[vllm]' for the local runner)",
            ) from exc
        self._vllm = vllm
        self._config = config
        workdir = self._workdir
        if workdir is None:
            workdir = self._own_workdir = Path(tempfile.mkdtemp(prefix="llem-vllm-"))
        source = prepare_model_source(config, workdir)
        self.engine_args = build_engine_args(config, source)
        if config.lora is not None:
            from vllm.lora.request import LoRARequest

            self.adapters = prepare_adapters(config, workdir)
            self._lora_requests = {
                a.name: LoRARequest(a.name, a.int_id, a.path) for a in self.adapters.adapters
            }
        self.steady_state_target = section.max_num_seqs
        logger.info("vLLM %s: building engine for %s", vllm.__version__, source.model)
        # The engine core and its workers are child processes: their stderr runs through a
        # tee so that a start-up failure's root cause can be read (see engine_common).
        self._stderr = StderrTail().start()
        start = self._clock()
        try:
            self._llm = vllm.LLM(**self.engine_args)
        except Exception as exc:
            log = (
                self._stderr.wait_for(has_root_cause, timeout_s=10.0)
                if is_generic_engine_failure(exc)
                else self._stderr.text()
            )
            self._stderr.stop()
            raise translate_engine_error(
                exc, engine=ENGINE, phase="load", config=config, log=log
            ) from exc
        finally:
            if self._stderr is not None:
                self._stderr.stop()  # this process's own stderr back; children keep the tee
        load_s = self._clock() - start
        if config.lora is not None:
            self.lora_probe = self._lora_probe()
        model_config = getattr(self._llm, "model_config", None)
        dtype = dtype_name(getattr(model_config, "dtype", None)) or self.engine_args["dtype"]
        world = section.tensor_parallel_size * section.pipeline_parallel_size
        hf_config, vocab_size = model_facts(model_config, source)
        extra: dict[str, Any] = {
            "hf_config": hf_config,
            "vocab_size": vocab_size,
            "engine_args": jsonable(self.engine_args),
            "vllm_version": vllm.__version__,
            "mirrored_vllm_version": MIRRORED_VLLM_VERSION,
            "steady_state_target": section.max_num_seqs,
            "prompt_path": "rendered"
            if self._render_prompts and callable(getattr(self._llm, "_preprocess_cmpl_one", None))
            else "raw",
            "max_model_len": getattr(model_config, "max_model_len", None),
            "timestamps": "harness perf_counter at receipt of each engine step's outputs",
            "engine_resolved": resolved_engine_config(
                getattr(getattr(self._llm, "llm_engine", None), "vllm_config", None)
            ),
        }
        return LoadInfo(
            backend_version=str(vllm.__version__),
            backend_library="vllm",
            parameter_count=source.parameter_count,
            dtype=dtype,
            load_duration_s=load_s,
            # vLLM places its ranks on the first tp x pp visible devices; the harness passes the
            # CUDA-visible indices in config.gpus, as for the PyTorch backend.
            devices=list(config.gpus[:world]),
            extra=extra,
        )

    def rebind(self, config: ExperimentConfig) -> None:
        """Take another experiment's run-time settings on the loaded engine (engine reuse):
        sampling parameters, lengths and traffic are read from the config at each run."""
        self._config = config

    @property
    def warmup_unit(self) -> int:
        """One full continuous batch: ``min(n_prompts, vllm.max_num_seqs)`` requests."""
        if self._config is None:
            return 1
        return max(1, self._config.concurrency)

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        """Submit requests as they arrive and stream tokens until all finish (see module doc).

        Offline (no plan): every request is added at once. With a plan, each is added at its
        arrival time inside the step loop.

        Raises:
            ExperimentError: the engine failed mid-run (OOM → ``EngineOutOfMemoryError``).
        """
        if self._llm is None or self._config is None:
            raise ExperimentError("VLLMBackend.run() called before load()")
        if not requests:
            return []
        vllm = self._vllm
        config = self._config
        from vllm.sampling_params import RequestOutputKind

        engine = self._llm.llm_engine
        self._prompt_renderer()
        self._runs += 1
        prefix = f"llem{self._runs}-"
        # One prefix-cache salt per run: warmup repeats the measured prompts, and without a
        # salt the measured run would find their KV blocks cached and skip prefill work the
        # other backends do. Reuse within a run (shared dataset prefixes) is unaffected.
        salt = f"llem-run-{self._runs}"
        timelines: dict[str, RequestTimeline] = {}
        order: list[str] = []
        plan = plan or ArrivalPlan.offline()
        queue: ArrivalQueue[GenerationRequest] = ArrivalQueue(list(requests), plan, self._clock())

        def submit_due() -> None:
            for request, arrival in queue.pop_due(self._clock()):
                key = f"{prefix}{request.request_id}"
                if key in timelines:
                    raise ExperimentError(f"duplicate request_id {request.request_id} in one run")
                params = vllm.SamplingParams(
                    **build_sampling_kwargs(config, request.max_new_tokens, request.request_id),
                    output_kind=RequestOutputKind.DELTA,
                )
                prompt = self._render_next(
                    vllm.TokensPrompt(
                        prompt_token_ids=list(request.prompt_token_ids), cache_salt=salt
                    )
                )
                timelines[key] = RequestTimeline(
                    request_id=request.request_id,
                    input_tokens=len(request.prompt_token_ids),
                    submit_s=self._clock(),
                    arrival_s=None if plan.is_offline else arrival,
                )
                order.append(key)
                # The return value is vLLM's internal id (ours plus a random suffix); outputs
                # carry the id we passed.
                if request.adapter is None:
                    engine.add_request(key, prompt, params)
                else:  # the adapter is loaded (or swapped in) by the engine when scheduled
                    engine.add_request(
                        key, prompt, params, lora_request=self._lora_requests[request.adapter]
                    )

        try:
            # Arrivals are added between engine steps, as vLLM's own server (AsyncLLM) does;
            # when the engine is idle the loop sleeps until the next arrival.
            submit_due()
            while queue.pending or engine.has_unfinished_requests():
                if not engine.has_unfinished_requests():
                    due = queue.next_due_s()
                    if due is None:
                        raise ExperimentError("closed loop: nothing running and nothing due")
                    self._sleep(max(0.0, due - self._clock()))
                    submit_due()
                    continue
                outputs = engine.step()
                now = self._clock()
                queue.completed(_record_step(outputs, timelines, now), now)
                submit_due()
        except ExperimentError:
            self._abort(engine, order)
            raise
        except Exception as exc:
            self._abort(engine, order)
            raise self._run_failed(exc, config) from exc
        unfinished = [timelines[k].request_id for k in order if timelines[k].end_s is None]
        if unfinished:
            raise ExperimentError(
                f"vLLM reported no unfinished requests but {len(unfinished)} never finished "
                f"(first: {unfinished[:5]})"
            )
        records = [timelines[k].to_record() for k in order]
        return finish_run(self, records, requests, engine=ENGINE, ignore_eos=config.ignore_eos)

    def _lora_probe(self) -> LoraProbe:
        """vLLM's ``vllm:lora_requests_info`` through ``LLM.get_metrics()``, which needs stat
        logging; the offline ``LLM`` turns it off and so does llem (see :data:`STATS_OFF`)."""
        if self.engine_args.get("disable_log_stats", True):
            return FixedProbe(vllm_unreported(STATS_OFF))
        llm = self._llm
        return GaugeProbe(
            lambda: lora_gauge_from_metrics(llm.get_metrics()),
            "LLM.get_metrics() of the offline engine",
        )

    def _run_failed(self, exc: Exception, config: ExperimentConfig) -> LLEMError:
        """The engine's mid-run failure as the harness's error, with the engine log's
        root cause when the exception itself is generic."""
        log = ""
        if self._stderr is not None:
            log = (
                self._stderr.wait_for(has_root_cause, timeout_s=10.0)
                if is_generic_engine_failure(exc)
                else self._stderr.text()
            )
        return translate_engine_error(exc, engine=ENGINE, phase="run", config=config, log=log)

    def peak_memory_bytes(self) -> dict[int, int] | None:
        """Not observable here: vLLM's workers run in other processes (use NVML's reading)."""
        return None

    def close(self) -> None:
        """Shut the engine core down and free the model. Safe to call twice."""
        llm, self._llm = self._llm, None
        if llm is not None:
            engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(engine_core, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # closing must not mask the experiment's own error
                    logger.warning("vLLM engine core shutdown failed", exc_info=True)
            del llm
            release_device_memory()
        self.adapters.close()
        remove_own_workdir(self)

    # ----------------------------------------------------------------- helpers

    def _prompt_renderer(self) -> None:
        """Set how a TokensPrompt becomes what ``llm_engine.add_request`` takes (``_render_next``).

        vLLM 0.33 deprecates raw prompts in ``add_request`` ("will be removed in the future")
        and renders them first, as ``LLM.generate`` does with ``LLM._preprocess_cmpl_one``
        (token ids pass through unchanged as ``{"type": "token", ...}``; 0.26 has the same
        method). Releases without it take the raw prompt. The method is private: if it exists
        but fails on its signature for the first prompt of a run, the run falls back to raw
        prompts (logged once) rather than failing on a renamed internal.
        """
        render = getattr(self._llm, "_preprocess_cmpl_one", None) if self._render_prompts else None
        if not callable(render):
            self.prompt_path = "raw"
            self._render_next = _raw
            return

        def first(prompt: Any) -> Any:
            try:
                rendered = render(prompt)
            except (TypeError, AttributeError) as exc:
                logger.warning(
                    "vLLM's LLM._preprocess_cmpl_one failed (%s); passing raw prompts", exc
                )
                self.prompt_path = "raw"
                self._render_next = _raw
                return prompt
            self.prompt_path = "rendered"
            self._render_next = render
            return rendered

        self._render_next = first

    @staticmethod
    def _abort(engine: Any, request_ids: list[str]) -> None:
        if not request_ids:
            return
        try:
            engine.abort_request(list(request_ids))
        except Exception:
            logger.debug("abort after a failed run failed too", exc_info=True)


def _record_step(outputs: Any, timelines: dict[str, RequestTimeline], now: float) -> int:
    """Stamp one engine step's streamed tokens at ``now`` on each request's timeline; the
    number of requests that finished in it."""
    finished = 0
    for output in outputs:
        timeline = timelines.get(output.request_id)
        if timeline is None:  # not ours (cannot happen with a private engine)
            continue
        if output.prompt_token_ids is not None:
            timeline.input_tokens = len(output.prompt_token_ids)
        cached = getattr(output, "num_cached_tokens", None)
        if isinstance(cached, int) and not isinstance(cached, bool):
            timeline.cached_input_tokens = cached
        completion = output.outputs[0]
        timeline.add_tokens(len(completion.token_ids), now)
        timeline.token_ids.extend(completion.token_ids)
        if output.finished:
            timeline.finish(now, completion.finish_reason)
            finished += 1
    return finished


def _raw(prompt: Any) -> Any:
    return prompt


__all__ = [
    "MIRRORED_VLLM_VERSION",
    "RESOLVED_KNOBS",
    "VLLMBackend",
    "build_engine_args",
    "build_lora_engine_args",
    "build_sampling_kwargs",
    "resolved_engine_config",
]
