"""Rendering for the CLI: the dry-run plan as a table, and sizes and durations for humans.

The plan table is formatted by hand rather than with ``rich.table``: a 10,000-experiment sweep
must print in well under a second (see ``benchmarks/bench_dry_run.py``).
"""

from __future__ import annotations

from llenergymeasure.study.grouping import group_lines
from llenergymeasure.study.plan import PlannedExperiment, StudyPlan


def fmt_bytes(n: float | None) -> str:
    """Human-readable bytes (GiB/MiB), or '?' when unknown."""
    if n is None:
        return "?"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def fmt_duration(seconds: float | None) -> str:
    """Human-readable duration, or '?' when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


_COLUMNS = ("backend", "model", "precision")


def _params(e: PlannedExperiment) -> str:
    shown = {k: v for k, v in e.params.items() if k not in _COLUMNS}
    if shown:
        return ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"concurrency={e.config.concurrency}, n_prompts={e.config.n_prompts}"


def plan_table(plan: StudyPlan) -> str:
    """The plan as an aligned plain-text table plus a summary."""
    header = [
        "#",
        "config",
        "backend",
        "model",
        "precision",
        "parameters",
        "image",
        "GPU mem",
        "est. time",
    ]
    rows: list[list[str]] = []
    for e in plan.experiments:
        cfg = e.config
        params = _params(e)
        rows.append(
            [
                str(e.index),
                e.config_hash[:10],
                cfg.backend,
                cfg.model if len(cfg.model) <= 32 else "…" + cfg.model[-31:],
                cfg.precision,
                params,
                e.image,
                fmt_bytes(e.estimate.gpu_memory_bytes),
                fmt_duration(e.estimate.duration_s),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    ex = plan.study.execution
    lines.append("")
    lines.append(
        f"study {plan.study.name!r}  design {plan.study_design_hash}  "
        f"experiments {len(plan.experiments)}  cycles {ex.n_cycles} ({ex.cycle_order})  "
        f"total runs {len(plan.runs)}"
    )
    lines.append(
        f"gaps: {ex.config_gap_s:g} s between experiments, {ex.cycle_gap_s:g} s between cycles; "
        f"estimated duration incl. gaps: {fmt_duration(plan.estimated_duration_s)} "
        "(rough: decode roofline at ~2 TB/s + start-up per engine load)"
    )
    lines.append(f"runner: {plan.study.runner.runner}   results: {plan.study.results_dir}")
    lines.extend(f"note: {n}" for n in plan.notes)
    if plan.estimate_basis:
        lines.append(f"estimate: {plan.estimate_basis}")
    lines.extend(group_lines(plan.groups, {e.config_hash: e.index for e in plan.experiments}))
    return "\n".join(lines)
