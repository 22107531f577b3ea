"""Sizing n_prompts for a 30 s continuous-batching steady state, before and after a run."""

from __future__ import annotations

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.study.plan import estimate_experiment, planned_tokens_per_s
from llenergymeasure_contract.sizing import steady_state_duration_s, steady_state_n_prompts


def test_duration_formula_matches_the_h200_runs() -> None:
    """The wave model reproduces the H200's measured windows (18.9 s and 28.1 s) within 5 %."""
    assert steady_state_duration_s(1024, 256, 128, 4964) == pytest.approx(18.9, rel=0.05)
    assert steady_state_duration_s(512, 64, 128, 2025) == pytest.approx(28.1, rel=0.05)


def test_suggestion_reaches_the_minimum_in_whole_batches() -> None:
    """The suggested n_prompts is a multiple of the batch and gives >= 30 s at that rate."""
    n = steady_state_n_prompts(256, 128, 6830)
    assert n % 256 == 0
    assert steady_state_duration_s(n, 256, 128, 6830) >= 30


def test_plan_notes_a_short_steady_state_with_a_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The dry run warns before the run and names an n_prompts that the estimate says is enough."""
    from llenergymeasure.config.loader import load_study
    from llenergymeasure.study.plan import build_plan

    path = tmp_path / "s.yaml"
    path.write_text(
        "model: llama-3.1-8b\nload_format: dummy\nbackend: vllm\nn_prompts: 1024\n"
        "vllm: {max_num_seqs: 256}\n",
        encoding="utf-8",
    )
    plan = build_plan(load_study(path))
    (note,) = [n for n in plan.notes if "steady state" in n]
    need = int(note.split("n_prompts >= ")[1].split()[0])
    config = plan.experiments[0].config
    rate = planned_tokens_per_s(config, estimate_experiment(config))
    assert rate is not None
    assert steady_state_duration_s(need, 256, 128, rate) >= 30
    sized = config.model_copy(update={"n_prompts": need})
    assert steady_state_duration_s(sized.n_prompts, 256, 128, rate) >= 30
    assert isinstance(sized, ExperimentConfig)
