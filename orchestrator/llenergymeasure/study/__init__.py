"""Study planning and execution: :class:`StudyPlan` (what runs, in which order) and
:func:`run_study` / :func:`resume` (run it, with a manifest that survives anything), and
:func:`run_experiment` (one experiment, as a study of one run)."""

from llenergymeasure.study.api import resume, run_experiment, run_study
from llenergymeasure.study.manifest import ManifestStore, RunRecord, StudyManifest
from llenergymeasure.study.options import StudyRunOptions
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
    "run_experiment",
    "run_study",
]
