"""Cycle orders (sequential, interleaved, shuffled) and run ids of a study plan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from llenergymeasure.config.loader import load_study
from llenergymeasure.study.plan import RunKey, build_plan, order_runs

Write = Callable[[str, str], Path]

HASHES = ["a", "b", "c"]


def pairs(runs: list[RunKey]) -> list[tuple[str, int]]:
    return [(r.config_hash, r.cycle) for r in runs]


def test_sequential_runs_every_cycle_of_one_experiment_before_the_next() -> None:
    """sequential: A1 A2 B1 B2 C1 C2."""
    assert pairs(order_runs(HASHES, 2, "sequential")) == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
        ("c", 1),
        ("c", 2),
    ]


def test_interleaved_runs_one_pass_over_all_experiments_per_cycle() -> None:
    """interleaved: A1 B1 C1 A2 B2 C2."""
    assert pairs(order_runs(HASHES, 2, "interleaved")) == [
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("a", 2),
        ("b", 2),
        ("c", 2),
    ]


def test_shuffled_is_reproducible_with_the_same_seed() -> None:
    """The same seed gives the same shuffled order, call after call."""
    hashes = [f"h{i}" for i in range(20)]
    assert order_runs(hashes, 3, "shuffled", seed=11) == order_runs(hashes, 3, "shuffled", seed=11)


def test_shuffled_differs_with_another_seed() -> None:
    """Another seed gives another order (20 experiments: a collision is ~1 in 10^18)."""
    hashes = [f"h{i}" for i in range(20)]
    assert pairs(order_runs(hashes, 2, "shuffled", seed=1)) != pairs(
        order_runs(hashes, 2, "shuffled", seed=2)
    )


def test_shuffled_keeps_cycles_whole_and_reshuffles_each_one() -> None:
    """Cycle k's runs are all done before cycle k+1 starts; cycles get different orders."""
    hashes = [f"h{i}" for i in range(20)]
    runs = order_runs(hashes, 3, "shuffled", seed=5)
    cycles = [r.cycle for r in runs]
    assert cycles == sorted(cycles)
    per_cycle = [[r.config_hash for r in runs if r.cycle == c] for c in (1, 2, 3)]
    assert all(sorted(order) == sorted(hashes) for order in per_cycle)
    assert per_cycle[0] != hashes  # actually shuffled
    assert len({tuple(order) for order in per_cycle}) == 3


@pytest.mark.parametrize("order", ["sequential", "interleaved", "shuffled"])
@pytest.mark.parametrize("n_cycles", [1, 2, 5])
def test_every_run_happens_exactly_once(order: str, n_cycles: int) -> None:
    """Each (experiment, cycle) pair appears once, whatever the order."""
    hashes = [f"h{i}" for i in range(7)]
    runs = order_runs(hashes, n_cycles, order, seed=3)  # type: ignore[arg-type]
    counts = Counter(pairs(runs))
    assert len(runs) == len(hashes) * n_cycles
    assert set(counts) == {(h, c) for h in hashes for c in range(1, n_cycles + 1)}
    assert set(counts.values()) == {1}


def test_run_id_is_config_hash_and_cycle() -> None:
    """A run id is ``<config_hash>_c<cycle>``: stable, unique within a study, a folder name."""
    run = RunKey(config_hash="0123456789abcdef", cycle=3)
    assert run.run_id == "0123456789abcdef_c3"
    runs = order_runs(HASHES, 4, "interleaved")
    assert len({r.run_id for r in runs}) == len(runs)


def test_plan_uses_the_execution_block_of_the_study(write: Write) -> None:
    """A study's n_cycles, cycle_order and shuffle_seed decide the plan's run order."""
    study = write(
        "s.yaml",
        """\
        model: tiny-llama
        load_format: dummy
        n_prompts: 64
        sweep:
          n_prompts: [8, 16, 32, 64]
        execution: {n_cycles: 3, cycle_order: shuffled, shuffle_seed: 9}
        """,
    )
    plan = build_plan(load_study(study))
    hashes = [e.config_hash for e in plan.experiments]
    assert plan.runs == order_runs(hashes, 3, "shuffled", seed=9)
    assert build_plan(load_study(study)).runs == plan.runs  # reproducible across loads


def test_plan_duration_counts_config_and_cycle_gaps(write: Write) -> None:
    """The estimate adds config_gap_s between experiments and cycle_gap_s between cycles."""
    text = """\
        model: tiny-llama
        load_format: dummy
        n_prompts: 64
        sweep:
          n_prompts: [8, 16]
        execution: {n_cycles: 2, cycle_order: interleaved, config_gap_s: 100, cycle_gap_s: 1000}
        """
    with_gaps = build_plan(load_study(write("a.yaml", text)))
    no_gaps = build_plan(
        load_study(write("b.yaml", text), execution_overrides={"config_gap_s": 0, "cycle_gap_s": 0})
    )
    assert with_gaps.estimated_duration_s is not None and no_gaps.estimated_duration_s is not None
    # interleaved A1 B1 | A2 B2: two config gaps and one cycle gap
    gap_s = with_gaps.estimated_duration_s - no_gaps.estimated_duration_s
    assert gap_s == pytest.approx(2 * 100 + 1000)
