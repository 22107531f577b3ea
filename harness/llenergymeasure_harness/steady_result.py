"""The run's steady-state window in the result: which window, its energy, its quality flag and
the ``n_prompts`` an invalid one suggests.

Used by :mod:`~llenergymeasure_harness.assemble`; the public names are re-exported from
:mod:`~llenergymeasure_harness.experiment`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.sizing import arrival_steady_state_n_prompts, steady_state_n_prompts
from llenergymeasure_contract.windows import WindowProblem
from llenergymeasure_harness.backends.steady_state import SteadyStateWindow
from llenergymeasure_harness.energy.sampler import integrate_power


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


def window_energy(
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


def steady_state_section(
    cfg: ExperimentConfig,
    *,
    records: list[Any],
    w: SteadyStateWindow,
    energy_of: Callable[[float, float], float | None],
) -> dict[str, Any] | None:
    """The steady-state section of the result from the run's window (:func:`measured_window`),
    energy from scaled integrated power (:func:`window_energy`)."""
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
