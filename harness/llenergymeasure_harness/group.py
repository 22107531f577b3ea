"""Several experiments on one loaded engine: :func:`run_group` (``execution.reuse_engine``).

::

    load ─► member 1 (baseline, warmup, measure, prefill pass, write) ─► config_gap_s ─►
            member 2 (re-bind run-time settings, baseline, warmup, measure, ...) ─► ... ─► close

Each member writes ``started.json`` into its folder as it starts (the host shows it running,
the ones after it queued), then runs
:func:`~llenergymeasure_harness.experiment.run_experiment` unchanged, with
its own results folder, measured window and ``error.json`` when it fails; only the backend is
shared, through :class:`SharedEngine`, whose ``load`` loads once and then re-binds the next
member's run-time settings (``rebind``), and whose ``close`` waits for the group's end.

Failures: a member that fails after the engine loaded loses only itself, and the engine is
closed and loaded afresh for the next (its state after a failure is not trusted); a failed
load fails every member left (they share what was loaded), each with its own ``error.json``;
an interruption (SIGINT/SIGTERM) stops the group, the members not started keep no file, so a
resume runs exactly those.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llenergymeasure_contract.env import HarnessEnv
from llenergymeasure_contract.errors import ConfigError, ExperimentError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.files import STARTED_FILE
from llenergymeasure_contract.results import ExperimentResult, write_json_atomic
from llenergymeasure_contract.reuse import EngineGroup, EngineShare, GroupMember, engine_key
from llenergymeasure_contract.timestamps import utc_iso
from llenergymeasure_harness.backends.base import LoadInfo
from llenergymeasure_harness.experiment import Deps, HarnessTerminated, PhaseError, run_experiment

logger = logging.getLogger(__name__)

#: Called for a member that failed: (its env, phase, the cause, traceback or None).
OnError = Callable[[HarnessEnv, str, BaseException, str | None], None]


class SharedEngine:
    """One backend, loaded by the first member and re-bound for each next one."""

    def __init__(self, make_backend: Callable[[str], Any]) -> None:
        self._make = make_backend
        self.backend: Any = None
        self.info: LoadInfo | None = None
        self.loaded_by: str | None = None
        self.load_s: float | None = None
        self.load_error: BaseException | None = None
        self.loads = 0
        self.current: str | None = None  # the member now running

    def factory(self, name: str) -> _Handle:
        """The ``Deps.make_backend`` of every member."""
        if self.backend is None:
            self.backend = self._make(name)
        return _Handle(self)

    def bind(self, config: ExperimentConfig) -> LoadInfo:
        """Load (first call) or re-bind the run-time settings of ``config``."""
        if self.info is not None:
            rebind = getattr(self.backend, "rebind", None)
            if rebind is None:
                raise ConfigError(
                    f"backend {config.backend!r} cannot share a loaded engine",
                    hint="set execution.reuse_engine: false",
                )
            rebind(config)
            return self.info
        try:
            info: LoadInfo = self.backend.load(config)
        except BaseException as exc:
            self.load_error = exc
            raise
        self.info = info
        self.loaded_by = self.current
        self.loads += 1
        return info

    def close(self) -> None:
        """Release the engine (the group ended, or a member failed on it)."""
        backend, self.backend = self.backend, None
        self.info = None
        self.loaded_by = None
        self.load_s = None
        if backend is not None:
            try:
                backend.close()
            except Exception:  # closing must not hide the real error
                logger.exception("backend close failed")


class _Handle:
    """What ``run_experiment`` sees as its backend: the shared one, never closed by it."""

    def __init__(self, shared: SharedEngine) -> None:
        object.__setattr__(self, "_shared", shared)

    def load(self, config: ExperimentConfig) -> LoadInfo:
        shared: SharedEngine = self._shared
        return shared.bind(config)

    def close(self) -> None:
        """The group closes the engine, not the member."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared.backend, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._shared.backend, name, value)


@dataclass
class MemberOutcome:
    """What became of one member: ``"completed"``, ``"failed"`` or ``"not_started"``."""

    run_id: str
    state: str
    phase: str | None = None
    result: ExperimentResult | None = None


@dataclass
class GroupOutcome:
    """Every member's outcome, and the interruption that stopped the group, if any."""

    members: list[MemberOutcome] = field(default_factory=list)
    interrupted: BaseException | None = None
    loads: int = 0


def member_env(env: HarnessEnv, member: GroupMember) -> HarnessEnv:
    """The single-run environment of one member (the group's shared settings kept)."""
    return env.model_copy(
        update={
            "config": member.config,
            "run_id": member.run_id,
            "results_dir": member.results_dir,
            "cycle": member.cycle,
            "config_hash": member.config_hash,
            "group_file": None,
        }
    )


def mark_started(env: HarnessEnv) -> None:
    """Write the member's ``started.json``: the host shows it running from now (the others
    queued). Best effort: a member that cannot write it still runs (and fails at its write)."""
    record = {"run_id": env.run_id, "started_at": utc_iso()}
    try:
        write_json_atomic(Path(env.results_dir) / STARTED_FILE, json.dumps(record))
    except OSError as exc:
        logger.warning("cannot write %s for %s: %s", STARTED_FILE, env.run_id, exc)


def _interruption(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | HarnessTerminated)


def _finalizer(
    shared: SharedEngine,
    group: EngineGroup,
    members: list[str],
    *,
    position: int,
    gap_s: float,
) -> Callable[[ExperimentResult], ExperimentResult]:
    """The member's ``Deps.finalize``: its place in the group (``engine_share``) and the
    rest before it (``timings.gap_s``, added to ``total_s``)."""

    def finalize(result: ExperimentResult) -> ExperimentResult:
        if shared.loaded_by == result.run_id:
            shared.load_s = result.timings.load_s
        share = EngineShare(
            group_id=group.group_id,
            engine_key=group.engine_key,
            members=members,
            position=position,
            loaded_by=shared.loaded_by or result.run_id,
            engine_load_s=shared.load_s,
        )
        total = result.timings.total_s
        own_load = shared.loaded_by == result.run_id
        timings = result.timings.model_copy(
            update={
                "gap_s": gap_s,
                "total_s": None if total is None else total + gap_s,
                # the parts of a load only where this run loaded (the others re-bound)
                "load_breakdown_s": result.timings.load_breakdown_s if own_load else None,
            }
        )
        return result.model_copy(update={"engine_share": share, "timings": timings})

    return finalize


def run_group(
    env: HarnessEnv,
    group: EngineGroup,
    deps: Deps | None = None,
    on_error: OnError | None = None,
) -> GroupOutcome:
    """Run every member of ``group`` on one loaded engine, each into its own folder.

    Args:
        env: The harness environment (image, caches, ids shared by the members).
        group: The members, in order, and the rest between them.
        deps: Side effects (tests); its ``make_backend`` builds the one shared backend.
        on_error: Writes a failed member's ``error.json``.

    Returns:
        Each member's outcome; ``interrupted`` when SIGINT/SIGTERM stopped the group.
    """
    d = deps or Deps()
    shared = SharedEngine(d.make_backend)
    members = [m.run_id for m in group.members]
    outcome = GroupOutcome()

    def fail(menv: HarnessEnv, phase: str, exc: BaseException, tb: str | None) -> None:
        outcome.members.append(MemberOutcome(menv.run_id, "failed", phase))
        if on_error is not None:
            on_error(menv, phase, exc, tb)

    # The first member's key over the configs as this harness sees them: the host hashed host
    # paths (a local checkpoint), which the Docker runner rewrites to the container's, the same
    # way for every member, so group.engine_key need not match here.
    expected_key = engine_key(group.members[0].config) if group.members else group.engine_key
    try:
        for i, member in enumerate(group.members):
            menv = member_env(env, member)
            if outcome.interrupted is not None:
                outcome.members.append(MemberOutcome(member.run_id, "not_started"))
                continue
            Path(menv.results_dir).mkdir(parents=True, exist_ok=True)
            if shared.load_error is not None:
                err = ExperimentError(
                    f"the group's engine failed to load: {shared.load_error}",
                    hint="every member of an engine group loads the same engine",
                )
                fail(menv, "load", err, None)
                continue
            if engine_key(member.config) != expected_key:
                fail(
                    menv,
                    "config",
                    ConfigError(
                        f"run {member.run_id} does not share the group's load-time settings "
                        f"(engine key {engine_key(member.config)} != {expected_key})"
                    ),
                    None,
                )
                continue
            gap_s = 0.0
            if i > 0 and group.config_gap_s > 0:
                t0 = d.clock()
                try:
                    d.sleep(group.config_gap_s)
                except BaseException as exc:
                    if not _interruption(exc):
                        raise
                    outcome.interrupted = exc
                    outcome.members.append(MemberOutcome(member.run_id, "not_started"))
                    continue
                gap_s = d.clock() - t0
            shared.current = member.run_id
            mark_started(menv)
            finalize = _finalizer(shared, group, members, position=i, gap_s=gap_s)
            try:
                result = run_experiment(
                    menv, replace(d, make_backend=shared.factory, finalize=finalize)
                )
            except PhaseError as err:
                fail(menv, err.phase, err.cause, err.traceback)
                if _interruption(err.cause):
                    outcome.interrupted = err.cause
                elif shared.load_error is None:
                    shared.close()  # not trusted after a failure: the next member loads afresh
                continue
            except KeyboardInterrupt as exc:
                fail(menv, "measure", exc, None)
                outcome.interrupted = exc
                continue
            outcome.members.append(MemberOutcome(member.run_id, "completed", result=result))
    finally:
        outcome.loads = shared.loads
        shared.close()
    return outcome


__all__ = [
    "GroupOutcome",
    "MemberOutcome",
    "SharedEngine",
    "mark_started",
    "member_env",
    "run_group",
]
