"""How each run of an engine group ended, from its own folder: :func:`member_outcomes`.

One container (or subprocess) runs the whole group (``execution.reuse_engine``); the runner
classifies that one process as usual, and each member is then classified from its own
results folder, with the same rules (:func:`~llenergymeasure.runners.base.classify`)::

    result.json                  -> completed (also when the group was interrupted after it)
    error.json                   -> failed / harness_error, or interrupted (SIGINT/SIGTERM)
    neither, group interrupted   -> interrupted (not started: a resume runs it)
    neither, group failed        -> failed, with the group's cause (OOM, timeout, exit code)

Durations: each member's is its harness time (``timings.total_s``, its gap included); the
first member's also carries what the process spent outside the members (container start,
imports), so the members' durations add up to the process's wall time.
"""

from __future__ import annotations

from llenergymeasure.runners.base import RunOutcome, classify, read_error_record
from llenergymeasure.runners.spec import GroupRequest

#: error.json classes that mean the run was stopped, not that it failed.
_STOPPED = {"KeyboardInterrupt", "HarnessTerminated"}
#: Exit codes of a stopped harness: 130/143 (it caught SIGINT/SIGTERM), -2/-15 (killed by it).
_STOP_CODES = {130, 143, -2, -15}


def member_outcomes(group: GroupRequest, outcome: RunOutcome) -> list[RunOutcome]:
    """One outcome per member of ``group`` (in order), given the process's ``outcome``."""
    # The process's own classification calls it completed when the first member's
    # result.json was whole at the interruption; its exit code still tells.
    interrupted = outcome.status == "interrupted" or outcome.exit_code in _STOP_CODES
    out: list[RunOutcome] = []
    for member in group.members:
        record = read_error_record(member.run_dir)
        has_result = (member.run_dir / "result.json").is_file()
        if has_result or record is not None:
            stopped = record is not None and record.get("error_class") in _STOPPED
            out.append(
                classify(
                    results_dir=member.run_dir,
                    exit_code=0 if has_result else 1,
                    interrupted=interrupted and (has_result or stopped),
                    timeout_s=member.timeout_s,
                    started_at=outcome.started_at,
                    container_id=outcome.container_id,
                    log_path=member.log_path,
                )
            )
        elif interrupted or outcome.status == "completed":  # no file and no failure: stopped
            out.append(
                RunOutcome(
                    status="interrupted",
                    failure_kind="interrupted",
                    message="not started: its engine group was interrupted",
                    finished_at=outcome.finished_at,
                )
            )
        else:
            out.append(
                RunOutcome(
                    status="failed",
                    failure_kind=outcome.failure_kind or "missing_result",
                    message=f"its engine group's process ended before it ran: "
                    f"{outcome.message or 'no result'}",
                    exit_code=outcome.exit_code,
                    oom_killed=outcome.oom_killed,
                    timed_out=outcome.timed_out,
                    finished_at=outcome.finished_at,
                    container_id=outcome.container_id,
                )
            )
    return _durations(out, outcome.duration_s)


def _durations(outcomes: list[RunOutcome], wall_s: float | None) -> list[RunOutcome]:
    spent = [
        o.result.timings.total_s if o.result is not None and o.result.timings.total_s else 0.0
        for o in outcomes
    ]
    if wall_s is not None and outcomes:
        spent[0] = max(0.0, wall_s - sum(spent[1:]))
    return [o.model_copy(update={"duration_s": s}) for o, s in zip(outcomes, spent, strict=True)]


__all__ = ["member_outcomes"]
