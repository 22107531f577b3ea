"""Where :func:`run_study` and :func:`resume` used to live; kept so old imports work.

The study package is split by responsibility: :mod:`~llenergymeasure.study.api` (the public
API), :mod:`~llenergymeasure.study.options` (execution options), :mod:`~llenergymeasure.study.
directory` (the study folder), :mod:`~llenergymeasure.study.session` (one session's loop) and
:mod:`~llenergymeasure.study.assemble` (the study result and webhook payloads).
"""

from llenergymeasure.runners.factory import dry_run_job_scripts
from llenergymeasure.study.api import resume, run_experiment, run_study
from llenergymeasure.study.directory import PLAN_FILE
from llenergymeasure.study.options import ENV_NO_GPU, StudyRunOptions

__all__ = [
    "ENV_NO_GPU",
    "PLAN_FILE",
    "StudyRunOptions",
    "dry_run_job_scripts",
    "resume",
    "run_experiment",
    "run_study",
]
