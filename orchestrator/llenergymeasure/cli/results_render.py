"""Rich rendering of ``llem results show`` and ``llem results compare``."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llenergymeasure.analysis import bootstrap
from llenergymeasure.analysis.compare import Comparison
from llenergymeasure.analysis.lora import LoraRow
from llenergymeasure.analysis.table import (
    SHOW_METRICS,
    TRAFFIC_SHOW_METRICS,
    LoadedStudy,
    fmt_interval,
    fmt_value,
    params_label,
    show_metrics,
    steady_state_lines,
)


def render_show(study: LoadedStudy, console: Console | None = None) -> None:
    """The experiment table of one study, then the method line."""
    con = console or Console(highlight=False)
    res = study.result
    table = Table(
        title=f"{res.study_name} ({res.study_id}): {res.state}, "
        f"{res.n_completed}/{res.n_runs} runs completed"
    )
    for col in ("#", "experiment", "backend", "parameters", "cycles"):
        table.add_column(col)
    columns = show_metrics(study.rows)
    for _, title in columns:
        table.add_column(f"{title}\nmean [95 % CI]", justify="right")
    table.add_column("CV J/tok", justify="right")
    table.add_column("flags")
    for i, r in enumerate(study.rows, start=1):
        cv = r.stats.j_per_output_token_cv
        table.add_row(
            str(i),
            r.config_hash[:10],
            r.backend or "",
            escape(params_label(r.params)),
            f"{r.stats.n_cycles_completed}/{r.n_runs}",
            *(fmt_interval(r.interval(m)) for m, _ in columns),
            "—" if cv is None else f"{cv:.1%}",
            escape(", ".join(r.flags)) or "—",
        )
    con.print(table)
    for line in steady_state_lines(study):
        con.print(escape(line))
    con.print(_method_line())


def _method_line() -> str:
    return (
        f"95 % CI: percentile bootstrap of the mean over cycles ({bootstrap.N_RESAMPLES:,} "
        f"resamples, seed {bootstrap.SEED}); below {bootstrap.MIN_CYCLES} cycles: not enough "
        f"cycles. high_cycle_cv: CV of J/output token > {bootstrap.CV_THRESHOLD:.0%}. "
        "—: not measured."
    )


def render_compare(cmp: Comparison, console: Console | None = None) -> None:
    """The comparison table, then the environment differences."""
    con = console or Console(highlight=False)
    table = Table(title=f"compared by {', '.join(cmp.by)}; baseline: row {cmp.baseline_index}")
    table.add_column("#")
    for k in cmp.by:
        table.add_column(k)
    table.add_column("cycles")
    titles = dict(SHOW_METRICS + TRAFFIC_SHOW_METRICS)
    for m in cmp.metrics:
        table.add_column(f"{titles.get(m, m)}\nmean [95 % CI]\n× base, overlap", justify="right")
    table.add_column("flags")
    for i, r in enumerate(cmp.rows, start=1):
        cells = [f"{i}{' (base)' if r.is_baseline else ''}"]
        cells += [escape(str(r.label[k])) for k in cmp.by]
        cells.append(f"{r.row.stats.n_cycles_completed}/{r.row.n_runs}")
        for m in cmp.metrics:
            c = r.metrics[m]
            ratio = "—" if c.ratio is None else f"{fmt_value(c.ratio)}×"
            ov = "baseline" if c.overlap == "baseline" else f"overlap {c.overlap}"
            cells.append(f"{fmt_interval(c.interval)}\n{ratio}, {ov}")
        cells.append(escape(", ".join(r.row.flags)) or "—")
        table.add_row(*cells)
    con.print(table)
    if len(cmp.studies) > 1:
        if cmp.environment_differences:
            con.print("[bold]environment differences between the studies[/bold]")
            for fact, values in cmp.environment_differences.items():
                shown = "; ".join(f"{sid}: {v}" for sid, v in values.items())
                con.print(f"  {escape(fact)}: {escape(shown)}")
        else:
            con.print("environment: the same in every study (host, GPUs, versions)")
    con.print(
        "overlap: whether the row's 95 % interval overlaps the baseline's "
        "(no: a difference beyond the cycle-to-cycle spread; ?: an interval is missing)."
    )


def render_lora(rows: list[LoraRow], console: Console | None = None) -> None:
    """LoRA experiments beside their no-adapter base (nothing when there are none)."""
    if not rows:
        return
    con = console or Console(highlight=False)
    table = Table(title="LoRA adapters against the same study's run without them")
    for col in ("config", "adapters", "J/tok", "base J/tok", "×", "tok/s", "base tok/s", "×"):
        table.add_column(col, justify="left" if col == "config" else "right")

    def f(v: float | None) -> str:
        return "—" if v is None else fmt_value(v)

    for r in rows:
        table.add_row(
            r.config_hash[:10],
            str(r.n_adapters),
            f(r.j_per_output_token),
            f(r.base_j_per_output_token),
            f(r.j_ratio),
            f(r.output_tokens_per_s),
            f(r.base_output_tokens_per_s),
            f(r.throughput_ratio),
        )
    con.print(table)
    con.print(
        "base: the same config without lora: (— none in the study); requests per adapter and "
        "per-adapter energy in --json and the exports."
    )
