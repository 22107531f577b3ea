"""Preflight collects every problem and reports them together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.errors import PreflightError
from llenergymeasure.hostinfo import collect_host_info
from llenergymeasure.runners.preflight import (
    PreflightRequest,
    parse_probe_output,
    run_preflight,
)
from llenergymeasure.testing.fake_docker import FakeDockerClient, FakeHarness

IMG = "llem/vllm:test"
H100 = "0, GPU-aaaa, NVIDIA H100 80GB HBM3, 81559\n1, GPU-bbbb, NVIDIA H100 80GB HBM3, 81559\n"


def probe_client(output: str, *, images: set[str] | None = None) -> FakeDockerClient:
    return FakeDockerClient(
        images={IMG} if images is None else images,
        harness=FakeHarness(nvidia_smi_output=output.encode()),
    )


def docker_request(tmp_path: Path, **kw: Any) -> PreflightRequest:
    fields: dict[str, Any] = {
        "runner": "docker",
        "results_dir": tmp_path,
        "images": {IMG: frozenset({0, 1})},
        "backends": frozenset({"vllm"}),
        "min_free_bytes": 0,
    }
    fields.update(kw)
    return PreflightRequest(**fields)


def test_parse_probe_output() -> None:
    """GPUs and compute processes are parsed from the probe's two CSV blocks."""
    gpus, procs = parse_probe_output(H100 + "--\nGPU-bbbb, 4242, 1024\n")
    assert [(g.index, g.uuid) for g in gpus] == [(0, "GPU-aaaa"), (1, "GPU-bbbb")]
    assert procs[0].pid == 4242 and procs[0].used_memory_mib == 1024


def test_gpu_probe_runs_image_nvidia_smi_with_device_request(tmp_path: Path) -> None:
    """The probe runs in the backend image with the runs' GPUs, by index, and is removed."""
    client = probe_client(H100 + "--\n")
    report = run_preflight(docker_request(tmp_path), client=client)
    (ct,) = client.created
    assert ct.kwargs["device_requests"][0]["DeviceIDs"] == ["0", "1"]
    assert ct.kwargs["command"][0] == "sh" and "nvidia-smi" in ct.kwargs["command"][2]
    assert ct.removed and len(report.gpus[IMG]) == 2


def test_busy_gpu_missing_gpu_and_missing_input_all_reported(tmp_path: Path) -> None:
    """A busy GPU, a GPU count mismatch and a missing input path come back in one error."""
    client = probe_client("0, GPU-aaaa, NVIDIA H100, 81559\n--\nGPU-aaaa, 77, 5000\n")
    req = docker_request(tmp_path, input_paths=(str(tmp_path / "nope.jsonl"),))
    with pytest.raises(PreflightError) as info:
        run_preflight(req, client=client)
    problems = info.value.problems
    assert any("busy: process 77" in p for p in problems)
    assert any("sees 1" in p for p in problems)
    assert any("nope.jsonl" in p for p in problems)


def test_nvidia_runtime_missing_is_explained(tmp_path: Path) -> None:
    """Without the NVIDIA toolkit the probe's start error names the toolkit."""
    client = FakeDockerClient(
        images={IMG},
        harness=FakeHarness(start_error='could not select device driver "" with capabilities'),
    )
    with pytest.raises(PreflightError, match="NVIDIA Container Toolkit"):
        run_preflight(docker_request(tmp_path), client=client)
    assert client.created[0].removed


def test_no_gpu_probe_when_gpus_not_requested(tmp_path: Path) -> None:
    """request_gpus=False (CPU-only host) runs no probe."""
    client = probe_client("")
    run_preflight(docker_request(tmp_path, request_gpus=False), client=client)
    assert client.created == []


def test_missing_image_interactive_confirm(tmp_path: Path) -> None:
    """pull_policy missing asks before pulling; a no is a problem, a yes pulls."""
    client = probe_client(H100 + "--\n", images=set())
    client.images.pullable.add(IMG)
    req = docker_request(tmp_path, request_gpus=False)
    with pytest.raises(PreflightError, match="declined"):
        run_preflight(req, client=client, confirm=lambda q: False)
    asked: list[str] = []
    report = run_preflight(req, client=client, confirm=lambda q: asked.append(q) or True)
    assert report.pulled == [IMG] and IMG in asked[0]


def test_local_runner_names_backends_not_installed(tmp_path: Path) -> None:
    """The local runner lists every backend whose engine is not importable, without importing."""
    req = PreflightRequest(
        runner="local",
        results_dir=tmp_path,
        backends=frozenset({"pytorch", "vllm", "tensorrt"}),
        min_free_bytes=0,
    )
    present = {"llenergymeasure_harness", "torch", "transformers"}
    with pytest.raises(PreflightError) as info:
        run_preflight(req, find_spec=lambda m: object() if m in present else None)
    (problem,) = info.value.problems
    assert "tensorrt (no tensorrt_llm)" in problem and "vllm (no vllm)" in problem
    assert "--runner docker" in problem and "pytorch" not in problem.split(":")[1]


def test_local_runner_busy_gpu(tmp_path: Path) -> None:
    """With the local runner, the host's nvidia-smi shows a GPU in use."""
    req = PreflightRequest(
        runner="local",
        results_dir=tmp_path,
        backends=frozenset({"pytorch"}),
        gpus=frozenset({1}),
        min_free_bytes=0,
    )
    with pytest.raises(PreflightError, match=r"GPU 1 .* busy"):
        run_preflight(
            req,
            find_spec=lambda m: object(),
            host_nvidia_smi=lambda: H100 + "--\nGPU-bbbb, 9, 10\n",
        )


def test_disk_space(tmp_path: Path) -> None:
    """Too little free disk under the results dir is a problem."""
    req = docker_request(tmp_path, request_gpus=False, min_free_bytes=1 << 60)
    with pytest.raises(PreflightError, match="GiB free"):
        run_preflight(req, client=probe_client(""))


def test_hostinfo_reports_docker_gpus_backends_images() -> None:
    """collect_host_info fills the model from docker, nvidia-smi and find_spec (fakes here)."""
    client = FakeDockerClient(images={IMG}, runtimes={"runc": {}, "nvidia": {}})
    info = collect_host_info(
        images=[("vllm", IMG), ("pytorch", "llem/pytorch:absent")],
        docker_client_factory=lambda: client,
        nvidia_smi=lambda: H100 + "--\nGPU-aaaa, 5, 10\n",
        find_spec=lambda m: object() if m in {"torch", "transformers"} else None,
    )
    assert info.docker.reachable and info.docker.nvidia_runtime
    assert [i.present for i in info.images] == [True, False]
    assert info.gpus[0].busy_pids == [5] and info.gpus[1].busy_pids == []
    assert info.backends_installed == {
        "pytorch": True,
        "vllm": False,
        "tensorrt": False,
        "endpoint": False,  # its client (aiohttp) is not importable in this fake
    }
    assert not info.harness_installed
    down = collect_host_info(
        images=[],
        docker_client_factory=lambda: FakeDockerClient(reachable=False),
        nvidia_smi=lambda: None,
    )
    assert not down.docker.reachable and down.docker.error and down.recommended_runner == "local"


def test_pull_policy_always_pulls_present_images(tmp_path: Path) -> None:
    """pull_policy always pulls even a present image (no question asked)."""
    client = probe_client("", images={IMG})
    client.images.pullable.add(IMG)
    report = run_preflight(
        docker_request(tmp_path, request_gpus=False, pull_policy="always"), client=client
    )
    assert report.pulled == [IMG]


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ({"io.llenergymeasure.backend": "vllm"}, "update the image"),  # before versioning
        ({"io.llenergymeasure.contract.version": "0"}, "update the image"),
        ({"io.llenergymeasure.contract.version": "999"}, "update the host"),
        ({"io.llenergymeasure.contract.version": "x"}, "update the image"),
    ],
)
def test_image_of_another_contract_is_refused(
    tmp_path: Path, labels: dict[str, str], says: str
) -> None:
    """An image that speaks another contract version (or none) is refused before any run,
    with a message that says which side to update."""
    client = FakeDockerClient(
        images={IMG},
        harness=FakeHarness(nvidia_smi_output=H100.encode()),
        image_labels={IMG: labels},
    )
    with pytest.raises(PreflightError) as info:
        run_preflight(docker_request(tmp_path), client=client)
    text = str(info.value)
    assert f"image {IMG}" in text and "contract version" in text and says in text


def test_image_without_our_labels_is_left_to_the_harness(tmp_path: Path) -> None:
    """A user's own image (none of our labels) passes preflight with a note; the harness
    inside checks the host's contract version when it starts."""
    client = FakeDockerClient(
        images={IMG},
        harness=FakeHarness(nvidia_smi_output=H100.encode()),
        image_labels={IMG: {"maintainer": "me"}},
    )
    report = run_preflight(docker_request(tmp_path), client=client)
    assert IMG in report.images
    assert any("no llenergymeasure labels" in n for n in report.notes)
