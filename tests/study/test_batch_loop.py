"""The batch loop's edges, against the in-memory FakeSlurm (what a one-node cluster cannot
show quickly): the concurrency cap, one poll for all jobs, backoff, forgotten jobs, pending
reasons that never clear, the failure cap, and adoption by job comment."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from tests.study.conftest import make_plan

from llenergymeasure.config.slurm import SlurmSettings
from llenergymeasure.runners.slurm import SlurmCli, SlurmRunner
from llenergymeasure.study.executor import StudyRunOptions, resume, run_study
from llenergymeasure.study.manifest import ManifestStore
from llenergymeasure.study.plan import StudyPlan
from llenergymeasure.testing.fake_slurm import FakeSlurm

OPTS = StudyRunOptions(quiet=True, interactive=False, preflight=False, min_free_bytes=0)


def plan_for(tmp_path: Path, n_runs: int = 4, **execution: Any) -> StudyPlan:
    plan = make_plan(
        tmp_path / "results",
        batch_sizes=tuple(range(1, n_runs + 1)),
        n_cycles=1,
        n_prompts=8,
    )
    if execution:
        study = plan.study.model_copy(
            update={"execution": plan.study.execution.model_copy(update=execution)}
        )
        plan = plan.model_copy(update={"study": study})
    return plan


def runner(slurm: FakeSlurm, **settings: Any) -> SlurmRunner:
    fields: dict[str, Any] = {"launcher": "local", "poll_min_s": 1.0, "poll_max_s": 8.0}
    fields.update(settings)
    return SlurmRunner(SlurmSettings(**fields), cli=SlurmCli(slurm))


def go(plan: StudyPlan, slurm: FakeSlurm, **settings: Any) -> Any:
    con = Console(file=io.StringIO())
    return run_study(plan, OPTS, runner=runner(slurm, **settings), console=con, sleep=slurm.tick)


def test_concurrency_cap_and_one_poll_for_all_jobs(tmp_path: Path) -> None:
    """Never more than max_concurrent jobs in flight; each poll is one squeue for all of them."""
    slurm = FakeSlurm(life=["PENDING", "RUNNING", "RUNNING", "COMPLETED"])
    result = go(plan_for(tmp_path, 5), slurm, max_concurrent=2)
    assert result.n_completed == 5
    assert slurm.max_active == 2
    polls = slurm.squeue_calls()
    assert len(polls) == len(slurm.sleeps) + 1  # one squeue per loop turn, never per job
    widest = max(len(next(a for a in c if a.startswith("--jobs=")).split(",")) for c in polls)
    assert widest == 2
    manifest = ManifestStore.load(Path(result.study_dir)).manifest
    assert all(r.attempts[0].job_id and r.attempts[0].node == "fake-node" for r in manifest.runs)


def test_poll_interval_backs_off_while_nothing_changes(tmp_path: Path) -> None:
    """The interval grows x1.5 from poll_min_s to poll_max_s and drops back on a change."""
    slurm = FakeSlurm(life=["PENDING", "RUNNING", *["RUNNING"] * 8, "COMPLETED"])
    go(plan_for(tmp_path, 1), slurm)
    assert slurm.sleeps[:2] == [1.0, 1.0]  # submitted, then PENDING -> RUNNING
    assert slurm.sleeps[2:6] == [1.5, 2.25, 3.375, 5.0625]
    assert max(slurm.sleeps) == 8.0


def test_forgotten_job_is_judged_by_its_folder(tmp_path: Path) -> None:
    """A job slurmctld forgot (no accounting): completed if result.json is there, else failed."""
    slurm = FakeSlurm(
        lives=[
            ["PENDING", "RUNNING", "COMPLETED", "FORGOTTEN"],
            ["PENDING", "FORGOTTEN"],
        ]
    )

    # The first job writes its result, then vanishes before the loop sees COMPLETED.
    def hide_first(fake: FakeSlurm) -> None:
        first = fake.jobs.get("100")
        if first is not None and first.state == "COMPLETED":
            first.step += 1

    slurm.on_tick = hide_first
    result = go(plan_for(tmp_path, 2), slurm, max_concurrent=2)
    first, second = result.runs
    assert first.state == "completed"
    assert (second.state, second.failure_kind) == ("failed", "runner_error")
    assert "no longer knows job 101" in (second.message or "")


def test_pending_reason_that_never_clears_fails_the_run(tmp_path: Path) -> None:
    """PENDING (InvalidAccount) is cancelled and recorded as start_failed, with the reason."""
    slurm = FakeSlurm(life=["PENDING"], reasons={"PENDING": "InvalidAccount"})
    result = go(plan_for(tmp_path, 1), slurm)
    (run,) = result.runs
    assert (run.state, run.failure_kind) == ("failed", "start_failed")
    assert "InvalidAccount" in (run.message or "")
    assert ["scancel", "100"] in slurm.calls


def test_failure_cap_stops_submitting_and_waits_for_jobs_in_flight(tmp_path: Path) -> None:
    """Two failures in a row: no more submissions; the job still running finishes and counts."""
    slurm = FakeSlurm(
        lives=[
            ["PENDING", "FAILED"],
            ["PENDING", "FAILED"],
            ["PENDING", "RUNNING", "RUNNING", "RUNNING", "COMPLETED"],
        ]
    )
    plan = plan_for(tmp_path, 5, max_consecutive_failures=2)
    result = go(plan, slurm, max_concurrent=3)
    assert result.state == "aborted"
    assert [r.state for r in result.runs] == ["failed", "failed", "completed", "pending", "pending"]
    assert len(slurm.jobs) == 3


def test_resume_adopts_a_job_whose_id_never_reached_the_manifest(tmp_path: Path) -> None:
    """A run left running without a job id is matched to its job by the job comment."""
    slurm = FakeSlurm(life=["PENDING", "RUNNING", *["RUNNING"] * 3, "COMPLETED"])
    plan = plan_for(tmp_path, 1)
    slurm.on_tick = lambda fake: (_ for _ in ()).throw(KeyboardInterrupt)  # Ctrl-C at once
    con = Console(file=io.StringIO())
    try:
        run_study(
            plan,
            OPTS,
            runner=runner(slurm, on_interrupt="detach"),
            console=con,
            sleep=slurm.tick,
        )
    except Exception as exc:  # InterruptedStudy
        assert getattr(exc, "exit_code", None) == 130
    (study_dir,) = [p.parent for p in (tmp_path / "results").glob("*/manifest.json")]
    store = ManifestStore.load(study_dir)
    (rec,) = store.manifest.runs
    assert rec.state == "running" and rec.attempts[0].job_id == "100"
    rec.attempts[0].job_id = None  # as if llem died between sbatch and the manifest write
    store.write()
    slurm.on_tick = None
    result = resume(study_dir, OPTS, runner=runner(slurm), console=con, sleep=slurm.tick)
    assert result.n_completed == 1 and len(slurm.jobs) == 1  # adopted, not resubmitted
    (rec,) = ManifestStore.load(study_dir).manifest.runs
    assert len(rec.attempts) == 1 and rec.attempts[0].job_id == "100"


def test_preflight_without_slurm_commands_and_without_a_shared_dir(tmp_path: Path) -> None:
    """No sbatch on PATH: one clear problem. A probe job that leaves no marker: not shared."""
    from llenergymeasure.errors import PreflightError
    from llenergymeasure.runners.slurm_preflight import slurm_preflight

    plan = plan_for(tmp_path, 1)
    slurm = FakeSlurm()
    try:
        slurm_preflight(runner(slurm), plan.experiments, results_dir=tmp_path, which=lambda c: None)
    except PreflightError as exc:
        assert "Slurm commands not found on PATH: sbatch, squeue, scancel, sinfo" in str(exc)
    else:
        raise AssertionError("no PreflightError")
    try:  # the fake runs no script, so the probe "completes" without writing its marker
        slurm_preflight(
            runner(slurm),
            plan.experiments,
            results_dir=tmp_path,
            which=lambda c: "/usr/bin/" + c,
            sleep=slurm.tick,
        )
    except PreflightError as exc:
        assert "not on a filesystem the compute nodes share" in str(exc)
    else:
        raise AssertionError("no PreflightError")
    (probe,) = [c for c in slurm.calls if c[0] == "sbatch"]
    assert ".llem-slurm-probe" in probe[-1]


def test_squeue_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    """Three failed polls in a row (slurmctld busy) are waited out; the run still completes."""
    slurm = FakeSlurm()
    failures = iter([True, True, True])
    real = slurm._squeue

    def flaky(args: list[str]) -> tuple[str, str, int]:
        if next(failures, False):
            return "", "slurm_load_jobs error: Socket timed out on send/recv operation\n", 1
        return real(args)

    slurm._squeue = flaky  # type: ignore[method-assign]
    result = go(plan_for(tmp_path, 1), slurm)
    assert result.n_completed == 1
    assert slurm.sleeps[:3] == [1.5, 2.25, 3.375]


def test_result_that_shows_up_late_on_the_shared_disk_is_waited_for(tmp_path: Path) -> None:
    """COMPLETED before result.json is visible here (NFS lag): the loop waits, then completes;
    a result that never shows is missing_result after the settle time."""
    from llenergymeasure.testing.fake_docker import write_fake_result

    slurm = FakeSlurm(lives=[["PENDING", "RUNNING", "COMPLETED"]])
    late: dict[str, int] = {}

    def hide_then_show(fake: FakeSlurm) -> None:
        job = fake.jobs["100"]
        results = Path(job.env["LLEM_RESULTS_DIR"])
        if job.state == "COMPLETED":
            late["ticks"] = late.get("ticks", 0) + 1
            if late["ticks"] == 1:
                (results / "result.json").unlink()  # not visible on this host yet
            elif late["ticks"] == 3:
                write_fake_result(results, job.env)

    slurm.on_tick = hide_then_show
    result = go(plan_for(tmp_path, 1), slurm)
    assert result.n_completed == 1 and late["ticks"] >= 3

    never = FakeSlurm(lives=[["PENDING", "RUNNING", "COMPLETED"]])
    never.on_tick = lambda fake: [
        p.unlink() for p in Path(fake.jobs["100"].env["LLEM_RESULTS_DIR"]).glob("result.json")
    ]
    (run,) = go(plan_for(tmp_path / "b", 1), never).runs
    assert run.failure_kind == "missing_result"
    assert sum(never.sleeps) >= 30.0  # the settle time, on the loop's clock
