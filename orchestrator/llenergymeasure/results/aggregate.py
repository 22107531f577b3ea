"""Flat tables from a :class:`~llenergymeasure.results.study.StudyResult`: CSV and Parquet.

One row per planned run (completed or not), columns in a fixed order: identity, state and
cause, experiment parameters (``param.<key>``), then the key figures with units in their names.
Parquet has an explicit schema (:func:`arrow_schema`): every column keeps its real type even
when no run measured it (``gpu_energy_j`` is ``double`` full of nulls on a CPU host, not
Arrow's ``null`` type), and ``quality_flags`` is a ``list<string>`` as in JSON. CSV writes
``None`` as an empty cell and joins ``quality_flags`` with commas (one cell).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from llenergymeasure.results.arrow_types import arrow_type, infer_arrow_type
from llenergymeasure.results.study import RunMetrics, StudyResult
from llenergymeasure_contract.results import atomic_path

SUMMARY_CSV = "summary.csv"
RESULTS_PARQUET = "results.parquet"

_IDENTITY = [
    "study_id",
    "run_id",
    "index",
    "config_hash",
    "cycle",
    "state",
    "attempts",
    "failure_kind",
    "message",
    "exit_code",
    "duration_s",
    "backend",
    "model",
    "precision",
    "image",
    "job_id",
    "node",
    "run_dir",
]
_METRICS = [name for name in RunMetrics.model_fields if name != "quality_flags"]


_IDENTITY_TYPES = {
    "index": int,
    "cycle": int,
    "attempts": int,
    "exit_code": int,
    "duration_s": float,
}


def arrow_schema(rows: list[dict[str, Any]]) -> Any:
    """The Parquet schema of :func:`summary_rows` (see the module docstring)."""
    import pyarrow as pa

    fields = []
    columns = list(rows[0]) if rows else ["study_id", *_IDENTITY[1:], *_METRICS, "quality_flags"]
    for name in columns:
        if name.startswith("param."):
            t = infer_arrow_type([r.get(name) for r in rows], lists=False) or arrow_type(str)
        elif name in RunMetrics.model_fields:
            t = arrow_type(RunMetrics.model_fields[name].annotation)
        else:
            t = arrow_type(_IDENTITY_TYPES.get(name, str))
        fields.append(pa.field(name, t))
    return pa.schema(fields)


def summary_rows(study: StudyResult) -> list[dict[str, Any]]:
    """One flat dict per run, all with the same keys in the same order.

    ``quality_flags`` is a list (Parquet ``list<string>``); :func:`write_csv` joins it.
    """
    param_keys = sorted({k for r in study.runs for k in r.params})
    rows = []
    for run in study.runs:
        row: dict[str, Any] = {"study_id": study.study_id}
        data = run.model_dump()
        for key in _IDENTITY[1:]:
            row[key] = data.get(key)
        for key in param_keys:
            value = run.params.get(key)
            row[f"param.{key}"] = (
                value
                if isinstance(value, int | float | str | bool)
                else (None if value is None else str(value))
            )
        metrics = run.metrics.model_dump() if run.metrics is not None else {}
        for key in _METRICS:
            row[key] = metrics.get(key)
        row["quality_flags"] = list(metrics.get("quality_flags") or [])
        rows.append(row)
    return rows


def write_csv(study: StudyResult, path: Path) -> Path:
    """Write the summary table as CSV (atomically)."""
    rows = summary_rows(study)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        fields = list(rows[0]) if rows else ["study_id", *_IDENTITY[1:], *_METRICS, "quality_flags"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return path


def csv_cell(value: Any) -> Any:
    """A table value as a CSV cell: None is empty, a list is comma-joined."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def write_parquet(study: StudyResult, path: Path) -> Path:
    """Write the summary table as Parquet (atomically), with :func:`arrow_schema`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = summary_rows(study)
    table = pa.Table.from_pylist(rows, schema=arrow_schema(rows))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def export_study(study: StudyResult, study_dir: Path, *, csv_too: bool = True) -> list[Path]:
    """Write ``results.parquet`` (always) and ``summary.csv`` (``csv_too``) into ``study_dir``."""
    written = [write_parquet(study, study_dir / RESULTS_PARQUET)]
    if csv_too:
        written.append(write_csv(study, study_dir / SUMMARY_CSV))
    return written
