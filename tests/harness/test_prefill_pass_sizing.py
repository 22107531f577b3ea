"""The prefill-only pass is sized to its counter window, and its energy scaled per token."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.harness.conftest import World, harness_env, make_config

from llenergymeasure_harness.backends.base import RequestRecord
from llenergymeasure_harness.experiment import run_experiment
from llenergymeasure_harness.phase_energy import (
    PREFILL_PASS_MIN_S,
    prefill_pass_split,
    prefill_pass_waves,
)


def _rec(i: int, inp: int = 16, out: int = 4) -> RequestRecord:
    return RequestRecord(request_id=i, input_tokens=inp, output_tokens=out, submit_s=0, end_s=1)


def test_waves_are_whole_batches() -> None:
    """Waves are whole batches of the measured shape; the last one takes what is left."""
    assert prefill_pass_waves(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert prefill_pass_waves(3, 0) == [(0, 1), (1, 2), (2, 3)]


def test_full_pass_keeps_the_unscaled_figures() -> None:
    """A pass over every shape: prefill = the pass's energy, scale 1."""
    records = [_rec(i) for i in range(4)]
    split = prefill_pass_split(
        total_j=100.0, pass_j=20.0, records=records, pass_records=records, pass_duration_s=1.0
    )
    assert split["prefill_energy_j"] == 20.0 and split["decode_energy_j"] == 80.0
    assert split["prefill_pass_scale"] == 1.0 and split["prefill_pass_requests"] == 4
    assert split["j_per_prefill_token"] == pytest.approx(20.0 / 64)


def test_subset_pass_is_scaled_per_prompt_token() -> None:
    """A pass over 2 of 8 shapes: its J per prefill token times the measured prompt tokens."""
    records = [_rec(i) for i in range(8)]
    split = prefill_pass_split(
        total_j=100.0,
        pass_j=5.0,
        records=records,
        pass_records=records[:2],
        pass_duration_s=2.0,
    )
    assert split["prefill_pass_scale"] == pytest.approx(4.0)
    assert split["prefill_energy_j"] == pytest.approx(20.0)
    assert split["prefill_tokens"] == 128
    assert split["j_per_prefill_token"] == pytest.approx(5.0 / 32)
    assert split["decode_energy_j"] == pytest.approx(80.0)


def test_experiment_pass_stops_after_its_minimum_duration(tmp_path: Path, world: World) -> None:
    """With 40 prompts in batches of 2, the pass runs whole waves only until it has lasted
    PREFILL_PASS_MIN_S, and the result says how many requests ran and the scale."""
    env = harness_env(tmp_path, make_config(n_prompts=40))
    result = run_experiment(env, world.deps())
    pp = result.phase_energy.prefill_pass  # type: ignore[union-attr]
    assert pp is not None
    assert pp.prefill_pass_requests is not None
    assert 2 <= pp.prefill_pass_requests < 40 and pp.prefill_pass_requests % 2 == 0
    assert result.timings.prefill_pass_s >= PREFILL_PASS_MIN_S  # type: ignore[operator]
    assert pp.prefill_pass_scale == pytest.approx(40 / pp.prefill_pass_requests)
    assert pp.prefill_tokens == 40 * 16
