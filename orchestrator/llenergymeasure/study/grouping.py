"""Engine groups of a plan (``execution.reuse_engine: true``): :func:`group_runs`.

Runs whose experiments have the same :func:`~llenergymeasure_contract.reuse.engine_key`
(equal load-time settings) can run in one container on one loaded engine. Grouping moves them
next to each other, within what the cycle order allows::

    sequential   all runs form one pass: the runs of an engine move up to its first run
    interleaved  each cycle is a pass of its own, grouped inside; a cycle still ends before
    shuffled     the next one starts, so each cycle loads every engine afresh

Inside a pass the groups keep the order of their first runs, and the runs of a group their
own order. Every run is in exactly one group; a group of one is a plain run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from llenergymeasure.config.study import CycleOrder


class _Run(Protocol):
    @property
    def config_hash(self) -> str: ...
    @property
    def cycle(self) -> int: ...
    @property
    def run_id(self) -> str: ...


RunKey = TypeVar("RunKey", bound=_Run)


class RunGroup(BaseModel):
    """Consecutive runs of the plan that share one loaded engine.

    Attributes:
        group_id: ``g<N>``, N counting the plan's groups from 1 in run order.
        engine_key: The load-time hash the runs share.
        run_ids: The runs, in run order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str
    engine_key: str
    run_ids: list[str]


def _passes(runs: Sequence[RunKey], order: CycleOrder) -> list[list[RunKey]]:
    """The stretches grouping may reorder inside: the whole plan, or one cycle each."""
    if order == "sequential":
        return [list(runs)]
    passes: dict[int, list[RunKey]] = {}
    for run in runs:
        passes.setdefault(run.cycle, []).append(run)
    return list(passes.values())


def group_runs(
    runs: Sequence[RunKey], engine_key_of: Mapping[str, str], order: CycleOrder
) -> tuple[list[RunKey], list[RunGroup], str | None]:
    """Group ``runs`` by engine (see the module docstring).

    Args:
        runs: The planned order.
        engine_key_of: config hash -> engine key.
        order: The study's cycle order.

    Returns:
        The new run order, the groups in it, and a note saying what changed (None when the
        order is unchanged).
    """
    ordered: list[RunKey] = []
    groups: list[RunGroup] = []
    for stretch in _passes(runs, order):
        by_key: dict[str, list[RunKey]] = {}
        for run in stretch:
            by_key.setdefault(engine_key_of[run.config_hash], []).append(run)
        for key, members in by_key.items():
            ordered.extend(members)
            groups.append(
                RunGroup(
                    group_id=f"g{len(groups) + 1}",
                    engine_key=key,
                    run_ids=[r.run_id for r in members],
                )
            )
    moved = sum(1 for a, b in zip(runs, ordered, strict=True) if a != b)
    shared = sum(len(g.run_ids) for g in groups if len(g.run_ids) > 1)
    loads_saved = len(runs) - len(groups)
    note = (
        f"reuse_engine: {shared} of {len(runs)} runs share an engine in "
        f"{sum(1 for g in groups if len(g.run_ids) > 1)} group(s), {loads_saved} engine "
        "load(s) fewer"
    )
    if moved:
        scope = "" if order == "sequential" else " within each cycle"
        note += (
            f"; {moved} runs moved so that runs of one engine follow each other{scope} "
            "(cycle order otherwise kept)"
        )
    else:
        note += "; run order unchanged"
    return ordered, groups, note


def group_lines(groups: Sequence[RunGroup], index_of: Mapping[str, int]) -> list[str]:
    """The dry run's group listing: one line per shared engine (plain runs left out).

    Args:
        groups: The plan's groups.
        index_of: config hash -> the experiment's number in the table.
    """
    lines = []
    for g in groups:
        if len(g.run_ids) < 2:
            continue
        shown = ", ".join(
            f"#{index_of.get(r.rsplit('_c', 1)[0], '?')} c{r.rsplit('_c', 1)[1]}"
            for r in g.run_ids[:8]
        )
        more = f" +{len(g.run_ids) - 8}" if len(g.run_ids) > 8 else ""
        lines.append(f"  {g.group_id}  engine {g.engine_key[:8]}  {shown}{more}")
    if lines:
        lines.insert(0, "engine groups (one harness process and engine load each):")
    return lines


__all__ = ["RunGroup", "group_lines", "group_runs"]
