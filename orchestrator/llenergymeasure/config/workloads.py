"""Workload files a study names: profile files and empirical length files.

The contract describes length distributions and ships the built-in profiles
(:mod:`llenergymeasure_contract.lengths`); files are read here, when the study is loaded, and
embedded into the experiment's dataset, so the config hash covers the data and the harness
(in a container that sees only mounted paths) never reads them:

* ``dataset.profile: ./my-profile.yaml`` (not a built-in name): the profile file, relative to
  the study file, becomes the dataset's lengths (where the dataset gives none) and provenance.
* ``{dist: empirical, path: lengths.csv}``: relative to the file that names it (the study, or
  the profile file), embedded as a histogram (``bins`` + ``counts``) or as the distinct lengths
  with their counts (``values`` + ``counts``).

Length files: ``.json`` holds ``{"bins": [...], "counts": [...]}`` or a list of lengths;
``.jsonl`` one length per line, a number or ``{"length": n}``; anything else is CSV, one length
per row in the first column, or ``length,count`` rows (a header row is skipped). A file with
more than :data:`MAX_POINTS` distinct lengths is embedded as a histogram of about
:data:`HISTOGRAM_BINS` equal bins of whole tokens.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llenergymeasure_contract.lengths import (
    WorkloadProfile,
    apply_profile,
    builtin_profile,
    builtin_profiles,
)

LENGTH_KEYS = ("input_len", "output_len")


class WorkloadFileError(ValueError):
    """A profile or length file that cannot be used (the message says why)."""


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise WorkloadFileError(f"{where}: not a length: {value!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise WorkloadFileError(f"{where}: not a number: {value!r}") from exc
    if number != int(number) or number < 1:
        raise WorkloadFileError(f"{where}: lengths are whole numbers >= 1, got {value!r}")
    return int(number)


#: More distinct lengths than this are embedded as a histogram of HISTOGRAM_BINS bins: the
#: config travels to the harness in one environment variable (Linux caps one at 128 KiB).
MAX_POINTS = 2048
HISTOGRAM_BINS = 1024


def _points(pairs: list[tuple[int, int]]) -> dict[str, Any]:
    counter: Counter[int] = Counter()
    for value, count in pairs:
        counter[value] += count
    values = sorted(counter)
    if len(values) <= MAX_POINTS:
        return {"values": values, "counts": [counter[v] for v in values]}
    low, high = values[0], values[-1]
    width = -(-(high - low + 1) // HISTOGRAM_BINS)  # whole tokens per bin
    n_bins = -(-(high - low + 1) // width)
    counts = [0] * n_bins
    for v in values:
        counts[(v - low) // width] += counter[v]
    edges = [low - 0.5 + k * width for k in range(n_bins + 1)]
    return {"bins": edges, "counts": counts}


def parse_lengths(text: str, suffix: str) -> dict[str, Any]:
    """The embedded form of a length file's text (``bins``/``counts`` or ``values``/``counts``).

    Raises:
        WorkloadFileError: the text holds no lengths or a bad one (the message says where).
    """
    suffix = suffix.lower()
    pairs: list[tuple[int, int]] = []
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkloadFileError(f"not JSON: {exc}") from exc
        if isinstance(data, dict):
            if set(data) != {"bins", "counts"}:
                raise WorkloadFileError(
                    'a JSON object must be a histogram {"bins": [...], "counts": [...]}, '
                    f"got keys {sorted(data)}"
                )
            return {"bins": data["bins"], "counts": data["counts"]}
        if not isinstance(data, list):
            raise WorkloadFileError("JSON must be a list of lengths or {bins, counts}")
        pairs = [(_positive_int(v, f"item {i}"), 1) for i, v in enumerate(data)]
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadFileError(f"line {n}: not JSON: {exc}") from exc
            if isinstance(item, dict):
                if "length" not in item:
                    raise WorkloadFileError(f'line {n}: an object needs a "length" key')
                item = item["length"]
            pairs.append((_positive_int(item, f"line {n}"), 1))
    else:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        for n, row in enumerate(rows, 1):
            cells = [c.strip() for c in row]
            if n == 1 and not cells[0].replace(".", "", 1).isdigit():
                continue  # header
            count = _positive_int(cells[1], f"row {n}, count") if len(cells) > 1 else 1
            pairs.append((_positive_int(cells[0], f"row {n}"), count))
    if not pairs:
        raise WorkloadFileError("holds no lengths")
    return _points(pairs)


@lru_cache(maxsize=64)
def _read_lengths(path: str, mtime_ns: int) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadFileError(f"cannot read {path}: {exc}") from exc
    return parse_lengths(text, Path(path).suffix)


def _locate(value: str, base_dir: Path, what: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise WorkloadFileError(
            f"{what} {value!r} not found (looked for {path}); paths are relative to the file "
            "that names them"
        )
    return path.resolve()


def embed_length_file(spec: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """An empirical spec with its ``path`` file read and embedded (``path`` kept as typed)."""
    path = _locate(str(spec["path"]), base_dir, "length file")
    data = _read_lengths(str(path), path.stat().st_mtime_ns)
    return {**spec, **data}


def _needs_file(spec: Any) -> bool:
    return (
        isinstance(spec, dict)
        and spec.get("dist") == "empirical"
        and isinstance(spec.get("path"), str)
        and spec.get("bins") is None
        and spec.get("values") is None
    )


def read_profile(value: str, base_dir: Path) -> WorkloadProfile:
    """A built-in profile by name, or a profile file (YAML or JSON) relative to ``base_dir``.

    Raises:
        WorkloadFileError: not a built-in name and no readable, valid profile file.
    """
    if value in builtin_profiles():
        return builtin_profile(value)
    path = _locate(
        value, base_dir, f"profile (not one of the built-in {', '.join(builtin_profiles())})"
    )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WorkloadFileError(f"cannot read profile {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkloadFileError(f"profile {path} must be a mapping of keys")
    for key in LENGTH_KEYS:
        if _needs_file(data.get(key)):
            try:
                data[key] = embed_length_file(data[key], path.parent)
            except WorkloadFileError as exc:
                raise WorkloadFileError(f"profile {path}: {key}.path: {exc}") from exc
    try:
        return WorkloadProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise WorkloadFileError(
            f"profile {path}: {loc}: {first['msg'].removeprefix('Value error, ')}"
        ) from exc


def resolve_workload_files(
    data: dict[str, Any],
    base_dir: Path,
    source_of: Callable[[tuple[str | int, ...]], str],
    problems: list[str],
) -> None:
    """Embed the profile file and length files an experiment's synthetic dataset names.

    Args:
        data: The experiment mapping (changed in place).
        base_dir: The study file's directory.
        source_of: Where a key came from, for messages (``sweep.dataset.profile[1]``).
        problems: Each problem is appended, naming its key.
    """
    dataset = data.get("dataset")
    if not isinstance(dataset, dict) or dataset.get("source", "synthetic") != "synthetic":
        return
    dataset = dict(dataset)
    for key in LENGTH_KEYS:
        if _needs_file(dataset.get(key)):
            try:
                dataset[key] = embed_length_file(dataset[key], base_dir)
            except WorkloadFileError as exc:
                problems.append(f"{source_of(('dataset', key, 'path'))}: {exc}")
    name = dataset.get("profile")
    if isinstance(name, str) and name not in builtin_profiles() and not dataset.get("provenance"):
        try:
            dataset = apply_profile(dataset, read_profile(name, base_dir))
        except WorkloadFileError as exc:
            problems.append(f"{source_of(('dataset', 'profile'))}: {exc}")
    data["dataset"] = dataset
