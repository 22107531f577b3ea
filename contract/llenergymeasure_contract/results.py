"""The result schema the harness writes and the orchestrator reads.

:class:`ExperimentResult` is one measured run (``result.json``); :class:`HarnessErrorRecord` is
what a failed run leaves instead (``error.json``). Every physical quantity carries its unit in
its name; ``None`` means "not measured", never zero.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure_contract.evaluation import EvaluationResult
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.files import ERROR_FILE, RESULT_FILE
from llenergymeasure_contract.lengths import Stats, WorkloadOutcome
from llenergymeasure_contract.reuse import EngineShare
from llenergymeasure_contract.windows import InputTruncation, MLEnergySteadyState, WindowProblem

SCHEMA_VERSION = "1.0"

Phase = Literal["config", "load", "warmup", "baseline", "measure", "evaluate", "write"]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` on success, vanishes on error.

    Readers never see a half-written file, and a crash leaves the previous version intact.
    The file is made world-readable (0644): ``mkstemp`` would leave it owner-only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: str) -> None:
    """Write ``payload`` to ``path`` durably (fsync) and atomically (see :func:`atomic_path`)."""
    try:
        with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename).parent != path.parent:
            raise
        # A failed write to the temp file (disk full) names no path, or the temp file's:
        # name the file being written instead.
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GPUInfo(_Model):
    """One GPU as the harness saw it."""

    index: int  # index inside the harness process (containers renumber from 0)
    uuid: str | None = None  # maps energy back to the host GPU
    name: str | None = None
    memory_total_bytes: int | None = None
    power_limit_w: float | None = None
    default_power_limit_w: float | None = None
    persistence_mode: bool | None = None
    ecc_enabled: bool | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_max_mhz: int | None = None


class EnvironmentSnapshot(_Model):
    """Where the numbers were measured."""

    hostname: str | None = None
    os: str | None = None
    cpu_model: str | None = None
    cpu_count: int | None = None
    python_version: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    gpus: list[GPUInfo] = Field(default_factory=list)
    harness_version: str | None = None
    backend: str | None = None
    backend_version: str | None = None
    backend_library: str | None = None  # what backend_version is the version of (transformers)
    library_versions: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    image_digest: str | None = None
    image_labels: dict[str, str] = Field(default_factory=dict)
    in_container: bool | None = None
    # Set when the run was a Slurm job (from the job's SLURM_JOB_ID / SLURMD_NODENAME): the
    # container's own hostname is not the node's.
    slurm_job_id: str | None = None
    slurm_node: str | None = None


class WarmupOutcome(_Model):
    """What warmup did (never measured)."""

    mode: str
    n_batches: int
    duration_s: float
    converged: bool | None = None  # convergence mode only
    final_cv: float | None = None
    step_latencies_s: list[float] = Field(default_factory=list)


class BaselineMeasurement(_Model):
    """Idle power, in a recorded GPU state."""

    state: str  # e.g. "cuda_context_model_loaded"
    source: Literal["measured", "cache"]
    duration_s: float
    power_w_per_gpu: dict[str, float]  # GPU index (str for JSON) -> mean idle power
    total_power_w: float
    measured_at: str  # ISO 8601 UTC


class EnergyMeasurement(_Model):
    """Energy over the measured window."""

    sampler: str  # "nvml", "zeus", "codecarbon", "null"
    gpu_energy_j_per_gpu: dict[str, float | None] = Field(default_factory=dict)
    gpu_energy_j: float | None = None  # gross: sum over the experiment's GPUs
    idle_energy_j: float | None = None  # baseline power x window duration
    net_gpu_energy_j: float | None = None  # gross minus idle ("idle-adjusted")
    integrated_power_energy_j: float | None = None  # trapezoid over sampled power
    counter_vs_integrated_diff_pct: float | None = None
    zeus_gpu_energy_j: float | None = None
    codecarbon_energy_j: float | None = None
    avg_power_w: float | None = None
    peak_power_w: float | None = None
    n_samples: int = 0
    sample_rate_hz: float | None = None


class ThroughputMetrics(_Model):
    """Tokens and requests over the measured window (padding excluded)."""

    n_requests: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    duration_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float


class EfficiencyMetrics(_Model):
    """Energy per unit of work; gross from the counter, net after idle subtraction."""

    j_per_output_token: float | None = None
    j_per_token: float | None = None
    j_per_request: float | None = None
    output_tokens_per_j: float | None = None
    net_j_per_output_token: float | None = None
    net_j_per_request: float | None = None


class LatencyMetrics(_Model):
    """Per-request latency summaries (seconds); definitions in docs/methodology.md.

    ``mode`` says where TTFT and E2E start: ``offline_queueing`` at the submit time (all
    requests queued in the engine at once), ``arrivals`` at each request's scheduled arrival.
    """

    mode: Literal["offline_queueing", "arrivals"] = "offline_queueing"
    ttft_s: Stats | None = None  # start (see mode) -> first output token
    itl_s: Stats | None = None  # gap between consecutive output tokens, all requests pooled
    tpot_s: Stats | None = None  # per request: (end - first token) / (output_tokens - 1)
    e2e_s: Stats | None = None  # start (see mode) -> last token
    queue_s: Stats | None = None  # arrival -> submit (arrivals only): waiting outside the engine


class SLOOutcome(_Model):
    """How many requests met ``traffic.slo``, and what they cost."""

    ttft_s: float | None = None  # the objectives, as configured
    tpot_s: float | None = None
    n_requests_meeting_slo: int
    slo_attainment: float | None = None  # fraction of requests meeting every objective
    goodput_requests_per_s: float | None = None  # SLO-meeting requests / measured window
    goodput_output_tokens_per_s: float | None = None
    j_per_slo_request: float | None = None  # gross GPU energy / SLO-meeting requests


class TrafficOutcome(_Model):
    """The arrival process the run followed, and what it achieved."""

    pattern: str
    latency_mode: Literal["offline_queueing", "arrivals"]
    rate_per_s: float | None = None  # configured mean arrival rate
    burstiness: float | None = None  # gamma shape (gamma only)
    concurrency: int | None = None  # closed-loop users
    seed: int | None = None
    offered_rate_per_s: float | None = None  # (n - 1) / (last arrival - first arrival)
    arrival_span_s: float | None = None  # first to last scheduled arrival
    slo: SLOOutcome | None = None
    server: dict[str, Any] | None = None  # server mode / endpoint: what served the requests


class ComputeMetrics(_Model):
    """Estimated work and memory."""

    flops_total: float | None = None
    flops_per_output_token: float | None = None
    flops_method: str | None = None
    parameter_count: int | None = None
    peak_memory_bytes_per_gpu: dict[str, int] = Field(default_factory=dict)


class QualityFlag(_Model):
    """A reason to be careful with this result."""

    code: str  # e.g. "short_run", "thermal_throttle", "power_throttle", "persistence_off"
    severity: Literal["info", "warning", "error"] = "warning"
    message: str


class SteadyState(_Model):
    """Continuous-batching steady-state window (vLLM), beside the whole-run figures."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    start_s: float
    end_s: float
    duration_s: float
    valid: bool
    reason: str | None = None
    problems: list[WindowProblem] = Field(default_factory=list)  # empty when valid
    output_tokens: int | None = None
    gpu_energy_j: float | None = None
    j_per_output_token: float | None = None
    output_tokens_per_s: float | None = None
    # Time-averaged requests between first token and end inside the window.
    avg_running_batch: float | None = None
    # n_prompts that would give a 30 s window (invalid windows only; None when valid or not
    # estimable): offline, at the throughput this run measured; open-loop arrivals, at the
    # configured rate and this run's request lifetime (llenergymeasure_contract.sizing).
    suggested_n_prompts: int | None = None


class PrefixCacheUsage(_Model):
    """Prompt tokens of the measured window that the engine served from its prefix cache."""

    requested: bool | None = None  # vllm.enable_prefix_caching as configured (None: default)
    input_tokens: int
    cached_input_tokens: int | None = None  # None: the engine does not report it
    hit_rate: float | None = None  # cached / input tokens


class PhaseMethod(_Model):
    """One method's prefill/decode split (see llenergymeasure_harness.phase_energy)."""

    method: Literal["prefill_pass_difference", "timeline_decode_fit"]
    prefill_energy_j: float | None = None
    decode_energy_j: float | None = None
    prefill_tokens: int
    decode_tokens: int
    j_per_prefill_token: float | None = None
    j_per_decode_token: float | None = None
    reason: str | None = None  # why the figures are None
    prefill_pass_duration_s: float | None = None  # prefill_pass_difference only
    # prefill_pass_difference: requests the pass ran (a sized subset of the measured shapes)
    # and the factor its energy was scaled by to the measured prompt tokens (1.0: all of them)
    prefill_pass_requests: int | None = None
    prefill_pass_scale: float | None = None
    n_steps: int | None = None  # timeline_decode_fit only
    n_clean_decode_steps: int | None = None
    decode_fit_j: dict[str, float] | None = None


class PhaseEnergy(_Model):
    """Energy per prefill and per decode token; ``method`` names the headline figures'."""

    method: Literal["prefill_pass_difference", "timeline_decode_fit"]
    prefill_energy_j: float | None = None
    decode_energy_j: float | None = None
    prefill_tokens: int
    decode_tokens: int
    j_per_prefill_token: float | None = None
    j_per_decode_token: float | None = None
    prefill_pass: PhaseMethod | None = None
    timeline: PhaseMethod | None = None


class CompileCacheInfo(_Model):
    """The host compile/kernel cache the experiment loaded with (llenergymeasure_harness
    .compile_cache): ``cold`` (empty before load), ``warm`` or ``off``."""

    state: Literal["cold", "warm", "off"]
    key: str | None = None
    path: str | None = None
    files_before: int = 0
    bytes_before: int = 0
    files_after: int = 0
    bytes_after: int = 0


class AdapterShare(_Model):
    """One LoRA adapter's part of a run (``ExperimentResult.lora.per_adapter``)."""

    adapter: str
    requests: int
    input_tokens: int
    output_tokens: int
    energy_j: float | None = None  # the run's GPU energy x this adapter's output-token share
    energy_j_per_output_token: float | None = None


class LoraOutcome(_Model):
    """The adapter mix of a run with ``lora:`` and what each adapter took.

    Energy is one window over every request (they share batches), so it is apportioned to
    the adapters by their share of the output tokens (``energy_apportioned_by``).
    """

    n_adapters: int
    selection: str
    max_loras: int  # adapters resident at once
    max_lora_rank: int | None = None
    energy_apportioned_by: Literal["output_tokens"] = "output_tokens"
    adapter_loads: int | None = None  # None: the engine does not report it
    adapter_swaps: int | None = None  # None: the engine does not report it
    # vLLM's vllm:lora_requests_info gauge over the measured window: the most adapter names
    # its running_lora_adapters / waiting_lora_adapters labels listed at one engine step
    # (None: not reported; docs/results.md says what vLLM puts in them).
    max_adapters_running: int | None = None
    max_adapters_waiting: int | None = None
    # count name -> where it came from, or why it is None
    counts_provenance: dict[str, str] = Field(default_factory=dict)
    per_adapter: list[AdapterShare] = Field(default_factory=list)


class Timings(_Model):
    """Wall-clock phases (seconds) and UTC timestamps."""

    started_at: str
    ended_at: str
    load_s: float | None = None
    engine_build_s: float | None = None  # TensorRT-LLM, apart from the measured run
    warmup_s: float | None = None
    baseline_s: float | None = None
    measure_s: float | None = None
    prefill_pass_s: float | None = None  # the prefill-only pass after the measured window
    evaluation_s: float | None = None  # the quality: evaluation pass, in its own window
    gap_s: float | None = None  # engine groups: the thermal rest before this run, in-container
    total_s: float | None = None
    # phase -> [start, end] on the harness clock that timeseries.parquet's t_s and
    # steady_state.start_s/end_s use: baseline (when measured, not cached), warmup, measure
    # (the energy window's edges), prefill_pass. Lets a reader shade each phase on the series.
    phase_windows_s: dict[str, list[float]] = Field(default_factory=dict)


class ExperimentResult(_Model):
    """One measured run of one experiment config. Written by the harness as ``result.json``."""

    schema_version: str = SCHEMA_VERSION
    run_id: str
    config_hash: str
    cycle: int | None = None
    study_id: str | None = None
    config: ExperimentConfig
    timings: Timings
    warmup: WarmupOutcome | None = None
    baseline: BaselineMeasurement | None = None
    energy: EnergyMeasurement
    throughput: ThroughputMetrics
    efficiency: EfficiencyMetrics
    latency: LatencyMetrics
    compute: ComputeMetrics
    steady_state: SteadyState | None = None
    # ML.ENERGY's window and stability rule beside ours (llenergymeasure_contract.windows).
    steady_state_mlenergy: MLEnergySteadyState | None = None
    input_truncation: InputTruncation | None = None  # text and chat datasets
    prefix_cache: PrefixCacheUsage | None = None
    phase_energy: PhaseEnergy | None = None
    compile_cache: CompileCacheInfo | None = None
    traffic: TrafficOutcome | None = None
    workload: WorkloadOutcome | None = None  # lengths asked for and produced, the profile
    evaluation: EvaluationResult | None = None  # accuracy of the quality: section
    lora: LoraOutcome | None = None
    engine_share: EngineShare | None = None  # the loaded engine was shared (reuse_engine)
    quality_flags: list[QualityFlag] = Field(default_factory=list)
    environment: EnvironmentSnapshot
    artifacts: dict[str, str] = Field(default_factory=dict)  # kind -> file name in results dir
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentResult:
        """Load a ``result.json`` (or the directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / RESULT_FILE
        return cls.model_validate_json(p.read_text(encoding="utf-8"))

    def write(self, path: str | Path) -> None:
        """Write atomically (temp file + rename)."""
        write_json_atomic(Path(path), self.model_dump_json(indent=2))


class HarnessErrorRecord(_Model):
    """What a failed harness run writes as ``error.json``."""

    schema_version: str = SCHEMA_VERSION
    run_id: str | None = None
    phase: Phase
    error_class: str
    message: str
    traceback: str | None = None
    occurred_at: str

    @classmethod
    def load(cls, path: str | Path) -> HarnessErrorRecord:
        """Load an ``error.json`` (or the directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / ERROR_FILE
        return cls.model_validate_json(p.read_text(encoding="utf-8"))

    def write(self, path: str | Path) -> None:
        """Write atomically (temp file + rename)."""
        write_json_atomic(Path(path), self.model_dump_json(indent=2))
