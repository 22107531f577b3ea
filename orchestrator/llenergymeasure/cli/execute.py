"""Bridge from ``llem run`` to the study executor (:mod:`llenergymeasure.study.executor`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llenergymeasure.study.plan import StudyPlan


def execute_plan(
    plan: StudyPlan, *, quiet: bool, verbose: bool, export_csv: bool, assume_yes: bool
) -> int:
    """Run ``plan`` and return the exit code."""
    from llenergymeasure.study.executor import run_study

    return int(
        run_study(plan, quiet=quiet, verbose=verbose, export_csv=export_csv, assume_yes=assume_yes)
    )


def resume_study(study_dir: Path, **kwargs: Any) -> int:
    """Resume the study in ``study_dir``."""
    from llenergymeasure.study.executor import resume

    return int(resume(study_dir, **kwargs))
