"""The study report: one self-contained HTML file (:func:`write_report`).

No server and no network: the data and plotly.js (the full library, inlined once in the
page head) travel inside the file, so it opens from a mail attachment or an air-gapped host.
The page is the sections of :data:`SECTIONS`, in order; each is a function
``(page, study) -> None`` that adds its heading, text and plots, so a new section is one
function appended to the list::

    header               the study: model, precision, backends, lengths, n_prompts, traffic
                         and SLO thresholds, cycles (a table), and the run facts
    summary table        one row per experiment (numbered as the dry run): mean [95 % CI]
    Pareto plots         J/output token against output tok/s, and against TTFT p99
                         (error bars: the 95 % intervals; the line joins the efficient set)
    latency-throughput   output tok/s against TTFT p99 (drawn even when energy is unmeasured)
    concurrency          J/output token and output tok/s against each backend's concurrency
                         (its registry key: batch size, max_num_seqs ...), a line per backend
    other swept keys     each other swept key against J/output token and output tok/s, only
                         over the experiments that have it (n_prompts, a size, is not one)
    time series          each run's power, SM clock and temperature from timeseries.parquet,
                         its phases shaded (baseline, warmup, measured window, steady state,
                         prefill pass)
    quality flags        every run's flags with their messages
    method, environment  the measurement and statistics used; where it was measured

Every point is labelled with its experiment number (``#3``, as in the summary table and the
dry run) and the values that vary, on the plot and in its hover text. A plot with nothing to
draw (energy not measured on a CPU host, no time series) is replaced by a sentence saying why,
never by an empty frame. Plots carry the class ``llem-plot`` and a ``data-points`` attribute
(the number of points drawn) so tests can check them.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
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
from llenergymeasure.analysis.workload import workload_histograms
from llenergymeasure.errors import PreflightError
from llenergymeasure.textable import fmt_param, param_layout
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.results import ExperimentResult, atomic_path

#: Runs whose time series are drawn (the file stays a few MB on big studies).
MAX_TIMESERIES_RUNS = 48
#: Points per time-series trace, after even downsampling.
MAX_POINTS_PER_TRACE = 1500


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise PreflightError(
            ["the HTML report needs plotly, a dependency of llenergymeasure, not installed here"],
            hint="pip install plotly (the install of llenergymeasure is incomplete)",
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


def row_labels(rows: list[ExperimentRow]) -> dict[str, str]:
    """config hash -> ``#i key=value ...``: the experiment number and the values that vary
    between the rows (backend left out: each plot's legend names it)."""
    layout = param_layout([_row_params(r) for r in rows], ("backend", "model", "precision"))
    out = {}
    for r in rows:
        pairs = [
            p for p in layout.pairs(layout.cells(_row_params(r))) if not p.startswith("backend=")
        ]
        out[r.config_hash] = " ".join([f"#{r.index}", *pairs])
    return out


def _row_params(r: ExperimentRow) -> dict[str, Any]:
    return {"backend": r.backend, "model": r.model, "precision": r.precision, **r.params}


def _scatter(
    page: _Page,
    study: LoadedStudy,
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
    rows = study.rows
    labels = row_labels(rows)
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
                mode="markers+text",
                name=backend,
                marker={"size": 11},
                text=[labels[r.config_hash] for r in rs],
                textposition="top center",
                cliponaxis=False,  # a label at the edge is drawn whole
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


#: The two figures drawn against concurrency and against each other swept key.
AXIS_METRICS = (
    ("j_per_output_token", "J/output token"),
    ("output_tokens_per_s", "output tokens/s"),
)
#: Swept keys that size the run rather than configure it: never drawn as an axis.
NOT_AN_AXIS = frozenset({"n_prompts"})


def experiment_configs(study: LoadedStudy) -> dict[str, ExperimentConfig]:
    """config hash -> the experiment's config: from a completed run's result.json, else from
    the study's plan.json (absent when neither can be read)."""
    out: dict[str, ExperimentConfig] = {}
    for run in study.result.runs:
        if run.config_hash not in out:
            res = study.run_result(run)
            if res is not None:
                out[run.config_hash] = res.config
    try:
        plan = json.loads((study.path / "plan.json").read_text(encoding="utf-8"))
        for e in plan["experiments"]:
            if e["config_hash"] not in out:
                out[e["config_hash"]] = ExperimentConfig.model_validate(e["config"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def concurrency_of(r: ExperimentRow, configs: dict[str, ExperimentConfig]) -> int | None:
    """The sequences the experiment keeps in flight: its backend's registry concurrency key
    (swept value first, else the config's resolved ``concurrency``)."""
    if r.backend is None or r.backend not in REGISTRY:
        return None
    path = REGISTRY.get(r.backend).concurrency_path
    if r.params.get(path) is not None:
        return int(r.params[path])
    cfg = configs.get(r.config_hash)
    return cfg.concurrency if cfg is not None else None


def _concurrency_keys() -> set[str]:
    return {spec.concurrency_path for spec in REGISTRY}


def _varying(rows: list[ExperimentRow]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k in r.params:
            if k not in keys and len({repr(x.params.get(k)) for x in rows}) > 1:
                keys.append(k)
    return keys


def _group_name(r: ExperimentRow, others: list[str]) -> str:
    """The line a point belongs to: its backend and the other varying values."""
    parts = [r.backend or "?"]
    parts += [f"{k.rsplit('.', 1)[-1]}={fmt_param(r.params[k])}" for k in others if k in r.params]
    return ", ".join(parts)


def _line_chart(
    page: _Page,
    rows: list[ExperimentRow],
    *,
    xs: dict[str, Any],
    others: list[str],
    title: str,
    x_title: str,
    metric: str,
    label: str,
    numeric: bool,
) -> None:
    """One line per backend (and other varying values), ``xs[config_hash]`` against metric."""
    go = _plotly()
    labels = row_labels(rows)
    usable = [
        r for r in rows if r.interval(metric).mean is not None and xs.get(r.config_hash) is not None
    ]
    page.add(f"<h3>{_esc(title)}</h3>")
    if not usable:
        page.note(f"{label}: not measured in this study (no GPU energy counter).")
        return
    groups: dict[str, list[ExperimentRow]] = {}
    for r in usable:
        groups.setdefault(_group_name(r, others), []).append(r)
    fig = go.Figure()
    for name, members in groups.items():
        rs = sorted(members, key=lambda r: _axis_order(xs[r.config_hash]))
        e = [_err(r.interval(metric)) for r in rs]
        fig.add_trace(
            go.Scatter(
                x=[xs[r.config_hash] if numeric else str(xs[r.config_hash]) for r in rs],
                y=[r.interval(metric).mean for r in rs],
                mode="lines+markers+text",
                name=name,
                text=[labels[r.config_hash] for r in rs],
                textposition="top center",
                cliponaxis=False,  # a label at the edge is drawn whole
                hovertemplate="%{text}<br>x=%{x}<br>y=%{y:.4g}<extra>%{fullData.name}</extra>",
                error_y={
                    "type": "data",
                    "array": [v[0] for v in e],
                    "arrayminus": [v[1] for v in e],
                },
            )
        )
    values = sorted({float(xs[r.config_hash]) for r in usable}) if numeric else []
    log = numeric and len(values) > 1 and values[0] > 0 and values[-1] / values[0] >= 8
    fig.update_layout(
        title=title,
        xaxis_title=x_title + (" (log scale)" if log else ""),
        xaxis_type="log" if log else ("linear" if numeric else "category"),
        yaxis_title=label,
        height=400,
        template="plotly_white",
        margin={"l": 90, "r": 40},
    )
    if numeric:  # ticks at the measured values only, and room for the labels at the ends
        fig.update_xaxes(tickvals=values, ticktext=[f"{v:g}" for v in values])
        if log:
            lo, hi = math.log10(values[0]), math.log10(values[-1])
            pad = (hi - lo) * 0.12
            fig.update_xaxes(range=[lo - pad, hi + pad])
    page.plot(fig, len(usable))


def _section_concurrency(page: _Page, study: LoadedStudy) -> None:
    """J/output token and throughput against each backend's concurrency, a line per backend."""
    rows = study.rows
    configs = experiment_configs(study)
    xs = {r.config_hash: concurrency_of(r, configs) for r in rows}
    if len({v for v in xs.values() if v is not None}) < 2:
        return  # one concurrency: nothing to draw against it
    conc = _concurrency_keys()
    others = [k for k in _varying(rows) if k not in conc and k not in NOT_AN_AXIS]
    backends = {r.backend for r in rows if r.backend is not None and r.backend in REGISTRY}
    keys = sorted({REGISTRY.get(b).concurrency_path for b in backends})
    page.add("<h2>Against concurrency</h2>")
    page.add(
        "<p>Concurrency: the sequences each backend keeps in flight, its own key ("
        + ", ".join(f"<code>{_esc(k)}</code>" for k in keys)
        + "). One line per backend"
        + (f" and value of {', '.join(others)}" if others else "")
        + ".</p>"
    )
    for metric, label in AXIS_METRICS:
        _line_chart(
            page,
            rows,
            xs=xs,
            others=others,
            title=f"{label} against concurrency",
            x_title="concurrency (sequences in flight)",
            metric=metric,
            label=label,
            numeric=True,
        )


def _section_other_axes(page: _Page, study: LoadedStudy) -> None:
    """Each other swept key against the two figures, over the experiments that have it."""
    rows = study.rows
    conc = _concurrency_keys()
    varying = _varying(rows)
    axes = [k for k in varying if k not in conc and k not in NOT_AN_AXIS]
    if not varying:
        page.note("The study sweeps no parameter (a single configuration): no per-axis charts.")
        return
    if not axes:
        return
    page.add("<h2>Other swept parameters</h2>")
    for axis in axes:
        having = [r for r in rows if r.params.get(axis) is not None]
        if len({repr(r.params[axis]) for r in having}) < 2:
            continue
        others = [k for k in varying if k != axis and k not in NOT_AN_AXIS]
        xs = {r.config_hash: r.params[axis] for r in having}
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs.values())
        for metric, label in AXIS_METRICS:
            _line_chart(
                page,
                having,
                xs=xs,
                others=others,
                title=f"{label} against {axis}",
                x_title=axis,
                metric=metric,
                label=label,
                numeric=numeric,
            )


def _axis_order(value: Any) -> tuple[int, float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _thin(values: list[Any], step: int) -> list[Any]:
    return values[::step] if step > 1 else values


#: Phase shading of the time series: name, label, fill colour.
PHASES = (
    ("baseline", "baseline (idle)", "#9e9e9e"),
    ("warmup", "warmup", "#ff9800"),
    ("measure", "measured window", "#4caf50"),
    ("steady_state", "steady state", "#1e88e5"),
    ("prefill_pass", "prefill pass", "#8e24aa"),
)


def phase_windows(
    res: ExperimentResult | None, cols: dict[str, list[Any]]
) -> dict[str, list[float]]:
    """phase -> [start, end] on the samples' clock: ``timings.phase_windows_s`` (contract 3),
    else the first and last sample of each ``phase``; the steady state from ``steady_state``."""
    out: dict[str, list[float]] = {}
    if res is not None and res.timings.phase_windows_s:
        out.update({k: list(v) for k, v in res.timings.phase_windows_s.items() if len(v) == 2})
    else:
        for t, ph in zip(cols.get("t_s") or [], cols.get("phase") or [], strict=False):
            if ph in ("baseline", "warmup", "measure", "prefill_pass") and t is not None:
                w = out.setdefault(ph, [t, t])
                w[0], w[1] = min(w[0], t), max(w[1], t)
    if res is not None and res.steady_state is not None:
        out["steady_state"] = [res.steady_state.start_s, res.steady_state.end_s]
    return out


def _shade_phases(fig: Any, windows: dict[str, list[float]], t0: float) -> list[str]:
    """Shade each phase on every panel; returns the legend sentences."""
    said = []
    for name, label, colour in PHASES:
        if name not in windows:
            continue
        a, b = (v - t0 for v in windows[name])
        steady = name == "steady_state"
        fig.add_vrect(
            x0=a,
            x1=b,
            row="all",
            col=1,
            fillcolor=colour,
            opacity=0.12 if not steady else 0.18,
            line_width=1 if steady else 0,
            line_dash="dash",
            line_color=colour,
            layer="below",
        )
        fig.add_annotation(
            x=(a + b) / 2,
            y=0.98 if not steady else 0.02,  # inside the power panel, clear of its title
            xref="x",
            yref="y domain",
            yanchor="top" if not steady else "bottom",
            text=label,
            showarrow=False,
            font={"size": 10, "color": colour},
        )
        said.append(f"{label} {a:.1f}–{b:.1f} s")
    return said


def _timeseries(page: _Page, study: LoadedStudy) -> None:
    go = _plotly()
    from plotly.subplots import make_subplots

    labels = row_labels(study.rows)
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
        t0 = t[0]
        for g in gpus:
            idx = [i for i, v in enumerate(cols.get("gpu", [None] * len(t))) if v == g]
            step = max(1, len(idx) // MAX_POINTS_PER_TRACE)
            idx = _thin(idx, step)
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
        shaded = _shade_phases(fig, phase_windows(study.run_result(run), cols), t0)
        label = labels.get(run.config_hash, params_label(run.params))
        fig.update_layout(
            title=f"{run.run_id}: {label}, cycle {run.cycle}",
            height=560,
            template="plotly_white",
        )
        fig.update_xaxes(title_text="time since the first sample, s", row=3, col=1)
        page.add(f"<h3>{_esc(run.run_id)}</h3>")
        page.plot(fig, n_points)
        if shaded:
            page.add(f'<p class="phases">shaded: {_esc("; ".join(shaded))}</p>')
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
    labels = row_labels(rows)
    head = "".join(
        f"<th>{_esc(h)}</th>"
        for h in ["#", "experiment", "backend", "varies", "parameters", "cycles"]
        + [f"{t} mean [95 % CI]" for _, t in columns]
        + ["CV J/tok", "flags"]
    )
    body = []
    for r in rows:
        cv = r.stats.j_per_output_token_cv
        cells = [
            str(r.index),
            r.config_hash[:10],
            r.backend or "",
            labels[r.config_hash].partition(" ")[2] or "—",
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


def _fact(values: list[Any]) -> str:
    """One value, or every distinct value when they differ."""
    distinct = list(dict.fromkeys(fmt_param(v) for v in values))
    return distinct[0] if len(distinct) == 1 else "varies: " + ", ".join(distinct)


def study_facts(study: LoadedStudy) -> list[tuple[str, str]]:
    """What the study measured, as ``(fact, value)`` rows for the report's header table."""
    configs = list(experiment_configs(study).values())
    res = study.result
    if not configs:
        return [("experiments", "no configuration could be read")]
    facts = [
        ("model", _fact([c.model for c in configs])),
        ("backend", _fact([c.backend for c in configs])),
        ("precision", _fact([c.precision for c in configs])),
        ("dataset", _fact([c.dataset.source for c in configs])),
        ("input length, tokens", _fact([c.resolved_input_len() for c in configs])),
        ("output length, tokens", _fact([c.resolved_output_len() for c in configs])),
        ("n_prompts", _fact([c.n_prompts for c in configs])),
        ("concurrency", _fact([c.concurrency for c in configs])),
        ("GPUs", _fact([",".join(map(str, c.gpus)) or "none (CPU)" for c in configs])),
        ("traffic", _fact([_traffic(c) for c in configs])),
        ("SLO thresholds", _fact([_slo(c) for c in configs])),
        ("experiments × cycles", f"{len(study.rows)} × {_cycles(study)} = {res.n_runs} runs"),
    ]
    return facts


def _traffic(c: ExperimentConfig) -> str:
    t = c.traffic
    if t.pattern == "offline":
        return "offline (every prompt at once)"
    parts: list[str] = [t.pattern]
    if t.rate_per_s is not None:
        parts.append(f"{t.rate_per_s:g} req/s")
    if t.concurrency is not None:
        parts.append(f"{t.concurrency} users")
    return " ".join(parts)


def _slo(c: ExperimentConfig) -> str:
    slo = c.traffic.slo
    if slo is None or (slo.ttft_s is None and slo.tpot_s is None):
        return "none"
    parts = []
    if slo.ttft_s is not None:
        parts.append(f"TTFT ≤ {slo.ttft_s:g} s")
    if slo.tpot_s is not None:
        parts.append(f"TPOT ≤ {slo.tpot_s:g} s")
    return ", ".join(parts)


def _cycles(study: LoadedStudy) -> int:
    return max((r.cycle for r in study.result.runs), default=0)


def _section_header(page: _Page, study: LoadedStudy) -> None:
    res = study.result
    page.add(f"<h1>{_esc(res.study_name)}</h1>")
    page.add(
        f"<p>study <code>{_esc(res.study_id)}</code> · {_esc(res.state)} · "
        f"{res.n_completed}/{res.n_runs} runs completed · runner {_esc(res.runner)} · "
        f"{_esc(res.started_at)} → {_esc(res.finished_at)} · llem {_esc(res.llem_version)}</p>"
    )
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in study_facts(study))
    page.add(f'<table id="study"><tbody>{body}</tbody></table>')


def _section_summary(page: _Page, study: LoadedStudy) -> None:
    page.add("<h2>Summary</h2>")
    page.add(
        '<p class="note">Rows are numbered as in the dry run (<code>llem run --dry-run</code>) '
        "and <code>llem results show</code>; every plot labels its points with these numbers."
        "</p>"
    )
    page.add(_summary_table(study.rows))


def _section_pareto(page: _Page, study: LoadedStudy) -> None:
    no_energy = "J/output token: not measured in this study (no GPU energy counter)."
    page.add("<h2>Pareto plots</h2>")
    _scatter(
        page,
        study,
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
        study,
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
        study,
        x="ttft_p99_s",
        y="output_tokens_per_s",
        title="Output throughput against TTFT p99",
        x_title="TTFT p99, s",
        y_title="output tokens/s",
        maximise_x=None,
        why_empty="TTFT p99 not measured.",
    )


def _section_quality(page: _Page, study: LoadedStudy) -> None:
    """Accuracy (quality: sections) against J/output token, with the efficient set: the
    configs no other beats on both (more accurate and no more energy per token)."""
    if not any(r.interval("accuracy").n > 0 for r in study.rows):
        return
    page.add("<h2>Quality per joule</h2>")
    _scatter(
        page,
        study,
        x="accuracy",
        y="j_per_output_token",
        title="J/output token against accuracy",
        x_title="accuracy (correct / items, lm-eval)",
        y_title="J/output token",
        maximise_x=True,
        why_empty="J/output token: not measured in this study (no GPU energy counter).",
    )


def _section_lora(page: _Page, study: LoadedStudy) -> None:
    from llenergymeasure.analysis.lora import lora_report_section

    page.add(lora_report_section(study))


def _section_timeseries(page: _Page, study: LoadedStudy) -> None:
    page.add("<h2>Time series: power, SM clock, temperature</h2>")
    _timeseries(page, study)


def _section_flags(page: _Page, study: LoadedStudy) -> None:
    page.add("<h2>Quality flags</h2>")
    page.add(_flags_table(study))


def _section_method(page: _Page, study: LoadedStudy) -> None:
    page.add("<h2>Method</h2>")
    page.add(_method(study))


def _section_environment(page: _Page, study: LoadedStudy) -> None:
    page.add("<h2>Environment</h2>")
    page.add(_environment(study))


Section = Callable[[_Page, LoadedStudy], None]

#: The report, top to bottom. A new section is a function ``(page, study) -> None`` put in
#: this list where it belongs (quality, lengths and LoRA sections go before the time series).
SECTIONS: list[Section] = [
    _section_header,
    _section_summary,
    _section_pareto,
    _section_quality,
    _section_concurrency,
    _section_other_axes,
    _section_timeseries,
    workload_histograms,
    _section_lora,
    _section_flags,
    _section_method,
    _section_environment,
]


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
        f"cycle-to-cycle CV of J/output token is above {bootstrap.CV_THRESHOLD:.0%}; "
        "<code>high_cycle_cv_throughput</code>: of output tok/s above "
        f"{bootstrap.CYCLE_CV_CHECKS['output_tokens_per_s'][0]:.0%}; "
        "<code>high_cycle_cv_ttft</code>, <code>_tpot</code>: of their p50 above "
        f"{bootstrap.CYCLE_CV_CHECKS['ttft_p50_s'][0]:.0%}.</p>" + impact
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
#study th{text-align:right}.phases{color:#555;font-size:.85rem;margin-top:0}
.llem-plot{max-width:1100px}
"""


def render_report(study: LoadedStudy) -> str:
    """The report's HTML text (see the module docstring)."""
    go = _plotly()
    del go
    from plotly.offline import get_plotlyjs

    res = study.result
    page = _Page()
    for section in SECTIONS:
        section(page, study)
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
