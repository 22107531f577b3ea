"""`llem run` with `runner: slurm` on a real (one-node) Slurm cluster, as a user types it.

``scripts/slurm-up.sh`` (called by ``.ci/run``) starts the cluster. Each test writes a study
file into a temporary working directory and runs the real CLI there; a watcher thread reads
``manifest.json`` all along and checks that every version of it is a valid manifest and that
an attempt's job id never changes. Jobs that must run long without using the CPU sleep in a
``slurm.setup`` line before the harness starts (the Slurm side is what those tests prove).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llenergymeasure.results import ExperimentResult
from llenergymeasure.results.study import StudyResult
from llenergymeasure.study.manifest import StudyManifest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: A setup line that keeps an experiment job busy (not the preflight probe job).
SLEEP = 'case "$SLURM_JOB_NAME" in llem-preflight) ;; *) sleep 300 ;; esac'
#: How long a job may wait in the queue: other test sessions may share the one-node cluster.
QUEUE_WAIT_S = 300
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]


def write_study(cwd: Path, *, batch_sizes: tuple[int, ...] = (1,), **slurm: Any) -> Path:
    """A CPU study of a tiny random-weights Llama through `runner: slurm`."""
    study: dict[str, Any] = {
        # unique per test process: two test sessions on one cluster never share a study id
        "name": f"slurm-cli-{os.getpid()}",
        "model": "tiny-llama",
        "load_format": "dummy",
        "precision": "float32",
        "n_prompts": 4,
        "max_input_tokens": 16,
        "max_output_tokens": 8,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "gpus": [],
        "sweep": {"pytorch.batch_size": list(batch_sizes)},
        "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "runner": "slurm",
        # two 1-CPU jobs fit the 2-CPU test node at once
        "slurm": {
            "launcher": "local",
            "exclusive": False,
            "cpus_per_task": 1,
            "mem": "1G",
            "poll_min_s": 0.5,
            "poll_max_s": 2.0,
            **slurm,
        },
    }
    path = cwd / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["LLEM_USER_CONFIG"] = ""
    return out


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LLEM, *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 480) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out


def study_dir(cwd: Path) -> Path:
    (manifest,) = (cwd / "results").glob("*/manifest.json")
    return manifest.parent


class ManifestWatcher:
    """Reads manifest.json every 0.1 s; every version must be valid and job ids stable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        self.problems: list[str] = []
        self.job_ids: dict[tuple[str, int], str] = {}
        self.states: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ManifestWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        last = b""
        while not self._stop.wait(0.1):
            for path in self.root.glob("results/*/manifest.json"):
                raw = path.read_bytes()
                if raw == last:
                    continue
                last = raw
                self.versions += 1
                try:
                    manifest = StudyManifest.model_validate_json(raw)
                except ValueError as exc:
                    self.problems.append(f"invalid manifest: {exc}")
                    continue
                for rec in manifest.runs:
                    for att in rec.attempts:
                        key = (rec.run_id, att.attempt)
                        known = self.job_ids.setdefault(key, att.job_id) if att.job_id else None
                        if known is not None and known != att.job_id:
                            self.problems.append(f"job id of {key} changed to {att.job_id}")
                        if att.job_state and (
                            not self.states.get(rec.run_id)
                            or self.states[rec.run_id][-1] != att.job_state
                        ):
                            self.states.setdefault(rec.run_id, []).append(att.job_state)

    def wait_for(self, predicate: Any, proc: subprocess.Popen[str], timeout_s: float) -> None:
        """Wait until predicate(manifest dict) holds (or fail with llem's output)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"llem exited {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
            for path in self.root.glob("results/*/manifest.json"):
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if predicate(data):
                    return
            time.sleep(0.1)
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"timed out waiting for the manifest; llem said: {out}")


def all_job_states(data: dict[str, Any], state: str) -> bool:
    return all(r["attempts"] and r["attempts"][-1]["job_state"] == state for r in data["runs"])


def study_jobs(study_id: str) -> dict[str, str]:
    """job id -> state of every job slurmctld knows for this study (from the job comments)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "-O", "JobID:|,State:|,Comment:|"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, state, comment = (c.strip() for c in line.split("|")[:3])
        if f"llem.study={study_id}," in comment:
            jobs[job_id] = state
    return jobs


@pytest.fixture
def cwd(tmp_path: Path) -> Iterator[Path]:
    """A working directory for the user; any job left by a failed test is cancelled."""
    yield tmp_path
    for manifest in (tmp_path / "results").glob("*/manifest.json"):
        jobs = study_jobs(manifest.parent.name)
        live = [j for j, state in jobs.items() if state in ("PENDING", "RUNNING")]
        if live:
            subprocess.run(["scancel", *live], check=False)


def test_ctrl_c_detaches_then_resume_adopts_running_jobs(cwd: Path) -> None:
    """Two runs in flight; Ctrl-C (detach) exits 130 leaving both jobs running; --resume adopts
    them (no second submission) and both complete with job id and node recorded."""
    write_study(cwd, batch_sizes=(1, 2), max_concurrent=2, on_interrupt="detach")
    with ManifestWatcher(cwd) as watch:
        proc = start(cwd, "run", "study.yaml")
        watch.wait_for(lambda d: all_job_states(d, "RUNNING"), proc, QUEUE_WAIT_S)
        proc.send_signal(signal.SIGINT)
        rc, out = finish(proc, 60)
        assert rc == 130, out
        assert "left running" in out and "--resume" in out
        sdir = study_dir(cwd)
        manifest = StudyManifest.model_validate_json((sdir / "manifest.json").read_text())
        assert manifest.state == "interrupted"
        assert [r.state for r in manifest.runs] == ["running", "running"]
        before = {r.run_id: r.attempts[-1].job_id for r in manifest.runs}
        assert set(study_jobs(sdir.name)) == set(before.values())

        rc, out = finish(start(cwd, "run", "--resume", str(sdir.relative_to(cwd))))
        assert rc == 0, out
        assert out.count("adopting Slurm job") == 2
    assert not watch.problems and watch.versions > 4
    manifest = StudyManifest.model_validate_json((sdir / "manifest.json").read_text())
    assert manifest.state == "completed"
    for rec in manifest.runs:
        (attempt,) = rec.attempts  # adopted, not run twice
        assert attempt.job_id == before[rec.run_id] and attempt.node
        assert attempt.job_state == "COMPLETED" and attempt.state == "completed"
        assert watch.states[rec.run_id][:2] == ["PENDING", "RUNNING"]
        result = ExperimentResult.load(sdir / attempt.run_dir)
        assert (result.environment.hostname or "").split(".")[0] == attempt.node
        assert result.environment.slurm_job_id == attempt.job_id  # the job id is in result.json
        assert result.environment.slurm_node == attempt.node
        assert result.environment.image is None  # the harness ran on the node, no image
    assert set(study_jobs(sdir.name)) == set(before.values())  # nothing submitted twice
    summary = StudyResult.model_validate_json((sdir / "study_result.json").read_text())
    assert [(r.job_id, r.node) for r in summary.runs] == [
        (before[r.run_id], r.attempts[-1].node) for r in manifest.runs
    ]
    assert summary.runner == "slurm" and summary.n_completed == 2
    assert (sdir / "jobs" / f"{manifest.runs[0].run_id}.sbatch").is_file()


@pytest.mark.docker
def test_docker_launcher_runs_the_image_in_the_job(cwd: Path, pytorch_test_image: str) -> None:
    """The docker launcher runs the CPU image inside the job; the result names the image."""
    path = write_study(cwd, launcher="docker")
    study = yaml.safe_load(path.read_text())
    study["images"] = {"pytorch": pytorch_test_image}
    study["docker"] = {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"}
    path.write_text(yaml.safe_dump(study))
    with ManifestWatcher(cwd) as watch:
        rc, out = finish(start(cwd, "run", "study.yaml"))
    assert rc == 0, out
    assert "wrote into" in out  # the preflight probe job checked the shared dir and image
    assert not watch.problems
    sdir = study_dir(cwd)
    (rec,) = StudyManifest.model_validate_json((sdir / "manifest.json").read_text()).runs
    result = ExperimentResult.load(sdir / rec.attempts[0].run_dir)
    assert result.environment.image == pytorch_test_image
    assert result.environment.in_container is True
    # the container's hostname is not the node's: the job id and node come in by name
    assert result.environment.slurm_job_id == rec.attempts[0].job_id
    assert result.environment.slurm_node == rec.attempts[0].node
    import docker

    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": f"llem.study={sdir.name}"}) == []
    finally:
        client.close()


def test_scancel_from_outside_and_time_limit(cwd: Path) -> None:
    """One job scancelled by someone else fails as cancelled; one past its Slurm time limit
    fails as timeout; both recorded with their job ids, the study ends with exit 1."""
    write_study(cwd, batch_sizes=(1, 2), max_concurrent=2, time_limit_s=60, setup=[SLEEP])
    with ManifestWatcher(cwd) as watch:
        proc = start(cwd, "run", "study.yaml")
        watch.wait_for(lambda d: all_job_states(d, "RUNNING"), proc, QUEUE_WAIT_S)
        sdir = study_dir(cwd)
        data = json.loads((sdir / "manifest.json").read_text())
        victim = data["runs"][0]["attempts"][0]["job_id"]
        subprocess.run(["scancel", victim], check=True)
        rc, out = finish(proc, 200)
    assert rc == 1, out
    assert not watch.problems
    first, second = StudyManifest.model_validate_json((sdir / "manifest.json").read_text()).runs
    assert (first.state, first.attempts[0].failure_kind) == ("failed", "cancelled")
    assert "cancelled outside llem" in (first.attempts[0].message or "")
    assert first.attempts[0].job_id == victim
    assert (second.state, second.attempts[0].failure_kind) == ("failed", "timeout")
    assert "time limit of 1 min" in (second.attempts[0].message or "")
    assert second.attempts[0].job_state == "TIMEOUT"


def test_ctrl_c_cancels_the_jobs(cwd: Path) -> None:
    """Ctrl-C (the default on_interrupt: cancel) scancels the job, exits 130, run interrupted."""
    write_study(cwd, setup=[SLEEP])
    with ManifestWatcher(cwd) as watch:
        proc = start(cwd, "run", "study.yaml")
        watch.wait_for(lambda d: all_job_states(d, "RUNNING"), proc, QUEUE_WAIT_S)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc, out = finish(proc, 90)
    assert rc == 130, out
    assert time.monotonic() - t0 < 60
    assert "cancelling 1 Slurm job" in out
    sdir = study_dir(cwd)
    (rec,) = StudyManifest.model_validate_json((sdir / "manifest.json").read_text()).runs
    assert rec.state == "interrupted" and rec.attempts[0].state == "interrupted"
    assert study_jobs(sdir.name) == {rec.attempts[0].job_id: "CANCELLED"}
    assert not watch.problems


def test_preflight_names_a_missing_partition_and_gpus(cwd: Path) -> None:
    """A partition that does not exist and GPUs on a CPU-only node: exit 1, both named."""
    path = write_study(cwd, partition="nope")
    rc, out = finish(start(cwd, "run", "study.yaml"))
    assert rc == 1 and "partition 'nope' does not exist" in out, out
    study = yaml.safe_load(path.read_text())
    study["gpus"] = [0]
    del study["slurm"]["partition"]
    path.write_text(yaml.safe_dump(study))
    rc, out = finish(start(cwd, "run", "study.yaml"))
    assert rc == 1 and "at most 0 GPU(s) per node" in out, out
    assert "Traceback" not in out and not list((cwd / "results").glob("*/manifest.json"))
