"""Study execution with a fake Docker engine: order, gaps, failures, Ctrl-C and resume."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from rich.console import Console
from tests.study.conftest import IMAGE

from llenergymeasure.errors import ConfigError, InterruptedStudy, PreflightError
from llenergymeasure.results.study import StudyResult
from llenergymeasure.runners.docker import DockerRunner
from llenergymeasure.runners.spec import ContainerSettings
from llenergymeasure.study.executor import StudyRunOptions, resume, run_study
from llenergymeasure.study.manifest import ManifestStore
from llenergymeasure.study.plan import StudyPlan
from llenergymeasure.testing.fake_docker import (
    FakeDockerClient,
    FakeHarness,
    write_fake_error,
    write_fake_result,
)

OK = FakeHarness(write=write_fake_result)


def fake_runner(client: FakeDockerClient) -> DockerRunner:
    return DockerRunner(ContainerSettings(request_gpus=False), client=client, poll_s=0.01)


def options(**kw: Any) -> StudyRunOptions:
    base: dict[str, Any] = {
        "quiet": True,
        "request_gpus": False,
        "interactive": False,
        "min_free_bytes": 0,
    }
    base.update(kw)
    return StudyRunOptions(**base)


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=120)


def execute(plan: StudyPlan, client: FakeDockerClient, **kw: Any) -> StudyResult:
    sleep = kw.pop("sleep", lambda s: None)
    return run_study(
        plan,
        options(**kw),
        runner=fake_runner(client),
        docker_client=client,
        console=quiet_console(),
        sleep=sleep,
    )


def run_labels(client: FakeDockerClient) -> list[str]:
    return [c.labels["llem.run"] for c in client.created]


def test_study_runs_in_plan_order_and_writes_everything(
    plan_factory: Callable[..., StudyPlan],
) -> None:
    """All runs complete in plan order; manifest, StudyResult, Parquet and CSV are written."""
    plan = plan_factory()
    client = FakeDockerClient(images={IMAGE}, harness=OK)
    result = execute(plan, client)
    assert int(result) == 0 and result.state == "completed"
    assert run_labels(client) == [r.run_id for r in plan.runs]
    study_dir = Path(result.study_dir)
    manifest = ManifestStore.load(study_dir).manifest
    assert [r.state for r in manifest.runs] == ["completed"] * 4
    assert manifest.study_design_hash == plan.study_design_hash
    assert sorted(p.name for p in (study_dir / "runs").iterdir()) == sorted(
        r.run_id for r in plan.runs
    )
    assert StudyResult.load(study_dir).n_completed == 4
    table = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert len(table) == 4 and table[0]["output_tokens_per_s"] == 500.0
    assert {row["param.pytorch.batch_size"] for row in table} == {1, 2}
    with (study_dir / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run_id"] for r in rows] == [r.run_id for r in plan.runs]
    assert all(c.removed for c in client.created)


def test_gaps_between_experiments_and_cycles(plan_factory: Callable[..., StudyPlan]) -> None:
    """Interleaved A1 B1 A2 B2 waits config, cycle, config gaps; --no-gaps waits none."""
    plan = plan_factory(order="interleaved", gaps=(3.0, 7.0))
    waited: list[float] = []
    result = execute(plan, FakeDockerClient(images={IMAGE}, harness=OK), sleep=waited.append)
    assert sum(waited) == 3.0 + 7.0 + 3.0 and result.gaps_s == 13.0
    waited.clear()
    no_gaps = plan_factory(order="interleaved", gaps=(0.0, 0.0))  # what --no-gaps sets
    execute(no_gaps, FakeDockerClient(images={IMAGE}, harness=OK), sleep=waited.append)
    assert waited == []


def test_failures_do_not_stop_the_study(plan_factory: Callable[..., StudyPlan]) -> None:
    """One failing experiment is recorded with its cause; the others still run."""
    plan = plan_factory()
    bad = plan.runs[0].config_hash

    def pick(kwargs: dict[str, Any]) -> FakeHarness:
        if kwargs["labels"]["llem.experiment"] == bad:
            return FakeHarness(exit_code=1, write=write_fake_error)
        return OK

    result = execute(plan, FakeDockerClient(images={IMAGE}, harness=pick))
    assert int(result) == 1 and result.state == "failed"
    assert (result.n_completed, result.n_failed) == (2, 2)
    failed = [r for r in result.runs if r.state == "failed"]
    assert all(
        r.failure_kind == "harness_error" and "FakeLoadError" in (r.message or "") for r in failed
    )


def test_consecutive_failure_limit_aborts(plan_factory: Callable[..., StudyPlan]) -> None:
    """After max_consecutive_failures failures in a row the study stops; the rest stay pending."""
    plan = plan_factory(max_failures=2)
    result = execute(plan, FakeDockerClient(images={IMAGE}, harness=FakeHarness(exit_code=3)))
    assert result.state == "aborted" and "2 consecutive failures" in (result.message or "")
    assert [r.state for r in result.runs] == ["failed", "failed", "pending", "pending"]


def test_ctrl_c_then_resume_loses_nothing_and_reruns_nothing(
    plan_factory: Callable[..., StudyPlan],
) -> None:
    """Ctrl-C in run 3 stops it and exits 130; resume runs only runs 3 and 4."""
    plan = plan_factory()
    third = plan.runs[2].run_id

    def pick(kwargs: dict[str, Any]) -> FakeHarness:
        if kwargs["labels"]["llem.run"] == third:
            threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            return FakeHarness(hang=True)
        return OK

    client = FakeDockerClient(images={IMAGE}, harness=pick)
    with pytest.raises(InterruptedStudy) as info:
        execute(plan, client)
    assert info.value.exit_code == 130 and "--resume" in str(info.value)
    study_dir = Path(info.value.hint.split("--resume ")[1])  # type: ignore[union-attr]
    manifest = ManifestStore.load(study_dir).manifest
    assert manifest.state == "interrupted"
    assert not (study_dir / ".lock").exists()  # a clean Ctrl-C exit removes the lock file
    assert [r.state for r in manifest.runs] == ["completed", "completed", "interrupted", "pending"]
    assert client.stopped == [c.name for c in client.created if c.labels["llem.run"] == third]
    assert all(c.removed for c in client.created)

    client2 = FakeDockerClient(images={IMAGE}, harness=OK)
    result = resume(
        study_dir,
        options(),
        runner=fake_runner(client2),
        docker_client=client2,
        console=quiet_console(),
    )
    assert run_labels(client2) == [third, plan.runs[3].run_id]
    assert result.state == "completed" and result.n_completed == 4
    manifest = ManifestStore.load(study_dir).manifest
    rec = manifest.runs[2]
    assert [a.state for a in rec.attempts] == ["interrupted", "completed"]
    assert rec.attempts[1].run_dir == f"runs/{third}_a2"
    assert not (study_dir / ".lock").exists()
    assert (study_dir / "runs" / third).is_dir()  # the interrupted attempt's folder is kept
    assert len(manifest.sessions) == 2


def test_resume_by_study_file_design_hash(
    tmp_path: Path, plan_factory: Callable[..., StudyPlan]
) -> None:
    """--resume with a plan finds the unfinished study of the same design; another design fails."""
    plan = plan_factory(max_failures=1)
    execute(plan, FakeDockerClient(images={IMAGE}, harness=FakeHarness(exit_code=2)))
    client = FakeDockerClient(images={IMAGE}, harness=OK)
    result = resume(
        tmp_path / "study.yaml",
        options(),
        plan=plan,
        runner=fake_runner(client),
        docker_client=client,
        console=quiet_console(),
    )
    assert result.n_completed == 4 and len(client.created) == 4
    other = plan_factory(batch_sizes=(4,))
    with pytest.raises(ConfigError, match="different study design"):
        resume(
            Path(result.study_dir),
            options(),
            plan=other,
            runner=fake_runner(client),
            docker_client=client,
            console=quiet_console(),
        )


def test_manifest_shows_running_during_a_run(plan_factory: Callable[..., StudyPlan]) -> None:
    """The manifest on disk says 'running' while a run is in flight (atomic rewrite per change)."""
    plan = plan_factory(batch_sizes=(1,), n_cycles=1)
    seen: list[str] = []

    def write(results_dir: Path, env: Any) -> None:
        manifest = json.loads((results_dir.parents[1] / "manifest.json").read_text())
        seen.append(manifest["runs"][0]["state"])
        write_fake_result(results_dir, env)

    execute(plan, FakeDockerClient(images={IMAGE}, harness=FakeHarness(write=write)))
    assert seen == ["running"]


def test_preflight_reports_missing_image_without_pulling(
    plan_factory: Callable[..., StudyPlan],
) -> None:
    """A missing image is a preflight error (non-interactive: no pull) and nothing runs."""
    plan = plan_factory()
    client = FakeDockerClient(images=set(), pullable={IMAGE}, harness=OK)
    with pytest.raises(PreflightError, match="not present") as info:
        execute(plan, client)
    assert "--yes" in str(info.value) and client.images.pulled == [] and client.created == []


def test_assume_yes_pulls_missing_image(plan_factory: Callable[..., StudyPlan]) -> None:
    """With --yes (pull policy missing) a missing image is pulled once, then the study runs."""
    plan = plan_factory()
    client = FakeDockerClient(images=set(), pullable={IMAGE}, harness=OK)
    result = execute(plan, client, assume_yes=True)
    assert client.images.pulled == [IMAGE] and result.n_completed == 4


def test_pull_policy_never(plan_factory: Callable[..., StudyPlan]) -> None:
    """pull_policy never refuses even with --yes, and says how to get the image."""
    plan = plan_factory(runner={"images": {"pytorch": IMAGE}, "pull_policy": "never"})
    client = FakeDockerClient(images=set(), pullable={IMAGE})
    with pytest.raises(PreflightError, match="pull_policy: never"):
        execute(plan, client, assume_yes=True)


def test_unwritable_results_dir_is_a_preflight_error(tmp_path: Path) -> None:
    """A results dir that cannot be created is reported before anything runs."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from tests.study.conftest import make_plan

    plan = make_plan(blocker / "results")
    client = FakeDockerClient(images={IMAGE}, harness=OK)
    with pytest.raises(PreflightError, match="cannot create the study directory"):
        execute(plan, client)
    assert client.created == []


def test_local_runner_study(plan_factory: Callable[..., StudyPlan]) -> None:
    """runner local runs the harness as a subprocess with the same contract and directory."""
    import sys

    from tests.runners.dockerutil import FAKE_HARNESS, result_template

    plan = plan_factory(batch_sizes=(1,), n_cycles=2)
    opts = options(
        runner="local",
        preflight=False,  # the engines' presence is preflight's business, tested apart
        local_command=(sys.executable, "-c", FAKE_HARNESS),
        extra_env={"LLEM_FAKE_MODE": "ok", "LLEM_FAKE_RESULT": result_template()},
    )
    result = run_study(plan, opts, console=quiet_console(), sleep=lambda s: None)
    assert result.runner == "local" and result.n_completed == 2
    for run in result.runs:
        assert run.metrics is not None and run.metrics.output_tokens_per_s == 500.0
