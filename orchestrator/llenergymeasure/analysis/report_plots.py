"""Plot primitives of the study report (:mod:`llenergymeasure.analysis.report`).

The page, the scatter and line charts, and the shaded phases of a time series.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

from llenergymeasure.analysis.table import ExperimentRow, LoadedStudy
from llenergymeasure.errors import PreflightError
from llenergymeasure.textable import fmt_param, param_layout
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.results import ExperimentResult

#: Runs whose time series are drawn (the file stays a few MB on big studies).
MAX_TIMESERIES_RUNS = 48


#: Points per time-series trace, after even downsampling.
MAX_POINTS_PER_TRACE = 1500


def load_plotly() -> Any:
    """``plotly.graph_objects``, or a :class:`PreflightError` saying plotly is not installed."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise PreflightError(
            ["the HTML report needs plotly, a dependency of llenergymeasure, not installed here"],
            hint="pip install plotly (the install of llenergymeasure is incomplete)",
        ) from exc
    return go


def esc(v: Any) -> str:
    """``v`` as HTML-escaped text (``None`` as the empty string)."""
    return html.escape("" if v is None else str(v))


class Page:
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
        self.add(f'<p class="note">{esc(text)}</p>')


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


def error_bars(halves: Sequence[tuple[float | None, float | None]]) -> dict[str, Any]:
    """A plotly error-bar spec from each point's (upper, lower) half-widths (:func:`_err`)."""
    return {
        "type": "data",
        "array": [h[0] for h in halves],
        "arrayminus": [h[1] for h in halves],
    }


def scatter(
    page: Page,
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
    """Scatter ``y`` against ``x``, a trace per backend, with the efficient set when asked."""
    go = load_plotly()
    rows = study.rows
    labels = row_labels(rows)
    fig = go.Figure()
    usable = [r for r in rows if r.interval(x).mean is not None and r.interval(y).mean is not None]
    if not usable:
        page.add(f"<h3>{esc(title)}</h3>")
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
                error_x=error_bars(ex),
                error_y=error_bars(ey),
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
    page.add(f"<h3>{esc(title)}</h3>")
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


def concurrency_keys() -> set[str]:
    """The concurrency key of every registered backend."""
    return {spec.concurrency_path for spec in REGISTRY}


def varying_keys(rows: list[ExperimentRow]) -> list[str]:
    """The swept keys whose value differs between the rows, in first-seen order."""
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


def line_chart(
    page: Page,
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
    go = load_plotly()
    labels = row_labels(rows)
    usable = [
        r for r in rows if r.interval(metric).mean is not None and xs.get(r.config_hash) is not None
    ]
    page.add(f"<h3>{esc(title)}</h3>")
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
                error_y=error_bars(e),
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


def _axis_order(value: Any) -> tuple[int, float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def thin(values: list[Any], step: int) -> list[Any]:
    """Every ``step``-th value (all of them for a step of 1 or less)."""
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


def shade_phases(fig: Any, windows: dict[str, list[float]], t0: float) -> list[str]:
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
