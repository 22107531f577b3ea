"""The Docker runner against a real engine: faults are classified from facts, never logs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.runners.dockerutil import FAKE_COMMAND

from llenergymeasure.errors import RunnerError
from llenergymeasure.images import TEST_BASE_IMAGE
from llenergymeasure.runners.docker import DockerRunner, connect
from llenergymeasure.runners.spec import ContainerSettings, RunRequest, build_local_spec
from llenergymeasure.testing.fake_docker import make_fake_result

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def client(docker_client: Any) -> Any:
    return docker_client


@pytest.fixture(scope="module")
def image(local_image: Callable[[str], str]) -> str:
    return local_image(os.environ.get("LLEM_TEST_BASE_IMAGE") or TEST_BASE_IMAGE)


def fake_result_json(req: RunRequest) -> str:
    env = build_local_spec(req, python="python3", base_env={}).env
    return str(make_fake_result(env).model_dump_json())


def run(
    client: Any,
    req: RunRequest,
    mode: str,
    **settings: Any,
) -> Any:
    extra = {"LLEM_FAKE_MODE": mode, "LLEM_FAKE_RESULT": fake_result_json(req)}
    extra.update(settings.pop("extra_env", {}))
    s = ContainerSettings(
        network_mode="none",
        request_gpus=False,
        command=FAKE_COMMAND,
        extra_env=extra,
        stop_grace_s=1,
        **settings,
    )
    return DockerRunner(s, client=client, poll_s=0.05).run(req)


def leftover(client: Any, req: RunRequest) -> list[Any]:
    labels = [f"llem.run={req.run_id}", f"llem.owner_pid={os.getpid()}"]  # ours only
    return list(client.containers.list(all=True, filters={"label": labels}))


def test_completed_run_files_owned_by_host_user(
    client: Any, image: str, make_request: Callable[..., RunRequest]
) -> None:
    """A good run completes, its result is owned by the mapped uid, and the container is gone."""
    req = make_request(image=image, host_uid=1234, host_gid=1234)
    out = run(client, req, "ok")
    assert out.status == "completed", out.message
    assert (req.run_dir / "result.json").stat().st_uid == 1234
    assert b"fake harness ok uid 1234" in req.log_path.read_bytes()
    assert leftover(client, req) == []


def test_harness_error(client: Any, image: str, make_request: Callable[..., RunRequest]) -> None:
    """A harness that fails with error.json is reported with its class and phase."""
    req = make_request(image=image)
    out = run(client, req, "error")
    assert out.failure_kind == "harness_error" and out.exit_code == 1
    assert "OSError: no weights (phase load)" in (out.message or "")
    assert leftover(client, req) == []


def test_harness_crash(client: Any, image: str, make_request: Callable[..., RunRequest]) -> None:
    """A harness killed by a signal without error.json is an exit_nonzero failure."""
    req = make_request(image=image)
    out = run(client, req, "crash")
    assert out.failure_kind == "exit_nonzero", out.message
    assert out.exit_code == 139 and "SIGSEGV" in (out.message or "")


def test_oom_kill_under_memory_limit(
    client: Any, image: str, make_request: Callable[..., RunRequest]
) -> None:
    """Exceeding mem_limit ends in OOMKilled, classified as oom_killed."""
    req = make_request(image=image)
    out = run(client, req, "oom", mem_limit="64m")
    assert out.failure_kind == "oom_killed", out.message
    assert out.oom_killed and out.exit_code == 137


def test_hang_past_timeout(
    client: Any, image: str, make_request: Callable[..., RunRequest]
) -> None:
    """A hang is stopped at the timeout (SIGTERM via init), reported, and removed."""
    req = make_request(image=image, timeout_s=1.5)
    t0 = time.monotonic()
    out = run(client, req, "hang")
    assert out.failure_kind == "timeout" and out.timed_out
    assert time.monotonic() - t0 < 8
    assert leftover(client, req) == []


def test_missing_image(client: Any, make_request: Callable[..., RunRequest]) -> None:
    """A missing image fails the run with instructions and is never pulled."""
    req = make_request(image="llenergymeasure/nonexistent:0.0-cuda0")
    out = run(client, req, "ok")
    assert out.failure_kind == "start_failed"
    assert "not present locally" in (out.message or "")


# docker-py's unix transport leaks the socket of a failed connect; not ours to fix.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_daemon_unreachable(tmp_path: Path) -> None:
    """An unreachable daemon is a RunnerError naming the socket, with a fix."""
    import gc

    import docker

    sock = f"unix://{tmp_path}/nope.sock"
    with pytest.raises(RunnerError, match="cannot reach the Docker daemon") as info:
        connect(lambda: docker.DockerClient(base_url=sock, version="1.41", timeout=2))
    assert info.value.hint and "--runner local" in info.value.hint
    del info  # the traceback holds the leaked socket
    gc.collect()


def test_unwritable_results_dir(
    client: Any, image: str, make_request: Callable[..., RunRequest]
) -> None:
    """A results dir the container user cannot write fails as a crash without a result."""
    req = make_request(image=image, host_uid=4321, host_gid=4321)
    req.run_dir.mkdir(parents=True)
    os.chmod(req.run_dir, 0o555)
    try:
        out = run(client, req, "ok")
    finally:
        os.chmod(req.run_dir, 0o755)
    assert out.status == "failed" and out.failure_kind == "exit_nonzero", out.message
    assert out.exit_code == 1


def test_preflight_on_a_host_without_nvidia_toolkit(
    client: Any, image: str, tmp_path: Path
) -> None:
    """The GPU probe's real start error names the NVIDIA toolkit; a missing image says how to
    get it; both come back in one PreflightError and the probe container is removed."""
    from llenergymeasure.errors import PreflightError
    from llenergymeasure.runners.preflight import PreflightRequest, run_preflight

    missing = "llenergymeasure/nonexistent:0.0-cuda0"
    req = PreflightRequest(
        runner="docker",
        results_dir=tmp_path,
        images={image: frozenset({0}), missing: frozenset()},
        backends=frozenset({"pytorch"}),
        min_free_bytes=0,
    )
    with pytest.raises(PreflightError) as info:
        run_preflight(req, client=client)
    problems = info.value.problems
    assert any("NVIDIA Container Toolkit" in p for p in problems), problems
    assert any(missing in p and "docker pull" in p for p in problems), problems
    probes = client.containers.list(
        all=True, filters={"label": ["llem.study=preflight", f"llem.owner_pid={os.getpid()}"]}
    )
    assert probes == []
