"""Rendering of ``llem results show`` (plain text that fits the terminal) and ``compare``."""

from __future__ import annotations

import sys

from llenergymeasure.analysis import bootstrap
from llenergymeasure.analysis.bootstrap import NOT_MEASURED
from llenergymeasure.analysis.compare import Comparison
from llenergymeasure.analysis.lora import LoraRow
from llenergymeasure.analysis.table import (
    QUALITY_SHOW_METRICS,
    SHOW_METRICS,
    TRAFFIC_SHOW_METRICS,
    ExperimentRow,
    LoadedStudy,
    fmt_interval,
    fmt_value,
    show_metrics,
    steady_state_lines,
)
from llenergymeasure.analysis.workload import workload_lines
from llenergymeasure.results.stats import Interval
from llenergymeasure.textable import Column, Table, fit_table, term_width, wrap_pairs, wrap_text


def row_params(r: ExperimentRow) -> dict[str, object]:
    """The row's identity and swept values, as one ``key -> value`` mapping for a table."""
    return {"backend": r.backend, "model": r.model, "precision": r.precision, **r.params}


def fmt_compact(iv: Interval) -> str:
    """``mean ±x%`` (the wider side of the 95 % interval), the mean alone, or not measured."""
    if iv.mean is None:
        return NOT_MEASURED
    if not iv.has_interval or iv.mean == 0:
        return fmt_value(iv.mean)
    assert iv.low is not None and iv.high is not None
    half = max(iv.high - iv.mean, iv.mean - iv.low) / abs(iv.mean)
    spread = f"{half:.1%}" if half < 0.1 else f"{half:.0%}"
    return f"{fmt_value(iv.mean)} ±{spread}"


#: The default columns of ``results show``: metric, title, priority (higher: dropped first).
COMPACT_METRICS: tuple[tuple[str, str, int], ...] = (
    ("j_per_output_token", "J/out tok", 0),
    ("output_tokens_per_s", "out tok/s", 0),
    ("ttft_p50_s", "TTFT p50 s", 1),
)


def show_lines(study: LoadedStudy, width: int | None = None, *, wide: bool = False) -> list[str]:
    """The lines of ``llem results show``: title, table, flags and the method."""
    res = study.result
    rows = study.rows
    width = term_width() if width is None else width
    limit = 10_000 if wide else width
    out = wrap_text(
        f"{res.study_name} ({res.study_id}): {res.state}, "
        f"{res.n_completed}/{res.n_runs} runs completed",
        limit,
    )
    columns: list[Column] = []
    if wide:
        columns.append(Column("experiment", [r.config_hash[:10] for r in rows]))
        for metric, title in show_metrics(rows):
            cells = [fmt_interval(r.interval(metric)) for r in rows]
            columns.append(Column(f"{title}\nmean [95 % CI]", cells, right=True))
        cv = [r.stats.j_per_output_token_cv for r in rows]
        columns.append(
            Column("CV J/tok", ["—" if v is None else f"{v:.1%}" for v in cv], right=True)
        )
    else:
        compact = COMPACT_METRICS
        shown = show_metrics(rows)
        if any(m in shown for m in TRAFFIC_SHOW_METRICS):  # arriving traffic, if room
            compact += tuple((m, t, 2) for m, t in TRAFFIC_SHOW_METRICS)
        if any(m in shown for m in QUALITY_SHOW_METRICS):  # a quality: section
            compact += tuple((m, t, 1) for m, t in QUALITY_SHOW_METRICS)
        for metric, title, priority in compact:
            ivs = [r.interval(metric) for r in rows]
            if metric != "j_per_output_token" and all(iv.mean is None for iv in ivs):
                continue  # not measured anywhere (TTFT offline): no column of blanks
            columns.append(Column(title, [fmt_compact(iv) for iv in ivs], True, priority))
    columns.append(
        Column("cycles", [f"{r.stats.n_cycles_completed}/{r.n_runs}" for r in rows], True)
    )
    if wide:
        columns.append(Column("flags", [", ".join(r.flags) or "—" for r in rows]))
    notes: list[str] = []
    if not wide:
        notes.extend(f"flags #{r.index}: {', '.join(r.flags)}" for r in rows if r.flags)
    notes.extend(steady_state_lines(study))  # each under 80 columns
    notes.extend(workload_lines(study))
    notes.append(_method_line(wide))
    table = Table(
        numbers=[str(r.index) for r in rows],
        params=[row_params(r) for r in rows],
        columns=columns,
        param_order=("backend", "model", "precision"),
        notes=notes,
    )
    out.extend(fit_table(table, width, wide=wide))
    return out


def render_show(study: LoadedStudy, *, wide: bool = False, width: int | None = None) -> None:
    """Print ``llem results show`` (fits ``width``, the terminal's by default)."""
    sys.stdout.write("\n".join(show_lines(study, width, wide=wide)) + "\n")


def _method_line(wide: bool = True) -> str:
    interval = (
        "mean [95 % CI]"
        if wide
        else "mean ±x%: the wider side of the 95 % CI; no ±: fewer than "
        f"{bootstrap.MIN_CYCLES} cycles (--wide: the intervals and every column)"
    )
    return (
        f"{interval}. 95 % CI: percentile bootstrap of the mean over cycles "
        f"({bootstrap.N_RESAMPLES:,} resamples, seed {bootstrap.SEED}); below "
        f"{bootstrap.MIN_CYCLES} cycles: not enough cycles. high_cycle_cv: CV of J/output token > "
        f"{bootstrap.CV_THRESHOLD:.0%} (_throughput: output tok/s; _ttft, _tpot: their p50)."
    )


def compare_lines(cmp: Comparison, width: int | None = None, *, wide: bool = False) -> list[str]:
    """The comparison as lines that fit ``width`` (``wide``: every column, whatever the width):
    rows, ratios, overlap, environment."""
    width = term_width() if width is None else width
    titles = dict(SHOW_METRICS + TRAFFIC_SHOW_METRICS + QUALITY_SHOW_METRICS)
    study_no = {sid: i for i, sid in enumerate(cmp.studies, start=1)}
    out = wrap_text(f"compared by {', '.join(cmp.by)}; baseline: row {cmp.baseline_index}", width)
    columns = [
        Column(
            "cycles", [f"{r.row.stats.n_cycles_completed}/{r.row.n_runs}" for r in cmp.rows], True
        )
    ]
    for i, m in enumerate(cmp.metrics):
        cells = []
        for r in cmp.rows:
            c = r.metrics[m]
            ratio = "—" if c.ratio is None else f"×{fmt_value(c.ratio)}"
            ov = "base" if c.overlap == "baseline" else f"ov {c.overlap}"
            cells.append(f"{fmt_compact(c.interval)}\n{ratio}, {ov}")
        # the first metric always shows; the others, rightmost first, only where they fit
        columns.append(Column(titles.get(m, m), cells, right=True, priority=min(i, 1)))
    params = [
        {k: (f"S{study_no[r.row.study_id]}" if k == "study" else r.label[k]) for k in cmp.by}
        for r in cmp.rows
    ]
    notes = [
        f"flags #{i}: {', '.join(r.row.flags)}" for i, r in enumerate(cmp.rows, 1) if r.row.flags
    ]
    table = Table(
        numbers=[f"{i}{'*' if r.is_baseline else ''}" for i, r in enumerate(cmp.rows, 1)],
        params=params,
        columns=columns,
        param_order=cmp.by,
        notes=notes,
    )
    out.extend(fit_table(table, width, wide=wide))
    if len(cmp.studies) > 1:
        out.extend(wrap_pairs("studies: ", [f"S{i}={sid}" for sid, i in study_no.items()], width))
        if cmp.environment_differences:
            out.append("environment differences between the studies")
            for fact, values in cmp.environment_differences.items():
                shown = [f"S{study_no[sid]}={v}" for sid, v in values.items()]
                out.extend(wrap_pairs(f"  {fact}: ", shown, width))
        else:
            out.append("environment: the same in every study (host, GPUs, versions)")
    out.extend(
        wrap_text(
            "*: the baseline. Each cell: mean ±x% (the wider side of the 95 % CI), then the ratio "
            "to the baseline's mean and whether the two 95 % intervals overlap (no: a "
            "difference beyond the cycle-to-cycle spread; ?: an interval is missing).",
            width,
            indent="  ",
        )
    )
    return out


def render_compare(cmp: Comparison, width: int | None = None, *, wide: bool = False) -> None:
    """Print the comparison (fits ``width``, the terminal's by default; ``wide``: no limit)."""
    sys.stdout.write("\n".join(compare_lines(cmp, width, wide=wide)) + "\n")


def lora_lines(rows: list[LoraRow], width: int | None = None, *, wide: bool = False) -> list[str]:
    """LoRA experiments beside their no-adapter base, within ``width`` (none: no lines)."""
    if not rows:
        return []
    width = term_width() if width is None else width

    def f(v: float | None) -> str:
        return NOT_MEASURED if v is None else fmt_value(v)

    def ratio(v: float | None) -> str:
        return "—" if v is None else f"×{fmt_value(v)}"

    columns = [
        Column("adapters", [str(r.n_adapters) for r in rows], True),
        Column("J/out tok", [f(r.j_per_output_token) for r in rows], True),
        Column("base J/tok", [f(r.base_j_per_output_token) for r in rows], True),
        Column("J ratio", [ratio(r.j_ratio) for r in rows], True, 1),
        Column("out tok/s", [f(r.output_tokens_per_s) for r in rows], True),
        Column("base tok/s", [f(r.base_output_tokens_per_s) for r in rows], True, 1),
        Column("tok/s ratio", [ratio(r.throughput_ratio) for r in rows], True, 1),
    ]
    table = Table(
        numbers=[str(i) for i in range(1, len(rows) + 1)],
        params=[{"config": r.config_hash[:10]} for r in rows],
        columns=columns,
        param_order=("config",),
    )
    out = ["LoRA adapters against the same study's run without them"]
    out.extend(fit_table(table, width, wide=wide))
    if any(r.max_adapters_running is not None for r in rows):  # vLLM reported its adapters
        cells = [
            f"{i}: {NOT_MEASURED if r.max_adapters_running is None else r.max_adapters_running}"
            for i, r in enumerate(rows, start=1)
        ]
        out.extend(
            wrap_text(
                "most adapters in flight at one engine step (vllm:lora_requests_info), by row: "
                + ", ".join(cells),
                width,
            )
        )
    out.extend(
        wrap_text(
            "base: the same config without lora: (— none in the study); requests per adapter "
            "and per-adapter energy in --json and the exports; the engine's adapter counts, "
            "and where each came from, in --json.",
            width,
        )
    )
    return out


def render_lora(rows: list[LoraRow], width: int | None = None, *, wide: bool = False) -> None:
    """Print :func:`lora_lines` (nothing when no experiment has adapters)."""
    lines = lora_lines(rows, width, wide=wide)
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
