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
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.results import ExperimentResult
from llenergymeasure_contract.sizing import arrival_steady_state_n_prompts, steady_state_n_prompts
from llenergymeasure_contract.timestamps import utc_iso
from llenergymeasure_contract.windows import WindowProblem
from llenergymeasure_harness import compile_cache, metrics
from llenergymeasure_harness.backends import get_backend
from llenergymeasure_harness.backends.base import GenerationRequest, RequestRecord
from llenergymeasure_harness.backends.steady_state import (
    SteadyStateWindow,
    mlenergy_steady_state,
)
from llenergymeasure_harness.child_env import apply_child_env
from llenergymeasure_harness.energy.baseline import (
    STATE_MODEL_LOADED,
    BaselineCache,
    measure_idle_power,
)
from llenergymeasure_harness.energy.meter import NvmlEnergyMeter, WindowResult
from llenergymeasure_harness.energy.nvml import Nvml, map_gpus, open_nvml
from llenergymeasure_harness.energy.optional import open_extra
from llenergymeasure_harness.energy.sampler import integrate_power
from llenergymeasure_harness.energy.select import make_sampler, resolve_sampler_kind
from llenergymeasure_harness.environment import snapshot
from llenergymeasure_harness.evaluation import check_ready, run_evaluation
from llenergymeasure_harness.lengths import workload_outcome
from llenergymeasure_harness.lora import lora_outcome, request_adapter_columns
from llenergymeasure_harness.outputs import chown_outputs, write_parquet_atomic
from llenergymeasure_harness.phase_energy import (
    phase_energy,
    prefill_pass_split,
    run_prefill_pass,
    timeline_split,
)
from llenergymeasure_harness.prompts import (
    build_requests,
    distinct_requests,
    input_truncation,
    vocab_size_for,
)
from llenergymeasure_harness.quality import quality_flags
from llenergymeasure_harness.traffic import ArrivalPlan
from llenergymeasure_harness.warmup import run_warmup

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


def run_experiment(env: HarnessEnv, deps: Deps | None = None) -> ExperimentResult:
    """Run the experiment in ``env`` and write its results directory.

    Raises:
        PhaseError: any failure, with the phase it happened in.
    """
    d = deps or Deps()
    cfg: ExperimentConfig = env.config
    out_dir = env.results_path
    started_epoch = d.epoch()
    t_begin = d.clock()
    timings: dict[str, float | None] = {}
    windows: dict[str, list[float]] = {}  # Timings.phase_windows_s, on d.clock
    phase = "load"
    nvml: Nvml | None = None
    backend: Any = None
    sampler: Any = None
    try:
        # ------------------------------------------------------------------ load
        apply_child_env()
        compiled = compile_cache.activate(env.compile_cache_dir, str(cfg.backend))
        # gpus: [] is a CPU-only experiment: no NVML, so energy is None (not measured), never 0.
        nvml = d.open_nvml() if cfg.gpus else None
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
        backend = d.make_backend("server" if cfg.server is not None else cfg.backend)
        if hasattr(backend, "output_dir"):
            backend.output_dir = out_dir  # where a server keeps its log
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
        sampler = make_sampler(
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

        # ------------------------------------------------------------------ baseline
        phase = "baseline"
        baseline: dict[str, Any] | None = None
        if cfg.baseline.enabled and meter is not None:
            t0 = d.clock()
            uuids = [nvml.uuid(i) for i in nvml_idx] if nvml is not None else []
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
                baseline = measure_idle_power(
                    meter, cfg.baseline.duration_s, sleep=d.sleep, sync=sync
                )
                windows["baseline"] = [t0, d.clock()]
                if cache is not None:
                    cache.put(key, baseline)
            timings["baseline_s"] = d.clock() - t0

        # ------------------------------------------------------------------ warmup
        phase = "warmup"
        sampler.phase = "warmup"
        vocab = info.extra.get("vocab_size") or vocab_size_for(cfg)
        unit = distinct_requests(
            requests[: max(1, backend.warmup_unit)],
            "warmup",
            random_seed=cfg.random_seed,
            vocab_size=vocab,
        )
        t_w0 = d.clock()
        warm = run_warmup(cfg.warmup, lambda: backend.run(unit), clock=d.clock)
        windows["warmup"] = [t_w0, d.clock()]
        timings["warmup_s"] = warm["duration_s"]

        # ------------------------------------------------------------------ measure
        phase = "measure"
        sampler.phase = "measure"
        extra_src = open_extra(kind, labels) if kind in ("zeus", "codecarbon") else None
        extra_result: dict[str, Any] | None = None
        window: WindowResult | None = None
        if meter is not None:
            meter.begin_window("measure", sync)
        if extra_src is not None:
            extra_src.begin("measure")
        plan = (
            ArrivalPlan.from_config(cfg.traffic, len(requests))
            if cfg.traffic.uses_arrivals
            else None
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
        timings["measure_s"] = t_m1 - t_m0
        windows["measure"] = [t_m0, t_m1]
        if len(records) != len(requests):
            raise MeasurementError(
                f"backend returned {len(records)} records for {len(requests)} requests"
            )

        # ------------------------------------------------------------------ prefill pass
        sampler.phase = "prefill_pass"
        pass_requests = distinct_requests(
            requests,
            "prefill_pass",
            random_seed=cfg.random_seed,
            vocab_size=vocab,
            max_new_tokens=1,
        )
        pass_window: WindowResult | None = None
        if meter is not None:
            meter.begin_window("prefill_pass", sync)
        t_p0 = d.clock()
        pass_records = run_prefill_pass(backend, pass_requests, d.clock)
        t_p1 = d.clock()
        if meter is not None:
            pass_window = meter.end_window("prefill_pass", sync)
            t_p0, t_p1 = pass_window.start_s, pass_window.end_s
        timings["prefill_pass_s"] = t_p1 - t_p0
        windows["prefill_pass"] = [t_p0, t_p1]

        # ------------------------------------------------------------------ evaluation
        evaluation = None
        if cfg.quality is not None:
            phase = "evaluate"
            sampler.phase = "evaluation"
            evaluation = run_evaluation(cfg, backend, meter=meter, sync=sync, clock=d.clock)
            timings["evaluation_s"] = evaluation.duration_s
        sampler.phase = "done"
        sampler.stop()
        pids = (
            {lab: nvml.compute_pids(i) for lab, i in zip(labels, nvml_idx, strict=True)}
            if nvml
            else {}
        )
        peak = backend.peak_memory_bytes()

        result = _assemble(
            env=env,
            cfg=cfg,
            info=info,
            kind=kind,
            sampler=sampler,
            window=window,
            duration_s=t_m1 - t_m0,
            t_m0=t_m0,
            t_m1=t_m1,
            records=records,
            engine_window=engine_window,
            baseline=baseline,
            warm=warm,
            env_snap=env_snap,
            labels=labels,
            pids=pids,
            peak=peak,
            extra_result=extra_result,
            timings={**timings, "phase_windows_s": windows},
            pass_records=pass_records,
            pass_window=pass_window,
            pass_duration_s=t_p1 - t_p0,
            compiled=compiled,
            started_epoch=started_epoch,
            ended_epoch=d.epoch(),
            total_s=d.clock() - t_begin,
        )
        result = result.model_copy(update={"input_truncation": input_truncation(cfg, requests)})
        if d.finalize is not None:
            result = d.finalize(result)

        if cfg.lora is not None:
            counters = getattr(backend, "lora_counters", None)
            outcome = lora_outcome(cfg, requests, records, result.energy.gpu_energy_j, counters)
            result = result.model_copy(update={"lora": outcome})

        # ------------------------------------------------------------------ write
        phase = "write"
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
        workload = workload_outcome(cfg, asked, records, static_batch)
        result = result.model_copy(
            update={"artifacts": artifacts, "workload": workload, "evaluation": evaluation}
        )
        result.write(out_dir / RESULT_FILE)
        chown_outputs(out_dir, env.host_uid, env.host_gid)
        return result
    except PhaseError:
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        # KeyboardInterrupt (SIGINT) and HarnessTerminated (SIGTERM) keep their phase too.
        if isinstance(exc, ConfigError) and phase == "load":
            raise PhaseError("config", exc) from exc
        raise PhaseError(phase, exc) from exc
    finally:
        if sampler is not None:
            sampler.stop()
        if backend is not None:
            try:
                backend.close()
            except Exception:  # closing must not hide the real error
                logger.exception("backend close failed")
        if nvml is not None:
            nvml.shutdown()


class HarnessTerminated(Exception):
    """SIGTERM arrived (the orchestrator timed the run out or the user stopped it)."""


def _assemble(
    *,
    env: HarnessEnv,
    cfg: ExperimentConfig,
    info: Any,
    kind: str,
    sampler: Any,
    window: WindowResult | None,
    duration_s: float,
    t_m0: float,
    t_m1: float,
    records: list[Any],
    engine_window: SteadyStateWindow | None,
    baseline: dict[str, Any] | None,
    warm: dict[str, Any],
    env_snap: dict[str, Any],
    labels: list[int],
    pids: dict[int, list[int] | None],
    peak: dict[int, int] | None,
    extra_result: dict[str, Any] | None,
    timings: dict[str, Any],
    pass_records: list[RequestRecord],
    pass_window: WindowResult | None,
    pass_duration_s: float,
    compiled: compile_cache.CompileCache,
    started_epoch: float,
    ended_epoch: float,
    total_s: float,
) -> ExperimentResult:
    gross = window.gpu_energy_j if window is not None else None
    # Integrated power over the same window, per GPU, as a cross-check of the counter.
    integrated: float | None = None
    measure_rows = [r for r in sampler.rows() if r["phase"] == "measure"]
    if measure_rows:
        parts = [
            integrate_power(sampler.power_series(lab, t_m0, t_m1), t_m0, t_m1) for lab in labels
        ]
        if all(p is not None for p in parts):
            integrated = float(sum(p for p in parts if p is not None))
    diff_pct = (integrated - gross) / gross * 100.0 if integrated is not None and gross else None
    idle_j = net = None
    if baseline is not None and gross is not None:
        idle_j = baseline["total_power_w"] * duration_s
        net = gross - idle_j
    powers = [r["power_w"] for r in measure_rows if r["power_w"] is not None]
    if kind == "null":
        logger.warning("energy not measured (no NVML/GPU): energy fields are None")
    energy = {
        "sampler": kind,
        "gpu_energy_j_per_gpu": (
            {str(k): v for k, v in window.energy_j_per_gpu.items()} if window else {}
        ),
        "gpu_energy_j": gross,
        "idle_energy_j": idle_j,
        "net_gpu_energy_j": net,
        "integrated_power_energy_j": integrated,
        "counter_vs_integrated_diff_pct": diff_pct,
        "zeus_gpu_energy_j": (extra_result or {}).get("gpu_energy_j") if kind == "zeus" else None,
        "codecarbon_energy_j": (
            (extra_result or {}).get("gpu_energy_j") if kind == "codecarbon" else None
        ),
        "avg_power_w": gross / duration_s if gross is not None and duration_s > 0 else None,
        "peak_power_w": max(powers) if powers else None,
        "n_samples": len(measure_rows),
        "sample_rate_hz": getattr(sampler, "rate_hz", None),
    }
    tp = metrics.throughput(records, duration_s)
    from llenergymeasure_contract.architecture import ArchitectureSpec, resolve_architecture

    try:
        arch = resolve_architecture(cfg.model)
    except ConfigError:
        arch = None
    if arch is None and isinstance(info.extra.get("hf_config"), dict):
        arch = ArchitectureSpec(name=cfg.model, source="loaded", hf_config=info.extra["hf_config"])
    compute = {
        **metrics.flops(arch, records),
        "parameter_count": info.parameter_count,
        "peak_memory_bytes_per_gpu": {str(k): v for k, v in (peak or {}).items()},
    }
    steady = steady_mlenergy = None
    continuous = REGISTRY.get(cfg.backend).continuous_batching
    # The run's steady-state window, computed once (the engine's when it placed one).
    measured = (
        measured_window(cfg, records, engine_window)
        if records and (continuous or cfg.traffic.uses_arrivals)
        else None
    )
    if measured is not None:

        def energy_of(start_s: float, end_s: float) -> float | None:
            return _window_energy(
                sampler, labels, start_s, end_s, gross=gross, integrated=integrated
            )

        steady = _steady_state(cfg, records=records, w=measured, energy_of=energy_of)
        steady_mlenergy = mlenergy_steady_state(records, cfg.concurrency, energy_of)
    prefix = _prefix_cache(cfg, records)
    pass_split = prefill_pass_split(
        total_j=gross,
        pass_j=pass_window.gpu_energy_j if pass_window is not None else None,
        records=records,
        pass_records=pass_records,
        pass_duration_s=pass_duration_s,
    )
    timeline = None
    if continuous:
        timeline = timeline_split(
            records,
            [sampler.power_series(lab, t_m0, t_m1) for lab in labels],
            t0=t_m0,
            t1=t_m1,
            total_j=gross,
            guard_s=max(0.05, 2.0 / cfg.energy.sample_rate_hz),
            client_timed=cfg.served_over_http,
        )
    phases = phase_energy(str(cfg.backend), pass_split=pass_split, timeline=timeline)
    mode = cfg.traffic.latency_mode
    traffic = _traffic_outcome(cfg, records, duration_s=duration_s, gross=gross, info=info)
    flags = quality_flags(
        energy_measured=gross is not None,
        duration_s=duration_s,
        samples=measure_rows,
        violation_ns=window.violation_ns_per_gpu if window else None,
        persistence={g["index"]: g.get("persistence_mode") for g in env_snap["gpus"]},
        pids=pids,
        in_container=bool(env_snap.get("in_container")),
        mismatch_pct=diff_pct,
        warmup_converged=warm.get("converged"),
        baseline_source=(baseline or {}).get("source"),
        cached_input_tokens=prefix["cached_input_tokens"],
        input_tokens=prefix["input_tokens"],
        prefix_caching_requested=prefix["requested"],
    )
    if measured is not None:
        flag = steady_state_flag(cfg, records, measured)
        if flag is not None:
            flags.append(flag)
    server = info.extra.get("server")
    if isinstance(server, dict) and server.get("output_length_forced") is False:
        flags.append(
            {
                "code": "output_length_not_forced",
                "severity": "warning",
                "message": (
                    "ignore_eos asked for fixed output lengths, but the server "
                    f"({server.get('engine')}, forcing: {server.get('output_length_forcing')}) "
                    "returned other lengths; token counts differ from in-process runs"
                ),
            }
        )
    unseen = sum(
        1
        for r in records
        if r.output_tokens > 0 and not r.token_times_s and r.first_token_s is None
    )
    if unseen:
        # A server streams text, not tokens: one whose tokens all decoded to nothing (or that
        # sent no chunk for them) gives the client no first-token time for that request.
        flags.append(
            {
                "code": "first_token_not_observed",
                "severity": "warning",
                "message": (
                    f"{unseen} of {len(records)} requests produced tokens but no streamed "
                    "token time was seen (no text in any chunk): TTFT/ITL/TPOT cover the "
                    f"other {len(records) - unseen}, and a TTFT objective counts them as missed"
                ),
            }
        )
    load_extra = {k: v for k, v in info.extra.items() if k not in ("hf_config", "server")}
    return ExperimentResult(
        run_id=env.run_id,
        # the host's hash: the config seen here may have container paths (runners/spec.py)
        config_hash=env.config_hash or cfg.config_hash,
        cycle=env.cycle,
        study_id=env.study_id,
        config=cfg,
        timings={
            "started_at": utc_iso(started_epoch),
            "ended_at": utc_iso(ended_epoch),
            "engine_build_s": info.engine_build_s,
            "total_s": total_s,
            **timings,
        },
        warmup=warm,
        baseline=baseline,
        energy=energy,
        throughput=tp,
        efficiency=metrics.efficiency(gross, net, tp),
        latency=metrics.latency(records, mode),
        compute=compute,
        steady_state=steady,
        steady_state_mlenergy=steady_mlenergy,
        traffic=traffic,
        prefix_cache=prefix,
        phase_energy=phases,
        compile_cache=compiled.to_dict(),
        quality_flags=flags,
        environment=env_snap,
        extra={
            "load": load_extra,
            "dtype": info.dtype,
            "devices": list(info.devices),
            "engine_cache_hit": info.engine_cache_hit,
            "sampler_errors": getattr(sampler, "errors", 0),
            "sampler_thread_cpu_s": getattr(sampler, "cpu_s", None),
            "extra_energy": extra_result,
            "violation_ns_per_gpu": (
                {str(k): v for k, v in window.violation_ns_per_gpu.items()} if window else {}
            ),
            "baseline_order": "after load, before warmup",
            "energy_source": "nvml_total_energy_counter" if gross is not None else None,
        },
    )


def _prefix_cache(cfg: ExperimentConfig, records: list[Any]) -> dict[str, Any]:
    """Prefix-cache use over the measured window (vLLM reports it per request)."""
    input_tokens = sum(r.input_tokens for r in records)
    reported = [r.cached_input_tokens for r in records if r.cached_input_tokens is not None]
    cached = sum(reported) if reported else None
    requested = cfg.vllm.enable_prefix_caching if cfg.vllm is not None else None
    return {
        "requested": requested,
        "input_tokens": input_tokens,
        "cached_input_tokens": cached,
        "hit_rate": cached / input_tokens if cached is not None and input_tokens else None,
    }


def _traffic_outcome(
    cfg: ExperimentConfig,
    records: list[Any],
    *,
    duration_s: float,
    gross: float | None,
    info: Any,
) -> dict[str, Any] | None:
    """The ``traffic`` block of the result: None for offline runs without an SLO or server."""
    traffic = cfg.traffic
    server = info.extra.get("server") if isinstance(info.extra.get("server"), dict) else None
    if not traffic.uses_arrivals and traffic.slo is None and server is None:
        return None
    arrivals = sorted(r.arrival_s for r in records if r.arrival_s is not None)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else None
    slo = None
    if traffic.slo is not None:
        slo = metrics.goodput(
            records,
            duration_s=duration_s,
            gross_j=gross,
            ttft_s=traffic.slo.ttft_s,
            tpot_s=traffic.slo.tpot_s,
            mode=traffic.latency_mode,
        )
    return {
        "pattern": traffic.pattern,
        "latency_mode": traffic.latency_mode,
        "rate_per_s": traffic.rate_per_s,
        "burstiness": traffic.burstiness if traffic.pattern == "gamma" else None,
        "concurrency": traffic.concurrency,
        "seed": traffic.seed if traffic.uses_arrivals else None,
        "offered_rate_per_s": (len(arrivals) - 1) / span if span else None,
        "arrival_span_s": span,
        "slo": slo,
        "server": server,
    }


def measured_window(
    cfg: ExperimentConfig, records: list[Any], engine_window: SteadyStateWindow | None = None
) -> SteadyStateWindow:
    """The run's steady-state window, chosen by its traffic (the one place that chooses).

    Closed loop: ML.ENERGY's rule with K = the users; open-loop arrivals: from the first request
    finished to the last arrival (:func:`~.backends.steady_state.arrival_steady_state_window`);
    offline continuous batching: the window the engine computed with its configured batch
    (``vllm.max_num_seqs`` / ``tensorrt.max_batch_size``), or the same rule here with K =
    :attr:`ExperimentConfig.window_k` for an engine that computes none.
    """
    from llenergymeasure_harness.backends.steady_state import (
        arrival_steady_state_window,
        steady_state_window,
    )

    traffic = cfg.traffic
    if traffic.pattern == "closed_loop":
        return steady_state_window(records, cfg.window_k)
    if traffic.uses_arrivals:
        return arrival_steady_state_window(records)
    if engine_window is not None:
        return engine_window
    return steady_state_window(records, cfg.window_k)


def _window_energy(
    sampler: Any,
    labels: list[int],
    start_s: float,
    end_s: float,
    *,
    gross: float | None,
    integrated: float | None,
) -> float | None:
    """GPU energy over ``[start_s, end_s]``: sampled power integrated per GPU, scaled onto the
    energy counter (exact over the whole measured window); None without samples."""
    parts = [
        integrate_power(sampler.power_series(lab, start_s, end_s), start_s, end_s) for lab in labels
    ]
    if not labels or any(p is None for p in parts):
        return None
    energy = float(sum(p for p in parts if p is not None))
    if gross and integrated:
        energy *= gross / integrated
    return energy


def _steady_state(
    cfg: ExperimentConfig,
    *,
    records: list[Any],
    w: SteadyStateWindow,
    energy_of: Callable[[float, float], float | None],
) -> dict[str, Any] | None:
    """The steady-state section of the result from the run's window (:func:`measured_window`),
    energy from scaled integrated power (:func:`_window_energy`)."""
    if w.start_s is None or w.end_s is None:
        return None
    duration = w.end_s - w.start_s
    energy = energy_of(w.start_s, w.end_s)
    out_tok = w.output_tokens
    return {
        "start_s": w.start_s,
        "end_s": w.end_s,
        "duration_s": duration,
        "valid": w.valid,
        "reason": w.reason,
        "problems": [p.value for p in w.problems],
        "output_tokens": out_tok,
        "gpu_energy_j": energy,
        "j_per_output_token": energy / out_tok if energy is not None and out_tok else None,
        "output_tokens_per_s": out_tok / duration if out_tok and duration > 0 else None,
        "avg_running_batch": w.mean_concurrency,
        "suggested_n_prompts": None if w.valid else _suggestion(cfg, records, w),
    }


def _suggestion(cfg: ExperimentConfig, records: list[Any], window: Any) -> int | None:
    """The n_prompts an invalid window suggests: open loop from the arrivals; offline and
    closed loop from the throughput, in waves of K (``ExperimentConfig.window_k``)."""
    if cfg.traffic.open_loop:
        return suggest_arrival_n_prompts(cfg, records, window)
    return suggest_n_prompts(cfg, records, window)


def suggest_n_prompts(cfg: ExperimentConfig, records: list[Any], window: Any) -> int | None:
    """n_prompts for a 30 s steady state at the throughput this run measured.

    The window's own throughput when it has one (the full-batch rate), else the whole run's
    (lower, so the suggestion errs towards more prompts).
    """
    problems = set(window.problems)
    if problems and not problems & {WindowProblem.TOO_SHORT, WindowProblem.TOO_FEW_REQUESTS}:
        return None  # too short is what more prompts fix; an unfilled batch they do not
    rate = window.output_tokens_per_s
    if not rate and records:
        produced = sum(r.output_tokens for r in records)
        span = max(r.end_s for r in records) - min(r.submit_s for r in records)
        rate = produced / span if produced and span > 0 else None
    if not rate:
        return None
    return steady_state_n_prompts(cfg.window_k, cfg.resolved_output_len(), rate)


def suggest_arrival_n_prompts(cfg: ExperimentConfig, records: list[Any], window: Any) -> int | None:
    """n_prompts for a 30 s open-loop steady state at the configured rate.

    Sized with :func:`llenergymeasure_contract.sizing.arrival_steady_state_n_prompts` from the
    lifetime this run measured: the first request's finish minus the first arrival (the window
    opens at that finish). Only for a window too short: ``lasted`` under the minimum, or the
    arrivals ending before the first request finished.
    """
    if not set(window.problems) & {WindowProblem.TOO_SHORT, WindowProblem.ARRIVALS_ENDED_EARLY}:
        return None
    rate = cfg.traffic.rate_per_s
    arrivals = [r.arrival_s for r in records if r.arrival_s is not None]
    if rate is None or not arrivals:
        return None
    lifetime_s = max(0.0, min(r.end_s for r in records) - min(arrivals))
    return arrival_steady_state_n_prompts(rate, lifetime_s)


def steady_state_flag(
    cfg: ExperimentConfig, records: list[Any], window: SteadyStateWindow | None = None
) -> dict[str, str] | None:
    """A ``steady_state_invalid`` quality flag with the reason and a sized n_prompts.

    ``window`` is the run's window (default :func:`measured_window`). Open-loop arrivals are
    sized from the rate and the measured lifetime; closed loop (K = the users) and continuous
    batching from the measured throughput.
    """
    w = window if window is not None else measured_window(cfg, records)
    if cfg.traffic.open_loop:
        kind, basis = (
            "open-loop",
            f"this run's request lifetime at {cfg.traffic.rate_per_s:g} req/s",
        )
    else:
        closed = cfg.traffic.pattern == "closed_loop"
        kind = f"closed-loop ({cfg.window_k} users)" if closed else "continuous-batching"
        basis = "this run's throughput"
    if w.valid:
        return None
    need = _suggestion(cfg, records, w)
    hint = f"; use n_prompts >= {need} (sized from {basis})" if need else ""
    return {
        "code": "steady_state_invalid",
        "severity": "warning",
        "message": f"{kind} steady state invalid: {w.reason}{hint}",
    }
