"""The result of one experiment, built as a typed object from the measured run.

:func:`~llenergymeasure_harness.experiment.run_experiment` gathers what it measured into a
:class:`MeasuredRun`; :func:`assemble` turns that into the
:class:`~llenergymeasure_contract.results.ExperimentResult`, one named builder per block
(energy, compute, steady state, phase energy, traffic, quality flags).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llenergymeasure_contract.env import HarnessEnv
from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.results import ExperimentResult
from llenergymeasure_contract.timestamps import utc_iso
from llenergymeasure_harness import compile_cache, metrics
from llenergymeasure_harness.backends.base import RequestRecord
from llenergymeasure_harness.backends.steady_state import (
    SteadyStateWindow,
    mlenergy_steady_state,
)
from llenergymeasure_harness.energy.meter import WindowResult
from llenergymeasure_harness.energy.sampler import integrate_power
from llenergymeasure_harness.phase_energy import phase_energy, prefill_pass_split, timeline_split
from llenergymeasure_harness.quality import quality_flags
from llenergymeasure_harness.steady_result import (
    measured_window,
    steady_state_flag,
    steady_state_section,
    window_energy,
)

logger = logging.getLogger("llenergymeasure_harness.experiment")


@dataclass
class MeasuredRun:
    """What one experiment measured, as :func:`assemble` needs it.

    Times are on the harness clock (``Deps.clock``); ``*_epoch`` on the wall clock.
    """

    env: HarnessEnv
    cfg: ExperimentConfig
    #: The backend's ``LoadInfo``.
    info: Any
    #: The energy sampler kind (``nvml`` | ``zeus`` | ``codecarbon`` | ``null`` ...).
    kind: str
    sampler: Any
    #: The measured window's counter reads; None without NVML.
    window: WindowResult | None
    t_m0: float
    t_m1: float
    records: list[Any]
    #: The steady-state window a continuous-batching engine computed itself.
    engine_window: SteadyStateWindow | None
    baseline: dict[str, Any] | None
    warm: dict[str, Any]
    env_snap: dict[str, Any]
    labels: list[int]
    pids: dict[int, list[int] | None]
    peak: dict[int, int] | None
    #: Zeus / CodeCarbon's window, when chosen.
    extra_result: dict[str, Any] | None
    #: Phase durations and ``phase_windows_s``.
    timings: dict[str, Any]
    pass_records: list[RequestRecord]
    pass_window: WindowResult | None
    pass_duration_s: float
    compiled: compile_cache.CompileCache
    started_epoch: float
    ended_epoch: float
    total_s: float

    @property
    def duration_s(self) -> float:
        """The measured window's length."""
        return self.t_m1 - self.t_m0

    @property
    def gross_j(self) -> float | None:
        """GPU energy over the measured window from the counters; None when not measured."""
        return self.window.gpu_energy_j if self.window is not None else None

    def measure_rows(self) -> list[dict[str, Any]]:
        """The sampler's rows of the measured phase."""
        return [r for r in self.sampler.rows() if r["phase"] == "measure"]


def assemble(run: MeasuredRun) -> ExperimentResult:
    """The experiment's result from what it measured."""
    cfg, info, records, window = run.cfg, run.info, run.records, run.window
    gross = run.gross_j
    duration_s = run.duration_s
    measure_rows = run.measure_rows()
    integrated = _integrated_energy(run, measure_rows)
    diff_pct = (integrated - gross) / gross * 100.0 if integrated is not None and gross else None
    energy = _energy_block(run, measure_rows, integrated, diff_pct)
    net = energy["net_gpu_energy_j"]
    tp = metrics.throughput(records, duration_s)
    continuous = REGISTRY.get(cfg.backend).continuous_batching
    # The run's steady-state window, computed once (the engine's when it placed one).
    measured = (
        measured_window(cfg, records, run.engine_window)
        if records and (continuous or cfg.traffic.uses_arrivals)
        else None
    )
    steady, steady_mlenergy = _steady_blocks(run, measured, integrated)
    prefix = _prefix_cache(cfg, records)
    phases = _phase_energy(run, continuous)
    traffic = _traffic_outcome(cfg, records, duration_s=duration_s, gross=gross, info=info)
    flags = _quality_flags(run, measure_rows, diff_pct, prefix, measured)
    load_extra = {k: v for k, v in info.extra.items() if k not in ("hf_config", "server")}
    env = run.env
    return ExperimentResult(
        run_id=env.run_id,
        # the host's hash: the config seen here may have container paths (runners/spec.py)
        config_hash=env.config_hash or cfg.config_hash,
        cycle=env.cycle,
        study_id=env.study_id,
        config=cfg,
        timings={
            "started_at": utc_iso(run.started_epoch),
            "ended_at": utc_iso(run.ended_epoch),
            "engine_build_s": info.engine_build_s,
            "total_s": run.total_s,
            **run.timings,
        },
        warmup=run.warm,
        baseline=run.baseline,
        energy=energy,
        throughput=tp,
        efficiency=metrics.efficiency(gross, net, tp),
        latency=metrics.latency(records, cfg.traffic.latency_mode),
        compute=_compute_block(run),
        steady_state=steady,
        steady_state_mlenergy=steady_mlenergy,
        traffic=traffic,
        prefix_cache=prefix,
        phase_energy=phases,
        compile_cache=run.compiled.to_dict(),
        quality_flags=flags,
        environment=run.env_snap,
        extra={
            "load": load_extra,
            "dtype": info.dtype,
            "devices": list(info.devices),
            "engine_cache_hit": info.engine_cache_hit,
            "sampler_errors": getattr(run.sampler, "errors", 0),
            "sampler_thread_cpu_s": getattr(run.sampler, "cpu_s", None),
            "extra_energy": run.extra_result,
            "violation_ns_per_gpu": (
                {str(k): v for k, v in window.violation_ns_per_gpu.items()} if window else {}
            ),
            "baseline_order": "after load, before warmup",
            "energy_source": "nvml_total_energy_counter" if gross is not None else None,
        },
    )


def _integrated_energy(run: MeasuredRun, measure_rows: list[dict[str, Any]]) -> float | None:
    """Integrated power over the measured window, summed over GPUs: a cross-check of the
    counter; None without samples."""
    if not measure_rows:
        return None
    t0, t1 = run.t_m0, run.t_m1
    parts = [integrate_power(run.sampler.power_series(lab, t0, t1), t0, t1) for lab in run.labels]
    if all(p is not None for p in parts):
        return float(sum(p for p in parts if p is not None))
    return None


def _energy_block(
    run: MeasuredRun,
    measure_rows: list[dict[str, Any]],
    integrated: float | None,
    diff_pct: float | None,
) -> dict[str, Any]:
    """The ``energy`` block: counter, idle, net, integrated and second-opinion energies."""
    gross, window, kind, duration_s = run.gross_j, run.window, run.kind, run.duration_s
    idle_j = net = None
    if run.baseline is not None and gross is not None:
        idle_j = run.baseline["total_power_w"] * duration_s
        net = gross - idle_j
    powers = [r["power_w"] for r in measure_rows if r["power_w"] is not None]
    if kind == "null":
        logger.warning("energy not measured (no NVML/GPU): energy fields are None")
    extra = run.extra_result or {}
    return {
        "sampler": kind,
        "gpu_energy_j_per_gpu": (
            {str(k): v for k, v in window.energy_j_per_gpu.items()} if window else {}
        ),
        "gpu_energy_j": gross,
        "idle_energy_j": idle_j,
        "net_gpu_energy_j": net,
        "integrated_power_energy_j": integrated,
        "counter_vs_integrated_diff_pct": diff_pct,
        "zeus_gpu_energy_j": extra.get("gpu_energy_j") if kind == "zeus" else None,
        "codecarbon_energy_j": extra.get("gpu_energy_j") if kind == "codecarbon" else None,
        "avg_power_w": gross / duration_s if gross is not None and duration_s > 0 else None,
        "peak_power_w": max(powers) if powers else None,
        "n_samples": len(measure_rows),
        "sample_rate_hz": getattr(run.sampler, "rate_hz", None),
    }


def _compute_block(run: MeasuredRun) -> dict[str, Any]:
    """The ``compute`` block: FLOPs from the architecture, parameters, peak memory."""
    from llenergymeasure_contract.architecture import ArchitectureSpec, resolve_architecture
    from llenergymeasure_harness.prompts import architecture_source

    cfg, info = run.cfg, run.info
    try:
        arch = resolve_architecture(architecture_source(cfg))
    except ConfigError:
        arch = None
    if arch is None and isinstance(info.extra.get("hf_config"), dict):
        arch = ArchitectureSpec(name=cfg.model, source="loaded", hf_config=info.extra["hf_config"])
    return {
        **metrics.flops(arch, run.records),
        "parameter_count": info.parameter_count,
        "peak_memory_bytes_per_gpu": {str(k): v for k, v in (run.peak or {}).items()},
    }


def _steady_blocks(
    run: MeasuredRun, measured: SteadyStateWindow | None, integrated: float | None
) -> tuple[dict[str, Any] | None, Any]:
    """The ``steady_state`` and ``steady_state_mlenergy`` blocks; None without a window."""
    if measured is None:
        return None, None
    gross = run.gross_j

    def energy_of(start_s: float, end_s: float) -> float | None:
        return window_energy(
            run.sampler, run.labels, start_s, end_s, gross=gross, integrated=integrated
        )

    steady = steady_state_section(run.cfg, records=run.records, w=measured, energy_of=energy_of)
    return steady, mlenergy_steady_state(run.records, run.cfg.concurrency, energy_of)


def _phase_energy(run: MeasuredRun, continuous: bool) -> Any:
    """The ``phase_energy`` block: the prefill pass split, and the timeline split for a
    continuous-batching engine."""
    cfg, gross = run.cfg, run.gross_j
    pass_split = prefill_pass_split(
        total_j=gross,
        pass_j=run.pass_window.gpu_energy_j if run.pass_window is not None else None,
        records=run.records,
        pass_records=run.pass_records,
        pass_duration_s=run.pass_duration_s,
    )
    timeline = None
    if continuous:
        t0, t1 = run.t_m0, run.t_m1
        timeline = timeline_split(
            run.records,
            [run.sampler.power_series(lab, t0, t1) for lab in run.labels],
            t0=t0,
            t1=t1,
            total_j=gross,
            guard_s=max(0.05, 2.0 / cfg.energy.sample_rate_hz),
            client_timed=cfg.served_over_http,
        )
    return phase_energy(str(cfg.backend), pass_split=pass_split, timeline=timeline)


def _quality_flags(
    run: MeasuredRun,
    measure_rows: list[dict[str, Any]],
    diff_pct: float | None,
    prefix: dict[str, Any],
    measured: SteadyStateWindow | None,
) -> list[dict[str, Any]]:
    """The result's quality flags: the measurement's, the steady state's and the server's."""
    window, env_snap, records = run.window, run.env_snap, run.records
    flags = quality_flags(
        energy_measured=run.gross_j is not None,
        duration_s=run.duration_s,
        samples=measure_rows,
        violation_ns=window.violation_ns_per_gpu if window else None,
        persistence={g["index"]: g.get("persistence_mode") for g in env_snap["gpus"]},
        pids=run.pids,
        in_container=bool(env_snap.get("in_container")),
        mismatch_pct=diff_pct,
        warmup_converged=run.warm.get("converged"),
        baseline_source=(run.baseline or {}).get("source"),
        cached_input_tokens=prefix["cached_input_tokens"],
        input_tokens=prefix["input_tokens"],
        prefix_caching_requested=prefix["requested"],
    )
    if measured is not None:
        flag = steady_state_flag(run.cfg, records, measured)
        if flag is not None:
            flags.append(flag)
    flags.extend(_server_flags(run.info, records))
    return flags


def _server_flags(info: Any, records: list[Any]) -> list[dict[str, Any]]:
    """Flags only a served run raises: output lengths not forced, first tokens not seen."""
    flags: list[dict[str, Any]] = []
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
    return flags


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
