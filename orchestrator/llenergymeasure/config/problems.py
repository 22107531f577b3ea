"""Problem lines of a study: where each key came from, and pydantic errors as lines.

Each line reads ``key.path: message``, the key path as the user wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llenergymeasure.config.inputs import echo
from llenergymeasure.config.keys import check_key_path
from llenergymeasure_contract.lengths import DIST_NAMES


@dataclass
class Candidate:
    """One experiment before validation, with where each of its keys came from."""

    data: dict[str, Any]
    label: str
    provenance: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # what distinguishes it, for display

    def source_of(self, loc: tuple[str | int, ...]) -> str:
        parts = [str(p) for p in loc]
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if key in self.provenance:
                rest = parts[n:]
                return ".".join([self.provenance[key], *rest])
        return ".".join(parts) if parts else self.label


_UNION_TAGS = {"synthetic", "jsonl", "hub"}


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "dataset" and part in _UNION_TAGS:
            continue
        if i > 0 and loc[i - 1] in ("input_len", "output_len") and part in DIST_NAMES:
            continue
        if isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        out.append(part)
    return tuple(out)


def format_validation(exc: ValidationError, cand: Candidate) -> list[str]:
    """Problem lines of an experiment's validation errors, each at the key's source."""
    problems = []
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        where = cand.source_of(loc) if loc else cand.label
        if err["type"] == "extra_forbidden":
            msg = check_key_path(".".join(str(p) for p in loc)) or "unknown key"
        elif err["type"] not in ("value_error", "assertion_error") and not isinstance(
            err.get("input"), dict | list
        ):
            msg = f"{msg} (got {echo(err.get('input'))})"
        problems.append(f"{where}: {msg}")
    return problems


def format_section_validation(exc: ValidationError, prefix: str) -> list[str]:
    """Problem lines of one section's validation errors, each key under ``prefix``."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] not in ("value_error", "assertion_error") and not isinstance(
            err.get("input"), dict | list
        ):
            msg = f"{msg} (got {echo(err.get('input'))})"
        out.append(f"{where}: {msg}")
    return out
