"""The Docker runner's sequence and outcome classification, against the fake client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from llenergymeasure.errors import RunnerError
from llenergymeasure.runners.docker import DockerRunner, connect
from llenergymeasure.runners.spec import ContainerSettings, RunRequest
from llenergymeasure.testing.fake_docker import (
    FakeDockerClient,
    FakeHarness,
    write_fake_error,
    write_fake_result,
)

IMAGE = "llem/pytorch:test"


def runner(harness: FakeHarness, **settings: object) -> tuple[DockerRunner, FakeDockerClient]:
    client = FakeDockerClient(images={IMAGE}, harness=harness)
    return DockerRunner(ContainerSettings(**settings), client=client, poll_s=0.01), client  # type: ignore[arg-type]


def test_completed_run_is_collected_and_removed(make_request: Callable[..., RunRequest]) -> None:
    """A run that writes a valid result completes; its container is removed; logs are kept."""
    r, client = runner(FakeHarness(write=write_fake_result, logs=b"hello\nworld\n"))
    req = make_request()
    lines: list[str] = []
    out = r.run(req, echo=lines.append)
    assert out.status == "completed", out.message
    assert out.result_path == str(req.run_dir / "result.json")
    assert client.removed == [client.created[0].name]
    assert "hello" in lines and "world" in lines
    assert b"hello\nworld\n" in req.log_path.read_bytes()


def test_harness_error_is_read_from_error_json(make_request: Callable[..., RunRequest]) -> None:
    """A non-zero exit with error.json reports the harness's own class, message and phase."""
    r, _ = runner(FakeHarness(exit_code=1, write=write_fake_error))
    out = r.run(make_request())
    assert out.status == "failed" and out.failure_kind == "harness_error"
    assert out.message is not None and "FakeLoadError" in out.message and "load" in out.message


def test_crash_without_error_json(make_request: Callable[..., RunRequest]) -> None:
    """A non-zero exit with no error.json is an exit_nonzero failure naming the code."""
    r, _ = runner(FakeHarness(exit_code=139))
    out = r.run(make_request())
    assert out.failure_kind == "exit_nonzero" and out.exit_code == 139
    assert out.message is not None and "SIGSEGV" in out.message


def test_exit_zero_without_result(make_request: Callable[..., RunRequest]) -> None:
    """Exit 0 without result.json is a missing_result failure."""
    r, _ = runner(FakeHarness(exit_code=0))
    assert r.run(make_request()).failure_kind == "missing_result"


def test_invalid_result(make_request: Callable[..., RunRequest]) -> None:
    """A result.json that does not validate is an invalid_result failure."""

    def bad(d: Path, env: object) -> None:
        (d / "result.json").write_text('{"run_id": 1}')

    r, _ = runner(FakeHarness(write=bad))
    assert r.run(make_request()).failure_kind == "invalid_result"


def test_oom_killed(make_request: Callable[..., RunRequest]) -> None:
    """State.OOMKilled makes an oom_killed failure, whatever the logs say."""
    r, _ = runner(FakeHarness(oom_killed=True))
    out = r.run(make_request())
    assert out.failure_kind == "oom_killed" and out.oom_killed and out.exit_code == 137


def test_timeout_stops_then_removes(make_request: Callable[..., RunRequest]) -> None:
    """A hanging harness is stopped at the timeout and reported as timeout."""
    r, client = runner(FakeHarness(hang=True))
    out = r.run(make_request(timeout_s=0.1))
    assert out.failure_kind == "timeout" and out.timed_out
    assert client.stopped and client.removed


def test_cancel_event_interrupts(make_request: Callable[..., RunRequest]) -> None:
    """Setting the cancel event stops the container and yields an interrupted outcome."""
    r, client = runner(FakeHarness(hang=True))
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    out = r.run(make_request(), cancel=cancel)
    assert out.status == "interrupted" and client.stopped and client.removed


def test_missing_image_is_start_failure(make_request: Callable[..., RunRequest]) -> None:
    """A missing image fails the run with how to build or pull it, and never pulls."""
    r, client = runner(FakeHarness())
    out = r.run(make_request(image="llem/vllm:nope"))
    assert out.failure_kind == "start_failed"
    assert out.message is not None and "docker pull llem/vllm:nope" in out.message
    assert client.images.pulled == []


def test_start_error_removes_created_container(make_request: Callable[..., RunRequest]) -> None:
    """A start error (no NVIDIA toolkit) is explained and the created container removed."""
    r, client = runner(
        FakeHarness(start_error='could not select device driver "" with capabilities: [[gpu]]')
    )
    out = r.run(make_request())
    assert out.failure_kind == "start_failed"
    assert out.message is not None and "NVIDIA Container Toolkit" in out.message
    assert client.removed == [client.created[0].name]


def test_unreachable_daemon_is_runner_error() -> None:
    """An unreachable daemon raises RunnerError with a fix."""
    with pytest.raises(RunnerError, match="cannot reach the Docker daemon") as info:
        connect(lambda: FakeDockerClient(reachable=False))
    assert info.value.hint


def test_leftovers_of_dead_owners_are_removed(make_request: Callable[..., RunRequest]) -> None:
    """Containers labelled by a dead llem process are removed; a live owner's are kept."""
    client = FakeDockerClient(images={IMAGE})
    client.containers.create(
        IMAGE, labels={"llem.study": "s", "llem.owner_pid": "999999999"}, name="dead"
    )
    import os
    import socket

    client.containers.create(
        IMAGE,
        labels={
            "llem.study": "s",
            "llem.owner_pid": str(os.getppid()),
            "llem.owner_host": socket.gethostname(),
        },
        name="alive",
    )
    client.containers.create(IMAGE, labels={"other": "x"}, name="unrelated")
    removed = DockerRunner(client=client).cleanup_leftovers()
    assert removed == ["dead"]
