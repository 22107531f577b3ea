"""An in-memory Slurm for unit tests of the batch loop: sbatch, squeue, sacct, scancel, sinfo.

:class:`FakeSlurm` is a :data:`~llenergymeasure.runners.slurm.CommandRunner`: hand it to
:class:`~llenergymeasure.runners.slurm.SlurmCli`, so the real command lines are built and the
real output parsers read what it prints. Each submitted job follows a scripted *life*, one
state per :meth:`tick` (pass ``tick`` as the study's ``sleep``); a job that reaches
``COMPLETED`` writes a valid ``result.json`` into the run folder named by its script's
``LLEM_RESULTS_DIR`` (so use the ``local`` launcher), ``FAILED`` an ``error.json``.
``FORGOTTEN`` makes squeue stop listing the job, as slurmctld does after ``MinJobAge``.

Example::

    slurm = FakeSlurm(life=["PENDING", "RUNNING", "COMPLETED"])
    runner = SlurmRunner(SlurmSettings(launcher="local"), cli=SlurmCli(slurm))
    run_study(plan, runner=runner, sleep=slurm.tick, preflight=False)
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llenergymeasure.testing.fake_docker import write_fake_error, write_fake_result

TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL"}


@dataclass
class FakeJob:
    """One job of the fake cluster."""

    job_id: str
    name: str
    comment: str
    env: dict[str, str]
    life: list[str]
    step: int = 0
    reason: str = "None"
    node: str = "fake-node"

    @property
    def state(self) -> str:
        """The job's current state (``FORGOTTEN`` once past its scripted life's end marker)."""
        return self.life[min(self.step, len(self.life) - 1)]


@dataclass
class FakeSlurm:
    """A scripted Slurm cluster (see the module docstring).

    Attributes:
        life: The states every job goes through, one per tick (or ``lives``: per job, in
            submission order; the last entry repeats).
        reasons: state -> pending/failure reason printed by squeue.
        calls: Every command line run, in order.
        sleeps: Every tick's requested seconds.
    """

    life: list[str] = field(default_factory=lambda: ["PENDING", "RUNNING", "COMPLETED"])
    lives: list[list[str]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    max_active: int = 0
    gres: str = "gpu:8"  # what sinfo reports for the one partition, debug
    on_tick: Callable[[FakeSlurm], None] | None = None

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        handler = getattr(self, f"_{argv[0]}", None)
        if handler is None:
            raise FileNotFoundError(argv[0])
        out, err, code = handler(argv[1:])
        return subprocess.CompletedProcess(argv, code, out, err)

    # ------------------------------------------------------------------ the cluster's clock

    def tick(self, seconds: float) -> None:
        """Advance every live job one state (the study's ``sleep``)."""
        self.sleeps.append(seconds)
        for job in self.jobs.values():
            if job.state in TERMINAL or job.state == "FORGOTTEN":
                if job.state in TERMINAL and job.step < len(job.life) - 1:
                    job.step += 1  # e.g. COMPLETED -> FORGOTTEN
                continue
            job.step += 1
            self._entered(job)
        active = [j for j in self.jobs.values() if j.state in ("PENDING", "RUNNING")]
        self.max_active = max(self.max_active, len(active))
        if self.on_tick is not None:
            self.on_tick(self)

    def _entered(self, job: FakeJob) -> None:
        results = Path(job.env.get("LLEM_RESULTS_DIR", "/nonexistent"))
        if job.state == "COMPLETED" and results.is_dir():
            write_fake_result(results, job.env)
        elif job.state == "FAILED" and results.is_dir():
            write_fake_error(results, job.env)

    def squeue_calls(self) -> list[list[str]]:
        """The squeue command lines run so far."""
        return [c for c in self.calls if c[0] == "squeue"]

    # ------------------------------------------------------------------ commands

    def _sbatch(self, args: list[str]) -> tuple[str, str, int]:
        script = Path(args[-1]).read_text(encoding="utf-8")
        env: dict[str, str] = {}
        name = comment = ""
        for line in script.splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                env[key] = shlex.split(value)[0] if value else ""
            elif line.startswith("#SBATCH --job-name="):
                name = line.split("=", 1)[1]
            elif line.startswith("#SBATCH --comment="):
                comment = line.split("=", 1)[1]
        job_id = str(100 + len(self.jobs))
        life = self.lives[min(len(self.jobs), len(self.lives) - 1)] if self.lives else self.life
        job = FakeJob(job_id, name, comment, env, list(life))
        self.jobs[job_id] = job
        self._entered(job)
        return f"{job_id}\n", "", 0

    def _row(self, job: FakeJob) -> str:
        state = job.state
        reason = self.reasons.get(state, "None")
        node = "" if state == "PENDING" else job.node
        raw_exit = {"FAILED": str(1 << 8), "CANCELLED": "15"}.get(state, "0")
        start = "N/A" if state == "PENDING" else "2026-01-01T00:00:00"
        end = "2026-01-01T00:00:10" if state in TERMINAL else "N/A"
        cols = (job.job_id, state, reason, node, raw_exit, start, end, job.name, job.comment)
        return "|".join(cols) + "|"

    def _squeue(self, args: list[str]) -> tuple[str, str, int]:
        wanted = None
        for a in args:
            if a.startswith("--jobs="):
                wanted = a.split("=", 1)[1].split(",")
        rows = [
            self._row(j)
            for j in self.jobs.values()
            if j.state != "FORGOTTEN" and (wanted is None or j.job_id in wanted)
        ]
        if wanted is not None and not rows:
            return "", "slurm_load_jobs error: Invalid job id specified\n", 1
        return "".join(r + "\n" for r in rows), "", 0

    def _sacct(self, args: list[str]) -> tuple[str, str, int]:
        return "", "Slurm accounting storage is disabled\n", 1

    def _scancel(self, args: list[str]) -> tuple[str, str, int]:
        for job_id in args:
            job = self.jobs.get(job_id)
            if job is not None and job.state not in TERMINAL and job.state != "FORGOTTEN":
                job.life = [*job.life[: job.step], "CANCELLED"]
                job.step = len(job.life) - 1
        return "", "", 0

    def _sinfo(self, args: list[str]) -> tuple[str, str, int]:
        return f"debug*|{self.gres}|1|up\n", "", 0
