"""The study-level result: :class:`StudyResult`, one :class:`RunSummary` per planned run.

Written at the end of a study as ``study_result.json`` next to the manifest; every run in the
plan appears exactly once, completed or not, with its cause when it did not complete. Full
per-run results stay in each run's ``result.json``; the summary carries the key figures and
the path to it. Tables (CSV, Parquet) are made by :mod:`llenergymeasure.results.aggregate`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure.config.impact import ImpactInputs
from llenergymeasure.results.stats import ConfidenceIntervals
from llenergymeasure.runners.base import FailureKind, RunState
from llenergymeasure_contract.results import ExperimentResult, write_json_atomic
from llenergymeasure_contract.time_budget import (
    measuring_fraction,
    run_time_breakdown,
    sum_breakdowns,
)

STUDY_RESULT_FILE = "study_result.json"
# 1.1: confidence_intervals, impact_inputs, impact metrics; 1.2: time_breakdown_s,
# measuring_fraction, cycle_cv of throughput and latency
STUDY_RESULT_SCHEMA_VERSION = "1.2"
#: How a table shows the harness's "null" sampler (no energy sampler ran): pandas and Arrow CSV
#: readers turn the string "null" into a missing value, which is not what it means.
NO_SAMPLER = "none"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunMetrics(_Model):
    """Key figures of a completed run (``None``: not measured, or no input to compute it).

    The carbon and cost figures (``gco2e_*``, ``cost_*``) exist only when the study gave the
    inputs (``carbon:``, ``cost:``; see :class:`~llenergymeasure.config.impact.ImpactInputs`):
    gCO2e = kWh x PUE x grid intensity, cost = kWh x PUE x price, from the gross (or, for
    ``net_*``, the idle-adjusted) GPU energy. ``cost_*`` are in ``cost_currency``.
    """

    n_requests: int | None = None
    output_tokens: int | None = None
    measure_s: float | None = None
    output_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    gpu_energy_j: float | None = None
    net_gpu_energy_j: float | None = None
    avg_power_w: float | None = None
    j_per_output_token: float | None = None
    net_j_per_output_token: float | None = None
    j_per_request: float | None = None
    net_j_per_request: float | None = None
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    e2e_p50_s: float | None = None
    # With traffic.slo (arriving traffic): fraction of requests meeting every objective,
    # SLO-meeting requests per second of the window, gross GPU J per SLO-meeting request.
    slo_attainment: float | None = None
    goodput_requests_per_s: float | None = None
    j_per_slo_request: float | None = None
    gco2e_per_1k_output_tokens: float | None = None
    net_gco2e_per_1k_output_tokens: float | None = None
    gco2e_per_request: float | None = None
    net_gco2e_per_request: float | None = None
    cost_per_1k_output_tokens: float | None = None
    net_cost_per_1k_output_tokens: float | None = None
    cost_per_request: float | None = None
    net_cost_per_request: float | None = None
    cost_currency: str | None = None
    # Steady state (continuous batching, arriving traffic): our window and ML.ENERGY's rule
    # beside it (result.json steady_state / steady_state_mlenergy; docs/methodology.md).
    steady_j_per_output_token: float | None = None
    steady_window_s: float | None = None
    steady_valid: bool | None = None
    mlenergy_j_per_output_token: float | None = None
    mlenergy_window_s: float | None = None
    mlenergy_stable: bool | None = None
    avg_running_batch: float | None = None  # in ML.ENERGY's window (K = max_num_seqs)
    energy_sampler: str | None = None  # nvml | zeus | codecarbon | none (no sampler ran)
    backend_library: str | None = None  # the library backend_version is of, e.g. transformers
    backend_version: str | None = None
    # With quality: (lm-eval on the measured engine, its own window; docs/methodology.md):
    # correct answers / items over the tasks with an accuracy-type metric, and the pass's
    # gross GPU energy per item, per correct answer, and correct answers per joule.
    eval_items: int | None = None
    eval_correct: float | None = None
    accuracy: float | None = None
    eval_gpu_energy_j: float | None = None
    eval_j_per_item: float | None = None
    j_per_correct: float | None = None
    quality_per_joule: float | None = None
    # With lora: the adapters the requests spread over, and the engine's load/swap counts
    # (None where it does not report them); the per-adapter split is in result.json.
    lora_n_adapters: int | None = None
    lora_adapter_loads: int | None = None
    lora_adapter_swaps: int | None = None
    # vLLM's vllm:lora_requests_info over the measured window (None where not reported).
    lora_max_adapters_running: int | None = None
    lora_max_adapters_waiting: int | None = None
    quality_flags: list[str] = Field(default_factory=list)

    @classmethod
    def from_result(cls, result: ExperimentResult) -> RunMetrics:
        """Pick the key figures out of a full result."""
        lat = result.latency
        slo = result.traffic.slo if result.traffic is not None else None
        sampler = result.energy.sampler
        env = result.environment
        ours, theirs = result.steady_state, result.steady_state_mlenergy
        return cls(
            n_requests=result.throughput.n_requests,
            output_tokens=result.throughput.output_tokens,
            measure_s=result.throughput.duration_s,
            output_tokens_per_s=result.throughput.output_tokens_per_s,
            requests_per_s=result.throughput.requests_per_s,
            gpu_energy_j=result.energy.gpu_energy_j,
            net_gpu_energy_j=result.energy.net_gpu_energy_j,
            avg_power_w=result.energy.avg_power_w,
            j_per_output_token=result.efficiency.j_per_output_token,
            net_j_per_output_token=result.efficiency.net_j_per_output_token,
            j_per_request=result.efficiency.j_per_request,
            net_j_per_request=result.efficiency.net_j_per_request,
            ttft_p50_s=lat.ttft_s.p50 if lat.ttft_s is not None else None,
            ttft_p99_s=lat.ttft_s.p99 if lat.ttft_s is not None else None,
            tpot_p50_s=lat.tpot_s.p50 if lat.tpot_s is not None else None,
            e2e_p50_s=lat.e2e_s.p50 if lat.e2e_s is not None else None,
            slo_attainment=slo.slo_attainment if slo is not None else None,
            goodput_requests_per_s=slo.goodput_requests_per_s if slo is not None else None,
            j_per_slo_request=slo.j_per_slo_request if slo is not None else None,
            steady_j_per_output_token=ours.j_per_output_token if ours else None,
            steady_window_s=ours.duration_s if ours else None,
            steady_valid=ours.valid if ours else None,
            mlenergy_j_per_output_token=theirs.j_per_output_token if theirs else None,
            mlenergy_window_s=theirs.duration_s if theirs else None,
            mlenergy_stable=theirs.stable if theirs else None,
            avg_running_batch=theirs.avg_running_batch if theirs else None,
            energy_sampler=NO_SAMPLER if sampler == "null" else sampler,
            backend_library=env.backend_library,
            backend_version=env.backend_version,
            lora_n_adapters=result.lora.n_adapters if result.lora is not None else None,
            lora_adapter_loads=result.lora.adapter_loads if result.lora is not None else None,
            lora_adapter_swaps=result.lora.adapter_swaps if result.lora is not None else None,
            lora_max_adapters_running=(
                result.lora.max_adapters_running if result.lora is not None else None
            ),
            lora_max_adapters_waiting=(
                result.lora.max_adapters_waiting if result.lora is not None else None
            ),
            quality_flags=[f.code for f in result.quality_flags],
            **_evaluation_metrics(result),
        )


def _evaluation_metrics(result: ExperimentResult) -> dict[str, Any]:
    """The ``quality:`` figures of :class:`RunMetrics` (none without an evaluation pass)."""
    ev = result.evaluation
    if ev is None:
        return {}
    return {
        "eval_items": ev.n_items,
        "eval_correct": ev.correct,
        "accuracy": ev.accuracy,
        "eval_gpu_energy_j": ev.gpu_energy_j,
        "eval_j_per_item": ev.j_per_item,
        "j_per_correct": ev.j_per_correct,
        "quality_per_joule": ev.quality_per_joule,
    }


def time_budget(
    results: Iterable[ExperimentResult], experiments_s: float, gaps_s: float
) -> dict[str, Any]:
    """The study's ``time_breakdown_s`` and ``measuring_fraction`` from its completed runs.

    The harness's phases of every completed run are summed part by part; ``gaps`` adds the
    thermal gaps between runs (``gaps_s``) to those inside engine groups; ``other`` is what
    the runs' wall time (``experiments_s``: container start, imports, writes, failed runs)
    leaves over. The parts sum to ``experiments_s + gaps_s``.

    ``measuring_fraction`` is the measured windows' time over the time spent in runs, thermal
    rests left out: ``measure / (experiments_s - in-run gaps)``; None before any run ended.
    """
    per_run = sum_breakdowns(run_time_breakdown(r.timings) for r in results)
    in_run_gaps = per_run["gaps"]
    named = sum(v for k, v in per_run.items() if k != "other")
    breakdown = dict(per_run)
    breakdown["gaps"] = in_run_gaps + gaps_s
    breakdown["other"] = max(0.0, experiments_s - named)
    return {
        "time_breakdown_s": {k: round(v, 3) for k, v in breakdown.items()},
        "measuring_fraction": measuring_fraction(per_run["measure"], experiments_s, in_run_gaps),
    }


class RunSummary(_Model):
    """One planned run, whatever happened to it."""

    index: int
    run_id: str
    config_hash: str
    cycle: int
    state: RunState
    attempts: int = 0
    failure_kind: FailureKind | None = None
    message: str | None = None
    exit_code: int | None = None
    duration_s: float | None = None  # wall time of the last attempt (container included)
    run_dir: str | None = None  # relative to the study directory
    result_path: str | None = None  # relative to the study directory
    backend: str | None = None
    model: str | None = None
    precision: str | None = None
    image: str | None = None
    job_id: str | None = None  # Slurm runner: the job of the last attempt
    node: str | None = None  # Slurm runner: where it ran
    params: dict[str, Any] = Field(default_factory=dict)  # the sweep values of this experiment
    metrics: RunMetrics | None = None
    # where the run's harness time went (llenergymeasure_contract.time_budget), completed runs
    time_breakdown_s: dict[str, float] | None = None


class StudyResult(_Model):
    """The outcome of a whole study."""

    schema_version: str = STUDY_RESULT_SCHEMA_VERSION
    study_id: str
    study_name: str
    study_design_hash: str
    llem_version: str
    runner: str
    state: str  # completed | failed | interrupted | aborted
    message: str | None = None
    study_dir: str
    started_at: str  # when the study was first started (a resume keeps it)
    finished_at: str
    wall_s: float  # wall time over every session (resumes), gaps and overhead included
    experiments_s: float  # sum of the run durations over every session
    gaps_s: float  # thermal gaps actually waited, over every session
    sessions: int = 1  # how many times the study was started or resumed
    n_runs: int
    n_completed: int
    n_failed: int
    n_interrupted: int
    n_pending: int
    runs: list[RunSummary]
    impact_inputs: ImpactInputs | None = None  # carbon/cost inputs and their sources; None: none
    confidence_intervals: ConfidenceIntervals | None = None  # per experiment, across cycles
    # where the time went (llenergymeasure_contract.time_budget parts, seconds, summing to
    # experiments_s + gaps_s) and measure / (experiments_s - in-run gaps): docs/methodology.md
    time_breakdown_s: dict[str, float] | None = None
    measuring_fraction: float | None = None

    @property
    def exit_code(self) -> int:
        """0 when every run completed, else 1 (130 is raised as InterruptedStudy instead)."""
        return 0 if self.n_completed == self.n_runs else 1

    def __int__(self) -> int:
        """The CLI exit status (``int(run_study(...))``)."""
        return self.exit_code

    def write(self, path: Path) -> None:
        """Write atomically."""
        write_json_atomic(path, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        """Load ``study_result.json`` (or the study directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / STUDY_RESULT_FILE
        return cls.model_validate_json(p.read_text(encoding="utf-8"))
