"""The study report: one self-contained HTML file (:func:`write_report`).

No server and no network: the data and plotly.js (the full library, inlined once in the
page head) travel inside the file, so it opens from a mail attachment or an air-gapped host.
Sections::

    summary table        one row per experiment: mean [95 % CI] of the headline metrics
    Pareto plots         J/output token against output tok/s, and against TTFT p99
                         (error bars: the 95 % intervals; the line joins the efficient set)
    latency-throughput   output tok/s against TTFT p99 (drawn even when energy is unmeasured)
    per swept axis       the axis value against J/output token and against output tok/s
    time series          each run's power, SM clock and temperature from timeseries.parquet
    quality flags        every run's flags with their messages
    method, environment  the measurement and statistics used; where it was measured

A plot with nothing to draw (energy not measured on a CPU host, no time series) is replaced by
a sentence saying why, never by an empty frame. Plots carry the class ``llem-plot`` and a
``data-points`` attribute (the number of points drawn) so tests can check them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from llenergymeasure.analysis import bootstrap
from llenergymeasure.analysis.outfile import check_output_file, output_write_error
from llenergymeasure.analysis.table import (
    ExperimentRow,
    LoadedStudy,
    fmt_interval,
    load_study_dir,
    params_label,
    show_metrics,
)
from llenergymeasure.errors import PreflightError
from llenergymeasure_contract.results import atomic_path

REPORT_EXTRA = "llenergymeasure[report]"
#: Runs whose time series are drawn (the file stays a few MB on big studies).
MAX_TIMESERIES_RUNS = 48
#: Points per time-series trace, after even downsampling.
MAX_POINTS_PER_TRACE = 1500


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise PreflightError(
            ["the HTML report needs plotly, which is not installed"],
            hint=f"pip install '{REPORT_EXTRA}'",
        ) from exc
    return go


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


class _Page:
    """Collects the sections and plots of the report."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_plots = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def plot(self, fig: Any, n_points: int) -> None:
        self.n_plots += 1
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"plot-{self.n_plots}",
            config={"displaylogo": False, "responsive": True},
        )
        self.add(f'<div class="llem-plot" data-points="{n_points}">{div}</div>')

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{_esc(text)}</p>')


def _err(iv: Any) -> tuple[float | None, float | None]:
    if iv.mean is None or not iv.has_interval:
        return None, None
    return iv.high - iv.mean, iv.mean - iv.low


def _pareto_front(points: list[tuple[float, float]], *, maximise_x: bool) -> list[int]:
    """Indices of the non-dominated points (minimise y; maximise or minimise x)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            if j == i:
                continue
            better_x = x2 >= x if maximise_x else x2 <= x
            strictly = (x2 != x) or (y2 != y)
            if better_x and y2 <= y and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda k: points[k][0])


def _scatter(
    page: _Page,
    rows: list[ExperimentRow],
    *,
    x: str,
    y: str,
    title: str,
    x_title: str,
    y_title: str,
    maximise_x: bool | None,
    why_empty: str,
) -> None:
    go = _plotly()
    fig = go.Figure()
    usable = [r for r in rows if r.interval(x).mean is not None and r.interval(y).mean is not None]
    if not usable:
        page.add(f"<h3>{_esc(title)}</h3>")
        page.note(why_empty)
        return
    by_backend: dict[str, list[ExperimentRow]] = {}
    for r in usable:
        by_backend.setdefault(r.backend or "?", []).append(r)
    for backend, rs in by_backend.items():
        ex = [_err(r.interval(x)) for r in rs]
        ey = [_err(r.interval(y)) for r in rs]
        fig.add_trace(
            go.Scatter(
                x=[r.interval(x).mean for r in rs],
                y=[r.interval(y).mean for r in rs],
                mode="markers",
                name=backend,
                marker={"size": 11},
                text=[f"{r.config_hash[:10]} {params_label(r.params)}" for r in rs],
                hovertemplate="%{text}<br>x=%{x:.4g}<br>y=%{y:.4g}<extra>%{fullData.name}</extra>",
                error_x={
                    "type": "data",
                    "array": [e[0] for e in ex],
                    "arrayminus": [e[1] for e in ex],
                },
                error_y={
                    "type": "data",
                    "array": [e[0] for e in ey],
                    "arrayminus": [e[1] for e in ey],
                },
            )
        )
    if maximise_x is not None and len(usable) > 1:
        pts = [(float(r.interval(x).mean), float(r.interval(y).mean)) for r in usable]  # type: ignore[arg-type]
        idx = _pareto_front(pts, maximise_x=maximise_x)
        fig.add_trace(
            go.Scatter(
                x=[pts[i][0] for i in idx],
                y=[pts[i][1] for i in idx],
                mode="lines",
                name="efficient set",
                line={"dash": "dot", "color": "#888"},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title=title, xaxis_title=x_title, yaxis_title=y_title, height=440, template="plotly_white"
    )
    page.add(f"<h3>{_esc(title)}</h3>")
    page.plot(fig, len(usable))


def _axis_charts(page: _Page, rows: list[ExperimentRow]) -> None:
    go = _plotly()
    axes = []
    for r in rows:
        for k in r.params:
            if k not in axes and len({repr(x.params.get(k)) for x in rows}) > 1:
                axes.append(k)
    if not axes:
        page.note("The study sweeps no parameter (a single configuration): no per-axis charts.")
        return
    for axis in axes:
        for metric, label in (
            ("j_per_output_token", "J/output token"),
            ("output_tokens_per_s", "output tokens/s"),
        ):
            title = f"{axis} against {label}"
            usable = [r for r in rows if r.interval(metric).mean is not None]
            if not usable:
                page.add(f"<h3>{_esc(title)}</h3>")
                page.note(f"{label}: not measured in this study (no GPU energy counter).")
                continue
            groups: dict[str, list[ExperimentRow]] = {}
            for r in usable:
                others = {k: v for k, v in r.params.items() if k != axis}
                groups.setdefault(params_label(others) if others else r.backend or "", []).append(r)
            fig = go.Figure()
            for name, members in groups.items():
                rs = sorted(members, key=lambda r: _axis_order(r.params.get(axis)))
                e = [_err(r.interval(metric)) for r in rs]
                fig.add_trace(
                    go.Scatter(
                        x=[str(r.params.get(axis)) for r in rs],
                        y=[r.interval(metric).mean for r in rs],
                        mode="lines+markers",
                        name=name,
                        error_y={
                            "type": "data",
                            "array": [v[0] for v in e],
                            "arrayminus": [v[1] for v in e],
                        },
                    )
                )
            fig.update_layout(
                title=title,
                xaxis_title=axis,
                xaxis_type="category",
                yaxis_title=label,
                height=380,
                template="plotly_white",
            )
            page.add(f"<h3>{_esc(title)}</h3>")
            page.plot(fig, len(usable))


def _axis_order(value: Any) -> tuple[int, float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _thin(values: list[Any], step: int) -> list[Any]:
    return values[::step] if step > 1 else values


def _timeseries(page: _Page, study: LoadedStudy) -> None:
    go = _plotly()
    from plotly.subplots import make_subplots

    drawn = 0
    missing = []
    for run in study.result.runs:
        if run.state != "completed" or run.run_dir is None:
            continue
        path = study.path / run.run_dir / "timeseries.parquet"
        if not path.is_file():
            missing.append(run.run_id)
            continue
        if drawn >= MAX_TIMESERIES_RUNS:
            continue
        import pyarrow.parquet as pq

        cols = pq.read_table(path).to_pydict()
        t = cols.get("t_s") or []
        if not t:
            missing.append(run.run_id)
            continue
        fig = make_subplots(
            rows=3,
            cols=1,
            shared_xaxes=True,
            subplot_titles=("power W", "SM clock MHz", "temperature °C"),
        )
        gpus = sorted({g for g in cols.get("gpu", [None] * len(t))}, key=str)
        n_points = 0
        for g in gpus:
            idx = [i for i, v in enumerate(cols.get("gpu", [None] * len(t))) if v == g]
            step = max(1, len(idx) // MAX_POINTS_PER_TRACE)
            idx = _thin(idx, step)
            t0 = t[0]
            xs = [t[i] - t0 for i in idx]
            for row, col in ((1, "power_w"), (2, "sm_clock_mhz"), (3, "temperature_c")):
                ys = [cols.get(col, [None] * len(t))[i] for i in idx]
                n_points += sum(v is not None for v in ys)
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        name=f"GPU {g}",
                        legendgroup=str(g),
                        showlegend=row == 1,
                    ),
                    row=row,
                    col=1,
                )
        fig.update_layout(
            title=f"{run.run_id} (cycle {run.cycle}, {params_label(run.params)})",
            height=560,
            template="plotly_white",
        )
        fig.update_xaxes(title_text="time since the first sample, s", row=3, col=1)
        page.add(f"<h3>{_esc(run.run_id)}</h3>")
        page.plot(fig, n_points)
        drawn += 1
    if missing:
        page.note(
            f"{len(missing)} completed run(s) have no timeseries.parquet (no GPU sampler ran, "
            f"e.g. a CPU-only host or energy.timeseries: false): {', '.join(missing[:12])}"
            f"{' ...' if len(missing) > 12 else ''}"
        )
    if drawn == 0 and not missing:
        page.note("No completed run to draw.")


def _summary_table(rows: list[ExperimentRow]) -> str:
    columns = show_metrics(rows)
    head = "".join(
        f"<th>{_esc(h)}</th>"
        for h in ["#", "experiment", "backend", "parameters", "cycles"]
        + [f"{t} mean [95 % CI]" for _, t in columns]
        + ["CV J/tok", "flags"]
    )
    body = []
    for i, r in enumerate(rows, start=1):
        cv = r.stats.j_per_output_token_cv
        cells = [
            str(i),
            r.config_hash[:10],
            r.backend or "",
            params_label(r.params),
            f"{r.stats.n_cycles_completed}/{r.n_runs}",
            *(fmt_interval(r.interval(m)) for m, _ in columns),
            "—" if cv is None else f"{cv:.1%}",
            ", ".join(r.flags) or "—",
        ]
        body.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return (
        f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _flags_table(study: LoadedStudy) -> str:
    rows = []
    for run in study.result.runs:
        res = study.run_result(run)
        if res is not None:
            for f in res.quality_flags:
                rows.append((run.run_id, f.code, f.severity, f.message))
        elif run.state != "completed":
            rows.append((run.run_id, run.state, "error", run.message or run.failure_kind or ""))
    if not rows:
        return '<p class="note">No quality flags.</p>'
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (
        '<table id="flags"><thead><tr><th>run</th><th>flag</th><th>severity</th>'
        f"<th>message</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _method(study: LoadedStudy) -> str:
    res = study.result
    imp = res.impact_inputs
    if imp is None:
        impact = "<p>No carbon or cost inputs were given, so no gCO2e or cost figure is shown.</p>"
    else:
        items = "".join(
            f"<li><code>{_esc(k)}</code> = {_esc(v)} ({_esc(imp.sources.get(k, '?'))})</li>"
            for k, v in (
                ("carbon.grid_gco2_per_kwh", imp.carbon.grid_gco2_per_kwh),
                ("carbon.pue", imp.carbon.pue),
                ("cost.price_per_kwh", imp.cost.price_per_kwh),
                ("cost.currency", imp.cost.currency),
            )
            if v is not None
        )
        impact = (
            "<p>Carbon and cost: kWh × PUE × grid intensity (gCO2e) or × price, from the gross "
            f"and the idle-adjusted GPU energy. Inputs:</p><ul>{items}</ul>"
        )
    return (
        "<p>Energy: the NVML total-energy counter of every GPU an experiment uses, read at the "
        "edges of the measured window (gross); the idle-adjusted figure subtracts the idle "
        "baseline power times the window. Without a GPU, energy is not measured (null, never "
        "0). Each experiment runs in a fresh container or subprocess, after warmup on the "
        "measured shapes; see docs/methodology.md.</p>"
        f"<p>Intervals: percentile bootstrap of the mean over cycles, "
        f"{bootstrap.N_RESAMPLES:,} resamples, seed {bootstrap.SEED}, 95 %; with fewer than "
        f"{bootstrap.MIN_CYCLES} cycles: “not enough cycles”. <code>high_cycle_cv</code>: the "
        f"cycle-to-cycle CV of J/output token is above {bootstrap.CV_THRESHOLD:.0%}.</p>" + impact
    )


def _environment(study: LoadedStudy) -> str:
    env = study.environment()
    if not env:
        return '<p class="note">No completed run: environment unknown.</p>'
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in env.items())
    return f'<table id="environment"><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.note{color:#555;font-style:italic}h2{margin-top:2.5rem}
.llem-plot{max-width:1100px}
"""


def render_report(study: LoadedStudy) -> str:
    """The report's HTML text (see the module docstring)."""
    go = _plotly()
    del go
    from plotly.offline import get_plotlyjs

    res = study.result
    rows = study.rows
    page = _Page()
    page.add(f"<h1>{_esc(res.study_name)}</h1>")
    page.add(
        f"<p>study <code>{_esc(res.study_id)}</code> · {_esc(res.state)} · "
        f"{res.n_completed}/{res.n_runs} runs completed · runner {_esc(res.runner)} · "
        f"{_esc(res.started_at)} → {_esc(res.finished_at)} · llem {_esc(res.llem_version)}</p>"
    )
    page.add("<h2>Summary</h2>")
    page.add(_summary_table(rows))
    no_energy = "J/output token: not measured in this study (no GPU energy counter)."
    page.add("<h2>Pareto plots</h2>")
    _scatter(
        page,
        rows,
        x="output_tokens_per_s",
        y="j_per_output_token",
        title="J/output token against output throughput",
        x_title="output tokens/s",
        y_title="J/output token",
        maximise_x=True,
        why_empty=no_energy,
    )
    _scatter(
        page,
        rows,
        x="ttft_p99_s",
        y="j_per_output_token",
        title="J/output token against TTFT p99",
        x_title="TTFT p99, s",
        y_title="J/output token",
        maximise_x=False,
        why_empty=no_energy,
    )
    _scatter(
        page,
        rows,
        x="ttft_p99_s",
        y="output_tokens_per_s",
        title="Output throughput against TTFT p99",
        x_title="TTFT p99, s",
        y_title="output tokens/s",
        maximise_x=None,
        why_empty="TTFT p99 not measured.",
    )
    page.add("<h2>Parameters against energy and throughput</h2>")
    _axis_charts(page, rows)
    page.add("<h2>Time series: power, SM clock, temperature</h2>")
    _timeseries(page, study)
    from llenergymeasure.analysis.lora import lora_report_section

    page.add(lora_report_section(study))
    page.add("<h2>Quality flags</h2>")
    page.add(_flags_table(study))
    page.add("<h2>Method</h2>")
    page.add(_method(study))
    page.add("<h2>Environment</h2>")
    page.add(_environment(study))
    data = json.dumps(
        {"study_id": res.study_id, "n_plots": page.n_plots}, separators=(",", ":")
    ).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(res.study_name)}: llem report</title><style>{_CSS}</style>"
        f"<script>{get_plotlyjs()}</script>"
        f'<script type="application/json" id="llem-report">{data}</script>'
        "</head><body>" + "\n".join(page.parts) + "</body></html>\n"
    )


def write_report(study_dir: str | Path, output: str | Path) -> Path:
    """Write the report of the study in ``study_dir`` to ``output`` (atomically).

    Raises:
        UsageError: not a study directory, or ``output`` cannot be written.
        PreflightError: plotly (the ``report`` extra) is not installed.
    """
    out = check_output_file(Path(output).expanduser())
    _plotly()
    study = load_study_dir(study_dir)
    text = render_report(study)
    try:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise output_write_error(out, exc) from exc
    return out
