"""The study manifest: the durable record of every run's state, rewritten atomically.

``manifest.json`` in the study directory is rewritten (temp file + rename) on every state
change, so whatever kills the orchestrator, the file on disk is a complete, valid manifest of
the last change. Run states::

    pending ──► running ──► completed     (Slurm: running = submitted; job_state says more)
                   │
                   ├──────► failed        (cause: failure_kind + message)
                   └──────► interrupted   (Ctrl-C)

A resumed study re-runs failed and interrupted runs (a new attempt, in a new folder) and skips
completed ones. Every attempt is kept in ``attempts``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llenergymeasure.errors import ConfigError
from llenergymeasure.runners.base import FailureKind, RunOutcome, RunState
from llenergymeasure_contract.files import RESULT_FILE
from llenergymeasure_contract.results import ExperimentResult, write_json_atomic
from llenergymeasure_contract.timestamps import utc_iso

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = "1.0"

_M = TypeVar("_M", bound=BaseModel)

StudyState = Literal["running", "completed", "failed", "interrupted", "aborted"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attempt(_Model):
    """One attempt at a run (a resume makes a new one)."""

    attempt: int
    run_dir: str  # relative to the study directory
    log_path: str  # relative to the study directory
    state: RunState = "running"
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    failure_kind: FailureKind | None = None
    message: str | None = None
    exit_code: int | None = None
    job_id: str | None = None  # Slurm runner: the job of this attempt
    job_state: str | None = None  # Slurm runner: the job's last seen state (PENDING, RUNNING...)
    node: str | None = None  # Slurm runner: the node it ran on


class RunRecord(_Model):
    """One planned run (experiment x cycle) and where it stands."""

    index: int  # 1-based position in the plan's run order
    run_id: str
    config_hash: str
    cycle: int
    state: RunState = "pending"
    attempts: list[Attempt] = Field(default_factory=list)

    @property
    def last(self) -> Attempt | None:
        """The latest attempt, if any."""
        return self.attempts[-1] if self.attempts else None


class StudyManifest(_Model):
    """Everything needed to see and resume a study."""

    schema_version: str = MANIFEST_SCHEMA_VERSION
    study_id: str
    study_name: str
    study_design_hash: str
    source: str | None = None
    llem_version: str
    runner: str
    state: StudyState = "running"
    created_at: str
    updated_at: str
    sessions: list[str] = Field(default_factory=list)  # start time of each (resumed) session
    # Totals of the sessions that have ended (a resume adds its own when it ends).
    wall_s: float = 0.0
    experiments_s: float = 0.0
    gaps_s: float = 0.0
    message: str | None = None
    runs: list[RunRecord]

    def counts(self) -> dict[str, int]:
        """Runs per state."""
        out = {s: 0 for s in ("pending", "running", "completed", "failed", "interrupted")}
        for r in self.runs:
            out[r.state] += 1
        return out


class ManifestStore:
    """Holds the manifest in memory and writes it atomically after every change.

    It also keeps the typed result of every run completed through it (from the outcome, which
    parsed ``result.json`` once), so the study result never parses those files again.
    """

    def __init__(self, study_dir: Path, manifest: StudyManifest) -> None:
        self.study_dir = study_dir
        self.manifest = manifest
        self._by_id = {r.run_id: r for r in manifest.runs}
        self._results: dict[str, ExperimentResult] = {}

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.study_dir / MANIFEST_FILE

    @classmethod
    def load(cls, study_dir: Path) -> ManifestStore:
        """Read an existing study directory's manifest.

        Raises:
            ConfigError: the file is missing, unreadable, truncated or not a manifest (the
                message names the file and what is wrong; nothing is rewritten).
        """
        path = study_dir / MANIFEST_FILE
        manifest = read_damage_checked(path, StudyManifest, what="study manifest")
        ids = [r.run_id for r in manifest.runs]
        if len(set(ids)) != len(ids):
            raise damaged(path, "study manifest", ["runs: a run id appears twice"])
        return cls(study_dir, manifest)

    def write(self) -> None:
        """Rewrite ``manifest.json`` atomically."""
        self.manifest.updated_at = utc_iso()
        write_json_atomic(self.path, self.manifest.model_dump_json(indent=2))

    def run(self, run_id: str) -> RunRecord:
        """The record of ``run_id``."""
        return self._by_id[run_id]

    def start_attempt(
        self, run_id: str, run_dir: Path, log_path: Path, *, queued: bool = False
    ) -> Attempt:
        """Mark ``run_id`` running in a new attempt; write.

        ``queued``: an engine group's member waiting for the runs before it on the shared
        engine: the attempt (and its folder) is recorded now, so a written ``result.json`` is
        found whatever happens to ``llem``, but the run stays ``pending`` until
        :meth:`mark_running`.
        """
        rec = self._by_id[run_id]
        state: RunState = "pending" if queued else "running"
        attempt = Attempt(
            attempt=len(rec.attempts) + 1,
            run_dir=str(run_dir.relative_to(self.study_dir)),
            log_path=str(log_path.relative_to(self.study_dir)),
            state=state,
            started_at=utc_iso(),
        )
        rec.attempts.append(attempt)
        rec.state = state
        self.write()
        return attempt

    def mark_running(self, run_id: str) -> None:
        """A queued attempt (engine group) has started: running from now; write."""
        rec = self._by_id[run_id]
        if rec.last is None or rec.last.state != "pending":
            return
        rec.last.state = "running"
        rec.last.started_at = utc_iso()
        rec.state = "running"
        self.write()

    def finish_attempt(self, run_id: str, outcome: RunOutcome) -> RunRecord:
        """Record how the current attempt ended; write."""
        rec = self._by_id[run_id]
        attempt = rec.attempts[-1]
        attempt.state = outcome.status
        attempt.finished_at = outcome.finished_at or utc_iso()
        attempt.duration_s = outcome.duration_s
        attempt.failure_kind = outcome.failure_kind
        attempt.message = outcome.message
        attempt.exit_code = outcome.exit_code
        attempt.job_id = outcome.job_id or attempt.job_id
        attempt.node = outcome.node or attempt.node
        rec.state = outcome.status
        if outcome.result is not None:
            self._results[run_id] = outcome.result
        else:
            self._results.pop(run_id, None)
        self.write()
        return rec

    def result_of(self, run_id: str) -> ExperimentResult | None:
        """The typed result of a completed run: kept from its outcome, or (a run completed in
        an earlier session) read from its ``result.json`` once; ``None`` if unreadable."""
        if run_id in self._results:
            return self._results[run_id]
        rec = self._by_id[run_id]
        if rec.state != "completed" or rec.last is None:
            return None
        path = self.study_dir / rec.last.run_dir / RESULT_FILE
        try:
            result = ExperimentResult.load(path)
        except (OSError, ValueError) as exc:
            logger.warning("cannot read %s: %s", path, exc)
            return None
        self._results[run_id] = result
        return result

    def set_job(
        self,
        run_id: str,
        *,
        job_id: str | None = None,
        job_state: str | None = None,
        node: str | None = None,
    ) -> Attempt:
        """Record the scheduler job of the current attempt (what is given); write."""
        attempt = self._by_id[run_id].attempts[-1]
        attempt.job_id = job_id or attempt.job_id
        attempt.job_state = job_state or attempt.job_state
        attempt.node = node or attempt.node
        self.write()
        return attempt

    def set_state(self, state: StudyState, message: str | None = None) -> None:
        """Set the study's own state; write."""
        self.manifest.state = state
        self.manifest.message = message
        self.write()

    def recover_running(self, keep: set[str] | None = None) -> list[str]:
        """Runs left ``running`` by a killed orchestrator become ``interrupted`` (and the
        queued attempts of engine-group members, which stay ``pending``); write.

        ``keep`` names runs to leave running (Slurm jobs that a resume adopts).
        """
        fixed = []
        queued = False
        for rec in self.manifest.runs:
            last = rec.last
            if rec.state == "pending" and last is not None and last.state == "pending":
                last.state = "interrupted"  # queued in an engine group, never started
                last.message = "not started: the orchestrator stopped before it"
                queued = True
                continue
            if rec.state == "running" and rec.run_id not in (keep or set()):
                rec.state = "interrupted"
                if rec.attempts and rec.attempts[-1].state == "running":
                    rec.attempts[-1].state = "interrupted"
                    rec.attempts[-1].message = "the orchestrator stopped during this run"
                fixed.append(rec.run_id)
        if fixed or queued:
            self.write()
        return fixed


_DAMAGED_HINT = (
    "the file was truncated or edited by hand; restore it (e.g. from a backup) or start the "
    "study again. Nothing was changed"
)


def damaged(path: Path, what: str, problems: list[str]) -> ConfigError:
    """The error for a study file that cannot be trusted (exit 2, nothing rewritten)."""
    return ConfigError(f"damaged {what}", source=str(path), problems=problems, hint=_DAMAGED_HINT)


def read_damage_checked(path: Path, model: type[_M], *, what: str) -> _M:
    """Parse ``path`` as ``model``; any problem is a :func:`damaged` error naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise damaged(path, what, ["the file is missing"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged(path, what, [f"cannot read it: {exc}"]) from exc
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err["loc"]) or "<whole file>"
            problems.append(f"{loc}: {err['msg']}")
        raise damaged(path, what, problems) from exc
