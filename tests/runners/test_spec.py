"""ContainerSpec and LocalSpec are built from a run request without any I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.runners.conftest import tiny_config

from llenergymeasure.contract import HarnessEnv
from llenergymeasure.runners.docker import to_create_kwargs
from llenergymeasure.runners.spec import (
    CONTAINER_RESULTS_DIR,
    ContainerSettings,
    RunRequest,
    build_container_spec,
    build_local_spec,
    rewrite_host_paths,
)


def test_spec_carries_env_contract_labels_and_results_mount(
    make_request: Callable[..., RunRequest],
) -> None:
    """The harness env round-trips through HarnessEnv and the results dir is mounted rw."""
    req = make_request()
    spec = build_container_spec(req, ContainerSettings(), owner_pid=42, owner_host="h")
    henv = HarnessEnv.from_env(spec.env)
    assert henv.run_id == req.run_id
    assert henv.results_dir == CONTAINER_RESULTS_DIR
    assert henv.config.config_hash == req.config.config_hash
    assert henv.host_uid == 1000
    assert henv.baseline_cache == "/llem/cache/llem/baseline.json"
    results = [m for m in spec.mounts if m.target == CONTAINER_RESULTS_DIR]
    assert results and results[0].source == str(req.run_dir) and not results[0].read_only
    assert spec.labels["llem.study"] == "study-1"
    assert spec.labels["llem.run"] == req.run_id
    assert spec.labels["llem.experiment"] == req.config.config_hash
    assert spec.labels["llem.version"] == "2.0.0"
    assert spec.labels["llem.owner_pid"] == "42"
    assert spec.user == "1000:1000"
    assert spec.env["HOME"] == "/tmp"
    assert spec.gpu_ids == (0,)


def test_gpus_requested_by_index_never_count(make_request: Callable[..., RunRequest]) -> None:
    """GPUs become a DeviceRequest with device_ids, never the silent count=0."""
    req = make_request(tiny_config(gpus=[2, 3]))
    kwargs = to_create_kwargs(build_container_spec(req, ContainerSettings()))
    (dr,) = kwargs["device_requests"]
    assert dr["DeviceIDs"] == ["2", "3"]
    assert dr["Count"] in (None, 0) and "Count" not in {k for k, v in dr.items() if v}
    assert ["gpu", "compute", "utility"] in dr["Capabilities"]


def test_cpu_only_setting_requests_no_gpu(make_request: Callable[..., RunRequest]) -> None:
    """request_gpus=False (explicit CPU-only host) creates no device request at all."""
    spec = build_container_spec(make_request(), ContainerSettings(request_gpus=False))
    assert spec.gpu_ids == ()
    assert "device_requests" not in to_create_kwargs(spec)


def test_backend_defaults_for_ipc_and_ulimits(make_request: Callable[..., RunRequest]) -> None:
    """vLLM/TensorRT get the host IPC namespace (no shm size); TensorRT gets its ulimits."""
    trt = build_container_spec(make_request(tiny_config(backend="tensorrt")), ContainerSettings())
    assert trt.ipc_mode == "host" and trt.shm_size is None
    assert trt.ulimits == {"memlock": -1, "stack": 67108864}
    pt = build_container_spec(make_request(), ContainerSettings(shm_size="2g"))
    assert pt.ipc_mode is None and pt.shm_size == "2g" and pt.ulimits == {}
    custom = build_container_spec(
        make_request(tiny_config(backend="tensorrt")), ContainerSettings(ulimits={})
    )
    assert custom.ulimits == {}


def test_host_paths_are_mounted_read_only(make_request: Callable[..., RunRequest]) -> None:
    """A model dir and a JSONL dataset given as host paths are mounted read-only."""
    cfg = tiny_config(
        model="/data/models/llama",
        load_format="auto",
        tokenizer="/data/models/llama",
        dataset={"source": "jsonl", "path": "prompts.jsonl"},
    )
    spec = build_container_spec(make_request(cfg), ContainerSettings(), base_dir="/home/u/study")
    by_src = {m.source: m for m in spec.mounts}
    assert by_src["/data/models/llama"].read_only
    assert by_src["/data/models/llama"].target == "/data/models/llama"
    assert by_src["/home/u/study/prompts.jsonl"].read_only
    seen = json.loads(spec.env["LLEM_CONFIG_JSON"])
    assert seen["model"] == "/data/models/llama"  # absolute: unchanged, so is the hash
    assert seen["dataset"]["path"] == "/home/u/study/prompts.jsonl"
    assert len([m for m in spec.mounts if m.source == "/data/models/llama"]) == 1


def test_paths_under_system_dirs_are_rewritten() -> None:
    """A path that would shadow the image is mounted under /llem/inputs and rewritten."""
    out, mounts = rewrite_host_paths({"model": "/usr/share/models/m", "tokenizer": "gpt2"})
    assert out["model"] == "/llem/inputs/model/m"
    assert out["tokenizer"] == "gpt2"  # a hub id, not a path
    assert mounts[0].source == "/usr/share/models/m" and mounts[0].read_only


def test_caches_are_mounted(make_request: Callable[..., RunRequest]) -> None:
    """The HF cache is mounted for every backend; the engine cache only for TensorRT."""
    settings = ContainerSettings(hf_cache_dir="/h/hf", engine_cache_dir="/h/trt")
    pt = build_container_spec(make_request(), settings)
    assert {m.target for m in pt.mounts} >= {"/llem/cache/hf"}
    assert "/llem/cache/engines" not in {m.target for m in pt.mounts}
    assert pt.env["HF_HOME"] == "/llem/cache/hf"
    trt = build_container_spec(make_request(tiny_config(backend="tensorrt")), settings)
    assert "/llem/cache/engines" in {m.target for m in trt.mounts}
    assert trt.env["LLEM_ENGINE_CACHE_DIR"] == "/llem/cache/engines"


def test_spec_needs_an_image(make_request: Callable[..., RunRequest]) -> None:
    """A Docker spec without a resolved image is a programming error."""
    with pytest.raises(ValueError, match="no image"):
        build_container_spec(make_request(image=None), ContainerSettings())


def test_local_spec_uses_host_paths(
    make_request: Callable[..., RunRequest], tmp_path: Path
) -> None:
    """The local spec passes the same contract with host paths."""
    req = make_request()
    spec = build_local_spec(req, python="/usr/bin/python3", base_env={"PATH": "/bin"})
    assert spec.command == ("/usr/bin/python3", "-m", "llenergymeasure_harness")
    henv = HarnessEnv.from_env(spec.env)
    assert henv.results_dir == str(req.run_dir)
    assert henv.baseline_cache == str(tmp_path / "cache" / "baseline.json")
    assert spec.env["PATH"] == "/bin"


def test_every_container_and_harness_subprocess_has_nvlink_multicast_off(
    make_request: Callable[..., RunRequest],
) -> None:
    """NCCL/PyTorch/NVSHMEM multicast is off in a container and a local harness by default."""
    from llenergymeasure_contract.env import MULTICAST_OFF

    container = build_container_spec(make_request(), ContainerSettings())
    local = build_local_spec(make_request(), python="python3", base_env={"PATH": "/bin"})
    for env in (container.env, local.env):
        assert {k: env[k] for k in MULTICAST_OFF} == {
            "NCCL_NVLS_ENABLE": "0",
            "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1",
        }


def test_a_user_setting_turns_multicast_back_on(make_request: Callable[..., RunRequest]) -> None:
    """docker.env and the host's own environment win over the multicast-off default."""
    container = build_container_spec(
        make_request(), ContainerSettings(extra_env={"NCCL_NVLS_ENABLE": "1"})
    )
    local = build_local_spec(make_request(), python="python3", base_env={"NCCL_NVLS_ENABLE": "1"})
    assert container.env["NCCL_NVLS_ENABLE"] == "1"
    assert local.env["NCCL_NVLS_ENABLE"] == "1"


def test_an_endpoints_model_folder_keeps_its_served_name_and_lends_its_tokenizer() -> None:
    """backend endpoint: model under a system directory stays the name the server serves (sent
    as each request's model); the container reads the tokenizer from the folder's mount."""
    out, mounts = rewrite_host_paths({"backend": "endpoint", "model": "/root/.cache/m"})
    assert out["model"] == "/root/.cache/m"
    assert out["tokenizer"] == "/llem/inputs/model/m"
    assert [(m.source, m.target) for m in mounts] == [("/root/.cache/m", "/llem/inputs/model/m")]
    own, _ = rewrite_host_paths(
        {"backend": "endpoint", "model": "/root/.cache/m", "tokenizer": "/usr/share/tok"}
    )
    assert (own["model"], own["tokenizer"]) == ("/root/.cache/m", "/llem/inputs/tokenizer/tok")
