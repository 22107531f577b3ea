"""Running an engine group of the plan (``execution.reuse_engine``): :func:`batches` and
:func:`run_group`.

The study loop takes its unfinished runs in plan order; runs that follow each other and
belong to one plan group (:class:`~llenergymeasure.study.grouping.RunGroup`) become one batch
and run in one container (or subprocess) on one loaded engine. On a resume only the
unfinished members are left in ``todo``, so only they form the batch::

    todo  a1 a2 a3 b1        groups g1 = (a1 a2 a3), g2 = (b1)
    a1 completed before an interruption  ->  batches (a2 a3) (b1)

Every member gets its own attempt in the manifest when the process starts (so a crash of
``llem`` itself still finds each written ``result.json`` on resume): the first ``running``,
the others queued (``pending``), and its own outcome from its own folder
(:func:`~llenergymeasure.runners.group.member_outcomes`). While the process runs, a watcher
polls the members' folders: a member's ``started.json`` (the harness writes it as the member
starts) reports it running (``on_start``), its ``result.json`` reports it completed
(``on_result``), each as it happens, not at the group's end. The members share the process's
log file; in server mode each later member's folder gets a relative link ``server.log`` to
the first member's (the one server's log, which the first run's harness writes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Sequence

from llenergymeasure.runners.base import RunOutcome, load_result
from llenergymeasure.runners.group import member_outcomes
from llenergymeasure.runners.spec import GroupRequest, RunRequest
from llenergymeasure.study.manifest import RunRecord
from llenergymeasure.study.plan import StudyPlan
from llenergymeasure_contract.files import RESULT_FILE, SERVER_LOG_FILE, STARTED_FILE
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
    start_attempt: Callable[[RunRecord, RunRequest, bool], object],
    run: Callable[[RunRequest], RunOutcome],
    on_start: Callable[[RunRecord], object] | None = None,
    on_result: Callable[[RunRecord, RunOutcome], object] | None = None,
    poll_s: float = POLL_S,
) -> list[tuple[RunRecord, RunOutcome]]:
    """Run ``records`` (one batch of :func:`batches`) as one harness process.

    Args:
        records: The members still to run, in plan order.
        plan: The plan (its group ids and engine keys, ``execution.config_gap_s``).
        make_request: The request of a new attempt at a run.
        start_attempt: Records the attempt in the manifest; its third argument says queued
            (every member after the first).
        run: The runner's ``run``.
        on_start: Called (from a watcher thread, while ``run`` blocks) with each member after
            the first as it starts on the shared engine (its ``started.json`` appeared).
        on_result: Called (from the watcher) with each member whose ``result.json`` appeared,
            and its completed outcome; always after its ``on_start``.
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
    for i, (rec, req) in enumerate(zip(records, requests, strict=True)):
        start_attempt(rec, req, i > 0)
    if requests[0].config.server is not None:  # server mode: one server, one log
        link_server_log(requests)
    greq = GroupRequest(
        group_id=group.group_id,
        engine_key=group.engine_key,
        members=tuple(requests),
        config_gap_s=plan.study.execution.config_gap_s,
    )
    stop = threading.Event()
    watcher = None
    if on_result is not None or on_start is not None:
        watcher = threading.Thread(
            target=_watch,
            args=(list(zip(records, requests, strict=True)), on_start, on_result, stop, poll_s),
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


def link_server_log(requests: Sequence[RunRequest]) -> None:
    """Give each member after the first a relative link ``server.log`` to the first's.

    Relative (``../<first folder>/server.log``), so it resolves on the host and in a copy of
    the study folder; made before the process starts, so it is there while the run goes
    (it resolves once the server has started). Best effort: a file system without links
    leaves the folder without it.
    """
    target = requests[0].run_dir / SERVER_LOG_FILE
    for req in requests[1:]:
        link = req.run_dir / SERVER_LOG_FILE
        try:
            req.run_dir.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(link):
                link.symlink_to(os.path.relpath(target, req.run_dir))
        except OSError as exc:
            logger.warning("cannot link %s to %s: %s", link, target, exc)


def _watch(
    members: list[tuple[RunRecord, RunRequest]],
    on_start: Callable[[RunRecord], object] | None,
    on_result: Callable[[RunRecord, RunOutcome], object] | None,
    stop: threading.Event,
    poll_s: float,
) -> None:
    """Report each member as it starts (``started.json``) and ends (``result.json``, written
    last and atomically); the first member is running already."""
    waiting = list(members[1:])
    pending = list(members)
    while (waiting or pending) and not stop.wait(poll_s):
        for rec, req in list(waiting):
            if (
                not (req.run_dir / STARTED_FILE).is_file()
                and not (req.run_dir / RESULT_FILE).is_file()
            ):
                continue
            waiting.remove((rec, req))
            if on_start is not None:
                try:
                    on_start(rec)
                except Exception:  # the group's end records it anyway
                    logger.exception("recording %s as it started failed", rec.run_id)
        for rec, req in list(pending):
            if (rec, req) in waiting or on_result is None:
                continue
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


__all__ = ["batches", "link_server_log", "run_group"]
