"""Engine groups: several experiments on one loaded engine, each its own result or error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.harness.conftest import World, make_config

from llenergymeasure.contract import EXIT_FAILED, EXIT_OK
from llenergymeasure.results import ExperimentResult, HarnessErrorRecord
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.reuse import EngineGroup, GroupMember, engine_key
from llenergymeasure_contract.time_budget import run_time_breakdown
from llenergymeasure_harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _group(tmp_path: Path, configs: list[ExperimentConfig], gap_s: float = 5.0) -> Path:
    members = [
        GroupMember(
            run_id=f"run-{i}",
            config=c,
            results_dir=str(tmp_path / "runs" / f"run-{i}"),
            config_hash=c.config_hash,
        )
        for i, c in enumerate(configs)
    ]
    group = EngineGroup(
        group_id="g1", engine_key=engine_key(configs[0]), members=members, config_gap_s=gap_s
    )
    path = tmp_path / "group.json"
    group.write(path)
    return path


def _environ(tmp_path: Path, group_file: Path, first: ExperimentConfig) -> dict[str, str]:
    return {
        "LLEM_CONFIG_JSON": first.to_json(),
        "LLEM_RUN_ID": "run-0",
        "LLEM_RESULTS_DIR": str(tmp_path / "runs" / "run-0"),
        "LLEM_GROUP_FILE": str(group_file),
    }


def _batch_sweep(*sizes: int) -> list[ExperimentConfig]:
    return [make_config(pytorch={"batch_size": b}) for b in sizes]


def test_engine_key_splits_load_time_from_run_time_keys() -> None:
    """Batch size, traffic and lengths leave the engine key alone; precision, the model and
    vLLM's max_num_seqs change it."""
    a = make_config(pytorch={"batch_size": 2})
    assert engine_key(a) == engine_key(make_config(pytorch={"batch_size": 4}, n_prompts=16))
    assert engine_key(a) == engine_key(
        make_config(traffic={"pattern": "poisson", "rate_per_s": 3.0}, max_output_tokens=9)
    )
    assert engine_key(a) != engine_key(make_config(precision="float16"))
    v8 = make_config(backend="vllm", pytorch=None, vllm={"max_num_seqs": 8})
    v16 = make_config(backend="vllm", pytorch=None, vllm={"max_num_seqs": 16})
    assert engine_key(v8) != engine_key(v16)


def test_group_loads_once_and_writes_every_result(tmp_path: Path, world: World) -> None:
    """Three batch sizes in a group: one load, two re-binds, three result.json each saying
    with which runs the engine was shared, the thermal gap timed before the second and third."""
    configs = _batch_sweep(1, 2, 4)
    path = _group(tmp_path, configs, gap_s=5.0)
    assert main([], _environ(tmp_path, path, configs[0]), world.deps()) == EXIT_OK
    assert world.backend.loads == 1
    assert [c.pytorch.batch_size for c in world.backend.rebinds] == [2, 4]  # type: ignore[union-attr]
    results = [ExperimentResult.load(tmp_path / "runs" / f"run-{i}") for i in range(3)]
    for i, r in enumerate(results):
        share = r.engine_share
        assert share is not None
        assert share.members == ["run-0", "run-1", "run-2"]
        assert share.position == i
        assert share.loaded_by == "run-0"
        assert r.config.pytorch.batch_size == [1, 2, 4][i]  # type: ignore[union-attr]
        assert r.timings.gap_s == (0.0 if i == 0 else pytest.approx(5.0))
        parts = run_time_breakdown(r.timings)
        assert parts["gaps"] == r.timings.gap_s
        assert sum(parts.values()) == pytest.approx(r.timings.total_s)
    assert results[1].engine_share.engine_load_s == results[0].timings.load_s  # type: ignore[union-attr]


def test_failed_member_loses_only_itself(tmp_path: Path, world: World) -> None:
    """A member failing in its measured window writes error.json; the engine is loaded afresh
    for the next member, whose result is kept; the exit code says one failed."""
    configs = _batch_sweep(1, 2, 4)
    path = _group(tmp_path, configs, gap_s=0.0)
    orig = world.backend.run
    state: dict[str, Any] = {}

    def run(reqs: Any, plan: Any = None) -> Any:
        if world.backend.loads == 1 and len(world.backend.rebinds) == 1:  # run-1, batch 2
            state["calls"] = state.get("calls", 0) + 1
            if state["calls"] > 1:  # after its warmup
                raise RuntimeError("CUDA out of memory")
        return orig(reqs) if plan is None else orig(reqs, plan)

    world.backend.run = run  # type: ignore[method-assign]
    assert main([], _environ(tmp_path, path, configs[0]), world.deps()) == EXIT_FAILED
    runs = tmp_path / "runs"
    assert (runs / "run-0" / "result.json").is_file()
    assert HarnessErrorRecord.load(runs / "run-1").phase == "measure"
    assert not (runs / "run-1" / "result.json").exists()
    last = ExperimentResult.load(runs / "run-2")
    assert last.engine_share is not None and last.engine_share.loaded_by == "run-2"
    assert world.backend.loads == 2


def test_failed_load_fails_every_member(tmp_path: Path) -> None:
    """An engine that does not load gives each member its own error.json, phase load."""
    world = World(fail_in="load")
    configs = _batch_sweep(1, 2)
    path = _group(tmp_path, configs)
    assert main([], _environ(tmp_path, path, configs[0]), world.deps()) == EXIT_FAILED
    for i in range(2):
        err = HarnessErrorRecord.load(tmp_path / "runs" / f"run-{i}")
        assert err.phase == "load"
        assert err.run_id == f"run-{i}"


def test_interruption_leaves_members_not_started_untouched(tmp_path: Path, world: World) -> None:
    """SIGINT in the second member's window: its error.json, no file for the third, exit 130,
    so a resume runs exactly the second and third; the two that started each wrote
    started.json (the host shows a member running from it)."""
    configs = _batch_sweep(1, 2, 4)
    path = _group(tmp_path, configs, gap_s=0.0)
    orig = world.backend.run

    def run(reqs: Any, plan: Any = None) -> Any:
        if world.backend.rebinds and world.backend.runs >= 3:
            raise KeyboardInterrupt
        return orig(reqs) if plan is None else orig(reqs, plan)

    world.backend.run = run  # type: ignore[method-assign]
    assert main([], _environ(tmp_path, path, configs[0]), world.deps()) == 130
    runs = tmp_path / "runs"
    assert (runs / "run-0" / "result.json").is_file()
    assert HarnessErrorRecord.load(runs / "run-1").error_class == "KeyboardInterrupt"
    assert not (runs / "run-2").exists()
    for run_id in ("run-0", "run-1"):
        started = json.loads((runs / run_id / "started.json").read_text(encoding="utf-8"))
        assert started["run_id"] == run_id and started["started_at"].endswith("Z")


def test_member_with_another_engine_is_refused(tmp_path: Path, world: World) -> None:
    """A member whose load-time keys differ from the group's is not run on its engine."""
    configs = [make_config(), make_config(precision="float16")]
    path = _group(tmp_path, configs, gap_s=0.0)
    assert main([], _environ(tmp_path, path, configs[0]), world.deps()) == EXIT_FAILED
    err = HarnessErrorRecord.load(tmp_path / "runs" / "run-1")
    assert err.phase == "config" and "load-time" in err.message


def test_unreadable_group_file_exit_2(tmp_path: Path, world: World) -> None:
    """A group file that is not an EngineGroup: error.json phase config, exit 2."""
    bad = tmp_path / "group.json"
    bad.write_text(json.dumps({"members": []}))
    code = main([], _environ(tmp_path, bad, make_config()), world.deps())
    assert code == 2
    assert HarnessErrorRecord.load(tmp_path / "runs" / "run-0").phase == "config"


def test_module_entry_point_runs_a_pytorch_group(tmp_path: Path) -> None:
    """`python -m llenergymeasure_harness` with LLEM_GROUP_FILE and the real PyTorch backend
    (tiny dummy model, CPU): two batch sizes on one loaded model, two results."""
    configs = [
        make_config(gpus=[], pytorch={"batch_size": b}, baseline={"enabled": False}) for b in (1, 4)
    ]
    path = _group(tmp_path, configs, gap_s=0.0)
    env = {
        **os.environ,
        **_environ(tmp_path, path, configs[0]),
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("contract", "harness")),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "llenergymeasure_harness"],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 2 runs completed on 1 engine load(s)" in proc.stderr
    first, second = (ExperimentResult.load(tmp_path / "runs" / f"run-{i}") for i in range(2))
    assert second.config.pytorch.batch_size == 4  # type: ignore[union-attr]
    assert second.throughput.n_requests == 8
    assert second.engine_share is not None and second.engine_share.loaded_by == "run-0"
    assert first.timings.load_s is not None and second.timings.load_s is not None
    assert second.timings.load_s < first.timings.load_s
