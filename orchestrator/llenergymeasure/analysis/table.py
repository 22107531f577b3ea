"""A finished study, read back: :class:`LoadedStudy`, and one :class:`ExperimentRow` each.

:func:`load_study_dir` reads ``study_result.json`` (adding the intervals to results written
before they existed) and, on demand, each completed run's ``result.json``. An experiment row
aggregates the cycles of one config: the mean and 95 % interval of every headline metric
(:mod:`llenergymeasure.analysis.bootstrap`), the cycle-to-cycle CV flag and the runs' quality
flags, counted.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llenergymeasure.analysis.bootstrap import HEADLINE_METRICS, NOT_MEASURED
from llenergymeasure.analysis.enrich import enrich
from llenergymeasure.errors import ConfigError, UsageError
from llenergymeasure.results.stats import ExperimentStats, Interval
from llenergymeasure.results.study import STUDY_RESULT_FILE, RunSummary, StudyResult
from llenergymeasure_contract.results import ExperimentResult

#: The metrics ``llem results show`` prints, with their column titles.
SHOW_METRICS: tuple[tuple[str, str], ...] = (
    ("j_per_output_token", "J/out tok"),
    ("output_tokens_per_s", "out tok/s"),
    ("ttft_p50_s", "TTFT p50 s"),
    ("ttft_p99_s", "TTFT p99 s"),
    ("avg_power_w", "mean W"),
)
#: Added to them for a study with arriving traffic (a ``traffic.*`` parameter or SLO figures).
TRAFFIC_SHOW_METRICS: tuple[tuple[str, str], ...] = (
    ("tpot_p50_s", "TPOT p50 s"),
    ("slo_attainment", "SLO met"),
    ("goodput_requests_per_s", "goodput req/s"),
    ("j_per_slo_request", "J/SLO req"),
)


def show_metrics(rows: list[ExperimentRow]) -> tuple[tuple[str, str], ...]:
    """The columns of ``llem results show`` and the report's table for these rows."""
    traffic = any(
        any(k.startswith("traffic.") for k in r.params) or r.interval("slo_attainment").n > 0
        for r in rows
    )
    return SHOW_METRICS + TRAFFIC_SHOW_METRICS if traffic else SHOW_METRICS


@dataclass
class LoadedStudy:
    """A study directory with its (enriched) :class:`StudyResult`."""

    path: Path
    result: StudyResult
    _runs: dict[str, ExperimentResult | None] = field(default_factory=dict, repr=False)

    def run_result(self, run: RunSummary) -> ExperimentResult | None:
        """The run's ``result.json`` (None when it did not complete or cannot be read)."""
        if run.run_id not in self._runs:
            loaded = None
            if run.result_path is not None:
                try:
                    loaded = ExperimentResult.load(self.path / run.result_path)
                except (OSError, ValueError):
                    loaded = None
            self._runs[run.run_id] = loaded
        return self._runs[run.run_id]

    @cached_property
    def rows(self) -> list[ExperimentRow]:
        """One row per experiment, in plan order."""
        return experiment_rows(self)

    def environment(self) -> dict[str, Any]:
        """Where it was measured, from the first completed run (flat, for comparing)."""
        for run in self.result.runs:
            res = self.run_result(run)
            if res is not None:
                return environment_facts(res)
        return {}


def environment_facts(res: ExperimentResult) -> dict[str, Any]:
    """The environment of one result as flat ``key -> value`` pairs."""
    env = res.environment
    out: dict[str, Any] = {
        "hostname": env.hostname,
        "os": env.os,
        "cpu_model": env.cpu_model,
        "cpu_count": env.cpu_count,
        "python_version": env.python_version,
        "driver_version": env.driver_version,
        "cuda_version": env.cuda_version,
        "gpus": ", ".join(sorted({g.name or "?" for g in env.gpus})) or "none",
        "n_gpus": len(env.gpus),
        "harness_version": env.harness_version,
        "backend_library": env.backend_library,
        "backend_version": env.backend_version,
        "image": env.image,
        "image_digest": env.image_digest,
        "in_container": env.in_container,
    }
    for name, version in sorted(env.library_versions.items()):
        out[f"library.{name}"] = version
    return out


def load_study_dir(path: str | Path) -> LoadedStudy:
    """Read a study directory (or its ``study_result.json``).

    Raises:
        UsageError: the path is not a finished study directory (exit 2).
        ConfigError: ``study_result.json`` is not valid (exit 2).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(
            f"{p}: no such file or directory",
            hint="pass a study directory, e.g. results/<name>_<hash>_<UTC time>",
        )
    file = p / STUDY_RESULT_FILE if p.is_dir() else p
    if not file.is_file():
        hint = (
            "the study has not finished writing its results; `llem run --resume` it"
            if (file.parent / "manifest.json").is_file()
            else "pass a study directory, e.g. results/<name>_<hash>_<UTC time>"
        )
        raise UsageError(f"{p}: no {STUDY_RESULT_FILE} there", hint=hint)
    try:
        text = file.read_text(encoding="utf-8")
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"truncated or damaged: not complete JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg})",
            source=str(file),
            hint="the file was cut short (a full disk, an interrupted copy?); restore it from "
            "a backup (each run's own result.json is under runs/)",
        ) from exc
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"cannot read it: {exc}", source=str(file)) from exc
    try:
        result = StudyResult.model_validate_json(text)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(
            f"not a valid study result: {str(exc).splitlines()[0]}",
            source=str(file),
            hint="it may be damaged or from a newer llem; re-export with the llem that made it",
        ) from exc
    if result.confidence_intervals is None:
        result = enrich(result)
    return LoadedStudy(path=file.parent, result=result)


@dataclass
class ExperimentRow:
    """One experiment of one study, its cycles aggregated."""

    study_id: str
    config_hash: str
    backend: str | None
    model: str | None
    precision: str | None
    params: dict[str, Any]
    n_runs: int
    stats: ExperimentStats
    quality_flags: dict[str, int]  # flag code -> runs that raised it
    states: dict[str, int]  # run state -> count

    def interval(self, metric: str) -> Interval:
        """The metric's interval (``n=0``, "not measured", when absent)."""
        return self.stats.metrics.get(metric) or Interval(n=0, note=NOT_MEASURED)

    def key(self, name: str) -> Any:
        """The value of a grouping key: backend, model, precision, study or a parameter.

        A parameter may be named in full (``pytorch.batch_size``) or by its last part
        (``batch_size``).
        """
        if name in ("backend", "model", "precision"):
            return getattr(self, name)
        if name == "study":
            return self.study_id
        if name in self.params:
            return self.params[name]
        for k, v in self.params.items():
            if k.rsplit(".", 1)[-1] == name:
                return v
        return None

    @property
    def flags(self) -> list[str]:
        """Every flag: runs not completed (by state), statistics flags, then quality flags."""
        out = [
            f"{state} ({n}/{self.n_runs})"
            for state, n in sorted(self.states.items())
            if state != "completed"
        ]
        out.extend(self.stats.flags)
        out.extend(f"{code} ({n}/{self.n_runs})" for code, n in sorted(self.quality_flags.items()))
        return out


def experiment_rows(study: LoadedStudy) -> list[ExperimentRow]:
    """Aggregate the study's runs per experiment (see :class:`ExperimentRow`)."""
    result = study.result
    ci = result.confidence_intervals
    by_hash: dict[str, list[RunSummary]] = {}
    for run in result.runs:
        by_hash.setdefault(run.config_hash, []).append(run)
    rows = []
    for h, runs in by_hash.items():
        stats = ci.experiments.get(h) if ci is not None else None
        if stats is None:
            stats = ExperimentStats(config_hash=h, n_cycles_completed=0)
        first = runs[0]
        flags: dict[str, int] = {}
        states: dict[str, int] = {}
        for r in runs:
            states[r.state] = states.get(r.state, 0) + 1
            for code in r.metrics.quality_flags if r.metrics else []:
                flags[code] = flags.get(code, 0) + 1
        rows.append(
            ExperimentRow(
                study_id=result.study_id,
                config_hash=h,
                backend=first.backend,
                model=first.model,
                precision=first.precision,
                params=dict(first.params),
                n_runs=len(runs),
                stats=stats,
                quality_flags=flags,
                states=states,
            )
        )
    return rows


def fmt_value(value: float | None) -> str:
    """A figure with 3-4 significant digits, or "—" when not measured."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 1:
        return f"{value:.3g}" if a < 100 else f"{value:.0f}"
    return f"{value:.3g}"


def fmt_interval(iv: Interval) -> str:
    """``mean [low, high]``, ``mean (not enough cycles)`` or ``not measured``."""
    if iv.mean is None:
        return NOT_MEASURED
    if iv.has_interval:
        return f"{fmt_value(iv.mean)} [{fmt_value(iv.low)}, {fmt_value(iv.high)}]"
    note = iv.note or ""
    return f"{fmt_value(iv.mean)} ({note.split(' (')[0]})" if note else fmt_value(iv.mean)


def params_label(params: dict[str, Any]) -> str:
    """``key=value`` pairs of the swept parameters, short keys."""
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "—"


#: The steady-state figures :func:`steady_state_lines` shows (``RunMetrics`` fields).
STEADY_METRICS = (
    "steady_j_per_output_token",
    "steady_window_s",
    "mlenergy_j_per_output_token",
    "mlenergy_window_s",
    "avg_running_batch",
)


def steady_state_lines(study: LoadedStudy) -> list[str]:
    """Each experiment's steady state, ours beside ML.ENERGY's rule: mean J/output token and
    window over the cycles, how many cycles each rule accepted, and the average running batch;
    two lines per experiment that has one, each under 80 columns (empty when none has)."""
    counts: dict[str, list[int]] = {}  # config_hash -> [valid (ours), stable (theirs), runs]
    for run in study.result.runs:
        m = run.metrics
        if m is None or (m.steady_valid is None and m.mlenergy_stable is None):
            continue
        c = counts.setdefault(run.config_hash, [0, 0, 0])
        c[0] += bool(m.steady_valid)
        c[1] += bool(m.mlenergy_stable)
        c[2] += 1
    lines: list[str] = []
    for i, r in enumerate(study.rows, start=1):
        if r.config_hash not in counts:
            continue
        valid, stable, n = counts[r.config_hash]
        fig = {m: fmt_value(r.interval(m).mean) for m in STEADY_METRICS}
        head = f"#{i}"
        lines.append(
            f"{head:<4}ours       J/tok {fig['steady_j_per_output_token']:>7}  "
            f"window {fig['steady_window_s']:>5} s  valid {valid}/{n}"
        )
        lines.append(
            f"{'':<4}ML.ENERGY  J/tok {fig['mlenergy_j_per_output_token']:>7}  "
            f"window {fig['mlenergy_window_s']:>5} s  stable {stable}/{n}  "
            f"batch {fig['avg_running_batch']}"
        )
    if lines:
        lines.insert(0, "Steady state, means over cycles (docs/methodology.md):")
    return lines


def rows_json(rows: list[ExperimentRow]) -> list[dict[str, Any]]:
    """Rows as plain data (``llem results show --json``)."""
    return [
        {
            "study_id": r.study_id,
            "config_hash": r.config_hash,
            "backend": r.backend,
            "model": r.model,
            "precision": r.precision,
            "params": r.params,
            "n_runs": r.n_runs,
            "n_cycles_completed": r.stats.n_cycles_completed,
            "states": r.states,
            "metrics": {k: v.model_dump() for k, v in r.stats.metrics.items()},
            "j_per_output_token_cv": r.stats.j_per_output_token_cv,
            "flags": r.stats.flags,
            "quality_flags": r.quality_flags,
        }
        for r in rows
    ]


def flat_row(r: ExperimentRow, metrics: tuple[str, ...] = HEADLINE_METRICS) -> dict[str, Any]:
    """One flat dict: identity, ``param.<key>``, then ``<metric>_mean|_ci_low|_ci_high``."""
    out: dict[str, Any] = {
        "study_id": r.study_id,
        "config_hash": r.config_hash,
        "backend": r.backend,
        "model": r.model,
        "precision": r.precision,
    }
    for k, v in r.params.items():
        out[f"param.{k}"] = v
    out["n_runs"] = r.n_runs
    out["n_cycles_completed"] = r.stats.n_cycles_completed
    for m in metrics:
        iv = r.interval(m)
        out[f"{m}_mean"] = iv.mean
        out[f"{m}_ci_low"] = iv.low
        out[f"{m}_ci_high"] = iv.high
        out[f"{m}_n"] = iv.n
    out["j_per_output_token_cv"] = r.stats.j_per_output_token_cv
    out["flags"] = ";".join(r.flags)
    return out


def rows_csv(rows: list[ExperimentRow]) -> str:
    """Rows as CSV text (``llem results show --csv``); empty cell: not measured."""
    flat = [flat_row(r) for r in rows]
    fields: list[str] = []
    for f in flat:
        fields.extend(k for k in f if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for f in flat:
        writer.writerow({k: "" if f.get(k) is None else f.get(k) for k in fields})
    return buf.getvalue()


def dumps(data: Any) -> str:
    """JSON for the console (stable key order as built)."""
    return json.dumps(data, indent=2, default=str)
