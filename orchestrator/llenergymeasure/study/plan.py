"""The study plan: which runs happen, in which order, with which image, and rough estimates.

:func:`build_plan` turns a :class:`~llenergymeasure.config.StudyConfig` into a
:class:`StudyPlan` without any I/O. ``llem run --dry-run`` prints it; the executor runs it.

Cycle orders, for experiments A and B and two cycles::

    sequential   A1 A2 B1 B2     (all cycles of one experiment, then the next)
    interleaved  A1 B1 A2 B2     (one pass over all experiments per cycle)
    shuffled     B1 A1 A2 B2     (each cycle in its own seeded random order)
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.config.study import CycleOrder, StudyConfig
from llenergymeasure.errors import ConfigError
from llenergymeasure.study.grouping import RunGroup, group_runs
from llenergymeasure.study.load_times import estimate_basis
from llenergymeasure_contract.architecture import DTYPE_BYTES, resolve_architecture
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.reuse import engine_key
from llenergymeasure_contract.sizing import (
    MIN_STEADY_STATE_S,
    arrival_steady_state_duration_s,
    arrival_steady_state_n_prompts,
    steady_state_duration_s,
    steady_state_n_prompts,
)

#: Assumed sustained HBM bandwidth for the decode-time estimate (H100-class).
ASSUMED_BANDWIDTH_BYTES_PER_S = 2.0e12
#: Assumed fixed cost per run: container start, imports, model load from cache.
ASSUMED_STARTUP_S = 20.0


class RunKey(BaseModel):
    """One run: an experiment (by config hash) in one cycle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_hash: str
    cycle: int  # 1-based

    @property
    def run_id(self) -> str:
        """Stable run id; also the run's folder name."""
        return f"{self.config_hash}_c{self.cycle}"


class ExperimentEstimate(BaseModel):
    """Rough, clearly-labelled estimates for planning (not measurements)."""

    # an estimate that overflows is written as "Infinity" and read back as inf, not null
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    parameter_count: int | None = None
    weights_bytes: float | None = None
    kv_cache_bytes: float | None = None
    gpu_memory_bytes: float | None = None
    duration_s: float | None = None


class PlannedExperiment(BaseModel):
    """An experiment of the plan with the image that will run it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int  # 1-based, in expansion order
    config_hash: str
    source: str
    image: str
    config: ExperimentConfig
    params: dict[str, Any] = Field(default_factory=dict)  # what distinguishes it (display)
    estimate: ExperimentEstimate


class StudyPlan(BaseModel):
    """Everything ``llem run`` will do, in order."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    study: StudyConfig
    study_design_hash: str
    experiments: list[PlannedExperiment]
    runs: list[RunKey]
    estimated_duration_s: float | None = None
    notes: list[str] = Field(default_factory=list)
    # execution.reuse_engine: the runs sharing one loaded engine (every run in one group)
    groups: list[RunGroup] = Field(default_factory=list)
    estimate_basis: str | None = None  # how start-up and load were estimated

    def group_of(self, run_id: str) -> RunGroup | None:
        """The engine group holding ``run_id`` (None without engine reuse)."""
        for group in self.groups:
            if run_id in group.run_ids:
                return group
        return None

    def experiment(self, config_hash: str) -> PlannedExperiment:
        """The planned experiment with this hash."""
        for exp in self.experiments:
            if exp.config_hash == config_hash:
                return exp
        raise KeyError(config_hash)

    def to_json_dict(self) -> dict[str, Any]:
        """The ``--dry-run --json`` document."""
        return {
            "study": self.study.name,
            "source": self.study.source,
            "study_design_hash": self.study_design_hash,
            "execution": self.study.execution.model_dump(mode="json"),
            "runner": self.study.runner.model_dump(mode="json"),
            "results_dir": self.study.results_dir,
            "impact": self.study.impact.model_dump(mode="json"),
            "notify": self.study.notify.model_dump(mode="json"),
            "experiments": [
                {
                    "index": e.index,
                    "config_hash": e.config_hash,
                    "source": e.source,
                    "image": e.image,
                    "estimate": e.estimate.model_dump(mode="json"),
                    "config": e.config.model_dump(mode="json"),
                }
                for e in self.experiments
            ],
            "runs": [{"config_hash": r.config_hash, "cycle": r.cycle} for r in self.runs],
            "duplicates": [d.model_dump(mode="json") for d in self.study.duplicates],
            "estimated_duration_s": self.estimated_duration_s,
            "estimate_basis": self.estimate_basis,
            "groups": [g.model_dump(mode="json") for g in self.groups],
            "notes": list(self.notes),
        }


def plan_json(plan: StudyPlan) -> str:
    """``plan`` as the text of ``plan.json``, proven to read back as the same plan.

    ``--resume`` reads this file and refuses one it cannot trust; a plan that would not read
    back (a value the writer accepts and the reader refuses) is refused here, before anything
    runs, instead of stranding the study half way.

    Raises:
        ConfigError: the plan does not round-trip; names what differs.
    """
    text = plan.model_dump_json(indent=1)
    try:
        again = StudyPlan.model_validate_json(text).model_dump_json(indent=1)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        ]
        raise ConfigError(
            "the study's plan would not read back from plan.json, so it could not be resumed",
            source=plan.study.source,
            problems=problems,
            hint="please report this; change the values named above meanwhile",
        ) from exc
    if again != text:
        raise ConfigError(
            "the study's plan does not read back from plan.json unchanged, so it could not be "
            "resumed",
            source=plan.study.source,
            hint="please report this",
        )
    return text


def order_runs(hashes: list[str], n_cycles: int, order: CycleOrder, seed: int = 0) -> list[RunKey]:
    """The run order for ``hashes`` over ``n_cycles`` cycles (see the module docstring)."""
    # model_construct: hashes and cycles are ours, already valid; a 10k-run plan stays fast.
    make = RunKey.model_construct
    if order == "sequential":
        return [make(config_hash=h, cycle=c) for h in hashes for c in range(1, n_cycles + 1)]
    runs: list[RunKey] = []
    rng = random.Random(seed)
    for cycle in range(1, n_cycles + 1):
        cycle_hashes = list(hashes)
        if order == "shuffled":
            rng.shuffle(cycle_hashes)
        runs.extend(make(config_hash=h, cycle=cycle) for h in cycle_hashes)
    return runs


def _kv_dtype(config: ExperimentConfig) -> str:
    return REGISTRY.get(config.backend).kv_cache_dtype(config.backend_section)


class _HasCycle(Protocol):
    @property
    def cycle(self) -> int: ...


def gap_after(previous: _HasCycle, following: _HasCycle, order: CycleOrder) -> str:
    """Which thermal gap separates two consecutive runs: ``"cycle"`` or ``"config"``.

    With interleaved and shuffled orders a cycle is one pass over all experiments, so crossing
    into the next pass rests ``cycle_gap_s``. A sequential order has no passes (A1 A2 B1 B2):
    every step rests ``config_gap_s``.
    """
    if order != "sequential" and following.cycle != previous.cycle:
        return "cycle"
    return "config"


#: Continuous-batching engines need several batches' worth of requests for a steady state.
STEADY_STATE_MIN_BATCHES = 3


def planned_tokens_per_s(config: ExperimentConfig, estimate: ExperimentEstimate) -> float | None:
    """Full-batch output throughput from the decode roofline (weights + KV per step).

    Faster than real engines (the H200's 8B runs reached about half of it), so sizing from it
    errs towards more prompts than needed, never fewer.
    """
    if estimate.weights_bytes is None or estimate.kv_cache_bytes is None:
        return None
    step_s = (estimate.weights_bytes + estimate.kv_cache_bytes) / ASSUMED_BANDWIDTH_BYTES_PER_S
    return config.concurrency / step_s if step_s > 0 else None


def planned_lifetime_s(config: ExperimentConfig, estimate: ExperimentEstimate) -> float | None:
    """One request's lifetime: ``output_len`` decode steps at the roofline's full batch.

    A continuous-batching engine under arrivals keeps fewer than the full batch in flight, whose
    steps are shorter, so for vLLM/TensorRT-LLM this errs towards longer lifetimes (more
    prompts). Queueing is left out: a static batcher's first requests wait behind whole
    ``generate`` calls (PyTorch on the H200 lived 10-18 s at 4 req/s), so there it is a floor.
    None without an architecture to estimate from.
    """
    tokens_per_s = planned_tokens_per_s(config, estimate)
    if tokens_per_s is None:
        return None
    return config.resolved_output_len() * config.concurrency / tokens_per_s


def _arrival_note(p: PlannedExperiment) -> str | None:
    """The note for an open-loop experiment whose window will be under the minimum, else None.

    Sized with :func:`llenergymeasure_contract.sizing.arrival_steady_state_n_prompts`; without
    a lifetime estimate, lifetime 0 (a lower bound on the prompts needed).
    """
    cfg = p.config
    rate = cfg.traffic.rate_per_s
    if rate is None:
        return None
    lifetime = planned_lifetime_s(cfg, p.estimate)
    expected = arrival_steady_state_duration_s(cfg.n_prompts, rate, lifetime or 0.0)
    if expected >= MIN_STEADY_STATE_S:
        return None
    need = arrival_steady_state_n_prompts(rate, lifetime or 0.0)
    span = (cfg.n_prompts - 1) / rate
    head = f"experiment {p.index}: n_prompts {cfg.n_prompts} at {rate:g} req/s is {span:.0f} s of "
    invalid = f"a window under {MIN_STEADY_STATE_S:g} s is flagged invalid"
    ref = "(docs/traffic.md, 'Steady state')"
    if lifetime is None:
        return (
            f"{head}arrivals, a steady state of at most {expected:.0f} s (less one request "
            f"lifetime, unknown without the model's architecture; {invalid}); use n_prompts "
            f">= {need} or more {ref}"
        )
    return (
        f"{head}arrivals, a steady state of about {expected:.0f} s after a request lifetime of "
        f"about {lifetime:.1f} s at the roofline ({invalid}); use n_prompts >= {need} {ref}"
    )


def steady_state_notes(planned: list[PlannedExperiment]) -> list[str]:
    """Plan notes for experiments whose steady state will be too short.

    Open-loop arrivals (every backend): sized with
    :func:`llenergymeasure_contract.sizing.arrival_steady_state_n_prompts` (see
    :func:`_arrival_note`). Offline continuous batching, and closed loop on every backend (K =
    the users): sized with
    :func:`llenergymeasure_contract.sizing.steady_state_n_prompts` at the roofline throughput;
    without an architecture to size from, the rule of thumb of ``STEADY_STATE_MIN_BATCHES``
    batches applies.
    """
    notes: list[str] = []
    rough: list[int] = []
    for p in planned:
        cfg = p.config
        if cfg.traffic.open_loop:
            note = _arrival_note(p)
            if note is not None:
                notes.append(note)
            continue
        closed = cfg.traffic.pattern == "closed_loop"
        if cfg.backend not in ("vllm", "tensorrt") and not closed:
            continue
        # Closed loop (every backend): waves of the users, who keep at most the engine's batch
        # busy; the roofline's full-batch step time errs towards fewer tokens/s, more prompts.
        k = cfg.window_k
        out = cfg.resolved_output_len()
        rate = planned_tokens_per_s(cfg, p.estimate)
        if rate is not None and closed:
            rate *= min(k, cfg.concurrency) / cfg.concurrency
        if rate is None:
            if cfg.n_prompts < STEADY_STATE_MIN_BATCHES * k:
                rough.append(p.index)
            continue
        expected = steady_state_duration_s(cfg.n_prompts, k, out, rate)
        if expected < MIN_STEADY_STATE_S:
            need = steady_state_n_prompts(k, out, rate)
            users = f" with {k} closed-loop users" if closed else ""
            notes.append(
                f"experiment {p.index}: n_prompts {cfg.n_prompts}{users} gives a steady state of "
                f"about {expected:.0f} s at the roofline's {rate:,.0f} output tok/s (a window "
                f"under {MIN_STEADY_STATE_S:g} s is flagged invalid); use n_prompts >= {need} "
                "(docs/methodology.md, 'Steady state')"
            )
    if rough:
        notes.append(
            f"experiments {', '.join(map(str, rough[:20]))}{' ...' if len(rough) > 20 else ''}: "
            f"n_prompts < {STEADY_STATE_MIN_BATCHES} x concurrency, so the continuous-batching "
            "steady-state window will be flagged too short; raise n_prompts"
        )
    return notes


def serving_mode_notes(planned: list[PlannedExperiment]) -> list[str]:
    """A note when a study compares vLLM in-process with ``vllm serve`` on vLLM's defaults.

    vLLM resolves ``max_num_batched_tokens`` by how it is started (the offline ``LLM`` class
    chose 16384 and ``vllm serve`` 8192 on the H200, docs/traffic.md), so unless it is set the
    two modes run different schedulers.
    """
    vllm = [p for p in planned if p.config.backend == "vllm"]
    served = [p.index for p in vllm if p.config.server is not None]
    local = [p.index for p in vllm if p.config.server is None]
    unset = [
        p.index
        for p in vllm
        if getattr(p.config.backend_section, "max_num_batched_tokens", None) is None
    ]
    if not served or not local or not unset:
        return []
    shown = ", ".join(map(str, unset[:20])) + (" ..." if len(unset) > 20 else "")
    return [
        f"experiments {shown}: vLLM in-process and through `vllm serve` without "
        "vllm.max_num_batched_tokens: vLLM picks a different default for each (16384 and 8192 "
        "for 0.26), so set it to compare the two modes on one scheduler budget "
        "(docs/traffic.md, 'Server mode')"
    ]


def estimate_experiment(config: ExperimentConfig) -> ExperimentEstimate:
    """Memory from the architecture (weights + KV cache); duration from a decode roofline."""
    try:
        arch = resolve_architecture(config.model)
    except Exception:  # a bad path is reported by the loader, not here
        arch = None
    if arch is None:
        return ExperimentEstimate()
    dtype_bytes = DTYPE_BYTES.get(config.precision, 2.0)
    weight_bytes = dtype_bytes
    quant = getattr(config.backend_section, "quantization", None)
    if quant:
        q = str(quant).lower()
        weight_bytes = 0.5 if ("4" in q or "awq" in q or "gptq" in q) else 1.0
    kv_elem = dtype_bytes
    if _kv_dtype(config).startswith("fp8"):
        kv_elem = 1.0
    seq_len = config.resolved_input_len() + config.resolved_output_len()
    mem = arch.memory_estimate_bytes(
        weight_bytes_per_param=weight_bytes,
        kv_bytes_per_elem=kv_elem,
        concurrency=config.concurrency,
        seq_len=seq_len,
    )
    n_steps = -(-config.n_prompts // config.concurrency) * config.resolved_output_len()
    step_s = mem["weights_bytes"] / ASSUMED_BANDWIDTH_BYTES_PER_S
    warmup_steps = config.warmup.n_batches * config.resolved_output_len()
    baseline_s = config.baseline.duration_s if config.baseline.enabled else 0.0
    measure_s = n_steps * step_s
    rate = config.traffic.rate_per_s
    if rate:  # arriving traffic: the run lasts at least as long as the arrivals do
        measure_s = max(measure_s, (config.n_prompts - 1) / rate)
    duration = ASSUMED_STARTUP_S + baseline_s + warmup_steps * step_s + measure_s
    return ExperimentEstimate(
        parameter_count=arch.parameter_count,
        weights_bytes=mem["weights_bytes"],
        kv_cache_bytes=mem["kv_cache_bytes"],
        gpu_memory_bytes=mem["total_bytes"],
        duration_s=duration,
    )


def _estimates(configs: list[ExperimentConfig]) -> list[ExperimentEstimate]:
    cache: dict[str, ExperimentEstimate] = {}
    out = []
    for cfg in configs:
        section = cfg.backend_section
        key = "|".join(
            str(x)
            for x in (
                cfg.model,
                cfg.precision,
                cfg.concurrency,
                cfg.n_prompts,
                getattr(section, "quantization", None),
                _kv_dtype(cfg),
                cfg.resolved_input_len(),
                cfg.resolved_output_len(),
                cfg.warmup.n_batches,
                cfg.baseline.enabled,
                cfg.baseline.duration_s,
                cfg.traffic.rate_per_s,
            )
        )
        if key not in cache:
            cache[key] = estimate_experiment(cfg)
        out.append(cache[key])
    return out


def build_plan(
    study: StudyConfig,
    *,
    image_for: dict[str, str] | None = None,
    startups: Mapping[str, float] | None = None,
) -> StudyPlan:
    """Plan ``study``: order its runs and attach images and estimates.

    Args:
        study: The expanded study.
        image_for: backend -> image reference; defaults come from
            :func:`llenergymeasure.images.default_image` and the study's ``images:``.
        startups: engine key -> start-up and load seconds of earlier runs on this host
            (:mod:`llenergymeasure.study.load_times`); the estimate assumes
            ``ASSUMED_STARTUP_S`` for the others.
    """
    images = dict(image_for or {})
    for backend in {e.backend for e in study.experiments}:
        if backend not in images:
            images[backend] = resolve_image(study, backend)
    n = len(study.experiments)
    sources = study.experiment_sources or [""] * n
    params = study.experiment_params or [{}] * n
    estimates = _estimates(study.experiments)
    planned = [
        PlannedExperiment.model_construct(
            index=i,
            config_hash=exp.config_hash,
            source=src,
            image=images[exp.backend],
            config=exp,
            estimate=est,
            params=prm,
        )
        for i, (exp, src, prm, est) in enumerate(
            zip(study.experiments, sources, params, estimates, strict=True), start=1
        )
    ]
    ex = study.execution
    runs = order_runs(
        [p.config_hash for p in planned], ex.n_cycles, ex.cycle_order, ex.shuffle_seed
    )
    keys: dict[str, str] = {}
    groups: list[RunGroup] = []
    group_note = None
    if ex.reuse_engine or startups:
        keys = {p.config_hash: engine_key(p.config) for p in planned}
    if ex.reuse_engine:
        runs, groups, group_note = group_runs(runs, keys, ex.cycle_order)
    # start-up is paid by the first run of each group (every run without reuse)
    pays = {g.run_ids[0] for g in groups}
    durations = {p.config_hash: p.estimate.duration_s for p in planned}
    total: float | None = 0.0
    for i, run in enumerate(runs):
        d = durations[run.config_hash]
        if d is None or total is None:
            total = None
            break
        startup = (startups or {}).get(keys.get(run.config_hash, ""), ASSUMED_STARTUP_S)
        paid = not groups or run.run_id in pays
        total += d - ASSUMED_STARTUP_S + (startup if paid else 0.0)
        if i + 1 < len(runs):
            kind = gap_after(run, runs[i + 1], ex.cycle_order)
            total += ex.cycle_gap_s if kind == "cycle" else ex.config_gap_s
    notes = [
        f"{d.source} duplicates {d.same_as} (config {d.config_hash}); it runs once"
        for d in study.duplicates
    ]
    notes.extend(steady_state_notes(planned))
    notes.extend(serving_mode_notes(planned))
    if group_note is not None:
        notes.append(group_note)
    loads = [g.engine_key for g in groups] or [keys.get(r.config_hash, "") for r in runs]
    return StudyPlan.model_construct(
        study=study,
        study_design_hash=study.study_design_hash,
        experiments=planned,
        runs=runs,
        estimated_duration_s=total,
        notes=notes,
        groups=groups,
        estimate_basis=estimate_basis(startups or {}, loads, ASSUMED_STARTUP_S),
    )


def resolve_image(study: StudyConfig, backend: str) -> str:
    """The image for ``backend``: the study's/user's override, else the default tag."""
    if backend in study.runner.images:
        return study.runner.images[backend]
    from llenergymeasure.images import default_image

    return default_image(backend, cuda_major=study.runner.cuda_major)
