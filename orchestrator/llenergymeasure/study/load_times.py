"""Cached start-up costs of earlier runs on this host, for the dry run's time estimate.

One small JSON file (default ``~/.cache/llenergymeasure/load_times.json``) maps
``host|engine_key`` to the fixed cost of the last run of that engine on that host::

    {"gpu-node-1|1a2b3c4d5e6f7a8b": {"startup_s": 51.3, "load_s": 42.0, "updated_at": "..."}}

``startup_s`` is everything a run spends before its first warmup request that does not
depend on the workload: the container start and imports (run wall time minus the harness's
own ``total_s``) plus the engine load (``timings.load_s``). Runs that reused an engine are
not recorded (their load is the first run's). The file is advisory: a damaged or unreadable
one is ignored, never an error.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from llenergymeasure_contract.results import ExperimentResult, write_json_atomic
from llenergymeasure_contract.reuse import engine_key
from llenergymeasure_contract.timestamps import utc_iso

logger = logging.getLogger(__name__)

LOAD_TIMES_FILE = "load_times.json"


def default_path() -> Path:
    """``$XDG_CACHE_HOME/llenergymeasure/load_times.json`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llenergymeasure" / LOAD_TIMES_FILE


def _host() -> str:
    return socket.gethostname()


def _read(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_startups(path: Path | None = None, host: str | None = None) -> dict[str, float]:
    """engine key -> cached ``startup_s`` of this host (empty when there is no cache)."""
    prefix = f"{host or _host()}|"
    out: dict[str, float] = {}
    for key, entry in _read(path or default_path()).items():
        if key.startswith(prefix) and isinstance(entry, dict):
            value = entry.get("startup_s")
            if isinstance(value, int | float) and value >= 0:
                out[key[len(prefix) :]] = float(value)
    return out


def record_run(
    result: ExperimentResult,
    wall_s: float | None,
    path: Path | None = None,
    host: str | None = None,
) -> None:
    """Remember the start-up cost of a completed run that loaded its own engine."""
    share = result.engine_share
    if share is not None and share.loaded_by != result.run_id:
        return
    load_s = result.timings.load_s
    if load_s is None:
        return
    overhead = 0.0
    total = result.timings.total_s
    if wall_s is not None and total is not None:
        overhead = max(0.0, wall_s - total)
    target = path or default_path()
    data = _read(target)
    data[f"{host or _host()}|{engine_key(result.config)}"] = {
        "startup_s": round(load_s + overhead, 3),
        "load_s": round(load_s, 3),
        "updated_at": utc_iso(),
    }
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:  # a cache: never worth failing a run over
        logger.debug("cannot write %s: %s", target, exc)


def remember_load_time(result: ExperimentResult | None, wall_s: float | None) -> None:
    """:func:`record_run` in the default cache for a completed run (None: nothing to do)."""
    if result is not None:
        record_run(result, wall_s)


def estimate_basis(startups: Mapping[str, float], keys: list[str], assumed_s: float) -> str:
    """How the plan estimated start-up: from the cache, assumed, or both."""
    known = sum(1 for k in keys if k in startups)
    if not keys or known == 0:
        return f"start-up and load assumed {assumed_s:g} s per engine load"
    if known == len(keys):
        return "start-up and load from earlier runs on this host"
    return (
        f"start-up and load from earlier runs on this host for {known} of {len(keys)} "
        f"engine loads, {assumed_s:g} s assumed for the rest"
    )


__all__ = [
    "LOAD_TIMES_FILE",
    "cached_startups",
    "default_path",
    "estimate_basis",
    "record_run",
    "remember_load_time",
]
