"""Writing the results directory atomically, and handing the files to the host user.

Every file is written to a temp file in the same directory and renamed into place, so the
orchestrator never sees a half-written file. ``result.json`` is written last: its presence
means the run succeeded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from llenergymeasure_contract.results import atomic_path

logger = logging.getLogger(__name__)


def write_parquet_atomic(path: Path, columns: dict[str, list[Any]]) -> None:
    """Write a column dict as a parquet file via temp file + rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def chown_outputs(results_dir: Path, uid: int | None, gid: int | None) -> None:
    """chown the results directory and its files to the host user, when running as root.

    Containers run as root; without this the host user could not delete their own results.
    """
    if uid is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    g = gid if gid is not None else uid
    for p in [results_dir, *results_dir.iterdir()]:
        if p.is_symlink():  # the host's link to another run's file: not this run's to chown
            continue
        try:
            os.chown(p, uid, g)
        except OSError as exc:
            logger.warning("could not chown %s: %s", p, exc)
