"""Experiments of one or more studies side by side: :func:`compare`.

Rows are grouped (sorted) by the ``by`` keys: backend, model, precision, study, or any swept
parameter (``pytorch.batch_size`` or just ``batch_size``). Each metric gets its mean and 95 %
interval, the ratio of its mean to the baseline row's, and whether the two intervals overlap
(``yes``: the difference may be noise; ``no``: it is larger than the cycle-to-cycle spread;
``?``: one side has no interval, e.g. fewer than 3 cycles). Studies made on different hosts
can be compared; the environment facts that differ between them are listed, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llenergymeasure.analysis.table import ExperimentRow, LoadedStudy, load_study_dir
from llenergymeasure.errors import UsageError
from llenergymeasure.results.stats import Interval

DEFAULT_METRICS = ("j_per_output_token", "output_tokens_per_s", "ttft_p99_s")


@dataclass
class MetricComparison:
    """One metric of one row against the baseline row."""

    interval: Interval
    ratio: float | None  # row mean / baseline mean; None: either not measured
    overlap: str  # "yes" | "no" | "?" | "baseline"


@dataclass
class ComparedRow:
    """A row of the comparison."""

    label: dict[str, Any]  # the by-key values
    row: ExperimentRow
    metrics: dict[str, MetricComparison]
    is_baseline: bool = False


@dataclass
class Comparison:
    """The whole comparison."""

    by: list[str]
    metrics: list[str]
    rows: list[ComparedRow]
    baseline_index: int  # 1-based, into rows
    studies: list[str]
    environment_differences: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return {
            "by": self.by,
            "metrics": self.metrics,
            "baseline": self.baseline_index,
            "studies": self.studies,
            "environment_differences": self.environment_differences,
            "rows": [
                {
                    "label": r.label,
                    "study_id": r.row.study_id,
                    "config_hash": r.row.config_hash,
                    "is_baseline": r.is_baseline,
                    "n_cycles_completed": r.row.stats.n_cycles_completed,
                    "flags": r.row.flags,
                    "metrics": {
                        m: {
                            **c.interval.model_dump(),
                            "ratio_to_baseline": c.ratio,
                            "overlaps_baseline": c.overlap,
                        }
                        for m, c in r.metrics.items()
                    },
                }
                for r in self.rows
            ],
        }


def overlap(a: Interval, b: Interval) -> str:
    """Whether two intervals overlap: "yes", "no", or "?" when either is missing."""
    if not (a.has_interval and b.has_interval):
        return "?"
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    return "yes" if a.low <= b.high and b.low <= a.high else "no"


def default_by(rows: list[ExperimentRow]) -> list[str]:
    """The swept keys: parameters that take more than one value, plus backend if it varies."""
    keys: list[str] = []
    for name in ("backend", "model", "precision"):
        if len({getattr(r, name) for r in rows}) > 1:
            keys.append(name)
    for r in rows:
        for k in r.params:
            if k not in keys and len({repr(x.params.get(k)) for x in rows}) > 1:
                keys.append(k)
    if len({r.study_id for r in rows}) > 1:
        keys.append("study")
    return keys or ["backend"]


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (2, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _select_baseline(rows: list[ComparedRow], baseline: str | None) -> int:
    if baseline is None:
        return 0
    if baseline.isdigit():
        i = int(baseline)
        if not 1 <= i <= len(rows):
            raise UsageError(
                f"--baseline {baseline}: there are {len(rows)} rows",
                hint=f"give a row number from 1 to {len(rows)}, or key=value",
            )
        return i - 1
    wanted: dict[str, str] = {}
    for part in baseline.split(","):
        if "=" not in part:
            raise UsageError(
                f"--baseline {baseline!r}: expected a row number or key=value[,key=value]",
                hint="e.g. --baseline 1 or --baseline batch_size=1",
            )
        k, v = part.split("=", 1)
        wanted[k.strip()] = v.strip()
    for i, r in enumerate(rows):
        if all(str(r.row.key(k)) == v for k, v in wanted.items()):
            return i
    raise UsageError(
        f"--baseline {baseline!r}: no row has those values",
        hint="see the rows with `llem results compare ... --json`, or give a row number",
    )


def environment_differences(studies: list[LoadedStudy]) -> dict[str, dict[str, Any]]:
    """``fact -> {study_id: value}`` for every environment fact that differs."""
    envs = {s.result.study_id: s.environment() for s in studies}
    keys = sorted({k for e in envs.values() for k in e})
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        values = {sid: e.get(k) for sid, e in envs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[k] = values
    return out


def compare(
    dirs: list[str | Path],
    *,
    by: list[str] | None = None,
    baseline: str | None = None,
    metrics: list[str] | None = None,
) -> Comparison:
    """Compare the experiments of the studies in ``dirs`` (see the module docstring).

    Raises:
        UsageError: no directory, an unknown key or metric, or a baseline that matches nothing.
    """
    if not dirs:
        raise UsageError("give at least one study directory")
    studies = [load_study_dir(d) for d in dirs]
    rows = [r for s in studies for r in s.rows]
    keys = list(by) if by else default_by(rows)
    if len(studies) > 1 and "study" not in keys:
        keys.append("study")  # rows of two studies must never look identical
    for k in keys:
        if k not in ("backend", "model", "precision", "study") and all(
            r.key(k) is None for r in rows
        ):
            known = sorted({p for r in rows for p in r.params})
            raise UsageError(
                f"--by {k}: no experiment has that key",
                hint=f"use backend, model, precision, study or a swept key: {', '.join(known)}",
            )
    from llenergymeasure.analysis.bootstrap import HEADLINE_METRICS

    wanted = list(metrics) if metrics else list(DEFAULT_METRICS)
    for m in wanted:
        if m not in HEADLINE_METRICS:
            raise UsageError(f"--metric {m}: unknown", hint=f"one of {', '.join(HEADLINE_METRICS)}")
    rows.sort(key=lambda r: tuple(_sort_key(r.key(k)) for k in keys))
    compared = [ComparedRow(label={k: r.key(k) for k in keys}, row=r, metrics={}) for r in rows]
    b = _select_baseline(compared, baseline)
    base = compared[b]
    base.is_baseline = True
    for c in compared:
        for m in wanted:
            iv = c.row.interval(m)
            biv = base.row.interval(m)
            ratio = (
                iv.mean / biv.mean
                if iv.mean is not None and biv.mean is not None and biv.mean != 0
                else None
            )
            c.metrics[m] = MetricComparison(
                interval=iv, ratio=ratio, overlap="baseline" if c is base else overlap(iv, biv)
            )
    return Comparison(
        by=keys,
        metrics=wanted,
        rows=compared,
        baseline_index=b + 1,
        studies=[s.result.study_id for s in studies],
        environment_differences=environment_differences(studies) if len(studies) > 1 else {},
    )
