"""The sections of the study report, top to bottom in :data:`SECTIONS`.

See :mod:`llenergymeasure.analysis.report` for what each section draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llenergymeasure.analysis import bootstrap
from llenergymeasure.analysis.report_plots import (
    AXIS_METRICS,
    MAX_POINTS_PER_TRACE,
    MAX_TIMESERIES_RUNS,
    NOT_AN_AXIS,
    Page,
    concurrency_keys,
    concurrency_of,
    esc,
    experiment_configs,
    line_chart,
    load_plotly,
    phase_windows,
    row_labels,
    scatter,
    shade_phases,
    thin,
    varying_keys,
)
from llenergymeasure.analysis.table import (
    ExperimentRow,
    LoadedStudy,
    fmt_interval,
    params_label,
    show_metrics,
)
from llenergymeasure.analysis.workload import workload_histograms
from llenergymeasure.textable import fmt_param
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.registry import REGISTRY


def _section_concurrency(page: Page, study: LoadedStudy) -> None:
    """J/output token and throughput against each backend's concurrency, a line per backend."""
    rows = study.rows
    configs = experiment_configs(study)
    xs = {r.config_hash: concurrency_of(r, configs) for r in rows}
    if len({v for v in xs.values() if v is not None}) < 2:
        return  # one concurrency: nothing to draw against it
    conc = concurrency_keys()
    others = [k for k in varying_keys(rows) if k not in conc and k not in NOT_AN_AXIS]
    backends = {r.backend for r in rows if r.backend is not None and r.backend in REGISTRY}
    keys = sorted({REGISTRY.get(b).concurrency_path for b in backends})
    page.add("<h2>Against concurrency</h2>")
    page.add(
        "<p>Concurrency: the sequences each backend keeps in flight, its own key ("
        + ", ".join(f"<code>{esc(k)}</code>" for k in keys)
        + "). One line per backend"
        + (f" and value of {', '.join(others)}" if others else "")
        + ".</p>"
    )
    for metric, label in AXIS_METRICS:
        line_chart(
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


def _section_other_axes(page: Page, study: LoadedStudy) -> None:
    """Each other swept key against the two figures, over the experiments that have it."""
    rows = study.rows
    conc = concurrency_keys()
    varying = varying_keys(rows)
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
            line_chart(
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


def _timeseries(page: Page, study: LoadedStudy) -> None:
    go = load_plotly()
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
            idx = thin(idx, step)
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
        shaded = shade_phases(fig, phase_windows(study.run_result(run), cols), t0)
        label = labels.get(run.config_hash, params_label(run.params))
        fig.update_layout(
            title=f"{run.run_id}: {label}, cycle {run.cycle}",
            height=560,
            template="plotly_white",
        )
        fig.update_xaxes(title_text="time since the first sample, s", row=3, col=1)
        page.add(f"<h3>{esc(run.run_id)}</h3>")
        page.plot(fig, n_points)
        if shaded:
            page.add(f'<p class="phases">shaded: {esc("; ".join(shaded))}</p>')
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
        f"<th>{esc(h)}</th>"
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
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
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


def _section_header(page: Page, study: LoadedStudy) -> None:
    res = study.result
    page.add(f"<h1>{esc(res.study_name)}</h1>")
    page.add(
        f"<p>study <code>{esc(res.study_id)}</code> · {esc(res.state)} · "
        f"{res.n_completed}/{res.n_runs} runs completed · runner {esc(res.runner)} · "
        f"{esc(res.started_at)} → {esc(res.finished_at)} · llem {esc(res.llem_version)}</p>"
    )
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in study_facts(study))
    page.add(f'<table id="study"><tbody>{body}</tbody></table>')


def _section_summary(page: Page, study: LoadedStudy) -> None:
    page.add("<h2>Summary</h2>")
    page.add(
        '<p class="note">Rows are numbered as in the dry run (<code>llem run --dry-run</code>) '
        "and <code>llem results show</code>; every plot labels its points with these numbers."
        "</p>"
    )
    page.add(_summary_table(study.rows))


def _section_pareto(page: Page, study: LoadedStudy) -> None:
    no_energy = "J/output token: not measured in this study (no GPU energy counter)."
    page.add("<h2>Pareto plots</h2>")
    scatter(
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
    scatter(
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
    scatter(
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


def _section_quality(page: Page, study: LoadedStudy) -> None:
    """Accuracy (quality: sections) against J/output token, with the efficient set: the
    configs no other beats on both (more accurate and no more energy per token)."""
    if not any(r.interval("accuracy").n > 0 for r in study.rows):
        return
    page.add("<h2>Quality per joule</h2>")
    scatter(
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


def _section_lora(page: Page, study: LoadedStudy) -> None:
    from llenergymeasure.analysis.lora import lora_report_section

    page.add(lora_report_section(study))


def _section_timeseries(page: Page, study: LoadedStudy) -> None:
    page.add("<h2>Time series: power, SM clock, temperature</h2>")
    _timeseries(page, study)


def _section_flags(page: Page, study: LoadedStudy) -> None:
    page.add("<h2>Quality flags</h2>")
    page.add(_flags_table(study))


def _section_method(page: Page, study: LoadedStudy) -> None:
    page.add("<h2>Method</h2>")
    page.add(_method(study))


def _section_environment(page: Page, study: LoadedStudy) -> None:
    page.add("<h2>Environment</h2>")
    page.add(_environment(study))


Section = Callable[[Page, LoadedStudy], None]


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
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
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
            f"<li><code>{esc(k)}</code> = {esc(v)} ({esc(imp.sources.get(k, '?'))})</li>"
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
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in env.items())
    return f'<table id="environment"><tbody>{body}</tbody></table>'
