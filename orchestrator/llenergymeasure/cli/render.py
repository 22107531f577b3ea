"""Rendering for the CLI: the dry-run plan as a table, and sizes and durations for humans.

The plan table fits the terminal (:mod:`llenergymeasure.textable`): the parameters that vary
get a column (or a legend line per experiment), the rest are said once. It is formatted by
hand rather than with ``rich.table``: a 10,000-experiment sweep must print in well under a
second (see ``benchmarks/bench_dry_run.py``).
"""

from __future__ import annotations

from typing import Any

from llenergymeasure.study.grouping import group_lines
from llenergymeasure.study.plan import PlannedExperiment, StudyPlan
from llenergymeasure.study.progress import fmt_duration
from llenergymeasure.textable import (
    Column,
    Table,
    fit_table,
    term_width,
    wrap_pairs,
    wrap_text,
)


def fmt_bytes(n: float | None) -> str:
    """Human-readable bytes (GiB/MiB), or '?' when unknown."""
    if n is None:
        return "?"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def _row_params(e: PlannedExperiment, concurrency_path: dict[str, str]) -> dict[str, Any]:
    """What identifies the experiment in the table: backend, model, precision, swept keys,
    and (when not swept) its concurrency key and n_prompts."""
    cfg = e.config
    out: dict[str, Any] = {"backend": cfg.backend, "model": cfg.model, "precision": cfg.precision}
    out.update(e.params)
    out.setdefault(concurrency_path[cfg.backend], cfg.concurrency)
    out.setdefault("n_prompts", cfg.n_prompts)
    return out


def plan_lines(plan: StudyPlan, width: int | None = None, *, wide: bool = False) -> list[str]:
    """The plan table, fitted to ``width`` (the terminal's by default; see textable)."""
    from llenergymeasure_contract.registry import REGISTRY

    exps = plan.experiments
    paths = {spec.name: spec.concurrency_path for spec in REGISTRY}
    columns = []
    if wide:
        columns.append(Column("config", [e.config_hash[:10] for e in exps]))
        columns.append(Column("image", [e.image for e in exps]))
    columns.append(Column("GPU mem", [fmt_bytes(e.estimate.gpu_memory_bytes) for e in exps], True))
    columns.append(Column("est. time", [fmt_duration(e.estimate.duration_s) for e in exps], True))
    table = Table(
        numbers=[str(e.index) for e in exps],
        params=[_row_params(e, paths) for e in exps],
        columns=columns,
        param_order=("backend", "model", "precision"),
        same_title="every experiment",
    )
    lines = fit_table(table, width, wide=wide)
    if not wide:
        images = dict.fromkeys(f"{e.config.backend}={e.image}" for e in exps)
        lines.extend(wrap_pairs("image: ", list(images), term_width() if width is None else width))
    return lines


def plan_table(plan: StudyPlan, width: int | None = None, *, wide: bool = False) -> str:
    """The plan as an aligned plain-text table plus a summary, within ``width``."""
    width = term_width() if width is None else width
    limit = 10_000 if wide else width
    lines = plan_lines(plan, width, wide=wide)
    ex = plan.study.execution
    lines.append("")
    said = [
        f"study {plan.study.name!r}  design {plan.study_design_hash}  "
        f"experiments {len(plan.experiments)}  cycles {ex.n_cycles} ({ex.cycle_order})  "
        f"total runs {len(plan.runs)}",
        f"gaps: {ex.config_gap_s:g} s between experiments, {ex.cycle_gap_s:g} s between cycles; "
        f"estimated duration incl. gaps: {fmt_duration(plan.estimated_duration_s)} "
        "(rough: decode roofline at ~2 TB/s + start-up per engine load)",
        f"runner: {plan.study.runner.runner}   results: {plan.study.results_dir}",
        *(f"note: {n}" for n in plan.notes),
        *([f"estimate: {plan.estimate_basis}"] if plan.estimate_basis else []),
    ]
    for text in said:
        lines.extend(wrap_text(text, limit, indent="  "))
    for text in group_lines(plan.groups, {e.config_hash: e.index for e in plan.experiments}):
        lines.extend(wrap_text(text, limit, indent="    "))
    return "\n".join(lines)
