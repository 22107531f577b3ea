"""Where a command writes a file the user named (``-o``): checked before any work is done."""

from __future__ import annotations

import tempfile
from pathlib import Path

from llenergymeasure.errors import UsageError


def check_output_file(path: Path, option: str = "--output") -> Path:
    """``path`` if a file can be written there, else :class:`UsageError` (exit 2) saying why.

    A directory, a missing or unwritable parent folder, or a path that exists but is not a
    regular file is refused with the fix, before a report or export is computed.
    """
    shown = str(path)[:200]
    if path.is_dir():
        raise UsageError(
            f"{option} {shown}: is a directory",
            hint=f"name a file, e.g. {option} {path / 'report.html'}",
        )
    if path.exists() and not path.is_file():
        raise UsageError(f"{option} {shown}: exists and is not a regular file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UsageError(
            f"{option} {shown}: the folder {parent} does not exist",
            hint=f"create it first (mkdir -p {parent}) or name a file in an existing folder",
        )
    if not parent.is_dir():
        raise UsageError(f"{option} {shown}: {parent} is not a folder")
    try:  # a real write: os.access says yes to root on a read-only mount or /proc
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".llem-probe-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"{option} {shown}: cannot write in {parent} ({exc.strerror or exc})",
            hint="name a file in a folder you can write to",
        ) from exc
    return path


def output_write_error(path: Path, exc: OSError, option: str = "--output") -> UsageError:
    """The error for a write to ``path`` that failed anyway (a full disk, a race)."""
    return UsageError(
        f"{option} {str(path)[:200]}: could not be written: {exc.strerror or exc}",
        hint="check the path, the permissions and the free space",
    )


__all__ = ["check_output_file", "output_write_error"]
