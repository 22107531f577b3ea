"""Complete a :class:`~llenergymeasure.results.study.StudyResult` before it is written.

:func:`enrich` adds what is computed from the runs rather than measured: the carbon and cost
figures of every completed run (when the study gave inputs) and the across-cycle
``confidence_intervals``. The executor calls it once per ``study_result.json`` it writes;
``llem results`` commands call it on older results that lack these fields.
"""

from __future__ import annotations

from llenergymeasure.analysis.bootstrap import confidence_intervals
from llenergymeasure.analysis.impact import impact_metrics
from llenergymeasure.config.impact import ImpactInputs
from llenergymeasure.results.study import StudyResult


def enrich(result: StudyResult, inputs: ImpactInputs | None = None) -> StudyResult:
    """Return ``result`` with impact figures (``inputs``) and confidence intervals."""
    inputs = inputs if inputs is not None else result.impact_inputs
    given = inputs if inputs is not None and not inputs.empty else None
    runs = result.runs
    if given is not None:
        runs = [
            r.model_copy(update={"metrics": impact_metrics(r.metrics, given)})
            if r.metrics is not None
            else r
            for r in runs
        ]
    return result.model_copy(
        update={
            "runs": runs,
            "impact_inputs": given,
            "confidence_intervals": confidence_intervals(runs),
        }
    )
