"""One session of a study: the object that carries a run's state through the loop.

A :class:`StudySession` holds the plan, the manifest store, the runner, the preflight report,
the options, the console, the progress display and the notifier; :meth:`StudySession.execute`
runs every run not yet completed through ``runner.execute`` (one at a time with thermal gaps
for Docker and local, many jobs in flight for Slurm) and saves the study however it ends::

    sessions += now, state running ─► runner.execute(todo, session)
        each ended run ─► end_run: manifest, metrics (once), progress line, experiment_end
    ─► completed | failed | interrupted (Ctrl-C, SIGTERM) | failed (runner error)
       | aborted (a write failed, or N consecutive failures)
    ─► study_result.json + results.parquet (+ summary.csv) ─► study_end (the same object)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

from llenergymeasure import __version__
from llenergymeasure.errors import InterruptedStudy, RunnerError, StorageError
from llenergymeasure.notify import Notifier, study_payload
from llenergymeasure.results.study import RunMetrics, StudyResult
from llenergymeasure.runners.base import FailureKind, Runner, RunOutcome, RunState, load_result
from llenergymeasure.runners.preflight import PreflightReport
from llenergymeasure.runners.spec import RunRequest
from llenergymeasure.study.assemble import outcome_metrics, run_payload, study_result, write_outputs
from llenergymeasure.study.directory import run_folder, storage_error
from llenergymeasure.study.group_run import batches, run_group
from llenergymeasure.study.load_times import remember_load_time
from llenergymeasure.study.manifest import Attempt, ManifestStore, RunRecord, StudyState
from llenergymeasure.study.options import StudyRunOptions, base_dir
from llenergymeasure.study.plan import PlannedExperiment, StudyPlan, gap_after
from llenergymeasure.study.progress import StudyProgress, runner_label
from llenergymeasure.study.signals import StopSignals, Terminated
from llenergymeasure_contract.files import RESULT_FILE
from llenergymeasure_contract.timestamps import utc_iso

logger = logging.getLogger(__name__)


@dataclass
class SessionClock:
    """This session's clock: added to the manifest's totals when the session ends."""

    t0: float = field(default_factory=time.monotonic)
    experiments_s: float = 0.0
    gaps_s: float = 0.0
    closed: bool = False

    def close(self, store: ManifestStore) -> None:
        """Add this session's times to the manifest (in memory; the next write saves them)."""
        if self.closed:
            return
        self.closed = True
        m = store.manifest
        m.wall_s += time.monotonic() - self.t0
        m.experiments_s += self.experiments_s
        m.gaps_s += self.gaps_s


@dataclass
class StudySession:
    """Everything one session of a study needs, in one object (see the module docstring)."""

    plan: StudyPlan
    store: ManifestStore
    runner: Runner
    report: PreflightReport
    opts: StudyRunOptions
    console: Console
    sleep: Callable[[float], None] = time.sleep
    signals: StopSignals | None = None
    notifier: Notifier | None = None
    clock: SessionClock = field(default_factory=SessionClock)
    #: The run in flight (sequential runners), if any.
    current: RunRecord | None = None
    #: An engine group in flight (execution.reuse_engine): every member, current first.
    running: list[RunRecord] = field(default_factory=list)
    #: Run id -> the metrics of its result, computed once.
    metrics: dict[str, RunMetrics] = field(default_factory=dict)
    #: The study result last written to the study folder (the ``study_end`` payload).
    written: StudyResult | None = None
    _progress: StudyProgress | None = None

    def __post_init__(self) -> None:
        self._by_hash = {e.config_hash: e for e in self.plan.experiments}
        self._base_dir = str(base_dir(self.plan))

    @property
    def progress(self) -> StudyProgress:
        """The progress display of this session (drawn while :meth:`execute` runs)."""
        assert self._progress is not None, "progress exists while the session executes"
        return self._progress

    def say(self, text: str) -> None:
        """Print ``text`` unless quiet."""
        if not self.opts.quiet:
            self.console.print(text)

    def experiment(self, rec: RunRecord) -> PlannedExperiment:
        """The planned experiment of ``rec``."""
        return self._by_hash[rec.config_hash]

    # ------------------------------------------------------------------ the session

    def execute(self) -> StudyResult:
        """Run the study, then send ``study_end`` with the study result written (if any).

        The webhooks get a bounded moment (``notify.timeout_s``) however the study ended; a
        failing or slow webhook changes nothing here (see :mod:`llenergymeasure.notify`).
        """
        try:
            return self._execute_saving()
        finally:
            if self.notifier is not None:
                if self.written is None:
                    logger.warning("no study result to notify: none was written")
                else:
                    self.notifier.send("study_end", study_payload(self.written))
                for line in self.notifier.close():  # never fails the study: said, not raised
                    self.console.print(f"note: {escape(line)}", highlight=False)

    def _execute_saving(self) -> StudyResult:
        store = self.store
        study_dir = store.study_dir
        try:
            store.manifest.sessions.append(utc_iso())
            store.set_state("running")
            todo = [r for r in store.manifest.runs if r.state != "completed"]
            self._progress = StudyProgress(
                self.console,
                study_name=self.plan.study.name,
                study_dir=study_dir,
                total=len(store.manifest.runs),
                done=len(store.manifest.runs) - len(todo),
                quiet=self.opts.quiet,
                estimates={e.config_hash: e.estimate.duration_s for e in self.plan.experiments},
                runner=runner_label(self.runner),
            )
            with self._progress:
                self.runner.execute(todo, self)
        except KeyboardInterrupt as exc:
            raise self._interrupted(exc) from None
        except RunnerError as exc:
            self.stop_saving(state="failed", kind="runner_error", message=exc.message)
            raise RunnerError(
                f"{exc.message} (study saved in {study_dir})",
                hint=f"{exc.hint + '; ' if exc.hint else ''}resume with: "
                f"llem run --resume {study_dir}",
            ) from exc
        except OSError as exc:
            raise self._abort_on_storage_error(exc) from exc
        try:
            if store.manifest.state == "running":
                counts = store.manifest.counts()
                done = counts["completed"] == len(store.manifest.runs)
                store.manifest.state = "completed" if done else "failed"
            self.clock.close(store)
            store.write()
            result = self.write_outputs()
        except OSError as exc:
            raise self._abort_on_storage_error(exc) from exc
        self.progress.summary(result)
        return result

    def _interrupted(self, exc: KeyboardInterrupt) -> InterruptedStudy:
        """Save the study as interrupted; the :class:`InterruptedStudy` to raise."""
        store = self.store
        terminated = isinstance(exc, Terminated) or (
            self.signals is not None and self.signals.exit_code == 143
        )
        how = "SIGTERM" if terminated else "Ctrl-C"
        # the batch loop (Slurm) says which jobs it left running
        message = str(exc) or f"interrupted by the user ({how})"
        try:
            self.close_running("interrupted", "interrupted", f"stopped by {how}")
            self.clock.close(store)
            store.set_state("interrupted", message)
            self.write_outputs()
        except (KeyboardInterrupt, OSError) as late:  # a second signal, or a full disk
            logger.warning("saving the interrupted study did not finish: %r", late)
        counts = store.manifest.counts()
        left = counts["running"]
        return InterruptedStudy(
            f"study interrupted ({how}); {counts['completed']} of {len(store.manifest.runs)} "
            f"runs completed and saved in {store.study_dir}"
            + (f"; {left} Slurm job(s) left running for --resume to adopt" if left else ""),
            hint=f"resume with: llem run --resume {store.study_dir}",
            exit_code=143 if terminated else 130,
        )

    def write_outputs(self) -> StudyResult:
        """Write the study result of the manifest as it stands; return it."""
        result = study_result(self.plan, self.store, self.metrics)
        write_outputs(result, self.store.study_dir, csv_too=self.opts.export_csv)
        self.written = result
        return result

    def _abort_on_storage_error(self, exc: OSError) -> StorageError:
        """A write failed (disk full...): save the study as aborted, name the path."""
        err = storage_error(exc, self.store.study_dir)
        self.stop_saving(state="aborted", kind="storage_error", message=err.message)
        return err

    def stop_saving(self, *, state: StudyState, kind: FailureKind, message: str) -> None:
        """Close the run in flight and save the study as ``state``, as far as the disk allows.

        Each write is atomic, so whatever fails here leaves the previous manifest intact.
        """
        try:
            self.close_running("failed", kind, message)
            self.clock.close(self.store)
            self.store.set_state(state, message)
            self.write_outputs()
        except OSError as exc:
            logger.warning("saving the study after %s did not finish: %s", message, exc)

    def close_running(self, status: RunState, kind: FailureKind, message: str) -> None:
        """Record how the run in flight ended when the study itself stops around it.

        When its ``result.json`` was already written (the signal came after the harness
        finished, before the runner returned), the run is completed, not interrupted.
        """
        for rec in self.running or ([self.current] if self.current is not None else []):
            self._close_one(rec, status, kind, message)

    def _close_one(self, rec: RunRecord, status: RunState, kind: FailureKind, message: str) -> None:
        store = self.store
        now = store.run(rec.run_id)
        queued = now.state == "pending" and now.last is not None and now.last.state == "pending"
        if now.state != "running" and not queued:  # queued: an engine group's, not started
            return
        last = now.last
        run_dir = store.study_dir / last.run_dir if last is not None else None
        result = load_result(run_dir)[0] if run_dir is not None else None
        if run_dir is not None and result is not None:
            store.finish_attempt(
                rec.run_id,
                RunOutcome(
                    status="completed",
                    message=f"{RESULT_FILE} written before the study stopped ({message})",
                    finished_at=utc_iso(),
                    result_path=str(run_dir / RESULT_FILE),
                    result=result,
                ),
            )
            return
        store.finish_attempt(
            rec.run_id,
            RunOutcome(status=status, failure_kind=kind, message=message, finished_at=utc_iso()),
        )

    # ------------------------------------------------------------------ the runs

    def make_request(self, rec: RunRecord, attempt: Attempt | None) -> RunRequest:
        """The request of a new attempt at ``rec`` (or of ``attempt``, adopted)."""
        study_dir = self.store.study_dir
        exp = self.experiment(rec)
        if attempt is None:
            run_dir = run_folder(study_dir, rec.run_id, len(rec.attempts) + 1)
            log_path = study_dir / "logs" / f"{run_dir.name}.log"
        else:
            run_dir, log_path = study_dir / attempt.run_dir, study_dir / attempt.log_path
        facts = self.report.images.get(exp.image)
        return RunRequest(
            config=exp.config,
            study_id=self.store.manifest.study_id,
            run_id=rec.run_id,
            cycle=rec.cycle,
            run_dir=run_dir,
            log_path=log_path,
            image=exp.image if self.runner.uses_image else None,
            image_digest=facts.digest if facts else None,
            image_labels=dict(facts.labels) if facts else None,
            study_cache_dir=study_dir / "cache",
            timeout_s=self.plan.study.execution.experiment_timeout_s,
            host_uid=os.getuid(),
            host_gid=os.getgid(),
            version=__version__,
            input_base_dir=self._base_dir,
        )

    def end_run(self, rec: RunRecord, outcome: RunOutcome, *, with_id: bool = False) -> None:
        """Record how ``rec`` ended: manifest, metrics (once), progress line, webhook."""
        self.store.finish_attempt(rec.run_id, outcome)
        self._report_end(rec, outcome, with_id=with_id)

    def end_batch_run(self, rec: RunRecord, outcome: RunOutcome) -> None:
        """:meth:`end_run` of a job among many in flight (its progress line names the run)."""
        self.end_run(rec, outcome, with_id=True)

    def run_each(self, todo: list[RunRecord]) -> None:
        """Every run of ``todo`` in plan order, one at a time, with the thermal gaps between.

        Stops after ``execution.max_consecutive_failures`` failures in a row (study aborted);
        raises ``KeyboardInterrupt`` when a run was interrupted or a signal arrived.
        """
        ex = self.plan.study.execution
        store = self.store
        consecutive = 0
        previous: RunRecord | None = None
        echo = self.progress.echo if self.opts.verbose else None
        for batch in batches(todo, self.plan):
            rec = batch[0]
            if previous is not None:
                self._gap(previous, rec)
            started: set[str] = {rec.run_id}  # runs whose start the progress has shown
            reported: set[str] = set()  # runs whose end it has shown (as they completed)
            if len(batch) == 1:
                request = self.make_request(rec, None)
                self.current = rec
                store.start_attempt(rec.run_id, request.run_dir, request.log_path)
                self.progress.start_run(rec, self.experiment(rec))
                ended = [(rec, self.runner.run(request, echo=echo))]
            else:  # execution.reuse_engine: one process, one loaded engine for the batch
                self.current = rec
                self.running = list(batch)
                self.progress.start_run(rec, self.experiment(rec))
                ended = self._run_group(batch, echo, started, reported)
            stop = abort = False
            for rec, outcome in ended:
                if rec.run_id not in started:  # a member that ended without being seen start
                    self.progress.start_run(rec, self.experiment(rec))
                self.clock.experiments_s += outcome.duration_s or 0.0
                if store.run(rec.run_id).state in ("running", "pending"):  # not recorded yet
                    self.store.finish_attempt(rec.run_id, outcome)
                remember_load_time(outcome.result, outcome.duration_s)
                if rec.run_id not in reported:
                    self._report_end(rec, outcome)
                previous = rec
                # A signal that arrived after the harness had finished leaves the run
                # completed (its result.json is whole); the study still stops here.
                if outcome.status == "interrupted" or (
                    self.signals is not None and self.signals.received
                ):
                    stop = True
                consecutive = 0 if outcome.ok else consecutive + 1
                limit = ex.max_consecutive_failures
                if limit and consecutive >= limit and not abort:
                    abort = True
                    store.set_state(
                        "aborted",
                        f"stopped after {consecutive} consecutive failures "
                        f"(execution.max_consecutive_failures={limit})",
                    )
            self.current = None
            self.running = []
            if stop:
                raise KeyboardInterrupt
            if abort:
                break

    def _run_group(
        self,
        batch: list[RunRecord],
        echo: Callable[[str], None] | None,
        started: set[str],
        reported: set[str],
    ) -> list[tuple[RunRecord, RunOutcome]]:
        """One engine group's process; each member shown (and recorded) running as it starts
        and completed as its result appears (``started``/``reported`` collect them)."""
        store = self.store

        def member_started(r: RunRecord) -> None:
            store.mark_running(r.run_id)
            started.add(r.run_id)
            self.progress.start_run(r, self.experiment(r))

        def member_completed(r: RunRecord, o: RunOutcome) -> None:
            store.finish_attempt(r.run_id, o)
            reported.add(r.run_id)
            self._report_end(r, o)

        return run_group(
            batch,
            self.plan,
            make_request=lambda r: self.make_request(r, None),
            start_attempt=lambda r, q, queued: store.start_attempt(
                r.run_id, q.run_dir, q.log_path, queued=queued
            ),
            run=lambda q: self.runner.run(q, echo=echo),
            on_start=member_started,
            on_result=member_completed,
        )

    def _report_end(self, rec: RunRecord, outcome: RunOutcome, *, with_id: bool = False) -> None:
        """The progress line and webhook of a run whose outcome is in the manifest."""
        exp = self.experiment(rec)
        metrics = outcome_metrics(outcome)
        if metrics is not None:
            self.metrics[rec.run_id] = metrics
        self.progress.end_run(rec, exp, outcome, metrics, with_id=with_id)
        if self.notifier is not None:
            self.notifier.send(
                "experiment_end",
                run_payload(self.store, rec, exp=exp, outcome=outcome, metrics=metrics),
            )

    def _gap(self, previous: RunRecord, following: RunRecord) -> None:
        """The thermal gap between two runs, as a visible countdown."""
        ex = self.plan.study.execution
        between = gap_after(previous, following, ex.cycle_order)
        gap = ex.cycle_gap_s if between == "cycle" else ex.config_gap_s
        if gap > 0:
            kind = "cycle" if between == "cycle" else "experiment"
            self.clock.gaps_s += self.progress.countdown(
                gap, f"thermal gap between {kind}s", self.sleep
            )
