"""Engine reuse in the plan: groups by engine key, the order kept within cycles, the dry run
showing the groups, and the estimate from cached load times."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.study.grouping import group_runs
from llenergymeasure.study.load_times import cached_startups, record_run
from llenergymeasure.study.plan import RunKey
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.results import ExperimentResult
from llenergymeasure_contract.reuse import EngineShare, engine_key

ROOT = Path(__file__).resolve().parents[2]

CROSS = """\
name: xb
model: meta-llama/Llama-3.1-8B
load_format: dummy
n_prompts: 1024
max_input_tokens: 512
max_output_tokens: 128
gpus: [0]
experiments:
  - {backend: pytorch, pytorch: {batch_size: 64}}
  - {backend: vllm, vllm: {max_num_seqs: 64}}
  - {backend: pytorch, pytorch: {batch_size: 256}}
  - {backend: vllm, vllm: {max_num_seqs: 256}}
execution: {n_cycles: 2, cycle_order: %s, config_gap_s: 5, cycle_gap_s: 10%s}
"""


def _llem(cwd: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / p) for p in ("contract", "harness", "orchestrator")
        ),
        "XDG_CACHE_HOME": str(cache or cwd / "cache"),
        "LLEM_USER_CONFIG": "",
        "COLUMNS": "80",
    }
    return subprocess.run(
        ["llem", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )


def _study(tmp_path: Path, order: str, reuse: bool) -> Path:
    extra = ", reuse_engine: true" if reuse else ""
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(CROSS % (order, extra)), encoding="utf-8")
    return path


def _plan(tmp_path: Path, order: str, reuse: bool, cache: Path | None = None) -> dict[str, Any]:
    _study(tmp_path, order, reuse)
    proc = _llem(tmp_path, "run", "study.yaml", "--dry-run", "--json", cache=cache)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_dry_run_shows_groups_and_what_changed(tmp_path: Path) -> None:
    """Sequential order with reuse on: the two PyTorch batch sizes share an engine, so the
    second moves up next to the first; the dry run lists the group and says it moved runs."""
    _study(tmp_path, "sequential", reuse=True)
    proc = _llem(tmp_path, "run", "study.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "engine groups (one harness process and engine load each):" in out
    assert "#1 c1, #1 c2, #3 c1, #3 c2" in out
    assert "runs moved so that runs of one engine follow each other" in out
    doc = _plan(tmp_path, "sequential", reuse=True)
    hashes = [e["config_hash"] for e in doc["experiments"]]
    order = [(hashes.index(r["config_hash"]) + 1, r["cycle"]) for r in doc["runs"]]
    assert order == [(1, 1), (1, 2), (3, 1), (3, 2), (2, 1), (2, 2), (4, 1), (4, 2)]
    assert [len(g["run_ids"]) for g in doc["groups"]] == [4, 2, 2]


def test_interleaved_groups_stay_inside_their_cycle(tmp_path: Path) -> None:
    """Interleaved: each cycle still ends before the next; grouping only reorders inside it."""
    doc = _plan(tmp_path, "interleaved", reuse=True)
    assert [r["cycle"] for r in doc["runs"]] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [len(g["run_ids"]) for g in doc["groups"]] == [2, 1, 1, 2, 1, 1]


def test_reuse_off_keeps_todays_plan(tmp_path: Path) -> None:
    """Without reuse_engine: no groups, no note, the order of the cycle order alone."""
    doc = _plan(tmp_path, "sequential", reuse=False)
    assert doc["groups"] == []
    assert not any("reuse_engine" in n for n in doc["notes"])
    hashes = [e["config_hash"] for e in doc["experiments"]]
    assert [r["config_hash"] for r in doc["runs"]] == [h for h in hashes for _ in (1, 2)]


def test_estimate_uses_cached_load_times(tmp_path: Path) -> None:
    """Load times cached on this host replace the assumed start-up, and the plan says so;
    with reuse the start-up is counted once per group."""
    plain = _plan(tmp_path, "sequential", reuse=False)
    cache = tmp_path / "xdg"
    configs = [ExperimentConfig.model_validate(e["config"]) for e in plain["experiments"]]
    entries = {f"{socket.gethostname()}|{engine_key(c)}": {"startup_s": 100.0} for c in configs}
    (cache / "llenergymeasure").mkdir(parents=True)
    (cache / "llenergymeasure" / "load_times.json").write_text(json.dumps(entries))
    cached = _plan(tmp_path, "sequential", reuse=False, cache=cache)
    assert cached["estimate_basis"] == "start-up and load from earlier runs on this host"
    assert plain["estimate_basis"] == "start-up and load assumed 20 s per engine load"
    assert cached["estimated_duration_s"] - plain["estimated_duration_s"] == pytest.approx(8 * 80.0)
    grouped = _plan(tmp_path, "sequential", reuse=True, cache=cache)
    # 8 runs in 3 groups: 5 start-ups of 100 s fewer
    assert cached["estimated_duration_s"] - grouped["estimated_duration_s"] == pytest.approx(
        5 * 100.0
    )


def test_group_runs_is_stable_within_a_group() -> None:
    """Runs of one engine keep their own order; groups keep the order of their first runs."""
    runs = [RunKey(config_hash=h, cycle=1) for h in ("a", "b", "c", "d")]
    ordered, groups, note = group_runs(
        runs, {"a": "k1", "b": "k2", "c": "k1", "d": "k3"}, "sequential"
    )
    assert [r.config_hash for r in ordered] == ["a", "c", "b", "d"]
    assert [g.run_ids for g in groups] == [["a_c1", "c_c1"], ["b_c1"], ["d_c1"]]
    assert note is not None and "2 runs moved" in note


def test_record_run_caches_only_runs_that_loaded(tmp_path: Path) -> None:
    """A run that loaded its engine is recorded (load + container overhead); a run that
    reused another run's engine is not."""
    from tests.harness.conftest import World, harness_env, make_config

    from llenergymeasure_harness.experiment import run_experiment

    result = run_experiment(harness_env(tmp_path, make_config()), World().deps())
    path = tmp_path / "lt.json"
    record_run(result, wall_s=(result.timings.total_s or 0) + 3.0, path=path, host="h")
    startups = cached_startups(path, host="h")
    assert startups == {
        engine_key(result.config): pytest.approx(3.0 + (result.timings.load_s or 0))
    }
    shared = result.model_copy(
        update={
            "run_id": "other",
            "config": make_config(precision="float16"),
            "engine_share": EngineShare(
                group_id="g1", engine_key="k", members=["x", "other"], position=1, loaded_by="x"
            ),
        }
    )
    record_run(shared, wall_s=10.0, path=path, host="h")
    assert len(cached_startups(path, host="h")) == 1
    assert cached_startups(path, host="elsewhere") == {}
    assert isinstance(result, ExperimentResult)
