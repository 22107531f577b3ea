"""Study planning and execution: :class:`StudyPlan` (what runs, in which order) and
:func:`run_study` / :func:`resume` (run it, with a manifest that survives anything)."""

from llenergymeasure.study.executor import StudyRunOptions, resume, run_study
from llenergymeasure.study.manifest import ManifestStore, RunRecord, StudyManifest
from llenergymeasure.study.plan import RunKey, StudyPlan, build_plan

__all__ = [
    "ManifestStore",
    "RunKey",
    "RunRecord",
    "StudyManifest",
    "StudyPlan",
    "StudyRunOptions",
    "build_plan",
    "resume",
    "run_study",
]
