"""User journeys through the real Docker engine, each fault ending with nothing lost.

Every test types ``llem`` commands in a temporary working directory holding ``study.yaml`` and a
model config at a relative path, with the default ``./results``, and checks exit codes, output,
manifest states, the number of ``result.json`` files (one per run: nothing lost, nothing
measured twice) and that no container of the study is left on the engine.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import docker_required
from tests.journeys.conftest import (
    Journey,
    containers_of,
    files_containing,
    image_passes_host_hash,
    interrupt,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SECRET = "hf_journeySecretValue0123456789"  # what a real HF_TOKEN looks like


def _hash_of(run_dir: Path) -> str:
    return run_dir.name.split("_c")[0]


def test_relative_paths_late_ctrl_c_resume_lock_and_secret(journey: Journey) -> None:
    """From a working dir with the defaults: run, Ctrl-C right after run 1 wrote its result,
    resume with a relative path (a second resume is refused meanwhile): 2 results, no secret."""
    journey.env["HF_TOKEN"] = SECRET
    journey.write_study(docker={"env_passthrough": ["HF_TOKEN"]})

    plan = journey.run("run", "study.yaml", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["results_dir"] == str(journey.cwd / "results")
    assert SECRET not in plan.stdout + plan.stderr

    proc = journey.start("run", "study.yaml", "--runner", "docker")
    journey.wait_for(proc, "run 1's result.json", journey.result_files, timeout_s=240)
    out = interrupt(proc, signal.SIGINT)  # the harness has finished: run 1 is not lost
    assert proc.returncode == 130, out
    rel = f"results/{journey.study_dir().name}"
    assert f"llem run --resume {journey.study_dir()}" in out
    states = journey.run_states()
    assert states[0] == "completed", out
    assert states[1] in ("pending", "interrupted"), out
    assert journey.manifest()["state"] == "interrupted"
    assert len(journey.result_files()) == 1

    before = (journey.study_dir() / "manifest.json").read_bytes()
    for bad, says in (
        (["--cycles", "3"], "--cycles cannot change a started study"),
        (["--order", "shuffled"], "--order cannot change a started study"),
        (["--runner", "dockr"], "runner"),
        (["--timeout", "-1"], "experiment_timeout_s"),
    ):
        refused = journey.run("run", "--resume", rel, *bad)
        assert refused.returncode == 2, (bad, refused.stdout, refused.stderr)
        assert says in refused.stderr and "Traceback" not in refused.stderr
    assert (journey.study_dir() / "manifest.json").read_bytes() == before  # nothing rewritten

    first = journey.start("run", "--resume", rel)
    journey.wait_for(first, "run 2 running", lambda: journey.running_run(2), timeout_s=120)
    t0 = time.monotonic()
    second = journey.run("run", "--resume", rel, timeout_s=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "is being run by another llem process" in second.stderr
    assert time.monotonic() - t0 < 15  # refused at once, not after running anything
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out

    manifest = journey.manifest()
    assert manifest["state"] == "completed"
    assert [len(r["attempts"]) for r in manifest["runs"]] == [
        1,
        len(manifest["runs"][1]["attempts"]),
    ]
    results = journey.result_files()
    assert len(results) == 2  # one per run
    check_hash = docker_required() or image_passes_host_hash(journey.image)
    for path in results:
        result = json.loads(path.read_text())
        # the model was mounted under /llem/inputs (it lives under /tmp): the host's identity
        assert result["config"]["model"].startswith("/llem/inputs/")
        if check_hash:
            assert result["config_hash"] == _hash_of(path.parent)
    study = json.loads((journey.study_dir() / "study_result.json").read_text())
    assert study["started_at"] == manifest["created_at"]  # a resume keeps the start time
    assert study["sessions"] == 2
    assert study["wall_s"] >= study["experiments_s"] > 0
    assert containers_of(manifest["study_id"]) == []
    assert files_containing(journey.cwd, SECRET) == []
    assert SECRET not in out + second.stdout + second.stderr


def test_sigterm_then_disk_full_then_resume(journey: Journey) -> None:
    """SIGTERM stops like Ctrl-C (143, container removed); a full disk on resume is one message
    naming the file, the study aborted and intact; resume after freeing space completes."""
    journey.write_study(execution={"n_cycles": 1})
    proc = journey.start("run", "study.yaml", "--runner", "docker")
    run_id = journey.wait_for(proc, "run 1 running", lambda: journey.running_run(1), 240)
    study_id = journey.study_dir().name
    journey.wait_for(proc, "its container", lambda: containers_of(study_id), 60)
    out = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, out
    assert "interrupted (SIGTERM)" in out and "--resume" in out
    assert journey.manifest()["state"] == "interrupted"
    assert journey.run_states() == ["interrupted"]
    assert containers_of(study_id) == []

    # The disk fills up: the next attempt's log lands on a full device (ENOSPC on write).
    log = journey.study_dir() / "logs" / f"{run_id}_a2.log"
    log.symlink_to("/dev/full")
    rel = f"results/{study_id}"
    full = journey.run("run", "--resume", rel)
    assert full.returncode == 1, full.stdout + full.stderr
    assert f"cannot write {log}: No space left on device" in full.stderr
    assert f"llem run --resume {journey.study_dir()}" in full.stderr
    assert "internal error" not in full.stderr and "Traceback" not in full.stderr
    manifest = journey.manifest()  # intact and readable
    assert manifest["state"] == "aborted"
    assert manifest["runs"][0]["attempts"][-1]["failure_kind"] == "storage_error"

    log.unlink()  # space freed
    done = journey.run("run", "--resume", rel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert journey.run_states() == ["completed"]
    assert len(journey.result_files()) == 1
    assert containers_of(study_id) == []


def _engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        pytest.skip(f"the connection-loss journey proxies a Unix socket; DOCKER_HOST={host}")
    return host.removeprefix("unix://")


def _socket_proxy(test_container: Callable[..., Any], image: str, listen_dir: Path) -> Any:
    """socket_proxy.py in a test container: it listens on ``listen_dir/docker-proxy.sock`` and
    relays to the engine's socket, as this user (in the socket's group); ready once it says so."""
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    upstream = _engine_socket()
    script = Path(__file__).with_name("socket_proxy.py")
    command = ["python3", "/socket_proxy.py", "/proxy/docker-proxy.sock", "/engine.sock"]
    return (
        test_container(
            image,
            command,
            user=f"{os.getuid()}:{os.getgid()}",
            group_add=[str(os.stat(upstream).st_gid)],
        )
        .with_volume_mapping(script, "/socket_proxy.py", "ro")
        .with_volume_mapping(listen_dir, "/proxy", "rw")
        .with_volume_mapping(upstream, "/engine.sock", "rw")
        .waiting_for(LogMessageWaitStrategy("^ready$").with_startup_timeout(60))
    )


def test_docker_connection_lost_mid_run_then_resume(
    journey: Journey, tmp_path: Path, test_container: Callable[..., Any]
) -> None:
    """The Docker socket goes away mid-run: runner_error, study saved and stopped cleanly;
    the next start removes the leftover container and resume completes, each run once."""
    listen_dir = tmp_path / "proxy"
    listen_dir.mkdir()
    # Leaving the block removes the proxy's container: every connection llem holds breaks and
    # the socket stops answering, while the shared engine itself is never touched.
    with _socket_proxy(test_container, journey.image, listen_dir):
        journey.write_study()
        proc = journey.start(
            "run",
            "study.yaml",
            "--runner",
            "docker",
            DOCKER_HOST=f"unix://{listen_dir / 'docker-proxy.sock'}",
        )
        journey.wait_for(proc, "run 1 running", lambda: journey.running_run(1), 240)
        study_id = journey.study_dir().name
        journey.wait_for(proc, "its container", lambda: containers_of(study_id), 60)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    assert "lost contact with Docker" in out and "--resume" in out
    assert "internal error" not in out and "Traceback" not in out
    manifest = journey.manifest()
    assert manifest["state"] == "failed"
    assert manifest["runs"][0]["attempts"][-1]["failure_kind"] == "runner_error"
    assert manifest["runs"][1]["state"] == "pending"  # the study stopped there

    done = journey.run("run", "--resume", f"results/{study_id}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert journey.run_states() == ["completed", "completed"]
    assert len(journey.result_files()) == 2  # run 1 measured once (adopted or re-run)
    assert containers_of(study_id) == []


def test_host_refusing_a_ulimit_is_one_preflight_error(journey: Journey) -> None:
    """A ulimit the host refuses is one preflight error with the fix; no run starts."""
    journey.write_study(docker={"ulimits": {"nofile": 2_000_000}})  # above the kernel's nr_open
    t0 = time.monotonic()
    res = journey.run("run", "study.yaml", "--runner", "docker")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.count("refuses the ulimits") == 1
    assert "nofile=2000000" in res.stderr and "docker: {ulimits: {}}" in res.stderr
    assert not list((journey.cwd / "results").glob("*/manifest.json"))  # nothing started
    assert time.monotonic() - t0 < 60
