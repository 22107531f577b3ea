"""Running an engine group of the plan (``execution.reuse_engine``): :func:`batches` and
:func:`run_group`.

The study loop takes its unfinished runs in plan order; runs that follow each other and
belong to one plan group (:class:`~llenergymeasure.study.grouping.RunGroup`) become one batch
and run in one container (or subprocess) on one loaded engine. On a resume only the
unfinished members are left in ``todo``, so only they form the batch::

    todo  a1 a2 a3 b1        groups g1 = (a1 a2 a3), g2 = (b1)
    a1 completed before an interruption  ->  batches (a2 a3) (b1)

Every member gets its own attempt in the manifest (``running`` when the process starts, so a
crash of ``llem`` itself still finds each written ``result.json`` on resume) and its own
outcome from its own folder (:func:`~llenergymeasure.runners.group.member_outcomes`). While
the process runs, a watcher polls the members' folders and reports each ``result.json`` as it
appears (``on_result``: the manifest marks that run completed then, not at the group's end).
The members share the process's log file.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence

from llenergymeasure.runners.base import RunOutcome, load_result
from llenergymeasure.runners.group import member_outcomes
from llenergymeasure.runners.spec import GroupRequest, RunRequest
from llenergymeasure.study.manifest import RunRecord
from llenergymeasure.study.plan import StudyPlan
from llenergymeasure_contract.files import RESULT_FILE
from llenergymeasure_contract.timestamps import utc_iso

logger = logging.getLogger(__name__)

#: How often the watcher looks for a member's result.json (seconds).
POLL_S = 0.5


def batches(todo: Sequence[RunRecord], plan: StudyPlan) -> list[list[RunRecord]]:
    """``todo`` cut into batches: consecutive runs of one plan group, else single runs."""
    out: list[list[RunRecord]] = []
    current_group: str | None = None
    for rec in todo:
        group = plan.group_of(rec.run_id) if plan.groups else None
        gid = group.group_id if group is not None and len(group.run_ids) > 1 else None
        if gid is not None and gid == current_group and out:
            out[-1].append(rec)
        else:
            out.append([rec])
        current_group = gid
    return out


def run_group(
    records: Sequence[RunRecord],
    plan: StudyPlan,
    *,
    make_request: Callable[[RunRecord], RunRequest],
    start_attempt: Callable[[RunRecord, RunRequest], object],
    run: Callable[[RunRequest], RunOutcome],
    on_result: Callable[[RunRecord, RunOutcome], object] | None = None,
    poll_s: float = POLL_S,
) -> list[tuple[RunRecord, RunOutcome]]:
    """Run ``records`` (one batch of :func:`batches`) as one harness process.

    Args:
        records: The members still to run, in plan order.
        plan: The plan (its group ids and engine keys, ``execution.config_gap_s``).
        make_request: The request of a new attempt at a run.
        start_attempt: Records the attempt in the manifest (``running``).
        run: The runner's ``run``.
        on_result: Called (from a watcher thread, while ``run`` blocks) with each member whose
            ``result.json`` appeared, and its completed outcome.
        poll_s: The watcher's interval.

    Returns:
        Each member with its outcome, in order.
    """
    first = records[0]
    group = plan.group_of(first.run_id)
    assert group is not None
    requests = [make_request(r) for r in records]
    # one process, one log: every member's attempt points at it
    requests = [dataclasses.replace(r, log_path=requests[0].log_path) for r in requests]
    for rec, req in zip(records, requests, strict=True):
        start_attempt(rec, req)
    greq = GroupRequest(
        group_id=group.group_id,
        engine_key=group.engine_key,
        members=tuple(requests),
        config_gap_s=plan.study.execution.config_gap_s,
    )
    stop = threading.Event()
    watcher = None
    if on_result is not None:
        watcher = threading.Thread(
            target=_watch,
            args=(list(zip(records, requests, strict=True)), on_result, stop, poll_s),
            name="llem-group-watch",
            daemon=True,
        )
        watcher.start()
    try:
        outcome = run(dataclasses.replace(requests[0], group=greq))
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
    return list(zip(records, member_outcomes(greq, outcome), strict=True))


def _watch(
    members: list[tuple[RunRecord, RunRequest]],
    on_result: Callable[[RunRecord, RunOutcome], object],
    stop: threading.Event,
    poll_s: float,
) -> None:
    """Report each member's result.json as it appears (written last and atomically)."""
    pending = list(members)
    while pending and not stop.wait(poll_s):
        for rec, req in list(pending):
            result, _ = load_result(req.run_dir)
            if result is None:
                continue
            pending.remove((rec, req))
            try:
                on_result(
                    rec,
                    RunOutcome(
                        status="completed",
                        exit_code=0,
                        finished_at=utc_iso(),
                        duration_s=result.timings.total_s,
                        result_path=str(req.run_dir / RESULT_FILE),
                        result=result,
                    ),
                )
            except Exception:  # the group's end records it anyway
                logger.exception("recording %s as it completed failed", rec.run_id)


__all__ = ["batches", "run_group"]
