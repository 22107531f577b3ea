"""Fixtures for study execution tests: small plans and a fake Docker engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config.loader import expand_study
from llenergymeasure.study.plan import StudyPlan, build_plan

IMAGE = "llem/pytorch:test"


def make_plan(
    results_dir: Path,
    *,
    batch_sizes: tuple[int, ...] = (1, 2),
    n_cycles: int = 2,
    order: str = "sequential",
    gaps: tuple[float, float] = (0.0, 0.0),
    max_failures: int = 0,
    name: str = "unit",
    runner: dict[str, Any] | None = None,
    **fields: Any,
) -> StudyPlan:
    """A sweep over pytorch.batch_size x n_cycles of a tiny dummy model."""
    data: dict[str, Any] = {
        "name": name,
        "model": "tiny-llama",
        "load_format": "dummy",
        "n_prompts": 4,
        "max_input_tokens": 16,
        "max_output_tokens": 8,
        "sweep": {"pytorch.batch_size": list(batch_sizes)},
        "execution": {
            "n_cycles": n_cycles,
            "cycle_order": order,
            "config_gap_s": gaps[0],
            "cycle_gap_s": gaps[1],
            "max_consecutive_failures": max_failures,
        },
    }
    data.update(runner or {"images": {"pytorch": IMAGE}})  # runner keys are top-level
    data.update(fields)
    study = expand_study(data, source="<test>", base_dir=results_dir, results_dir=str(results_dir))
    return build_plan(study)


@pytest.fixture
def plan_factory(tmp_path: Path) -> Callable[..., StudyPlan]:
    """make_plan with results under tmp_path/results."""

    def make(**kw: Any) -> StudyPlan:
        return make_plan(tmp_path / "results", **kw)

    return make
