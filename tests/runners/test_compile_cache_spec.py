"""The host compile cache: one directory per image mounted into the container, and the local
runner's own, named to the harness in LLEM_COMPILE_CACHE_DIR (pure spec building, no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llenergymeasure.contract import ENV_COMPILE_CACHE_DIR, HarnessEnv
from llenergymeasure.runners.spec import (
    CONTAINER_COMPILE_CACHE,
    ContainerSettings,
    RunRequest,
    build_container_spec,
    build_local_spec,
    compile_cache_key,
)


def test_container_mounts_a_per_image_compile_cache(
    make_request: Callable[..., RunRequest], tmp_path: Path
) -> None:
    """The image's own subdirectory is mounted read-write and named to the harness."""
    req = make_request(image="llem/vllm:v1", image_digest="sha256:" + "ab" * 32)
    spec = build_container_spec(req, ContainerSettings(compile_cache_dir=str(tmp_path / "cc")))
    mount = next(m for m in spec.mounts if m.target == CONTAINER_COMPILE_CACHE)
    assert mount.source == str(tmp_path / "cc" / "llem_vllm_v1-abababababab")
    assert not mount.read_only
    assert HarnessEnv.from_env(spec.env).compile_cache_dir == CONTAINER_COMPILE_CACHE


def test_rebuilt_image_gets_a_fresh_directory() -> None:
    """Same tag, new digest: a different key, so kernels of one build never load in another."""
    old = compile_cache_key("llem/vllm:v1", "sha256:" + "1" * 64)
    new = compile_cache_key("llem/vllm:v1", "sha256:" + "2" * 64)
    assert old != new and compile_cache_key("llem/vllm:v1", None) == "llem_vllm_v1"


def test_no_compile_cache_without_a_root(make_request: Callable[..., RunRequest]) -> None:
    """compile_cache_dir unset (or '' in the study): no mount, no variable."""
    spec = build_container_spec(make_request(), ContainerSettings())
    assert all(m.target != CONTAINER_COMPILE_CACHE for m in spec.mounts)
    assert ENV_COMPILE_CACHE_DIR not in spec.env


def test_local_runner_gets_a_per_interpreter_directory(
    make_request: Callable[..., RunRequest], tmp_path: Path
) -> None:
    """The local runner's harness is told a directory under the root, keyed by interpreter."""
    spec = build_local_spec(
        make_request(),
        python="/usr/bin/python3",
        base_env={},
        compile_cache_dir=str(tmp_path / "cc"),
    )
    path = spec.env[ENV_COMPILE_CACHE_DIR]
    assert path.startswith(str(tmp_path / "cc" / "local-"))
