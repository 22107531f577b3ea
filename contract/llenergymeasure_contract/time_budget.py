"""Where a run's wall time went: :func:`run_time_breakdown` over a result's ``timings``.

The parts, in seconds::

    load          engine load (and build); a run that reused a loaded engine: its re-bind
    warmup        warmup requests (never measured)
    baseline      idle-power baseline (0 when it came from the cache)
    measure       the measured window
    prefill_pass  the prefill-only pass after the window (phase energy)
    quality       quality tasks, when the experiment has any
    gaps          thermal rests inside the run's container (engine groups only)
    other         the rest of the harness's time (set-up, result assembly)

A part that was not timed is 0 here (it took no time in this run), and ``other`` is what
``total_s`` leaves over, never negative.

:func:`sum_load_breakdowns` adds up the parts of the loads themselves (``Timings.
load_breakdown_s``, vLLM), over the runs that reported them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from llenergymeasure_contract.results import LoadBreakdown, Timings

#: The parts of a breakdown, in timeline order.
BREAKDOWN_PARTS: tuple[str, ...] = (
    "load",
    "warmup",
    "baseline",
    "measure",
    "prefill_pass",
    "quality",
    "gaps",
    "other",
)


def _seconds(timings: Timings, name: str) -> float:
    value = getattr(timings, name, None)
    return float(value) if isinstance(value, int | float) else 0.0


def run_time_breakdown(timings: Timings) -> dict[str, float]:
    """The run's wall time split into :data:`BREAKDOWN_PARTS` (seconds)."""
    parts = {
        "load": _seconds(timings, "load_s"),
        "warmup": _seconds(timings, "warmup_s"),
        "baseline": _seconds(timings, "baseline_s"),
        "measure": _seconds(timings, "measure_s"),
        "prefill_pass": _seconds(timings, "prefill_pass_s"),
        "quality": _seconds(timings, "evaluation_s"),  # the quality: evaluation pass
        "gaps": _seconds(timings, "gap_s"),
    }
    parts["other"] = max(0.0, _seconds(timings, "total_s") - sum(parts.values()))
    return parts


def sum_breakdowns(breakdowns: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Part-wise sum of several breakdowns (every part present, 0 when none had it)."""
    total = dict.fromkeys(BREAKDOWN_PARTS, 0.0)
    for b in breakdowns:
        for part in BREAKDOWN_PARTS:
            total[part] += float(b.get(part, 0.0))
    return total


#: The parts of a vLLM load (``LoadBreakdown`` fields without ``_s``), in timeline order.
LOAD_PARTS: tuple[str, ...] = tuple(
    name.removesuffix("_s") for name in LoadBreakdown.model_fields if name.endswith("_s")
)


def sum_load_breakdowns(timings: Iterable[Timings]) -> dict[str, float] | None:
    """Part-wise sum of the runs' ``load_breakdown_s`` (a part none saw is left out); None
    when no run reported one."""
    total: dict[str, float] = {}
    seen = False
    for t in timings:
        if t.load_breakdown_s is None:
            continue
        seen = True
        for part in LOAD_PARTS:
            value = getattr(t.load_breakdown_s, f"{part}_s")
            if value is not None:
                total[part] = total.get(part, 0.0) + float(value)
    if not seen:
        return None
    return {part: round(total[part], 3) for part in LOAD_PARTS if part in total}


def measuring_fraction(measure_s: float, time_in_runs_s: float, gaps_s: float) -> float | None:
    """Measured-window time over the time spent in runs, thermal rests left out.

    ``time_in_runs_s`` is the wall time of every run (container start to exit, so load,
    warmup, baseline, prefill pass and start-up all count against it) and ``gaps_s`` the
    rests inside it; None when no time was spent in runs.
    """
    busy = time_in_runs_s - gaps_s
    if busy <= 0:
        return None
    return min(1.0, measure_s / busy)


__all__ = [
    "BREAKDOWN_PARTS",
    "LOAD_PARTS",
    "measuring_fraction",
    "run_time_breakdown",
    "sum_breakdowns",
    "sum_load_breakdowns",
]
