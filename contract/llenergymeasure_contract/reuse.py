"""Engine reuse: which experiments can share one loaded engine, and how a group is handed over.

Two experiments can share a loaded engine when they differ only in keys the engine does not fix
at load (:attr:`~llenergymeasure_contract.registry.BackendSpec.run_time_keys`: the requests,
the decoder, the traffic, the measurement around them). :func:`engine_key` hashes everything
else, so equal keys mean one load can serve both.

With ``execution.reuse_engine: true`` the host hands the harness an :class:`EngineGroup` (a
JSON file named by ``LLEM_GROUP_FILE``); the harness loads once and runs each member in its
own measured window, with its own warmup, baseline, thermal gap and results folder::

    load ─► [member 1: baseline, warmup, measure, prefill pass, write] ─► gap ─►
            [member 2: baseline, warmup, measure, prefill pass, write] ─► ... ─► close

Each result carries an :class:`EngineShare` saying with which runs its engine was shared.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.registry import REGISTRY


def _exclude(run_time_keys: tuple[str, ...]) -> dict[str, Any]:
    """Dotted keys as a pydantic ``exclude`` tree (``a.b`` -> ``{"a": {"b": True}}``)."""
    tree: dict[str, Any] = {}
    for dotted in run_time_keys:
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            child = node.setdefault(part, {})
            if child is True:
                break
            node = child
        else:
            node[leaf] = True
    return tree


def engine_key(config: ExperimentConfig) -> str:
    """A hash (16 hex) of the load-time keys: equal keys mean one loaded engine serves both.

    Every key not listed in the backend's ``run_time_keys`` counts, so a key added later is
    load-time until someone declares it run-time. Canonical as ``config_hash`` is: fields
    serialise in declaration order and free-form dicts are key-sorted on validation.
    """
    exclude = _exclude(REGISTRY.get(str(config.backend)).run_time_keys)
    canonical = config.model_dump_json(exclude=exclude)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupMember(_Model):
    """One experiment of an engine group: what a single run's environment would carry."""

    run_id: str
    config: ExperimentConfig
    results_dir: str
    cycle: int | None = None
    config_hash: str | None = None


class EngineGroup(_Model):
    """Experiments that share one loaded engine, in the order they run.

    Attributes:
        group_id: The group's id (the engine key and the first member's run id).
        engine_key: :func:`engine_key` of every member.
        members: The experiments, in run order (at least one).
        config_gap_s: Thermal rest between two members (``execution.config_gap_s``).
    """

    group_id: str
    engine_key: str
    members: list[GroupMember] = Field(min_length=1)
    config_gap_s: float = Field(0.0, ge=0.0)

    @classmethod
    def load(cls, path: str | Path) -> EngineGroup:
        """Read a group file."""
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def write(self, path: str | Path) -> None:
        """Write the group file (pretty JSON)."""
        Path(path).write_text(self.model_dump_json(indent=2), encoding="utf-8")


class EngineShare(_Model):
    """In a result: the engine this run measured on was shared with other runs.

    Attributes:
        group_id: The group's id.
        engine_key: The load-time hash the members share.
        members: Every run id of the group, in run order.
        position: This run's place in ``members`` (0: the run that loaded the engine).
        loaded_by: The run whose ``timings.load_s`` holds the engine's load; the others'
            ``load_s`` is the few milliseconds spent re-binding their run-time settings.
        engine_load_s: That load, measured in ``loaded_by``.
    """

    group_id: str
    engine_key: str
    members: list[str]
    position: int = Field(ge=0)
    loaded_by: str
    engine_load_s: float | None = None


__all__ = [
    "EngineGroup",
    "EngineShare",
    "GroupMember",
    "engine_key",
]
