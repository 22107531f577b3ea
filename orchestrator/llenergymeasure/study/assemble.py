"""Result assembly: the :class:`StudyResult` and the webhook payloads, from the same objects.

Each completed run's :class:`RunMetrics` is computed once (when its outcome arrives, or, for a
run completed in an earlier session, from its ``result.json`` read once) and shared by the
progress line, the ``experiment_end`` webhook, the study result and the ``study_end`` webhook.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from llenergymeasure.analysis.enrich import enrich
from llenergymeasure.results.aggregate import export_study
from llenergymeasure.results.study import (
    STUDY_RESULT_FILE,
    RunMetrics,
    RunSummary,
    StudyResult,
    time_budget,
)
from llenergymeasure.runners.base import RunOutcome
from llenergymeasure.runners.factory import ran_image
from llenergymeasure.study.manifest import ManifestStore, RunRecord
from llenergymeasure.study.plan import PlannedExperiment, StudyPlan
from llenergymeasure_contract.files import RESULT_FILE
from llenergymeasure_contract.time_budget import run_time_breakdown
from llenergymeasure_contract.timestamps import utc_iso


def outcome_metrics(outcome: RunOutcome) -> RunMetrics | None:
    """The key figures of a completed outcome (``None`` when it has no result)."""
    return RunMetrics.from_result(outcome.result) if outcome.result is not None else None


def study_result(
    plan: StudyPlan,
    store: ManifestStore,
    metrics: MutableMapping[str, RunMetrics] | None = None,
) -> StudyResult:
    """The StudyResult of the manifest as it stands; times are the totals of ended sessions.

    Args:
        plan: The study plan.
        store: The manifest store (its results of this session ride in it).
        metrics: Run id -> metrics already computed; filled with those computed here.
    """
    m = store.manifest
    known = metrics if metrics is not None else {}
    by_hash = {e.config_hash: e for e in plan.experiments}
    with_image = ran_image(m.runner, plan.study.runner)
    runs = [_summary(rec, by_hash.get(rec.config_hash), store, known, with_image) for rec in m.runs]
    completed = [store.result_of(r.run_id) for r in m.runs if r.state == "completed"]
    counts = m.counts()
    result = StudyResult(
        study_id=m.study_id,
        study_name=m.study_name,
        study_design_hash=m.study_design_hash,
        llem_version=m.llem_version,
        runner=m.runner,
        state=m.state,
        message=m.message,
        study_dir=str(store.study_dir),
        started_at=m.created_at,
        finished_at=utc_iso(),
        wall_s=m.wall_s,
        experiments_s=m.experiments_s,
        gaps_s=m.gaps_s,
        sessions=max(1, len(m.sessions)),
        n_runs=len(m.runs),
        n_completed=counts["completed"],
        n_failed=counts["failed"],
        n_interrupted=counts["interrupted"] + counts["running"],
        n_pending=counts["pending"],
        runs=runs,
        **time_budget([r for r in completed if r is not None], m.experiments_s, m.gaps_s),
    )
    return enrich(result, plan.study.impact)


def _summary(
    rec: RunRecord,
    exp: PlannedExperiment | None,
    store: ManifestStore,
    known: MutableMapping[str, RunMetrics],
    with_image: bool,
) -> RunSummary:
    """One run's line of the study result."""
    last = rec.last
    metrics = None
    result_rel = None
    breakdown = None
    if rec.state == "completed" and last is not None:
        run_result = store.result_of(rec.run_id)  # kept in the store once read
        if run_result is not None:
            breakdown = {k: round(v, 3) for k, v in run_time_breakdown(run_result.timings).items()}
        metrics = known.get(rec.run_id)
        if metrics is None:
            # This session's results ride in the store (from their outcomes); a run completed
            # in an earlier session is read here, once.
            run_result = store.result_of(rec.run_id)
            if run_result is not None:
                metrics = known[rec.run_id] = RunMetrics.from_result(run_result)
        if metrics is not None:
            result_rel = str(Path(last.run_dir) / RESULT_FILE)
    ended = last is not None and rec.state != "completed"
    return RunSummary(
        index=rec.index,
        run_id=rec.run_id,
        config_hash=rec.config_hash,
        cycle=rec.cycle,
        state=rec.state,
        attempts=len(rec.attempts),
        failure_kind=last.failure_kind if ended and last else None,
        message=last.message if ended and last else None,
        exit_code=last.exit_code if last else None,
        duration_s=last.duration_s if last else None,
        run_dir=last.run_dir if last else None,
        result_path=result_rel,
        backend=exp.config.backend if exp else None,
        model=exp.config.model if exp else None,
        precision=exp.config.precision if exp else None,
        # the local runner runs no image: do not record the planned one as provenance
        image=exp.image if exp and with_image else None,
        job_id=last.job_id if last else None,
        node=last.node if last else None,
        params=dict(exp.params) if exp else {},
        metrics=metrics,
        time_breakdown_s=breakdown,
    )


def run_payload(
    store: ManifestStore,
    rec: RunRecord,
    *,
    exp: PlannedExperiment,
    outcome: RunOutcome,
    metrics: RunMetrics | None,
) -> dict[str, Any]:
    """The ``experiment_end`` webhook body: the run's state, key figures and paths."""
    m = store.manifest
    last = store.run(rec.run_id).last
    return {
        "study_id": m.study_id,
        "study_name": m.study_name,
        "study_dir": str(store.study_dir),
        "n_runs": len(m.runs),
        "run_id": rec.run_id,
        "index": rec.index,
        "config_hash": rec.config_hash,
        "cycle": rec.cycle,
        "state": outcome.status,
        "failure_kind": outcome.failure_kind,
        "message": outcome.message,
        "duration_s": outcome.duration_s,
        "backend": exp.config.backend,
        "model": exp.config.model,
        "params": dict(exp.params),
        "run_dir": last.run_dir if last is not None else None,
        "metrics": metrics.model_dump(mode="json") if metrics is not None else None,
    }


def write_outputs(result: StudyResult, study_dir: Path, *, csv_too: bool) -> None:
    """``study_result.json`` and ``results.parquet`` (+ ``summary.csv``) of ``result``."""
    result.write(study_dir / STUDY_RESULT_FILE)
    export_study(result, study_dir, csv_too=csv_too)
