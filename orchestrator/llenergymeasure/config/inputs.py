"""Checks of what a user hands the loader, before and beside the schema.

* :func:`check_regular_file`: a study file (or a JSONL dataset) is a regular file, checked
  with ``stat`` before it is opened: a FIFO never blocks the read, a symlink loop is a
  message;
* :func:`nesting_problem`: mappings and lists nested deeper than :data:`MAX_NESTING`;
* :func:`echo`: a value as an error message shows it, cut and with URL credentials hidden
  (the one place values are echoed);
* :func:`expand_path`: ``~``, ``$NAME`` and ``${NAME}`` in ``results_dir`` (an unset
  variable is a problem naming it);
* :func:`jsonl_problem`: why a file cannot be a JSONL dataset.

The limits are documented in ``docs/study-grammar.md`` ("Limits and secrets").
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from llenergymeasure.config.study import ENV_NAME
from llenergymeasure.errors import ConfigError
from llenergymeasure_contract.strict import control_chars, redact_url

#: Largest study file read (a study of 100,000 explicit experiments is about 10 MB).
MAX_STUDY_FILE_BYTES = 16 * 1024 * 1024
#: Deepest nesting of mappings and lists in a study file (the grammar needs about 6).
MAX_NESTING = 64
#: Longest value echoed back in an error message.
ECHO_CHARS = 80


def echo(value: Any) -> str:
    """``repr(value)`` for an error message: at most :data:`ECHO_CHARS` characters, with the
    credentials of any URL in it replaced by ``***`` (the one place values are echoed)."""
    try:
        text = redact_url(repr(value))
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    if len(text) > ECHO_CHARS:
        text = f"{text[: ECHO_CHARS - 3]}... ({len(text):,} characters)"
    return text


def check_regular_file(path: Path, what: str = "study file") -> os.stat_result:
    """The ``stat`` of ``path`` if it is a regular file (symlinks followed), else ConfigError.

    Checked before opening, so a FIFO or a device never blocks the read and a symlink loop is
    a message, not a crash.
    """
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError("file not found", source=str(path), hint="check the path") from exc
    except (OSError, RuntimeError) as exc:  # ELOOP, ENAMETOOLONG, EACCES ...
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot open the {what}: {why}",
            source=str(path),
            hint="check the path (a symlink that points to itself, in a loop?)",
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"is a directory, not a {what}", source=str(path))
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"is not a regular file (a pipe, socket or device), not a {what}",
            source=str(path),
            hint="give the path of a file",
        )
    return st


def nesting_problem(data: Any) -> str | None:
    """A message when ``data`` nests deeper than :data:`MAX_NESTING` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return (
                f"mappings and lists nest more than {MAX_NESTING} levels deep; a study needs "
                "only a few"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


#: Bytes of a JSONL dataset read at load time to judge it (the harness reads the rest).
_JSONL_PROBE_BYTES = 64 * 1024


def jsonl_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a JSONL dataset (a directory, empty, binary, not JSON lines), or
    None. Only its start is read: the harness reads the prompts themselves."""
    name = echo(str(path))
    try:
        size = check_regular_file(path, "JSONL dataset").st_size
        with path.open("rb") as fh:
            head = fh.read(_JSONL_PROBE_BYTES)
    except ConfigError as exc:
        return f"{name} {exc.message}"
    except OSError as exc:
        return f"cannot read {name}: {exc.strerror or exc}"
    if not head.strip():
        return f"{name} is empty; a JSONL dataset holds one JSON object per line"
    if b"\x00" in head:
        return f"{name} is a binary file, not JSON lines (one JSON object per line)"
    lines = head.split(b"\n")
    at = next(i for i, line in enumerate(lines) if line.strip())
    first = lines[at]
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        return f"{name} is not UTF-8 text; a JSONL dataset is UTF-8 JSON lines"
    if at < len(lines) - 1 or size <= _JSONL_PROBE_BYTES:  # the first line was read whole
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return f"{name}: its first line is not JSON (one JSON object per line expected)"
        if not isinstance(obj, dict):
            return f'{name}: its first line is not a JSON object ({{"prompt": "..."}})'
    return None


def prefixes(dotted: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the sections that contain a dotted key."""
    parts = dotted.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


#: ``$NAME`` or ``${NAME}`` in a path.
_ENV_REF = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<name>[A-Za-z_][A-Za-z0-9_]*))")


def expand_path(value: str, key: str, problems: list[str]) -> str:
    """``~`` and ``$NAME``/``${NAME}`` expanded from the environment (docs/study-grammar.md).

    An unset or empty variable, a malformed reference (``${}``, ``${A-B}``) or a ``$`` that
    starts no name is a problem naming ``key``, never a folder literally called ``$HOME``.
    """
    bad: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group("braced") if m.group("braced") is not None else m.group("name")
        if not ENV_NAME.fullmatch(name or ""):
            bad.append(f"{m.group(0)!r} is not a variable reference ($NAME or ${{NAME}})")
            return m.group(0)
        got = os.environ.get(name)
        if not got:
            bad.append(f"environment variable {name} is not set")
            return m.group(0)
        return got

    out = _ENV_REF.sub(sub, value)
    if "$" in _ENV_REF.sub("", value) and not bad:
        bad.append("a '$' that starts no variable name ($NAME or ${NAME})")
    for b in bad:
        problems.append(f"{key}: {b} (in {echo(value)}); set it, or write the path out")
    return os.path.expanduser(out)


def shown(value: Any) -> str:
    """A sweep value in a label: as typed, or escaped and cut when it is not one short line."""
    text = str(value)
    if len(text) > ECHO_CHARS or control_chars(text):
        return echo(value)
    return text


__all__ = [
    "ECHO_CHARS",
    "MAX_NESTING",
    "MAX_STUDY_FILE_BYTES",
    "check_regular_file",
    "echo",
    "expand_path",
    "jsonl_problem",
    "nesting_problem",
    "prefixes",
    "shown",
]
