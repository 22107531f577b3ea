"""The Slurm runner's ``execute``: many runs in flight as Slurm jobs, one poller.

The Docker and local runners run one run at a time
(:meth:`~llenergymeasure.study.session.StudySession.run_each`). With
``runner: slurm`` the runs are jobs on a cluster, so up to ``slurm.max_concurrent`` are in
flight at once and one poll (``squeue`` for all of them, ``sacct`` for jobs slurmctld has
forgotten) updates every one; the interval backs off from ``poll_min_s`` to ``poll_max_s``
while nothing changes and drops back when something does. Never a process or thread per job::

    adopt: runs the manifest says are running with a job id (a resumed study) ─► in flight
    loop:  submit while in flight < max_concurrent (manifest: running, job id, PENDING)
           poll once ─► job state / node changes ─► manifest
                      ─► ended ─► outcome from the run folder + job state ─► manifest
           sleep (backoff)
    Ctrl-C: slurm.on_interrupt = cancel ─► scancel all in flight, wait for them to end,
                                           record each (interrupted) ─► exit 130
                                 detach ─► leave them queued/running (manifest keeps the
                                           job ids) ─► exit 130; --resume adopts them

A failing ``squeue`` (slurmctld busy or restarting) is retried with the same backoff; after
``MAX_POLL_ERRORS`` in a row the study stops with a runner error and its jobs stay in the
manifest, running, for ``--resume`` to adopt.
After ``execution.max_consecutive_failures`` failures in a row nothing more is submitted, and
the jobs already in flight are waited for: they are measurements under way, not lost work.
Thermal gaps do not apply: consecutive jobs may land on different nodes. A job that ended
COMPLETED or FAILED but whose result.json / error.json this host cannot see yet (a shared
filesystem lagging the node) is given ``RESULT_SETTLE_S`` to show them before it is judged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from llenergymeasure.errors import RunnerError
from llenergymeasure.runners.base import RunOutcome
from llenergymeasure.runners.slurm import FATAL_PENDING_REASONS, JobInfo, SlurmRunner, wait_terminal
from llenergymeasure.runners.spec import RunRequest
from llenergymeasure.study.manifest import Attempt, ManifestStore, RunRecord
from llenergymeasure.study.plan import StudyPlan
from llenergymeasure.study.progress import StudyProgress
from llenergymeasure_contract.files import ERROR_FILE, RESULT_FILE
from llenergymeasure_contract.timestamps import utc_iso

logger = logging.getLogger(__name__)

#: Polls in a row that may not find a job before it counts as forgotten by Slurm.
MAX_MISSES = 5
#: Failed polls in a row (squeue erroring) before the study stops; its jobs stay adoptable.
MAX_POLL_ERRORS = 10
#: How long a job that ended COMPLETED/FAILED may take to show its result.json/error.json on
#: this host: a shared filesystem (NFS attribute and dentry caches) can lag the node.
RESULT_SETTLE_S = 30.0

MakeRequest = Callable[[RunRecord, Attempt | None], RunRequest]
OnEnd = Callable[[RunRecord, RunOutcome], None]


class DetachedInterrupt(KeyboardInterrupt):
    """Ctrl-C with ``slurm.on_interrupt: detach``: the jobs keep running; the message says so."""


@dataclass
class _Flight:
    rec: RunRecord
    request: RunRequest
    job_id: str
    state: str | None = None
    node: str | None = None
    misses: int = 0
    changed: bool = False  # its state or node changed at the last poll
    settle_until_s: float | None = None  # on the loop's clock: wait for its files until then


@dataclass
class BatchLoop:
    """One session of a study on a batch scheduler (see the module docstring)."""

    plan: StudyPlan
    store: ManifestStore
    runner: SlurmRunner
    make_request: MakeRequest
    on_end: OnEnd
    progress: StudyProgress
    console: Console
    quiet: bool = False
    sleep: Callable[[float], None] = time.sleep
    experiments_s: float = 0.0
    settle_s: float = RESULT_SETTLE_S
    _in_flight: dict[str, _Flight] = field(default_factory=dict)
    _clock_s: float = 0.0  # seconds slept so far (the loop's own clock)

    def _wait(self, seconds: float) -> None:
        self._clock_s += seconds
        self.sleep(seconds)

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def run(self, todo: list[RunRecord]) -> None:
        """Run ``todo`` (plan order) to the end; raises KeyboardInterrupt on Ctrl-C."""
        queue = self._adopt([r for r in todo if r.state == "running"])
        queue += [r for r in todo if r.state != "running"]
        queue.sort(key=lambda r: r.index)
        try:
            self._loop(queue)
        except KeyboardInterrupt:
            self._interrupted()
            raise

    # ------------------------------------------------------------------ adoption

    def _adopt(self, running: list[RunRecord]) -> list[RunRecord]:
        """Take over the jobs of runs left running; return the runs to submit again."""
        if not running:
            return []
        again: list[RunRecord] = []
        unknown = [r for r in running if r.last is None or r.last.job_id is None]
        found: dict[str, JobInfo] = {}
        if unknown:
            found = self.runner.cli.find(self.store.manifest.study_id)
        for rec in running:
            attempt = rec.last
            if attempt is None:
                again.append(rec)
                continue
            job_id = attempt.job_id
            if job_id is None and Path(attempt.run_dir).name in found:
                job_id = found[Path(attempt.run_dir).name].job_id
                self.store.set_job(rec.run_id, job_id=job_id)
            if job_id is None:
                self.store.finish_attempt(
                    rec.run_id,
                    RunOutcome(
                        status="interrupted",
                        failure_kind="interrupted",
                        message="the orchestrator stopped before this run's job was submitted",
                        finished_at=utc_iso(),
                    ),
                )
                again.append(rec)
                continue
            request = self.make_request(rec, attempt)
            self._in_flight[job_id] = _Flight(rec, request, job_id, state=attempt.job_state)
            self._say(
                f"adopting Slurm job {job_id} of {rec.run_id} (last seen "
                f"{attempt.job_state or 'submitted'})"
            )
        return again

    # ------------------------------------------------------------------ the loop

    def _loop(self, queue: list[RunRecord]) -> None:
        slurm = self.runner.settings
        ex = self.plan.study.execution
        consecutive = poll_errors = 0
        stop_submitting = False
        delay = slurm.poll_min_s
        while queue or self._in_flight:
            changed = False
            while queue and not stop_submitting and len(self._in_flight) < slurm.max_concurrent:
                rec = queue.pop(0)
                self._submit(rec)
                changed = True
            if not self._in_flight:
                break
            try:
                states = self.runner.poll(list(self._in_flight))
            except RunnerError as exc:
                # slurmctld busy or restarting: keep the jobs, back off, give up after a while
                poll_errors += 1
                if poll_errors >= MAX_POLL_ERRORS:
                    raise
                logger.warning("polling Slurm failed (%d in a row): %s", poll_errors, exc.message)
                delay = min(slurm.poll_max_s, delay * 1.5)
                self._wait(delay)
                continue
            poll_errors = 0
            for job_id, flight in list(self._in_flight.items()):
                outcome = self._observe(flight, states.get(job_id))
                changed = changed or flight.changed
                if outcome is None:
                    continue
                del self._in_flight[job_id]
                self.experiments_s += outcome.duration_s or 0.0
                self.on_end(flight.rec, outcome)
                consecutive = 0 if outcome.ok else consecutive + 1
                limit = ex.max_consecutive_failures
                if limit and consecutive >= limit and not stop_submitting:
                    stop_submitting = True
                    self.store.set_state(
                        "aborted",
                        f"stopped after {consecutive} consecutive failures "
                        f"(execution.max_consecutive_failures={limit})",
                    )
                    if self._in_flight:
                        self._say(
                            f"{consecutive} failures in a row: submitting no more; waiting for "
                            f"{len(self._in_flight)} job(s) in flight"
                        )
            if not self._in_flight and (stop_submitting or not queue):
                break
            delay = slurm.poll_min_s if changed else min(slurm.poll_max_s, delay * 1.5)
            self._wait(delay)

    def _submit(self, rec: RunRecord) -> None:
        request = self.make_request(rec, None)
        self.store.start_attempt(rec.run_id, request.run_dir, request.log_path)
        try:
            sub = self.runner.submit(request)
        except (RunnerError, OSError) as exc:
            message = exc.message if isinstance(exc, RunnerError) else str(exc)
            self.store.finish_attempt(
                rec.run_id,
                RunOutcome(
                    status="failed",
                    failure_kind="start_failed",
                    message=message,
                    finished_at=utc_iso(),
                ),
            )
            raise RunnerError(message, hint=getattr(exc, "hint", None)) from exc
        self.store.set_job(rec.run_id, job_id=sub.job_id, job_state="PENDING")
        self._in_flight[sub.job_id] = _Flight(rec, request, sub.job_id, state="PENDING")
        exp = self.plan.experiment(rec.config_hash)
        self.progress.start_run(rec, exp)
        self._say(f"  {rec.run_id}: submitted as Slurm job {sub.job_id}")

    def _observe(self, flight: _Flight, info: JobInfo | None) -> RunOutcome | None:
        """Record what changed for one job; its outcome when it has ended."""
        flight.changed = False
        if info is None:
            flight.misses += 1
            if flight.misses < MAX_MISSES:
                return None
            # Slurm forgot the job (MinJobAge passed and no accounting): the folder decides.
            # The outcome below parses and validates result.json (once); its presence is enough.
            ok = (flight.request.run_dir / RESULT_FILE).is_file()
            state = "COMPLETED" if ok else "UNKNOWN"
            info = JobInfo(job_id=flight.job_id, state=state, node=flight.node)
            outcome = self.runner.outcome(flight.request, info)
            if not outcome.ok:
                outcome = outcome.model_copy(
                    update={
                        "failure_kind": "runner_error",
                        "message": f"Slurm no longer knows job {flight.job_id} and the run "
                        f"folder has no valid result; see {flight.request.log_path}",
                    }
                )
            return outcome
        flight.misses = 0
        if info.state != flight.state or (info.node and info.node != flight.node):
            flight.state, flight.node = info.state, info.node or flight.node
            flight.changed = True
            self.store.set_job(flight.rec.run_id, job_state=info.state, node=info.node)
            if info.state == "RUNNING":
                self._say(f"  {flight.rec.run_id}: job {info.job_id} running on {info.node}")
        if info.pending and info.reason in FATAL_PENDING_REASONS:
            self.runner.cancel([info.job_id])
            return RunOutcome(
                status="failed",
                failure_kind="start_failed",
                message=f"Slurm job {info.job_id} cannot start: {info.reason}; fix the slurm: "
                "section (partition, account, qos, GPUs) and resume",
                finished_at=utc_iso(),
                job_id=info.job_id,
            )
        if info.terminal:
            if info.state in ("COMPLETED", "FAILED") and not _files_visible(flight.request):
                if flight.settle_until_s is None:
                    flight.settle_until_s = self._clock_s + self.settle_s
                if self._clock_s < flight.settle_until_s:
                    return None  # the node wrote them; this host may not see them yet
            flight.changed = True
            return self.runner.outcome(flight.request, info)
        return None

    # ------------------------------------------------------------------ Ctrl-C

    def _interrupted(self) -> None:
        ids = list(self._in_flight)
        if not ids:
            return
        if self.runner.settings.on_interrupt == "detach":
            for flight in self._in_flight.values():
                with contextlib.suppress(OSError):
                    self.store.set_job(flight.rec.run_id, job_state=flight.state)
            raise DetachedInterrupt(
                f"interrupted by the user (Ctrl-C); {len(ids)} Slurm job(s) left queued or "
                f"running ({', '.join(ids)}); --resume adopts them"
            )
        self._say(f"cancelling {len(ids)} Slurm job(s): {', '.join(ids)}")
        states: dict[str, JobInfo] = {}
        try:
            self.runner.cancel(ids)
            states = wait_terminal(self.runner, ids)
        except RunnerError as exc:
            self._say(f"[red]could not cancel[/] {', '.join(ids)}: {escape(exc.message)}")
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting; the jobs were asked to stop
        for job_id, flight in self._in_flight.items():
            info = states.get(job_id)
            if info is not None and info.terminal:
                outcome = self.runner.outcome(flight.request, info, cancelled_by_us=True)
            else:
                outcome = RunOutcome(
                    status="interrupted",
                    failure_kind="interrupted",
                    message=f"interrupted by the user; Slurm job {job_id} was cancelled",
                    finished_at=utc_iso(),
                    job_id=job_id,
                )
            self.on_end(flight.rec, outcome)
        self._in_flight.clear()


def _files_visible(request: RunRequest) -> bool:
    """Whether the run folder shows the harness's result.json or error.json here.

    Listing the folder first makes an NFS client revalidate its cached view of it.
    """
    with contextlib.suppress(OSError):
        names = set(os.listdir(request.run_dir))
        return RESULT_FILE in names or ERROR_FILE in names
    return False
