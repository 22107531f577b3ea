"""The study manifest: the durable record of every run's state, rewritten atomically.

``manifest.json`` in the study directory is rewritten (temp file + rename) on every state
change, so whatever kills the orchestrator, the file on disk is a complete, valid manifest of
the last change. Run states::

    pending ──► running ──► completed
                   │
                   ├──────► failed        (cause: failure_kind + message)
                   └──────► interrupted   (Ctrl-C)

A resumed study re-runs failed and interrupted runs (a new attempt, in a new folder) and skips
completed ones. Every attempt is kept in ``attempts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure.runners.base import FailureKind, RunOutcome, RunState
from llenergymeasure_contract.results import write_json_atomic
from llenergymeasure_contract.timestamps import utc_iso

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = "1.0"

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
    message: str | None = None
    runs: list[RunRecord]

    def counts(self) -> dict[str, int]:
        """Runs per state."""
        out = {s: 0 for s in ("pending", "running", "completed", "failed", "interrupted")}
        for r in self.runs:
            out[r.state] += 1
        return out


class ManifestStore:
    """Holds the manifest in memory and writes it atomically after every change."""

    def __init__(self, study_dir: Path, manifest: StudyManifest) -> None:
        self.study_dir = study_dir
        self.manifest = manifest
        self._by_id = {r.run_id: r for r in manifest.runs}

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.study_dir / MANIFEST_FILE

    @classmethod
    def load(cls, study_dir: Path) -> ManifestStore:
        """Read an existing study directory's manifest."""
        path = study_dir / MANIFEST_FILE
        return cls(study_dir, StudyManifest.model_validate_json(path.read_text(encoding="utf-8")))

    def write(self) -> None:
        """Rewrite ``manifest.json`` atomically."""
        self.manifest.updated_at = utc_iso()
        write_json_atomic(self.path, self.manifest.model_dump_json(indent=2))

    def run(self, run_id: str) -> RunRecord:
        """The record of ``run_id``."""
        return self._by_id[run_id]

    def start_attempt(self, run_id: str, run_dir: Path, log_path: Path) -> Attempt:
        """Mark ``run_id`` running in a new attempt; write."""
        rec = self._by_id[run_id]
        attempt = Attempt(
            attempt=len(rec.attempts) + 1,
            run_dir=str(run_dir.relative_to(self.study_dir)),
            log_path=str(log_path.relative_to(self.study_dir)),
            started_at=utc_iso(),
        )
        rec.attempts.append(attempt)
        rec.state = "running"
        self.write()
        return attempt

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
        rec.state = outcome.status
        self.write()
        return rec

    def set_state(self, state: StudyState, message: str | None = None) -> None:
        """Set the study's own state; write."""
        self.manifest.state = state
        self.manifest.message = message
        self.write()

    def recover_running(self) -> list[str]:
        """Runs left ``running`` by a killed orchestrator become ``interrupted``; write."""
        fixed = []
        for rec in self.manifest.runs:
            if rec.state == "running":
                rec.state = "interrupted"
                if rec.attempts and rec.attempts[-1].state == "running":
                    rec.attempts[-1].state = "interrupted"
                    rec.attempts[-1].message = "the orchestrator stopped during this run"
                fixed.append(rec.run_id)
        if fixed:
            self.write()
        return fixed
