"""The evaluation pass inside the harness's timeline: its own NVML window after the measured
one (a fake GPU: energy = power x clock time, exactly), and a refusal before anything is
measured when it could not run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.harness.conftest import World, harness_env, make_config

from llenergymeasure_harness.backends.base import Generated, Score, ScoreRequest, TextRequest
from llenergymeasure_harness.experiment import PhaseError, run_experiment
from llenergymeasure_harness.testing import FakeBackend

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "quality"


class EvaluableFake(FakeBackend):
    """The fake engine plus the evaluation methods: 1 s per batch on the fake clock; every
    first choice is the likeliest, every answer is 'Paris'."""

    def loglikelihood(
        self, requests: Sequence[ScoreRequest], *, batch_size: int, max_length: int
    ) -> list[Score]:
        self.clock.advance(math.ceil(len(requests) / batch_size))  # type: ignore[attr-defined]
        return [
            Score(-float(r.continuation_ids[0] % 7), True, len(r.context_ids) + 1) for r in requests
        ]

    def generate_texts(
        self, requests: Sequence[TextRequest], *, batch_size: int, tokenizer: Any
    ) -> list[Generated]:
        self.clock.advance(math.ceil(len(requests) / batch_size))  # type: ignore[attr-defined]
        return [Generated(" Paris\n", 2) for _ in requests]


def quality_config(model: Path, **over: Any) -> Any:
    return make_config(
        model=str(model),
        load_format="auto",
        quality={
            "tasks": [str(EXAMPLES / "facts_mc.yaml"), str(EXAMPLES / "facts_gen.yaml")],
            "limit": 4,
            "batch_size": 4,
        },
        **over,
    )


def test_evaluation_has_its_own_energy_window_after_the_measured_one(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    """At 250 W the evaluation pass's energy is 250 x its duration, apart from the measured
    window's; result.json carries both, and the time series labels the pass."""
    world = World()
    world.backend = EvaluableFake(clock=world.clock, step_s=0.5)
    cfg = quality_config(smollm2_dir, energy={"timeseries": True})
    result = run_experiment(harness_env(tmp_path, cfg), world.deps())
    ev = result.evaluation
    assert ev is not None
    assert result.energy.gpu_energy_j == pytest.approx(2000.0)  # the measured window, unchanged
    assert ev.duration_s > 0 and ev.gpu_energy_j == pytest.approx(250.0 * ev.duration_s)
    assert result.timings.evaluation_s == ev.duration_s
    assert ev.n_items == 8 and ev.j_per_item == pytest.approx(ev.gpu_energy_j / 8)
    by = {t.task: t for t in ev.tasks}
    assert by["llem_facts_gen"].correct is not None
    assert ev.correct is not None and ev.correct > 0
    assert ev.quality_per_joule == pytest.approx(ev.correct / ev.gpu_energy_j)
    assert ev.output_tokens == 4 * 2  # four generated answers of two tokens
    import pyarrow.parquet as pq

    phases = set(pq.read_table(tmp_path / "out" / "timeseries.parquet")["phase"].to_pylist())
    assert "evaluation" in phases


def test_an_engine_without_evaluation_methods_fails_before_measuring(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    """quality: on an engine that cannot evaluate stops in the config phase: nothing ran."""
    world = World()
    cfg = quality_config(smollm2_dir)
    with pytest.raises(PhaseError) as info:
        run_experiment(harness_env(tmp_path, cfg), world.deps())
    assert info.value.phase == "config"
    assert "cannot run evaluations" in str(info.value)
    assert world.backend.runs == 0
    assert not (tmp_path / "out" / "result.json").exists()
