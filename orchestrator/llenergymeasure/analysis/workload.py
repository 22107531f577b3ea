"""What each experiment's requests looked like: lengths asked for and made, the profile.

Read from the ``workload`` block of each experiment's first completed ``result.json``
(:class:`~llenergymeasure_contract.lengths.WorkloadOutcome`); ``llem results show`` prints
:func:`workload_lines` under its table and the HTML report draws :func:`workload_histograms`.
"""

from __future__ import annotations

import textwrap
from typing import Any

from llenergymeasure.analysis.table import LoadedStudy
from llenergymeasure_contract.lengths import LengthStats, WorkloadOutcome

WIDTH = 80


def experiment_workloads(study: LoadedStudy) -> list[tuple[int, str, WorkloadOutcome]]:
    """``(row number, config hash, workload)`` for each experiment whose result has one."""
    out = []
    for i, row in enumerate(study.rows, start=1):
        for run in study.result.runs:
            if run.config_hash != row.config_hash:
                continue
            res = study.run_result(run)
            if res is not None and res.workload is not None:
                out.append((i, row.config_hash, res.workload))
                break
    return out


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}" if abs(v) >= 10 else f"{v:.3g}"


def fmt_stats(s: LengthStats) -> str:
    """``mean 400 p50 326 p90 810 p99 1,868 max 4,096``."""
    return " ".join(
        f"{k} {_num(getattr(s, k))}" for k in ("mean", "p50", "p90", "p99", "max")
    ).replace("p50", "med")


def workload_lines(study: LoadedStudy, width: int = WIDTH) -> list[str]:
    """Lines (each at most ``width`` wide) describing every experiment's lengths."""
    lines: list[str] = []
    for i, _, w in experiment_workloads(study):
        parts = [f"in  {w.input_len}: {fmt_stats(w.input_tokens)}"]
        made = w.output_tokens_generated
        asked = w.output_tokens_requested
        tail = "" if made == asked else f"; made {fmt_stats(made)}"
        parts.append(f"out {w.output_len}: asked {fmt_stats(asked)}{tail}")
        if w.static_batch_waste_fraction is not None:
            parts.append(
                f"static-batch waste {w.static_batch_waste_fraction:.1%} "
                f"({w.static_batch_tokens_generated:,} slot tokens for "
                f"{w.static_batch_tokens_requested:,} asked)"
            )
        if w.provenance is not None:
            prov = w.provenance
            source = textwrap.shorten(prov.source, 120, placeholder=" ...")
            parts.append(f"profile {prov.name} ({prov.date}): {source}")
        head = f"#{i} "
        for n, part in enumerate(parts):
            lines.extend(
                textwrap.wrap(
                    part,
                    width=width,
                    initial_indent=head if n == 0 else " " * len(head),
                    subsequent_indent=" " * (len(head) + 4),
                    break_on_hyphens=False,
                )
            )
    if lines:
        lines.insert(0, "lengths in tokens (requested and generated):")
    return lines


def workload_histograms(page: Any, study: LoadedStudy) -> None:
    """A report section: input and output length histograms per experiment (plotly bars)."""
    from llenergymeasure.analysis.report_plots import esc, load_plotly

    found = experiment_workloads(study)
    page.add("<h2>Request lengths</h2>")
    if not found:
        page.note("No result records request lengths (results from before llem recorded them).")
        return
    go = load_plotly()
    from plotly.subplots import make_subplots

    for i, config_hash, w in found:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("input tokens", "output tokens"))
        n_points = 0
        for col, hist, name in (
            (1, w.input_histogram, "input"),
            (2, w.output_generated_histogram, "output generated"),
        ):
            if hist is None:
                continue
            mids = [(a + b) / 2 for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
            widths = [b - a for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
            fig.add_trace(go.Bar(x=mids, y=hist.counts, width=widths, name=name), row=1, col=col)
            n_points += len(hist.counts)
        fig.update_layout(
            title=f"#{i} {config_hash[:10]}: in {w.input_len}; out {w.output_len}",
            height=340,
            template="plotly_white",
            showlegend=False,
            bargap=0,
        )
        fig.update_yaxes(title_text="requests", row=1, col=1)
        page.plot(fig, n_points)
        if w.provenance is not None:
            page.add(
                f"<p>profile <b>{esc(w.provenance.name)}</b> ({esc(w.provenance.date)}): "
                f"{esc(w.provenance.source)}</p>"
            )
        if w.static_batch_waste_fraction is not None:
            page.note(
                f"static batching: {w.static_batch_tokens_generated:,} slot tokens (rows x "
                f"steps) for {w.static_batch_tokens_requested:,} asked; "
                f"{w.static_batch_waste_fraction:.1%} of the slots sat idle"
            )
