"""The runner protocol and the one place where a finished run is classified.

A :class:`Runner` takes a :class:`~llenergymeasure.runners.spec.RunRequest`, runs the harness
for it (in a container or a subprocess), and returns a :class:`RunOutcome`. The outcome is
classified from facts only, in this order::

    interrupted, but result.json valid -> completed (the signal came after the measurement)
    interrupted by us (Ctrl-C)     -> interrupted
    stopped by us at the timeout   -> failed / timeout
    container State.OOMKilled      -> failed / oom_killed
    exit 0 and result.json loads   -> completed (the typed result rides in the outcome)
    exit 0, no/invalid result.json -> failed / missing_result | invalid_result
    exit != 0 and error.json       -> failed / harness_error (the harness's own type+message)
    exit != 0, no error.json       -> failed / exit_nonzero (signal name when killed)

Logs are kept in the run's log file for people to read; they are never parsed. ``result.json``
is parsed exactly once, here: the completed outcome carries the :class:`ExperimentResult`, and
every later step (progress line, study result) reads that object.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llenergymeasure.runners.spec import RunRequest
from llenergymeasure_contract.files import ERROR_FILE, RESULT_FILE
from llenergymeasure_contract.results import ExperimentResult
from llenergymeasure_contract.timestamps import utc_iso

if TYPE_CHECKING:
    from llenergymeasure.config.study import RunnerSettings
    from llenergymeasure.runners.preflight import PreflightReport, StudyNeeds
    from llenergymeasure.study.manifest import RunRecord
    from llenergymeasure.study.session import StudySession

#: The one state enum of a run, everywhere (manifest, outcome, study result): pending and
#: running in the manifest; a finished run's outcome is one of the last three.
RunState = Literal["pending", "running", "completed", "failed", "interrupted"]
ENDED_STATES: frozenset[str] = frozenset({"completed", "failed", "interrupted"})
FailureKind = Literal[
    "harness_error",
    "oom_killed",
    "timeout",
    "exit_nonzero",
    "missing_result",
    "invalid_result",
    "start_failed",
    "runner_error",
    "storage_error",
    "interrupted",
    "cancelled",  # a scheduler job cancelled (or preempted) by someone else
    "node_failure",  # the scheduler lost the node under the job
]

LogSink = Callable[[str], None]


class RunOutcome(BaseModel):
    """How one run ended, with the cause in words when it did not complete."""

    model_config = ConfigDict(extra="forbid")

    status: RunState
    failure_kind: FailureKind | None = None
    message: str | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    duration_s: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    result_path: str | None = None
    container_id: str | None = None
    job_id: str | None = None  # scheduler (Slurm) job id
    node: str | None = None  # the node the job ran on
    #: The parsed ``result.json`` of a completed run (never serialised with the outcome).
    result: ExperimentResult | None = Field(default=None, exclude=True, repr=False)

    @field_validator("status")
    @classmethod
    def _ended(cls, value: RunState) -> RunState:
        if value not in ENDED_STATES:
            raise ValueError(f"an outcome is {', '.join(sorted(ENDED_STATES))}, not {value}")
        return value

    @property
    def ok(self) -> bool:
        """True when the run completed with a result."""
        return self.status == "completed"


class Runner(Protocol):
    """Runs the harness for a study's runs; owns everything that differs between runners.

    The study session never asks which runner it holds: preflight, the image provenance and
    how the runs are executed (one at a time, or many jobs in flight) are the runner's.
    """

    name: str
    #: Each run's request names the planned image (containers, a Slurm job's launcher).
    uses_image: ClassVar[bool]
    #: Its runs outlive the orchestrator (scheduler jobs) and a resumed study adopts them.
    adopts_jobs: ClassVar[bool]

    @classmethod
    def ran_image(cls, settings: RunnerSettings) -> bool:
        """Whether runs ran in the planned image, so it is their provenance."""
        ...

    def preflight(self, needs: StudyNeeds) -> PreflightReport:
        """Check the host (or cluster) for ``needs``; ``PreflightError`` lists every problem."""
        ...

    def execute(self, todo: list[RunRecord], session: StudySession) -> None:
        """Run ``todo`` (plan order) to the end, reporting each ended run to ``session``."""
        ...

    def run(
        self,
        request: RunRequest,
        *,
        echo: LogSink | None = None,
        cancel: threading.Event | None = None,
    ) -> RunOutcome:
        """Run ``request``; write logs to ``request.log_path`` (and ``echo`` each line).

        A ``KeyboardInterrupt`` while the run is in flight stops it cleanly and returns an
        ``interrupted`` outcome (it is not re-raised); so does setting ``cancel``.
        Infrastructure failures that make running impossible raise ``RunnerError``.
        """
        ...

    def cleanup_leftovers(self) -> list[str]:
        """Remove what earlier crashed runs of this tool left behind; return what was removed."""
        ...


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def describe_exit(exit_code: int) -> str:
    """Words for an exit status; 128+N and negative N (subprocess) are signal N."""
    if exit_code < 0:
        return f"killed by {_signal_name(-exit_code)}"
    if exit_code > 128:
        return f"exit code {exit_code} ({_signal_name(exit_code - 128)})"
    return f"exit code {exit_code}"


def read_error_record(results_dir: Path) -> dict[str, Any] | None:
    """The harness's ``error.json`` as a dict, or ``None`` when absent or unreadable."""
    path = results_dir / ERROR_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {"message": str(data)}


def _error_message(record: dict[str, Any]) -> str:
    kind = record.get("error_class") or record.get("error_type") or record.get("type")
    message = record.get("message") or record.get("error") or ""
    phase = record.get("phase")
    text = f"{kind}: {message}" if kind else str(message)
    return f"{text} (phase {phase})" if phase else text


def load_result(results_dir: Path) -> tuple[ExperimentResult | None, str | None]:
    """``result.json`` parsed and validated, or ``None`` and why not (``None``: no file)."""
    path = results_dir / RESULT_FILE
    if not path.is_file():
        return None, None
    try:
        return ExperimentResult.load(path), None
    except Exception as exc:  # any parse/validation problem makes the result unusable
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def classify(
    *,
    results_dir: Path,
    exit_code: int | None,
    oom_killed: bool = False,
    timed_out: bool = False,
    interrupted: bool = False,
    timeout_s: float | None = None,
    started_at: str | None = None,
    duration_s: float | None = None,
    container_id: str | None = None,
    log_path: Path | None = None,
) -> RunOutcome:
    """Classify a finished run from its exit state and its results directory (see module doc)."""
    record = read_error_record(results_dir)
    base: dict[str, Any] = {
        "exit_code": exit_code,
        "oom_killed": oom_killed,
        "timed_out": timed_out,
        "started_at": started_at,
        "finished_at": utc_iso(),
        "duration_s": duration_s,
        "container_id": container_id,
    }
    see_log = f"; see {log_path}" if log_path is not None else ""
    result, why = (None, None) if oom_killed else load_result(results_dir)
    if interrupted and result is not None:
        # The harness had written result.json (last, atomically) when the signal came, so
        # the measurement is whole, even if the stop caught it tidying up: kept, never re-run.
        return RunOutcome(
            status="completed",
            message="finished before the interruption took effect",
            result_path=str(results_dir / RESULT_FILE),
            result=result,
            **base,
        )
    if interrupted:
        return RunOutcome(
            status="interrupted",
            failure_kind="interrupted",
            message="interrupted by the user; the run was stopped",
            **base,
        )
    if timed_out:
        return RunOutcome(
            status="failed",
            failure_kind="timeout",
            message=f"did not finish within the timeout of {timeout_s:g} s and was stopped"
            if timeout_s is not None
            else "timed out and was stopped",
            **base,
        )
    if oom_killed:
        return RunOutcome(
            status="failed",
            failure_kind="oom_killed",
            message="killed by the kernel OOM killer (container memory limit or host memory "
            "exhausted); lower the batch size or raise the memory limit",
            **base,
        )
    if exit_code == 0:
        if result is not None:
            return RunOutcome(
                status="completed",
                result_path=str(results_dir / RESULT_FILE),
                result=result,
                **base,
            )
        if why is None:
            return RunOutcome(
                status="failed",
                failure_kind="missing_result",
                message=f"the harness exited 0 but wrote no {RESULT_FILE}{see_log}",
                **base,
            )
        return RunOutcome(
            status="failed",
            failure_kind="invalid_result",
            message=f"{RESULT_FILE} is not a valid result: {why}",
            **base,
        )
    if record is not None:
        return RunOutcome(
            status="failed",
            failure_kind="harness_error",
            message=f"harness failed ({describe_exit(exit_code if exit_code is not None else -1)}"
            f"): {_error_message(record)}",
            **base,
        )
    what = describe_exit(exit_code) if exit_code is not None else "no exit status"
    return RunOutcome(
        status="failed",
        failure_kind="exit_nonzero",
        message=f"the harness ended with {what} and wrote no {ERROR_FILE}{see_log}",
        **base,
    )


class LogWriter:
    """Appends log text to the run's log file and optionally echoes whole lines."""

    def __init__(self, path: Path, echo: LogSink | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._fh = path.open("ab")
        self._echo = echo
        self._pending = b""
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            try:
                self._fh.write(chunk)
                self._fh.flush()
            except OSError as exc:  # name the file: a bare write error carries no path
                raise OSError(exc.errno, exc.strerror, str(self._path)) from exc
            if self._echo is None:
                return
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._echo(line.decode("utf-8", errors="replace"))

    def note(self, text: str) -> None:
        """Write an orchestrator line (prefixed) into the log."""
        self.write(f"[llem] {text}\n".encode())

    def close(self) -> None:
        with self._lock:
            if self._pending and self._echo is not None:
                self._echo(self._pending.decode("utf-8", errors="replace"))
            self._pending = b""
            with contextlib.suppress(OSError):  # a full disk: the write already reported it
                self._fh.close()
