"""Engine groups in the runners: one container/subprocess for the group, each member its own
folder and outcome."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.runners.conftest import tiny_config

from llenergymeasure.runners.group import member_outcomes
from llenergymeasure.runners.local import LocalRunner
from llenergymeasure.runners.spec import (
    CONTAINER_GROUP_DIR,
    CONTAINER_RESULTS_DIR,
    LABEL_GROUP,
    ContainerSettings,
    GroupRequest,
    RunRequest,
    build_container_spec,
)
from llenergymeasure_contract.reuse import EngineGroup, engine_key

ROOT = Path(__file__).resolve().parents[2]


def _group(
    make_request: Callable[..., RunRequest], sizes: tuple[int, ...], **kw: object
) -> RunRequest:
    configs = [tiny_config(pytorch={"batch_size": b}, **kw) for b in sizes]
    members = tuple(make_request(c, timeout_s=300.0) for c in configs)
    group = GroupRequest(
        group_id="g1", engine_key=engine_key(configs[0]), members=members, config_gap_s=0.0
    )
    return dataclasses.replace(members[0], group=group)


def test_container_spec_of_a_group(make_request: Callable[..., RunRequest]) -> None:
    """The group's container mounts every member's folder, is labelled with the group, gets
    the members' timeouts added up, and names a group file with container paths."""
    req = _group(make_request, (1, 2, 4))
    assert req.group is not None
    spec = build_container_spec(req, ContainerSettings())
    targets = {m.target: m.source for m in spec.mounts}
    for member in req.group.members[1:]:
        assert targets[f"{CONTAINER_GROUP_DIR}/{member.run_id}"] == str(member.run_dir)
    assert spec.labels[LABEL_GROUP] == "g1"
    assert spec.timeout_s == 900.0
    assert spec.group_file is not None
    doc = EngineGroup.model_validate_json(spec.group_file.json_text)
    assert [m.results_dir for m in doc.members] == [
        CONTAINER_RESULTS_DIR,
        *(f"{CONTAINER_GROUP_DIR}/{m.run_id}" for m in req.group.members[1:]),
    ]
    assert spec.env["LLEM_GROUP_FILE"].endswith(Path(spec.group_file.path_host).name)
    single = build_container_spec(req.group.members[1], ContainerSettings())
    assert LABEL_GROUP not in single.labels and "LLEM_GROUP_FILE" not in single.env


def test_local_runner_runs_a_group_in_one_process(
    make_request: Callable[..., RunRequest],
) -> None:
    """The local runner runs a two-member PyTorch group (tiny model, CPU) as one harness
    process: one load, each member completed from its own folder."""
    req = _group(make_request, (1, 4), gpus=[], baseline={"enabled": False})
    assert req.group is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("contract", "harness")),
    }
    outcome = LocalRunner(base_env=env, stop_grace_s=5).run(req)
    assert outcome.status == "completed", outcome.message
    members = member_outcomes(req.group, outcome)
    assert [m.status for m in members] == ["completed", "completed"]
    second = members[1].result
    assert second is not None and second.engine_share is not None
    assert second.engine_share.loaded_by == req.run_id
    assert sum(m.duration_s or 0 for m in members) == outcome.duration_s
    log = req.log_path.read_text()
    assert "2 of 2 runs completed on 1 engine load(s)" in log
    assert json.loads(Path(req.group.file_host()).read_text())["group_id"] == "g1"


def test_members_not_started_are_interrupted(make_request: Callable[..., RunRequest]) -> None:
    """An interrupted group: the member with a result completes, the one stopped is
    interrupted, the one never started is interrupted too (a resume runs both)."""
    from llenergymeasure.runners.base import RunOutcome
    from llenergymeasure_contract.results import HarnessErrorRecord

    req = _group(make_request, (1, 2, 4))
    assert req.group is not None
    first, second, _third = req.group.members
    from tests.harness.conftest import World, harness_env

    from llenergymeasure_harness.experiment import run_experiment

    first.run_dir.mkdir(parents=True)
    result = run_experiment(
        harness_env(first.run_dir.parent, first.config).model_copy(
            update={"results_dir": str(first.run_dir), "run_id": first.run_id}
        ),
        World().deps(),
    )
    assert result.run_id == first.run_id
    second.run_dir.mkdir(parents=True)
    HarnessErrorRecord(
        run_id=second.run_id,
        phase="measure",
        error_class="KeyboardInterrupt",
        message="",
        occurred_at="2026-12-07T00:00:00Z",
    ).write(second.run_dir / "error.json")
    stopped = RunOutcome(status="interrupted", failure_kind="interrupted", duration_s=10.0)
    outs = member_outcomes(req.group, stopped)
    assert [o.status for o in outs] == ["completed", "interrupted", "interrupted"]
    # the process's classification said completed (the first result.json was whole), but it
    # exited 130: the members without a result were stopped, not failed
    whole = RunOutcome(status="completed", exit_code=130, duration_s=10.0)
    outs = member_outcomes(req.group, whole)
    assert [o.status for o in outs] == ["completed", "interrupted", "interrupted"]
