"""UTC timestamps, in the one format every file of a study uses.

:func:`utc_iso` is ISO 8601 with milliseconds and a trailing ``Z``
(``2026-12-01T22:50:01.123Z``): manifests, results, error and baseline records all use it.
:func:`utc_compact` is the same instant for names of directories (``20261201T225001Z``).
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_iso(epoch_s: float | None = None) -> str:
    """``epoch_s`` (default: now) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    moment = (
        datetime.now(timezone.utc)
        if epoch_s is None
        else datetime.fromtimestamp(epoch_s, timezone.utc)
    )
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_compact(epoch_s: float | None = None) -> str:
    """``epoch_s`` (default: now) as ``YYYYMMDDTHHMMSSZ``, for file and directory names."""
    moment = (
        datetime.now(timezone.utc)
        if epoch_s is None
        else datetime.fromtimestamp(epoch_s, timezone.utc)
    )
    return moment.strftime("%Y%m%dT%H%M%SZ")


__all__ = ["utc_compact", "utc_iso"]
