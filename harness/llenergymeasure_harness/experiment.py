"""One experiment, start to finish: load, baseline, warmup, measure, write.

::

    load ──► baseline (idle, model loaded) ──► warmup ──► measure ──► prefill pass
         ──► [evaluation pass, quality: only] ──► write
             └────────────── sampler thread running, rows labelled by phase ──────────┘

* Before load, NVLink multicast is turned off for every process the engine starts
  (:mod:`~llenergymeasure_harness.child_env`) and the compile caches are pointed at the host
  cache directory, when one is given (:mod:`~llenergymeasure_harness.compile_cache`).
* Warmup runs requests of the measured shapes whose prompts share no prefix with the measured
  ones (:func:`~llenergymeasure_harness.prompts.distinct_requests`), so a prefix cache cannot
  serve measured prefills from warmup's work.
* After the measured window, a prefill-only pass (the same shapes, ``max_new_tokens=1``, its
  own prompts) is measured in its own counter window; it gives energy per prefill token, and
  decode by difference (:mod:`~llenergymeasure_harness.phase_energy`).
* With a ``quality:`` section, lm-eval then scores the same loaded engine in its own
  ``evaluation`` window (:mod:`~llenergymeasure_harness.evaluation`).

* The baseline is taken after load and before warmup, so its GPU state is defined
  ("cuda_context_model_loaded", nothing running) and is not the cooling tail of warmup; the
  measured window then starts right after warmup, warm.
* The measured window is bounded by NVML counter reads on every GPU of the experiment
  (:class:`~llenergymeasure_harness.energy.NvmlEnergyMeter`), the device synchronised at both
  edges. Zeus / CodeCarbon windows, when chosen, sit just inside it.
* Each phase that fails raises :class:`PhaseError`, which the entry point turns into
  ``error.json``.
* What was measured is gathered into a :class:`~llenergymeasure_harness.assemble.MeasuredRun`,
  from which :func:`~llenergymeasure_harness.assemble.assemble` builds the result.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llenergymeasure_contract.env import REQUESTS_FILE, RESULT_FILE, TIMESERIES_FILE, HarnessEnv
from llenergymeasure_contract.errors import ConfigError, MeasurementError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.results import ExperimentResult
from llenergymeasure_harness import compile_cache, metrics
from llenergymeasure_harness.assemble import MeasuredRun, assemble
from llenergymeasure_harness.backends import get_backend
from llenergymeasure_harness.backends.base import GenerationRequest, RequestRecord
from llenergymeasure_harness.backends.steady_state import SteadyStateWindow
from llenergymeasure_harness.child_env import apply_child_env
from llenergymeasure_harness.energy.baseline import (
    STATE_MODEL_LOADED,
    BaselineCache,
    measure_idle_power,
)
from llenergymeasure_harness.energy.meter import NvmlEnergyMeter, WindowResult
from llenergymeasure_harness.energy.nvml import Nvml, map_gpus, open_nvml
from llenergymeasure_harness.energy.optional import open_extra
from llenergymeasure_harness.energy.select import make_sampler, resolve_sampler_kind
from llenergymeasure_harness.environment import snapshot
from llenergymeasure_harness.evaluation import check_ready, run_evaluation
from llenergymeasure_harness.lengths import workload_outcome
from llenergymeasure_harness.lora import (
    LoraCounts,
    LoraProbe,
    lora_outcome,
    request_adapter_columns,
)
from llenergymeasure_harness.outputs import chown_outputs, write_parquet_atomic
from llenergymeasure_harness.phase_energy import run_prefill_pass
from llenergymeasure_harness.prompts import (
    build_requests,
    distinct_requests,
    input_truncation,
    vocab_size_for,
)
from llenergymeasure_harness.steady_result import (
    measured_window,
    steady_state_flag,
    suggest_arrival_n_prompts,
    suggest_n_prompts,
)
from llenergymeasure_harness.traffic import ArrivalPlan
from llenergymeasure_harness.warmup import run_warmup

__all__ = [
    "Deps",
    "HarnessTerminated",
    "PhaseError",
    "measured_window",
    "run_experiment",
    "steady_state_flag",
    "suggest_arrival_n_prompts",
    "suggest_n_prompts",
]

logger = logging.getLogger(__name__)


class PhaseError(Exception):
    """A failure in one phase of the experiment (load|warmup|baseline|measure|evaluate|
    write)."""

    def __init__(self, phase: str, cause: BaseException) -> None:
        super().__init__(f"{phase}: {type(cause).__name__}: {cause}")
        self.phase = phase
        self.cause = cause
        self.traceback = "".join(
            traceback.format_exception(type(cause), cause, cause.__traceback__)
        )


@dataclass
class Deps:
    """Side effects, injectable for tests."""

    open_nvml: Callable[[], Nvml | None] = open_nvml
    make_backend: Callable[[str], Any] = get_backend
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    epoch: Callable[[], float] = time.time
    cuda_visible: str | None = field(default_factory=lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    #: Engine groups: annotates the assembled result before it is written (group.py).
    finalize: Callable[[ExperimentResult], ExperimentResult] | None = None


def _resolve_nvml_index(nvml: Nvml, ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    for i in range(nvml.device_count()):
        if nvml.uuid(i) == ref or (nvml.uuid(i) or "").startswith(ref):
            return i
    raise MeasurementError(f"no NVML device with UUID {ref}")


def _harness_version() -> str:
    from llenergymeasure_harness import __version__

    return __version__


def _cuda_runtime() -> str | None:
    try:
        import torch

        version = torch.version.cuda
        return None if version is None else str(version)
    except ImportError:
        return None


@dataclass
class _Live:
    """The run's phase and open handles: the phase names an error, the handles are closed."""

    phase: str = "load"
    nvml: Nvml | None = None
    backend: Any = None
    sampler: Any = None
    #: Phase durations (``Timings``), on ``Deps.clock``.
    timings: dict[str, float | None] = field(default_factory=dict)
    #: ``Timings.phase_windows_s``, on ``Deps.clock``.
    windows: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class _Loaded:
    """What the load phase set up for the phases after it."""

    compiled: compile_cache.CompileCache
    labels: list[int]
    nvml_idx: list[int]
    requests: list[GenerationRequest]
    info: Any
    kind: str
    meter: NvmlEnergyMeter | None
    env_snap: dict[str, Any]
    sync: Callable[[], None] | None
    #: The model's vocabulary size, for warmup and prefill-pass prompts.
    vocab: int | None


@dataclass
class _Measured:
    """The measured window: records, counter reads and what the engine reported on it."""

    records: list[Any]
    window: WindowResult | None
    extra_result: dict[str, Any] | None
    engine_window: SteadyStateWindow | None
    static_batch: Any
    t0: float
    t1: float
    lora_counts: LoraCounts | None = None  # what the engine reported on its adapters


def run_experiment(env: HarnessEnv, deps: Deps | None = None) -> ExperimentResult:
    """Run the experiment in ``env`` and write its results directory.

    Raises:
        PhaseError: any failure, with the phase it happened in.
    """
    d = deps or Deps()
    cfg: ExperimentConfig = env.config
    started_epoch = d.epoch()
    t_begin = d.clock()
    live = _Live()
    timings, windows = live.timings, live.windows
    try:
        ld = _load(env, d, live)
        sampler, backend = live.sampler, live.backend
        live.phase = "baseline"
        baseline = _baseline(env, d, ld, live)
        live.phase = "warmup"
        warm = _warmup(cfg, d, ld, live)
        live.phase = "measure"
        m = _measure(cfg, d, ld, live)
        pass_records, pass_window, t_p0, t_p1 = _prefill_pass(cfg, d, ld, live)
        evaluation = None
        if cfg.quality is not None:
            live.phase = "evaluate"
            sampler.phase = "evaluation"
            evaluation = run_evaluation(cfg, backend, meter=ld.meter, sync=ld.sync, clock=d.clock)
            timings["evaluation_s"] = evaluation.duration_s
        sampler.phase = "done"
        sampler.stop()
        nvml = live.nvml
        pids = (
            {lab: nvml.compute_pids(i) for lab, i in zip(ld.labels, ld.nvml_idx, strict=True)}
            if nvml
            else {}
        )
        peak = backend.peak_memory_bytes()

        result = assemble(
            MeasuredRun(
                env=env,
                cfg=cfg,
                info=ld.info,
                kind=ld.kind,
                sampler=sampler,
                window=m.window,
                t_m0=m.t0,
                t_m1=m.t1,
                records=m.records,
                engine_window=m.engine_window,
                baseline=baseline,
                warm=warm,
                env_snap=ld.env_snap,
                labels=ld.labels,
                pids=pids,
                peak=peak,
                extra_result=m.extra_result,
                timings={**timings, "phase_windows_s": windows},
                pass_records=pass_records,
                pass_window=pass_window,
                pass_duration_s=t_p1 - t_p0,
                compiled=ld.compiled,
                started_epoch=started_epoch,
                ended_epoch=d.epoch(),
                total_s=d.clock() - t_begin,
            )
        )
        result = result.model_copy(update={"input_truncation": input_truncation(cfg, ld.requests)})
        if d.finalize is not None:
            result = d.finalize(result)
        if cfg.lora is not None:
            outcome = lora_outcome(
                cfg, ld.requests, m.records, result.energy.gpu_energy_j, m.lora_counts
            )
            result = result.model_copy(update={"lora": outcome})

        live.phase = "write"
        return _write(env, result, ld.requests, m, live.sampler, evaluation=evaluation)
    except PhaseError:
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        # KeyboardInterrupt (SIGINT) and HarnessTerminated (SIGTERM) keep their phase too.
        if isinstance(exc, ConfigError) and live.phase == "load":
            raise PhaseError("config", exc) from exc
        raise PhaseError(live.phase, exc) from exc
    finally:
        _close(live)


def _close(live: _Live) -> None:
    """Stop the sampler, close the backend and NVML; closing never hides the real error."""
    if live.sampler is not None:
        live.sampler.stop()
    if live.backend is not None:
        try:
            live.backend.close()
        except Exception:  # closing must not hide the real error
            logger.exception("backend close failed")
    if live.nvml is not None:
        live.nvml.shutdown()


def _load(env: HarnessEnv, d: Deps, live: _Live) -> _Loaded:
    """Load: child environment, compile caches, GPUs, requests, engine, meter, sampler; the
    sampler is started."""
    cfg, timings = env.config, live.timings
    apply_child_env()
    compiled = compile_cache.activate(env.compile_cache_dir, str(cfg.backend))
    # gpus: [] is a CPU-only experiment: no NVML, so energy is None (not measured), never 0.
    nvml = live.nvml = d.open_nvml() if cfg.gpus else None
    if nvml is not None:
        pairs = map_gpus(list(cfg.gpus), nvml.device_count(), d.cuda_visible)
        labels = [p[0] for p in pairs]
        nvml_idx = [_resolve_nvml_index(nvml, p[1]) for p in pairs]
    else:
        labels = list(range(len(cfg.gpus)))
        nvml_idx = []
    run_cfg = cfg if labels == list(cfg.gpus) else cfg.model_copy(update={"gpus": labels})
    requests: list[GenerationRequest] | None = None
    if cfg.dataset.source != "synthetic" or vocab_size_for(cfg) is not None:
        requests = build_requests(cfg)
    # Server mode: the engine's own server behind the streaming client, same timeline.
    backend = live.backend = d.make_backend("server" if cfg.server is not None else cfg.backend)
    if hasattr(backend, "output_dir"):
        backend.output_dir = env.results_path  # where a server keeps its log
    check_ready(cfg, backend)  # quality: fail now, not after measuring
    t0 = d.clock()
    info = backend.load(run_cfg)
    timings["load_s"] = d.clock() - t0
    if requests is None:
        requests = build_requests(cfg, vocab_size=info.extra.get("vocab_size"))
    kind = resolve_sampler_kind(cfg.energy.sampler, nvml)
    meter = (
        NvmlEnergyMeter(nvml, nvml_idx, labels, clock=d.clock)
        if nvml is not None and kind != "null"
        else None
    )
    sampler = live.sampler = make_sampler(
        kind if cfg.energy.timeseries else "null",
        nvml=nvml,
        gpus=nvml_idx,
        labels=labels,
        rate_hz=cfg.energy.sample_rate_hz,
        clock=d.clock,
    )
    env_snap = snapshot(
        nvml=nvml,
        gpus=list(zip(labels, nvml_idx, strict=True)) if nvml is not None else [],
        harness_version=_harness_version(),
        backend=cfg.backend,
        backend_version=info.backend_version,
        backend_library=info.backend_library,
        image=env.image,
        image_digest=env.image_digest,
        image_labels=env.image_labels,
        cuda_runtime_version=_cuda_runtime(),
    )
    sync = getattr(backend, "sync", None)
    sampler.start()
    return _Loaded(
        compiled=compiled,
        labels=labels,
        nvml_idx=nvml_idx,
        requests=requests,
        info=info,
        kind=kind,
        meter=meter,
        env_snap=env_snap,
        sync=sync,
        vocab=None,
    )


def _baseline(
    env: HarnessEnv,
    d: Deps,
    ld: _Loaded,
    live: _Live,
) -> dict[str, Any] | None:
    """Idle power with the model loaded, from the cache when a fresh one is there; None when
    disabled or not measurable."""
    cfg, meter, sampler = env.config, ld.meter, live.sampler
    timings, windows = live.timings, live.windows
    if not cfg.baseline.enabled or meter is None:
        return None
    t0 = d.clock()
    uuids = [meter.nvml.uuid(i) for i in ld.nvml_idx]
    cache = (
        BaselineCache(env.baseline_cache, cfg.baseline.cache_ttl_s, clock=d.epoch)
        if env.baseline_cache
        else None
    )
    key = BaselineCache.key(uuids, STATE_MODEL_LOADED, BaselineCache.workload_of(cfg))
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        baseline = {**cached, "source": "cache"}
    else:
        sampler.phase = "baseline"
        baseline = measure_idle_power(meter, cfg.baseline.duration_s, sleep=d.sleep, sync=ld.sync)
        windows["baseline"] = [t0, d.clock()]
        if cache is not None:
            cache.put(key, baseline)
    timings["baseline_s"] = d.clock() - t0
    return baseline


def _warmup(
    cfg: ExperimentConfig,
    d: Deps,
    ld: _Loaded,
    live: _Live,
) -> dict[str, Any]:
    """Warmup on requests of the measured shapes whose prompts share no prefix with them."""
    backend, sampler, timings, windows = live.backend, live.sampler, live.timings, live.windows
    sampler.phase = "warmup"
    ld.vocab = ld.info.extra.get("vocab_size") or vocab_size_for(cfg)
    unit = distinct_requests(
        ld.requests[: max(1, backend.warmup_unit)],
        "warmup",
        random_seed=cfg.random_seed,
        vocab_size=ld.vocab,
    )
    t_w0 = d.clock()
    warm = run_warmup(cfg.warmup, lambda: backend.run(unit), clock=d.clock)
    windows["warmup"] = [t_w0, d.clock()]
    timings["warmup_s"] = warm["duration_s"]
    return warm


def _measure(
    cfg: ExperimentConfig,
    d: Deps,
    ld: _Loaded,
    live: _Live,
) -> _Measured:
    """The measured window: every request, bounded by counter reads (and Zeus / CodeCarbon
    just inside)."""
    requests, meter, sync, kind = ld.requests, ld.meter, ld.sync, ld.kind
    backend, sampler, timings, windows = live.backend, live.sampler, live.timings, live.windows
    sampler.phase = "measure"
    extra_src = open_extra(kind, ld.labels) if kind in ("zeus", "codecarbon") else None
    extra_result: dict[str, Any] | None = None
    window: WindowResult | None = None
    # The engine's adapter counts are read just outside the window, on both sides.
    lora_probe: LoraProbe | None = getattr(backend, "lora_probe", None) if cfg.lora else None
    if lora_probe is not None:
        lora_probe.begin()
    if meter is not None:
        meter.begin_window("measure", sync)
    if extra_src is not None:
        extra_src.begin("measure")
    plan = (
        ArrivalPlan.from_config(cfg.traffic, len(requests)) if cfg.traffic.uses_arrivals else None
    )
    t_m0 = d.clock()
    # The first arrival is due as run() starts, the window closes when the last request
    # ends: the energy window follows the arrivals.
    records = backend.run(requests) if plan is None else backend.run(requests, plan)
    t_m1 = d.clock()
    # The window a continuous-batching engine computed itself, with its configured
    # concurrency; the result reports that one rather than a second computation.
    engine_window: SteadyStateWindow | None = getattr(backend, "last_steady_state", None)
    static_batch = getattr(backend, "last_static_batch", None)  # before the next run()
    if extra_src is not None:
        try:
            extra_result = extra_src.end("measure")
        except Exception as exc:  # a second opinion must not sink the run
            logger.warning("%s window failed: %s", kind, exc)
    if meter is not None:
        window = meter.end_window("measure", sync)
        t_m0, t_m1 = window.start_s, window.end_s
    lora_counts = lora_probe.end() if lora_probe is not None else None
    timings["measure_s"] = t_m1 - t_m0
    windows["measure"] = [t_m0, t_m1]
    if len(records) != len(requests):
        raise MeasurementError(
            f"backend returned {len(records)} records for {len(requests)} requests"
        )
    return _Measured(
        records, window, extra_result, engine_window, static_batch, t_m0, t_m1, lora_counts
    )


def _prefill_pass(
    cfg: ExperimentConfig,
    d: Deps,
    ld: _Loaded,
    live: _Live,
) -> tuple[list[RequestRecord], WindowResult | None, float, float]:
    """The prefill-only pass (same shapes, one output token, its own prompts) in its own
    counter window: records, window, start and end."""
    backend, sampler, timings, windows = live.backend, live.sampler, live.timings, live.windows
    sampler.phase = "prefill_pass"
    pass_requests = distinct_requests(
        ld.requests,
        "prefill_pass",
        random_seed=cfg.random_seed,
        vocab_size=ld.vocab,
        max_new_tokens=1,
    )
    pass_window: WindowResult | None = None
    if ld.meter is not None:
        ld.meter.begin_window("prefill_pass", ld.sync)
    t_p0 = d.clock()
    pass_records = run_prefill_pass(backend, pass_requests, d.clock)
    t_p1 = d.clock()
    if ld.meter is not None:
        pass_window = ld.meter.end_window("prefill_pass", ld.sync)
        t_p0, t_p1 = pass_window.start_s, pass_window.end_s
    timings["prefill_pass_s"] = t_p1 - t_p0
    windows["prefill_pass"] = [t_p0, t_p1]
    return pass_records, pass_window, t_p0, t_p1


def _write(
    env: HarnessEnv,
    result: ExperimentResult,
    requests: list[GenerationRequest],
    m: _Measured,
    sampler: Any,
    *,
    evaluation: Any,
) -> ExperimentResult:
    """Write the time series, the per-request table and ``result.json``; hand them to the
    host user."""
    cfg, out_dir, records = env.config, env.results_path, m.records
    artifacts: dict[str, str] = {}
    if sampler.rows():
        write_parquet_atomic(out_dir / TIMESERIES_FILE, sampler.columns())
        artifacts["timeseries"] = TIMESERIES_FILE
    columns = metrics.request_columns(records, cfg.traffic.latency_mode)
    asked_by_id = {r.request_id: r.max_new_tokens for r in requests}
    columns["max_new_tokens"] = [asked_by_id.get(i) for i in columns["request_id"]]
    columns.update(request_adapter_columns(requests, records))
    write_parquet_atomic(out_dir / REQUESTS_FILE, columns)
    artifacts["requests"] = REQUESTS_FILE
    if (out_dir / "server.log").is_file():
        artifacts["server_log"] = "server.log"
    asked = [r.max_new_tokens for r in requests]
    workload = workload_outcome(cfg, asked, records, m.static_batch)
    result = result.model_copy(
        update={"artifacts": artifacts, "workload": workload, "evaluation": evaluation}
    )
    result.write(out_dir / RESULT_FILE)
    chown_outputs(out_dir, env.host_uid, env.host_gid)
    return result


class HarnessTerminated(Exception):
    """SIGTERM arrived (the orchestrator timed the run out or the user stopped it)."""
