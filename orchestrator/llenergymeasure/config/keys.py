"""The key paths of the study grammar: which keys a study file may set, and dotted-key helpers."""

from __future__ import annotations

import copy
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from llenergymeasure.config.inputs import echo
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.strict import concrete_types

RUNNER_KEYS = ("runner", "images", "pull_policy", "cuda_major", "docker", "slurm")


RESULT_KEYS = ("carbon", "cost", "notify")  # what is done with the results, not measured


STUDY_KEYS = frozenset(
    {
        "name",
        "base",
        "sweep",
        "experiments",
        "execution",
        "results_dir",
        "max_experiments",
        *RUNNER_KEYS,
    }
    | set(RESULT_KEYS)
)


COMMAND_LINE = "<command line>"


#: Default cap on the experiments a study may expand to (``max_experiments:`` raises it).
#: A 10,000-point sweep expands and plans in about 0.6 s; 10^8 points would take hours and
#: tens of GB, so the size is computed from the list lengths and refused before expanding.
DEFAULT_MAX_EXPERIMENTS = 100_000


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` onto ``base``: mappings merge recursively, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _child_fields(annotation: Any) -> dict[str, Any] | None:
    """Fields under a key of this type; None for a free-form mapping; {} for a leaf."""
    fields: dict[str, Any] = {}
    free = False
    for t in concrete_types(annotation):
        if isinstance(t, type) and issubclass(t, BaseModel):
            for name, info in t.model_fields.items():
                fields.setdefault(name, info.annotation)
        elif t is dict or typing.get_origin(t) is dict:
            free = True
    if free and not fields:
        return None
    return fields


def check_key_path(dotted: str) -> str | None:
    """Return an error message if ``dotted`` names no field of ExperimentConfig."""
    fields: dict[str, Any] | None = {
        k: v.annotation for k, v in ExperimentConfig.model_fields.items()
    }
    walked: list[str] = []
    for part in dotted.split("."):
        if fields is None:  # inside a free-form passthrough dict: anything goes
            return None
        if part not in fields:
            where = ".".join(walked) or "an experiment"
            close = difflib.get_close_matches(part, list(fields), n=3, cutoff=0.6)
            suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            return f"unknown key {echo(part)} in {where}{suggestion}"
        walked.append(part)
        fields = _child_fields(fields[part])  # {} at a leaf: any further part is unknown
    return None


def dotted_outside_sweep(key: str) -> str | None:
    """A valid dotted key where only nested mappings are read (shared fields, entries)."""
    if "." not in key:
        return None
    head, rest = key.split(".", 1)
    return f"dotted keys work only in sweep: and --set; nest it instead ({head}: {{{rest}: ...}})"


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in ``target``, creating the mappings on the way."""
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            return  # keep the non-mapping (e.g. decoder: 5) so validation reports it
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def flatten_leaves(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key path -> value, for every leaf (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flatten_keys(data: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    """Every dotted key path in ``data``, mappings included, parents first."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, Mapping):
            yield from flatten_keys(value, f"{path}.")
