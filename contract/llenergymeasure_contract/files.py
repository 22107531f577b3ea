"""File names and exit codes of the harness: what a results directory holds and what the
process returns. Both sides read these constants; nothing else spells the names."""

from __future__ import annotations

#: Files the harness writes into the results directory.
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
TIMESERIES_FILE = "timeseries.parquet"
REQUESTS_FILE = "requests.parquet"
#: Server mode: the engine server's log (in the first run's folder of an engine group; the
#: others' folders hold a relative link to it).
SERVER_LOG_FILE = "server.log"
#: Engine groups: written when a member starts on the shared engine ({"run_id", "started_at"}),
#: so the host can tell queued members from the running one.
STARTED_FILE = "started.json"

#: Harness exit codes (anything else non-zero is an unexpected crash).
EXIT_OK = 0
EXIT_FAILED = 1  # the experiment failed; error.json says in which phase
EXIT_CONFIG = 2  # LLEM_CONFIG_JSON missing or invalid

__all__ = [
    "ERROR_FILE",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "REQUESTS_FILE",
    "RESULT_FILE",
    "SERVER_LOG_FILE",
    "STARTED_FILE",
    "TIMESERIES_FILE",
]
