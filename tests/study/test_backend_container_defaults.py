"""Each backend's container gets its own registry defaults, not another engine's.

Before the registry, study-level Docker defaults (host IPC, TensorRT-LLM's memlock/stack
ulimits) shadowed the per-backend ones, so a PyTorch container ran with TensorRT-LLM's
ulimits. These tests run a mixed study through the executor's own Docker runner.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from tests.study.conftest import IMAGE, make_plan

from llenergymeasure.study.executor import StudyRunOptions, run_study
from llenergymeasure.testing.fake_docker import FakeDockerClient, FakeHarness, write_fake_result

TRT_IMAGE = "llem/trtllm:test"


def _containers(tmp_path: Path, **docker: Any) -> dict[str, dict[str, Any]]:
    """backend -> create kwargs of its container, for a pytorch + tensorrt study."""
    runner: dict[str, Any] = {"images": {"pytorch": IMAGE, "tensorrt": TRT_IMAGE}}
    if docker:
        runner["docker"] = docker
    plan = make_plan(
        tmp_path / "results",
        batch_sizes=(1,),
        n_cycles=1,
        runner=runner,
        sweep={"backend": ["pytorch", "tensorrt"], "pytorch.batch_size": [1]},
    )
    client = FakeDockerClient(
        images={IMAGE, TRT_IMAGE}, harness=FakeHarness(write=write_fake_result)
    )
    opts = StudyRunOptions(
        quiet=True, request_gpus=False, interactive=False, min_free_bytes=0, runner="docker"
    )
    run_study(plan, opts, docker_client=client, console=Console(file=io.StringIO()))
    return {
        ("tensorrt" if c.kwargs["image"] == TRT_IMAGE else "pytorch"): c.kwargs
        for c in client.created
    }


def _ulimits(kwargs: dict[str, Any]) -> dict[str, int]:
    return {u["Name"]: u["Soft"] for u in kwargs.get("ulimits") or []}


def test_each_backend_gets_its_own_defaults(tmp_path: Path) -> None:
    """PyTorch: private IPC with an 8 GB /dev/shm and no ulimits; TensorRT-LLM: host IPC and
    its documented memlock/stack ulimits."""
    made = _containers(tmp_path)
    pt, trt = made["pytorch"], made["tensorrt"]
    assert pt.get("ipc_mode") is None and pt.get("shm_size") == "8g"
    assert _ulimits(pt) == {}
    assert trt.get("ipc_mode") == "host" and trt.get("shm_size") is None
    assert _ulimits(trt) == {"memlock": -1, "stack": 67108864}


def test_study_settings_override_every_backend(tmp_path: Path) -> None:
    """A value the study sets explicitly applies to every backend's container."""
    made = _containers(tmp_path, ulimits={"nofile": 4096}, ipc_mode="host")
    for kwargs in made.values():
        assert kwargs.get("ipc_mode") == "host"
        assert _ulimits(kwargs) == {"nofile": 4096}
