"""Export a study for sharing: :func:`export_study_dir` (``llem results export``).

Formats (``OUT`` is a folder, created if needed, never written over file by file: an existing
non-empty ``OUT`` is refused):

``hf``
    A folder a user can push to the Hugging Face Hub as a dataset::

        OUT/README.md               dataset card: YAML header (configs, features), then the
                                    method, the environment and the column glossary
        OUT/data/runs.parquet       one row per planned run, result.json flattened
        OUT/data/experiments.parquet  one row per experiment: mean and 95 % CI per metric

    ``datasets.load_dataset("parquet", data_files="OUT/data/runs.parquet")`` (or
    ``load_dataset("OUT")``, which reads the card's configs) works offline.
``parquet`` | ``csv`` | ``json``
    ``OUT/runs.<ext>`` and ``OUT/experiments.<ext>`` with the same columns (CSV joins lists
    with commas and writes None as an empty cell; JSON is a list of records).

Column names of ``runs`` are the field paths of ``result.json`` joined with dots
(``energy.gpu_energy_j``, ``latency.ttft_s.p99``, ``config.pytorch.batch_size``), so each is
documented by the result schema (docs/methodology.md) and keeps its unit in its name. Lists
of numbers or strings stay lists; lists of objects (``environment.gpus``) and the free-form
``extra`` are JSON strings. Planned-run fields come first (``run_id``, ``cycle``, ``state``,
``param.<key>``), then ``impact.*`` (carbon and cost, when the study gave inputs).
"""

from __future__ import annotations

import csv
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from llenergymeasure.analysis.table import LoadedStudy, flat_row, load_study_dir
from llenergymeasure.errors import UsageError
from llenergymeasure.results.aggregate import csv_cell
from llenergymeasure.results.arrow_types import arrow_type, infer_arrow_type
from llenergymeasure.results.study import RunMetrics
from llenergymeasure_contract.results import ExperimentResult, atomic_path

ExportFormat = Literal["hf", "parquet", "csv", "json"]
FORMATS: tuple[str, ...] = ("hf", "parquet", "csv", "json")

_RUN_FIELDS = (
    "run_id",
    "index",
    "config_hash",
    "cycle",
    "state",
    "attempts",
    "failure_kind",
    "message",
    "duration_s",
)
_IMPACT = tuple(
    name
    for name in RunMetrics.model_fields
    if name.startswith(("gco2e", "net_gco2e", "cost", "net_cost"))
)
_JSON_FIELDS = ("extra", "config.extra")  # free-form mappings: one JSON cell


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        if prefix in _JSON_FIELDS:
            out[prefix] = json.dumps(value, sort_keys=True) if value else None
            return
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
        return
    if isinstance(value, list):
        if all(isinstance(v, str | int | float | bool) and v is not None for v in value):
            out[prefix] = list(value)
        else:
            out[prefix] = json.dumps(value, sort_keys=True)
        return
    out[prefix] = value


def _annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation of a dotted path inside a pydantic model (None when unknown)."""
    ann: Any = model
    for part in path:
        ann = _strip_optional(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            info = ann.model_fields.get(part)
            if info is None:
                return None
            ann = info.annotation
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
        else:
            return None
    return _strip_optional(ann)


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _coerce(v: Any, t: Any) -> Any:
    import pyarrow as pa

    if v is None:
        return None
    if pa.types.is_string(t) and not isinstance(v, str):
        return json.dumps(v) if isinstance(v, list | dict) else str(v)
    if pa.types.is_floating(t) and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def table(rows: list[dict[str, Any]], typer: Any) -> Any:
    """An Arrow table with one typed column per key; ``typer(name)`` types all-null columns."""
    import pyarrow as pa

    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in set(names))
    fields = []
    columns = []
    for name in names:
        values = [r.get(name) for r in rows]
        t = infer_arrow_type(values) or typer(name)
        fields.append(pa.field(name, t))
        columns.append(pa.array([_coerce(v, t) for v in values], type=t))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def run_rows(study: LoadedStudy) -> list[dict[str, Any]]:
    """One flat dict per planned run (see the module docstring)."""
    res = study.result
    rows = []
    param_keys = sorted({k for r in res.runs for k in r.params})
    for run in res.runs:
        row: dict[str, Any] = {"study_id": res.study_id, "study_name": res.study_name}
        data = run.model_dump()
        for k in _RUN_FIELDS:
            row[k] = data[k]
        for k in param_keys:
            v = run.params.get(k)
            row[f"param.{k}"] = (
                v if v is None or isinstance(v, int | float | str | bool) else str(v)
            )
        for k in _IMPACT:
            row[f"impact.{k}"] = getattr(run.metrics, k) if run.metrics else None
        loaded = study.run_result(run)
        if loaded is not None:
            dumped = loaded.model_dump(
                exclude={"schema_version", "run_id", "config_hash", "cycle", "study_id"}
            )
            dumped["quality_flags"] = [f.code for f in loaded.quality_flags]
            flat: dict[str, Any] = {}
            _flatten("", dumped, flat)
            row.update(flat)
        rows.append(row)
    return rows


def _run_typer(name: str) -> Any:
    import pyarrow as pa

    if name.startswith("impact."):
        return pa.string() if name.endswith("currency") else pa.float64()
    if name in ("index", "cycle", "attempts"):
        return pa.int64()
    if name == "duration_s":
        return pa.float64()
    if name == "quality_flags":
        return pa.list_(pa.string())
    ann = _annotation_at(ExperimentResult, name.split("."))
    return arrow_type(ann) if ann is not None else pa.string()


def _exp_typer(name: str) -> Any:
    import pyarrow as pa

    if name.endswith(("_mean", "_ci_low", "_ci_high", "_cv")):
        return pa.float64()
    if name.endswith("_n"):
        return pa.int64()
    return pa.string()


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"{out}: exists and is not an empty folder; export never overwrites",
            hint="pass a new folder with -o",
        )


def export_study_dir(study_dir: str | Path, out: str | Path, fmt: str = "hf") -> list[Path]:
    """Export the study in ``study_dir`` to the folder ``out``; returns the files written.

    Raises:
        UsageError: unknown format, ``out`` not new/empty, or not a study directory.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown", hint=f"one of {', '.join(FORMATS)}")
    study = load_study_dir(study_dir)
    out_p = Path(out).expanduser()
    _check_out(out_p)
    runs = table(run_rows(study), _run_typer)
    exps = table([flat_row(r) for r in study.rows], _exp_typer)
    written: list[Path] = []
    if fmt in ("hf", "parquet"):
        import pyarrow.parquet as pq

        data = out_p / "data" if fmt == "hf" else out_p
        for name, t in (("runs", runs), ("experiments", exps)):
            path = data / f"{name}.parquet"
            with atomic_path(path) as tmp:
                pq.write_table(t, tmp)
            written.append(path)
        if fmt == "hf":
            from llenergymeasure.analysis.card import dataset_card

            card = out_p / "README.md"
            with atomic_path(card) as tmp:
                tmp.write_text(dataset_card(study, runs.schema, exps.schema), encoding="utf-8")
            written.append(card)
    elif fmt == "csv":
        for name, t in (("runs", runs), ("experiments", exps)):
            path = out_p / f"{name}.csv"
            with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(t.column_names)
                for rec in t.to_pylist():
                    w.writerow([csv_cell(rec[c]) for c in t.column_names])
            written.append(path)
    else:
        for name, t in (("runs", runs), ("experiments", exps)):
            path = out_p / f"{name}.json"
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(t.to_pylist(), indent=1), encoding="utf-8")
            written.append(path)
    return written
