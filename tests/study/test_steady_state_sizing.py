"""Sizing n_prompts for a 30 s steady state (offline batching, open-loop arrivals), before a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.study.plan import estimate_experiment, planned_tokens_per_s
from llenergymeasure_contract.sizing import (
    arrival_steady_state_duration_s,
    arrival_steady_state_n_prompts,
    steady_state_duration_s,
    steady_state_n_prompts,
)


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


# --------------------------------------------------------------------------- open-loop arrivals


def test_arrival_duration_is_the_arrival_span_less_one_lifetime() -> None:
    """(N - 1) / r - L: 160 at 4/s is 39.75 s of arrivals, less a 2 s lifetime, 37.75 s."""
    assert arrival_steady_state_duration_s(160, 4.0, 2.0) == pytest.approx(37.75)
    assert arrival_steady_state_duration_s(160, 4.0, 0.0) == pytest.approx(39.75)
    assert arrival_steady_state_duration_s(41, 2.0, 0.5) == pytest.approx(19.5)
    # the lifetime outlasts the arrivals: no window, not a negative one
    assert arrival_steady_state_duration_s(9, 4.0, 5.0) == 0.0
    # fewer than 3 requests have no window at all, however slow the arrivals
    assert arrival_steady_state_duration_s(2, 0.01, 0.0) == 0.0


def test_arrival_n_prompts_by_hand() -> None:
    """1 + 1.1 x r x (30 + L), rounded up; the batch size plays no part."""
    assert arrival_steady_state_n_prompts(4.0, 0.0) == 133  # 1 + 1.1 x 4 x 30 = 133
    assert arrival_steady_state_n_prompts(4.0, 2.0) == 142  # 1 + 1.1 x 4 x 32 = 141.8
    assert arrival_steady_state_n_prompts(48.0, 0.0) == 1585  # 1584.0000000000002 in floats
    assert arrival_steady_state_n_prompts(4.0, 2.0, margin=1.0) == 129  # 1 + 4 x 32
    assert arrival_steady_state_n_prompts(10.0, 1.0, min_duration_s=60.0) == 672  # 1 + 11 x 61
    assert arrival_steady_state_n_prompts(0.01, 0.0) == 3  # 1.33: but a window needs 3
    for rate, lifetime in [(0.5, 0.0), (4.0, 1.9), (16.0, 1.2), (48.0, 7.5), (300.0, 12.0)]:
        n = arrival_steady_state_n_prompts(rate, lifetime)
        assert arrival_steady_state_duration_s(n, rate, lifetime) >= 30
        # the fewest such: one request less is under the margin's 1.1 x (30 + L) of arrivals
        assert (
            arrival_steady_state_duration_s(n - 1, rate, lifetime)
            < 1.1 * (30 + lifetime) - lifetime
        )


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_arrival_sizing_refuses_a_non_positive_rate(rate: float) -> None:
    """A rate that is not > 0 is a ValueError, not a division by zero or a silent 0."""
    with pytest.raises(ValueError, match="rate_per_s"):
        arrival_steady_state_duration_s(100, rate, 1.0)
    with pytest.raises(ValueError, match="rate_per_s"):
        arrival_steady_state_n_prompts(rate, 1.0)


def test_arrival_sizing_refuses_a_negative_lifetime() -> None:
    """A lifetime below 0 cannot come from a request record; it is refused."""
    with pytest.raises(ValueError, match="lifetime_s"):
        arrival_steady_state_n_prompts(4.0, -0.5)
    with pytest.raises(ValueError, match="lifetime_s"):
        arrival_steady_state_duration_s(100, 4.0, -0.5)


# --------------------------------------------------------------------------- plan notes


def _notes(
    tmp_path: Path, body: str, *, model: str = "llama-3.1-8b"
) -> tuple[list[str], list[ExperimentConfig], list[Any]]:
    """The steady-state notes of a study file, with its configs and estimates."""
    from llenergymeasure.config.loader import load_study
    from llenergymeasure.study.plan import build_plan

    path = tmp_path / "s.yaml"
    path.write_text(
        f"model: {model}\nload_format: dummy\nmax_input_tokens: 512\nmax_output_tokens: 128\n"
        + body,
        encoding="utf-8",
    )
    plan = build_plan(load_study(path))
    notes = [n for n in plan.notes if "steady state" in n]
    return notes, [e.config for e in plan.experiments], [e.estimate for e in plan.experiments]


def _need(note: str) -> int:
    return int(note.split("n_prompts >= ")[1].split(maxsplit=1)[0])


POISSON = "traffic: {pattern: poisson, rate_per_s: 4.0, seed: 7}\n"


def test_plan_sizes_an_open_loop_vllm_run_from_the_arrivals(tmp_path: Path) -> None:
    """vLLM at 4 req/s: 100 prompts are 24.75 s of arrivals, too short; the size is r x 30 s,
    not thousands of prompts from the offline wave rule."""
    from llenergymeasure.study.plan import planned_lifetime_s

    notes, (config,), (estimate,) = _notes(
        tmp_path, "backend: vllm\nvllm: {max_num_seqs: 256}\nn_prompts: 100\n" + POISSON
    )
    (note,) = notes
    lifetime = planned_lifetime_s(config, estimate)
    # 128 steps at the full batch's roofline step: (16.1 GB weights + KV) / 2 TB/s
    assert lifetime is not None and 1.0 < lifetime < 3.0
    expected = arrival_steady_state_duration_s(100, 4.0, lifetime)
    assert note.startswith(
        f"experiment 1: n_prompts 100 at 4 req/s is 25 s of arrivals, a steady state of about "
        f"{expected:.0f} s after a request lifetime of about {lifetime:.1f} s at the roofline"
    )
    need = _need(note)
    assert need == arrival_steady_state_n_prompts(4.0, lifetime)
    assert 133 < need < 150  # 1 + 1.1 x 4 x (30 + L)
    assert arrival_steady_state_duration_s(need, 4.0, lifetime) >= 30
    assert "docs/traffic.md" in note


def test_plan_has_no_note_for_40_s_of_arrivals(tmp_path: Path) -> None:
    """160 prompts at 4 req/s (the H200 sweep) leave about 38 s: no note."""
    notes, _, _ = _notes(
        tmp_path, "backend: vllm\nvllm: {max_num_seqs: 256}\nn_prompts: 160\n" + POISSON
    )
    assert notes == []


def test_plan_sizes_an_open_loop_pytorch_run(tmp_path: Path) -> None:
    """PyTorch gets an arrival window too, so the plan sizes it; offline PyTorch gets no note."""
    from llenergymeasure.study.plan import planned_lifetime_s

    body = "backend: pytorch\npytorch: {batch_size: 32}\nn_prompts: 96\n"
    notes, (config,), (estimate,) = _notes(tmp_path, body + POISSON)
    (note,) = notes
    lifetime = planned_lifetime_s(config, estimate)
    assert lifetime is not None
    assert "n_prompts 96 at 4 req/s is 24 s of arrivals" in note
    assert _need(note) == arrival_steady_state_n_prompts(4.0, lifetime)
    offline, _, _ = _notes(tmp_path, body)
    assert offline == []


def test_plan_without_an_architecture_sizes_arrivals_from_lifetime_zero(tmp_path: Path) -> None:
    """No architecture, no lifetime: (N - 1) / r alone is an upper bound, still under 30 s."""
    notes, _, (estimate,) = _notes(
        tmp_path,
        "backend: vllm\nn_prompts: 100\n" + POISSON,
        model="someorg/unknown-model",
    )
    assert estimate.weights_bytes is None
    (note,) = notes
    assert "n_prompts 100 at 4 req/s is 25 s of arrivals, a steady state of at most 25 s" in note
    assert _need(note) == 133  # 1 + 1.1 x 4 x 30


def test_plan_notes_for_offline_are_unchanged(tmp_path: Path) -> None:
    """The offline wave rule's notes, word for word as before the open-loop rule."""
    cases = {
        "backend: vllm\nvllm: {max_num_seqs: 256}\nn_prompts: 1024\n": (
            "experiment 1: n_prompts 1024 gives a steady state of about 7 s at the roofline's "
            "13,640 output tok/s (a window under 30 s is flagged invalid); use n_prompts >= "
            "3840 (docs/methodology.md, 'Steady state')"
        ),
        "backend: tensorrt\ntensorrt: {max_batch_size: 64}\nn_prompts: 512\n": (
            "experiment 1: n_prompts 512 gives a steady state of about 10 s at the roofline's "
            "5,973 output tok/s (a window under 30 s is flagged invalid); use n_prompts >= "
            "1664 (docs/methodology.md, 'Steady state')"
        ),
    }
    for body, expected in cases.items():
        notes, _, _ = _notes(tmp_path, body)
        assert notes == [expected], body


def test_plan_sizes_a_closed_loop_in_waves_of_its_users(tmp_path: Path) -> None:
    """Closed loop: K is the users, not the engine's batch. vLLM (64 sequences) with 16 users:
    the roofline's 5,973 tok/s at 64 scales to 16/64 of it, 1,493 tok/s; the window is
    (300 - 16 - 1) x 128 / 1,493 = 24.3 s; the size 16 + 1 + 1.1 x 30 x 1,493 / 128 = 402,
    in waves of 16: 416. PyTorch gets the same rule (it had no note before)."""
    notes, _, _ = _notes(
        tmp_path,
        "backend: vllm\nvllm: {max_num_seqs: 64}\nn_prompts: 300\n"
        "traffic: {pattern: closed_loop, concurrency: 16}\n",
    )
    assert notes == [
        "experiment 1: n_prompts 300 with 16 closed-loop users gives a steady state of about "
        "24 s at the roofline's 1,493 output tok/s (a window under 30 s is flagged invalid); "
        "use n_prompts >= 416 (docs/methodology.md, 'Steady state')"
    ]
    notes, _, _ = _notes(
        tmp_path,
        "backend: pytorch\npytorch: {batch_size: 8}\nn_prompts: 40\n"
        "traffic: {pattern: closed_loop, concurrency: 8}\n",
    )
    assert len(notes) == 1 and "with 8 closed-loop users" in notes[0]
    assert _need(notes[0]) % 8 == 0
