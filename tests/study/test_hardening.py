"""Faults at the library boundary (fake engine): signals, the study lock, resume overrides,
relative paths, secrets passed by name, and a run whose result.json beat the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.study.conftest import IMAGE
from tests.study.test_executor import OK, execute, fake_runner, options, quiet_console

from llenergymeasure.errors import ConfigError, InterruptedStudy, PreflightError, UsageError
from llenergymeasure.runners.base import classify
from llenergymeasure.study.executor import resume
from llenergymeasure.study.lock import StudyLock
from llenergymeasure.study.manifest import ManifestStore
from llenergymeasure.study.options import container_settings
from llenergymeasure.study.plan import StudyPlan
from llenergymeasure.testing.fake_docker import FakeDockerClient, FakeHarness, write_fake_result


def _signal_during(run_id: str, sig: signal.Signals, *, finish_first: bool = False) -> Any:
    """A harness picker: ``run_id`` gets ``sig`` sent to this process while it runs."""

    def pick(kwargs: dict[str, Any]) -> FakeHarness:
        if kwargs["labels"]["llem.run"] != run_id:
            return OK
        threading.Timer(0.2, lambda: os.kill(os.getpid(), sig)).start()
        # finish_first: the harness wrote result.json and is still tidying up when it comes
        return FakeHarness(hang=True, write=write_fake_result if finish_first else None)

    return pick


def test_sigterm_is_handled_like_ctrl_c(plan_factory: Callable[..., StudyPlan]) -> None:
    """SIGTERM stops and removes the container, saves the study interrupted, exit 143."""
    plan = plan_factory()
    second = plan.runs[1].run_id
    client = FakeDockerClient(images={IMAGE}, harness=_signal_during(second, signal.SIGTERM))
    with pytest.raises(InterruptedStudy) as info:
        execute(plan, client)
    assert info.value.exit_code == 143 and "SIGTERM" in str(info.value)
    study_dir = Path(info.value.hint.split("--resume ")[1])  # type: ignore[union-attr]
    manifest = ManifestStore.load(study_dir).manifest
    assert manifest.state == "interrupted"
    assert [r.state for r in manifest.runs] == ["completed", "interrupted", "pending", "pending"]
    assert all(c.removed for c in client.created)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_signal_after_result_written_counts_as_completed(
    plan_factory: Callable[..., StudyPlan],
) -> None:
    """Ctrl-C after the harness wrote result.json: the run is completed and never re-run."""
    plan = plan_factory()
    second = plan.runs[1].run_id
    client = FakeDockerClient(
        images={IMAGE}, harness=_signal_during(second, signal.SIGINT, finish_first=True)
    )
    with pytest.raises(InterruptedStudy) as info:
        execute(plan, client)
    assert info.value.exit_code == 130
    study_dir = Path(info.value.hint.split("--resume ")[1])  # type: ignore[union-attr]
    states = [r.state for r in ManifestStore.load(study_dir).manifest.runs]
    assert states == ["completed", "completed", "pending", "pending"]
    client2 = FakeDockerClient(images={IMAGE}, harness=OK)
    result = resume(
        study_dir,
        options(),
        runner=fake_runner(client2),
        docker_client=client2,
        console=quiet_console(),
    )
    assert [c.labels["llem.run"] for c in client2.created] == [r.run_id for r in plan.runs[2:]]
    assert result.n_completed == 4 and result.sessions == 2
    assert len(list(study_dir.glob("runs/*/result.json"))) == 4


def test_classify_keeps_a_result_written_before_the_interruption(tmp_path: Path) -> None:
    """interrupted + a valid result.json is completed; without one it is interrupted."""
    assert classify(results_dir=tmp_path, exit_code=143, interrupted=True).status == "interrupted"
    from llenergymeasure.config import ExperimentConfig
    from llenergymeasure.contract import HarnessEnv

    cfg = ExperimentConfig(model="tiny-llama", load_format="dummy")
    write_fake_result(tmp_path, HarnessEnv(config=cfg, run_id="r1", results_dir="/x").to_env())
    assert classify(results_dir=tmp_path, exit_code=143, interrupted=True).status == "completed"


def test_resume_overrides_are_validated_like_a_new_run(
    plan_factory: Callable[..., StudyPlan],
) -> None:
    """--runner dockr / a negative timeout are exit 2; --cycles / --order are refused."""
    plan = plan_factory(max_failures=1)
    result = execute(plan, FakeDockerClient(images={IMAGE}, harness=FakeHarness(exit_code=2)))
    study_dir = Path(result.study_dir)
    before = (study_dir / "manifest.json").read_bytes()
    for kwargs, err in (
        ({"runner_overrides": {"runner": "dockr"}}, ConfigError),
        ({"execution_overrides": {"experiment_timeout_s": -1.0}}, ConfigError),
        ({"execution_overrides": {"n_cycles": 3}}, UsageError),
        ({"execution_overrides": {"cycle_order": "shuffled"}}, UsageError),
    ):
        with pytest.raises(err):
            resume(study_dir, options(), console=quiet_console(), **kwargs)
    assert (study_dir / "manifest.json").read_bytes() == before


def test_resume_keeps_start_time_and_totals_wall_time(
    plan_factory: Callable[..., StudyPlan],
) -> None:
    """A resumed study reports its first start time and the wall time of every session."""
    plan = plan_factory(max_failures=1)
    first = execute(plan, FakeDockerClient(images={IMAGE}, harness=FakeHarness(exit_code=2)))
    study_dir = Path(first.study_dir)
    client = FakeDockerClient(images={IMAGE}, harness=OK)
    done = resume(
        study_dir,
        options(),
        runner=fake_runner(client),
        docker_client=client,
        console=quiet_console(),
    )
    assert done.started_at == first.started_at == ManifestStore.load(study_dir).manifest.created_at
    assert done.sessions == 2 and done.wall_s > first.wall_s > 0


def test_relative_results_dir_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan_factory: Callable[..., StudyPlan]
) -> None:
    """The library takes a relative results_dir and resume target from the working dir."""
    monkeypatch.chdir(tmp_path)
    plan = plan_factory(max_failures=1)
    study = plan.study.model_copy(update={"results_dir": "rel-results"})
    plan = plan.model_copy(update={"study": study})
    client = FakeDockerClient(images={IMAGE}, harness=FakeHarness(exit_code=2))
    first = execute(plan, client)
    assert Path(first.study_dir).is_absolute()
    assert Path(first.study_dir).parent == tmp_path / "rel-results"
    mounts = [m["Source"] for m in client.created[0].kwargs["mounts"]]
    assert mounts and all(Path(src).is_absolute() for src in mounts)
    client2 = FakeDockerClient(images={IMAGE}, harness=OK)
    done = resume(
        Path("rel-results") / Path(first.study_dir).name,
        options(),
        runner=fake_runner(client2),
        docker_client=client2,
        console=quiet_console(),
    )
    assert done.state == "completed"


def test_env_passthrough_values_reach_the_container_only(
    plan_factory: Callable[..., StudyPlan], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker.env_passthrough hands the host's value to containers; plan.json holds the name."""
    monkeypatch.setenv("HF_TOKEN", "hf_unitSecret")
    plan = plan_factory(docker={"env_passthrough": ["HF_TOKEN", "NOT_SET_ANYWHERE"]})
    settings = container_settings(plan, options())
    assert settings.extra_env["HF_TOKEN"] == "hf_unitSecret"
    assert "NOT_SET_ANYWHERE" not in settings.extra_env
    assert "hf_unitSecret" not in plan.model_dump_json()


def test_study_lock_refuses_a_second_holder_and_survives_a_crash(tmp_path: Path) -> None:
    """A live holder refuses a second lock at once; a SIGKILLed holder's lock is released."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from llenergymeasure.study.lock import StudyLock; "
            "StudyLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(PreflightError, match=f"another llem process \\(pid {holder.pid}\\)"):
            StudyLock(tmp_path).acquire()
        assert time.monotonic() - t0 < 1.0
    finally:
        holder.kill()  # a crash: no cleanup code runs
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    with StudyLock(tmp_path):
        pass
    with StudyLock(tmp_path):  # released on exit, reusable
        assert (tmp_path / ".lock").is_file()
    assert not (tmp_path / ".lock").exists()  # a clean exit leaves no lock file


def test_study_lock_taken_on_an_unlinked_file_starts_again(tmp_path: Path) -> None:
    """A lock won on a file the previous holder just unlinked is retried on the new file."""
    import os

    first = StudyLock(tmp_path)
    first.acquire()
    stale = os.open(tmp_path / ".lock", os.O_RDWR)  # opened before the holder's unlink
    first.release()
    second = StudyLock(tmp_path)
    second.acquire()
    try:
        assert (tmp_path / ".lock").is_file()
        with pytest.raises(PreflightError):  # the file at the path is the one really held
            StudyLock(tmp_path).acquire()
    finally:
        second.release()
        os.close(stale)


def test_sigterm_before_any_run_exits_143(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SIGTERM while the study is still preparing (preflight) exits 143, not 130."""
    from llenergymeasure.cli import main
    from llenergymeasure.study import api
    from llenergymeasure.study.signals import Terminated

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise Terminated

    monkeypatch.setattr(api, "make_runner", stop)
    study = tmp_path / "s.yaml"
    study.write_text("model: tiny-llama\nload_format: dummy\n")
    monkeypatch.setenv("LLEM_USER_CONFIG", "")
    assert main(["run", str(study), "--results-dir", str(tmp_path / "r")]) == 143


def test_load_study_takes_relative_paths_from_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_study("study.yaml") from a working dir: source, results_dir, model all absolute."""
    import shutil

    from llenergymeasure.config.loader import load_study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    arch = Path(__file__).resolve().parents[2] / "contract/llenergymeasure_contract/architectures"
    shutil.copy(arch / "tiny-llama.json", tmp_path / "models" / "tiny" / "config.json")
    Path("study.yaml").write_text("model: ./models/tiny\nload_format: dummy\n")
    study = load_study("study.yaml")
    assert study.source == str(tmp_path / "study.yaml")
    assert study.results_dir == str(tmp_path / "results")
    assert study.experiments[0].model == str(tmp_path / "models" / "tiny")
