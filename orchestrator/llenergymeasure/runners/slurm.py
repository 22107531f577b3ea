"""The Slurm runner: one Slurm job per run, submitted, watched and read back from a shared disk.

Job scripts: :mod:`~llenergymeasure.runners.slurm_script`. Per study (the loop with many jobs
in flight: :mod:`~llenergymeasure.runners.slurm_batch`)::

    render script ─► runs/…/ + jobs/<run folder>.sbatch ─► sbatch --parsable ─► job id (manifest)
        one poller for all jobs in flight: squeue --states=all -j id,id,… (backoff 2 s … 30 s),
        sacct for jobs slurmctld has forgotten
    terminal state ─► classify from result.json / error.json in the run folder + the job state

Job states map to outcomes (:func:`job_outcome`)::

    COMPLETED                      -> classify(exit 0): completed | missing/invalid result
    FAILED                         -> classify(exit N): harness_error | exit_nonzero
    TIMEOUT, DEADLINE              -> failed / timeout (the Slurm time limit)
    OUT_OF_MEMORY                  -> failed / oom_killed
    CANCELLED by us (Ctrl-C)       -> interrupted
    CANCELLED, PREEMPTED by others -> failed / cancelled
    NODE_FAIL, BOOT_FAIL           -> failed / node_failure

Only :class:`SlurmCli` runs Slurm commands; tests and the preflight use it too.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llenergymeasure.errors import RunnerError
from llenergymeasure.runners.base import FailureKind, LogSink, RunOutcome, classify
from llenergymeasure.runners.slurm_script import (
    COMMENT_DIR,
    COMMENT_STUDY,
    JOBS_DIR,
    JobScript,
    parse_comment,
    render_job_script,
    time_limit_min,
)
from llenergymeasure.runners.spec import (
    ContainerSettings,
    RunRequest,
)
from llenergymeasure_contract.timestamps import utc_iso

if TYPE_CHECKING:
    from llenergymeasure.config.slurm import SlurmSettings
    from llenergymeasure.config.study import RunnerSettings
    from llenergymeasure.runners.needs import StudyNeeds
    from llenergymeasure.runners.preflight import PreflightReport
    from llenergymeasure.study.manifest import RunRecord
    from llenergymeasure.study.session import StudySession


PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING"})
ACTIVE_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING"})
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "DEADLINE",
        "CANCELLED",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
#: Pending reasons that mean the job can never start as submitted.
FATAL_PENDING_REASONS = frozenset(
    {
        "BadConstraints",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "InvalidAccount",
        "InvalidQOS",
        "QOSJobLimit",
        "AccountNotAllowed",
        "PartitionDown",
        "ReqNodeNotAvail, UnavailableNodes",
        "Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved_for_jobs_in_higher_priority_partitions",
    }
)

_SQUEUE_FIELDS = "JobID,State,Reason,NodeList,exit_code,StartTime,EndTime,Name,Comment"
_SQUEUE_FORMAT = ",".join(f"{f}:|" for f in _SQUEUE_FIELDS.split(","))
_SACCT_FIELDS = "JobID,State,Reason,NodeList,ExitCode,Start,End,JobName,Comment"

CommandRunner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


# --------------------------------------------------------------------------- job states


@dataclass(frozen=True)
class JobInfo:
    """One job as squeue or sacct reported it."""

    job_id: str
    state: str  # the base state: CANCELLED, not "CANCELLED by 0"
    reason: str | None = None
    node: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    start: str | None = None
    end: str | None = None
    name: str | None = None
    comment: str | None = None

    @property
    def terminal(self) -> bool:
        """The job has ended (whatever the way)."""
        return self.state in TERMINAL_STATES

    @property
    def pending(self) -> bool:
        """The job waits in the queue."""
        return self.state in PENDING_STATES

    @property
    def duration_s(self) -> float | None:
        """Run time from start to end, when both are known."""
        from datetime import datetime

        try:
            start = datetime.fromisoformat(self.start or "")
            end = datetime.fromisoformat(self.end or "")
        except ValueError:
            return None
        return max(0.0, (end - start).total_seconds())


def _clean(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "(null)", "None", "N/A", "Unknown") else value


def _job_info(
    cols: tuple[str, ...], comment: str, exit_code: int | None, sig: int | None
) -> JobInfo:
    """One JobInfo from the columns squeue and sacct share: (job id, state, reason, node,
    raw exit, start, end, name); blanks and "None" become None."""
    job_id, state, reason, node, _raw_exit, start, end, name = cols
    return JobInfo(
        job_id=job_id,
        state=state.split()[0] if state else "UNKNOWN",
        reason=_clean(reason),
        node=_clean(node),
        exit_code=exit_code,
        signal=sig,
        start=_clean(start),
        end=_clean(end),
        name=_clean(name),
        comment=_clean(comment),
    )


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Parse ``squeue --noheader -O <_SQUEUE_FORMAT>`` output (``|``-separated)."""
    out: dict[str, JobInfo] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 9 or not cols[0].strip():
            continue
        job_id, state, reason, node, raw_exit, start, end, name, comment = (
            c.strip() for c in cols[:9]
        )
        exit_code: int | None = None
        sig: int | None = None
        if raw_exit.isdigit():  # squeue reports the raw wait status
            status = int(raw_exit)
            if status & 0x7F:
                sig = status & 0x7F
            else:
                exit_code = status >> 8
        out[job_id] = _job_info(
            (job_id, state, reason, node, raw_exit, start, end, name), comment, exit_code, sig
        )
    return out


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Parse ``sacct --noheader --parsable2 -X -o <_SACCT_FIELDS>`` output."""
    out: dict[str, JobInfo] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 9 or not cols[0].strip() or "." in cols[0]:
            continue
        job_id, state, reason, node, raw_exit, start, end, name = (c.strip() for c in cols[:8])
        comment = "|".join(cols[8:]).strip()
        exit_code: int | None = None
        sig: int | None = None
        code, _, signal_text = raw_exit.partition(":")
        if code.isdigit():
            exit_code = int(code)
        if signal_text.isdigit() and int(signal_text):
            sig = int(signal_text)
        out[job_id] = _job_info(
            (job_id, state, reason, node, raw_exit, start, end, name), comment, exit_code, sig
        )
    return out


# --------------------------------------------------------------------------- Slurm commands


def _run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class SlurmCli:
    """The Slurm commands the runner and preflight use (sbatch, squeue, sacct, scancel, sinfo).

    Args:
        run: Runs one command and returns its completed process (tests replace it).
    """

    def __init__(self, run: CommandRunner | None = None) -> None:
        self._run = run or _run_command
        self._sacct_ok: bool | None = None

    def _call(self, argv: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
        try:
            return self._run(argv)
        except FileNotFoundError as exc:
            raise RunnerError(
                f"{argv[0]} is not installed or not on PATH ({what})",
                hint="run llem on a Slurm login node, or load the Slurm module",
            ) from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise RunnerError(f"{argv[0]} failed ({what}): {exc}") from exc

    def submit(self, script: Path) -> str:
        """``sbatch --parsable script``; the job id."""
        proc = self._call(["sbatch", "--parsable", str(script)], "submitting a job")
        job_id = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 or not job_id.isdigit():
            text = (proc.stderr or proc.stdout).strip().splitlines()
            raise RunnerError(
                f"sbatch refused {script}: {text[-1] if text else f'exit {proc.returncode}'}",
                hint="check the slurm: section (partition, account, qos, sbatch_args)",
            )
        return job_id

    def query(self, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        """The state of each job: squeue (slurmctld's memory), then sacct for the rest."""
        ids = sorted(set(job_ids), key=lambda j: (len(j), j))
        if not ids:
            return {}
        proc = self._call(
            [
                "squeue",
                "--noheader",
                "--states=all",
                f"--jobs={','.join(ids)}",
                "-O",
                _SQUEUE_FORMAT,
            ],
            "polling jobs",
        )
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            raise RunnerError(
                f"squeue failed: {proc.stderr.strip() or f'exit {proc.returncode}'}",
                hint="is slurmctld reachable from here? (sinfo)",
            )
        found = parse_squeue(proc.stdout) if proc.returncode == 0 else {}
        missing = [j for j in ids if j not in found]
        if missing and self.accounting():
            proc = self._call(
                [
                    "sacct",
                    "--noheader",
                    "--parsable2",
                    "-X",
                    f"--jobs={','.join(missing)}",
                    "-o",
                    _SACCT_FIELDS,
                ],
                "reading finished jobs",
            )
            if proc.returncode == 0:
                found.update({k: v for k, v in parse_sacct(proc.stdout).items() if k in missing})
        return found

    def accounting(self) -> bool:
        """Whether sacct answers (a cluster without slurmdbd says accounting is disabled)."""
        if self._sacct_ok is None:
            try:
                proc = self._run(["sacct", "--noheader", "-X", "-j", "1", "-o", "JobID"])
            except (OSError, subprocess.SubprocessError):
                self._sacct_ok = False
            else:
                self._sacct_ok = proc.returncode == 0 and "disabled" not in (
                    proc.stdout + proc.stderr
                )
        return self._sacct_ok

    def find(self, study_id: str) -> dict[str, JobInfo]:
        """Jobs slurmctld knows of this study, by run folder (from their comments)."""
        proc = self._call(
            ["squeue", "--noheader", "--states=all", f"--user={_user()}", "-O", _SQUEUE_FORMAT],
            "looking for the study's jobs",
        )
        if proc.returncode != 0:
            return {}
        out: dict[str, JobInfo] = {}
        for info in parse_squeue(proc.stdout).values():
            tags = parse_comment(info.comment)
            if tags.get(COMMENT_STUDY) == study_id and COMMENT_DIR in tags:
                out[tags[COMMENT_DIR]] = info
        return out

    def cancel(self, job_ids: Iterable[str]) -> None:
        """``scancel`` the jobs (one call)."""
        ids = sorted(set(job_ids))
        if ids:
            proc = self._call(["scancel", *ids], "cancelling jobs")
            if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
                raise RunnerError(f"scancel {' '.join(ids)} failed: {proc.stderr.strip()}")

    def sinfo(self, partition: str | None) -> subprocess.CompletedProcess[str]:
        """``sinfo`` rows ``partition|gres|nodes|state`` (of one partition, or all)."""
        argv = ["sinfo", "--noheader", "-o", "%P|%G|%D|%a"]
        if partition:
            argv.append(f"--partition={partition}")
        return self._call(argv, "reading partitions")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def job_outcome(
    request: RunRequest,
    info: JobInfo,
    *,
    cancelled_by_us: bool = False,
    timeout_min: int | None = None,
) -> RunOutcome:
    """Classify a finished job from its state and the run folder (see the module docstring)."""
    state = info.state
    if state == "COMPLETED":
        exit_code: int | None = 0
    elif info.signal is not None:
        exit_code = 128 + info.signal
    else:
        exit_code = info.exit_code
    outcome = classify(
        results_dir=request.run_dir,
        exit_code=exit_code,
        interrupted=state == "CANCELLED" and cancelled_by_us,
        started_at=info.start,
        duration_s=info.duration_s,
        log_path=request.log_path,
    ).model_copy(update={"job_id": info.job_id, "node": info.node})
    if state in ("COMPLETED", "FAILED") or outcome.status == "interrupted" or outcome.ok:
        return outcome  # (a harness that finished before the job was stopped: the result stands)
    where = f"Slurm job {info.job_id}" + (f" on {info.node}" if info.node else "")
    limit = f" of {timeout_min} min" if timeout_min else ""
    kinds: dict[str, tuple[FailureKind, str]] = {
        "TIMEOUT": (
            "timeout",
            f"{where} reached its Slurm time limit{limit} and was stopped; raise "
            "slurm.time_limit_s or execution.experiment_timeout_s",
        ),
        "DEADLINE": ("timeout", f"{where} reached its deadline and was stopped"),
        "OUT_OF_MEMORY": (
            "oom_killed",
            f"{where} ran out of memory (Slurm OUT_OF_MEMORY); raise slurm.mem or lower the "
            "batch size",
        ),
        "CANCELLED": ("cancelled", f"{where} was cancelled outside llem (scancel or an admin)"),
        "PREEMPTED": ("cancelled", f"{where} was preempted by Slurm"),
        "NODE_FAIL": ("node_failure", f"{where} failed: Slurm lost the node (NODE_FAIL)"),
        "BOOT_FAIL": ("node_failure", f"{where} failed: the node did not boot (BOOT_FAIL)"),
    }
    kind, message = kinds.get(state, ("exit_nonzero", f"{where} ended in state {state}"))
    return outcome.model_copy(
        update={
            "status": "failed",
            "failure_kind": kind,
            "message": f"{message}; see {request.log_path}",
            "timed_out": kind == "timeout",
            "oom_killed": kind == "oom_killed",
        }
    )


# --------------------------------------------------------------------------- the runner


@dataclass
class Submitted:
    """A run whose job was submitted."""

    request: RunRequest
    job_id: str
    script: JobScript


class SlurmRunner:
    """Submits each run as a Slurm job and reads its outcome from the shared results dir.

    :meth:`submit`, :meth:`poll`, :meth:`cancel` and :meth:`outcome` are what the study's
    batch loop uses (many jobs in flight, one poller); :meth:`run` does one run start to end.
    """

    name = "slurm"
    uses_image: ClassVar[bool] = True
    adopts_jobs: ClassVar[bool] = True

    def __init__(
        self,
        settings: SlurmSettings,
        container: ContainerSettings | None = None,
        *,
        cli: SlurmCli | None = None,
        base_dir: str | None = None,
    ) -> None:
        self.settings = settings
        self.container = container or ContainerSettings()
        self.cli = cli or SlurmCli()
        self.base_dir = base_dir

    def job_script(self, request: RunRequest) -> JobScript:
        """The job script this runner would submit for ``request``."""
        return render_job_script(
            request,
            self.settings,
            self.container,
            base_dir=request.input_base_dir or self.base_dir or os.getcwd(),
        )

    @classmethod
    def ran_image(cls, settings: RunnerSettings) -> bool:
        """Unless the jobs' launcher is ``local`` (the harness on the node, no image)."""
        return settings.slurm.launcher != "local"

    def preflight(self, needs: StudyNeeds) -> PreflightReport:
        """Slurm commands, partition, inputs, disk, and a probe job that proves the study
        folder is shared with the nodes (not for a resumed study: its jobs may hold them)."""
        from llenergymeasure.runners.slurm_preflight import slurm_preflight

        return slurm_preflight(
            self,
            needs.experiments,
            results_dir=needs.results_dir,
            input_paths=needs.input_paths,
            min_free_bytes=needs.min_free_bytes,
            probe=not needs.resumed,
        )

    def execute(self, todo: list[RunRecord], session: StudySession) -> None:
        """Many runs in flight as jobs, one poller (:mod:`~llenergymeasure.runners.slurm_batch`);
        thermal gaps do not apply (consecutive jobs may run on other nodes)."""
        from llenergymeasure.runners.slurm_batch import BatchLoop

        ex = session.plan.study.execution
        if ex.config_gap_s or ex.cycle_gap_s:
            session.say(
                "note: thermal gaps are not applied between Slurm jobs (consecutive "
                "jobs may run on different nodes)"
            )
        if ex.reuse_engine:
            session.say("note: execution.reuse_engine does not apply to Slurm: one job per run")
        loop = BatchLoop(
            plan=session.plan,
            store=session.store,
            runner=self,
            make_request=session.make_request,
            on_end=session.end_batch_run,
            progress=session.progress,
            console=session.console,
            quiet=session.opts.quiet,
            sleep=session.sleep,
        )
        try:
            loop.run(todo)
        finally:
            session.clock.experiments_s += loop.experiments_s

    def cleanup_leftovers(self) -> list[str]:
        """Nothing: a study's jobs outlive the orchestrator on purpose (``--resume`` adopts
        them); cancel strays with ``scancel --name=llem-<run id>``."""
        return []

    def submit(self, request: RunRequest) -> Submitted:
        """Write the run's job script next to the study's runs and ``sbatch`` it."""
        script = self.job_script(request)
        study_dir = Path(os.path.abspath(request.run_dir)).parent.parent
        path = study_dir / JOBS_DIR / f"{script.run_folder}.sbatch"
        path.parent.mkdir(parents=True, exist_ok=True)
        request.run_dir.mkdir(parents=True, exist_ok=True)
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script.text, encoding="utf-8")
        return Submitted(request=request, job_id=self.cli.submit(path), script=script)

    def poll(self, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        """One query for every job in flight."""
        return self.cli.query(job_ids)

    def cancel(self, job_ids: Iterable[str]) -> None:
        """Cancel jobs (one scancel)."""
        self.cli.cancel(job_ids)

    def outcome(
        self, request: RunRequest, info: JobInfo, *, cancelled_by_us: bool = False
    ) -> RunOutcome:
        """How the run of a finished job ended; a line about the job goes into its log."""
        outcome = job_outcome(
            request,
            info,
            cancelled_by_us=cancelled_by_us,
            timeout_min=time_limit_min(self.settings, request.timeout_s),
        )
        with contextlib.suppress(OSError), request.log_path.open("a", encoding="utf-8") as fh:
            fh.write(
                f"[llem] slurm job {info.job_id} ended: {info.state}"
                f" (exit {info.exit_code}, signal {info.signal}, node {info.node}) -> "
                f"{outcome.status}{f' / {outcome.failure_kind}' if outcome.failure_kind else ''}\n"
            )
        return outcome

    def run(
        self,
        request: RunRequest,
        *,
        echo: LogSink | None = None,
        cancel: threading.Event | None = None,
    ) -> RunOutcome:
        """Submit one job and wait for it (the :class:`~llenergymeasure.runners.base.Runner`
        protocol); Ctrl-C or ``cancel`` scancels it and returns ``interrupted``."""
        started = utc_iso()
        sub = self.submit(request)
        delay = self.settings.poll_min_s
        try:
            while True:
                info = self.poll([sub.job_id]).get(sub.job_id)
                if info is not None and info.terminal:
                    return self.outcome(request, info)
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                time.sleep(delay)
                delay = min(self.settings.poll_max_s, delay * 1.5)
        except KeyboardInterrupt:
            self.cancel([sub.job_id])
            info = wait_terminal(self, [sub.job_id]).get(sub.job_id)
            if info is not None:
                return self.outcome(request, info, cancelled_by_us=True)
            return RunOutcome(
                status="interrupted",
                failure_kind="interrupted",
                message="interrupted by the user; the job was cancelled",
                started_at=started,
                finished_at=utc_iso(),
                job_id=sub.job_id,
            )


def wait_terminal(
    runner: SlurmRunner, job_ids: Sequence[str], timeout_s: float = 60.0
) -> dict[str, JobInfo]:
    """Poll until every job has ended (after a cancel), or the timeout; the last states."""
    deadline = time.monotonic() + timeout_s
    states: dict[str, JobInfo] = {}
    while True:
        states = runner.poll(job_ids)
        if all(j in states and states[j].terminal for j in job_ids):
            return states
        if time.monotonic() >= deadline:
            return states
        time.sleep(1.0)
