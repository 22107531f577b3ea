"""Engine-cache keying and behaviour: same build settings share an engine, any change rebuilds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import ENV_ENGINE_CACHE_DIR
from llenergymeasure_harness.backends.engine_common import ModelSource, prepare_model_source
from llenergymeasure_harness.backends.tensorrt import (
    MARKER_FILE,
    EngineCache,
    TensorRTBackend,
    engine_cache_key,
    model_fingerprint,
)
from llenergymeasure_harness.testing.engines import FakeTRTLLM

GPU = "NVIDIA H100 80GB HBM3 sm90"


def _config(**overrides: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "model": "llama-3.1-8b",
        "load_format": "dummy",
        "backend": "tensorrt",
        "n_prompts": 100,
        "max_input_tokens": 512,
        "max_output_tokens": 128,
        "gpus": [0, 1, 2, 3],
    }
    base.update(overrides)
    return ExperimentConfig(**base)


def _key(config: ExperimentConfig, tmp_path: Path, **kw: Any) -> str:
    source = prepare_model_source(config, tmp_path)
    return engine_cache_key(
        config,
        trtllm_version=kw.get("version", "1.2.1"),
        gpu_identity=kw.get("gpu", GPU),
        fingerprint=model_fingerprint(source),
    )


def test_same_settings_same_key(tmp_path: Path) -> None:
    """Identical build settings give identical keys, across fresh dummy directories."""
    assert _key(_config(), tmp_path / "a") == _key(_config(), tmp_path / "b")


@pytest.mark.parametrize(
    "change",
    [
        {"precision": "float16"},
        {"model": "llama-3.2-1b"},
        {"revision": "abc"},
        {"load_format": "auto"},
        {"max_input_tokens": 1024},  # max_input_len defaults to it
        {"tensorrt": {"max_batch_size": 16}},
        {"tensorrt": {"max_num_tokens": 4096}},
        {"tensorrt": {"max_seq_len": 2048}},
        {"tensorrt": {"max_input_len": 256}},
        {"tensorrt": {"tensor_parallel_size": 2}},
        {"tensorrt": {"pipeline_parallel_size": 2}},
        {"tensorrt": {"quantization": "fp8"}},
        {"tensorrt": {"quantization": "fp8", "kv_cache_quantization": "fp8"}},
        {"tensorrt": {"build_args": {"opt_num_tokens": 1024}}},
        {"tensorrt": {"enable_chunked_prefill": True}},
        {"tensorrt": {"llm_args": {"fast_build": True}}},
    ],
)
def test_build_affecting_change_changes_key(tmp_path: Path, change: dict[str, Any]) -> None:
    """Any setting that changes the engine changes the key."""
    assert _key(_config(), tmp_path) != _key(_config(**change), tmp_path)


def test_version_and_gpu_change_key(tmp_path: Path) -> None:
    """A different TensorRT-LLM version or GPU model needs a different engine."""
    base = _key(_config(), tmp_path)
    assert base != _key(_config(), tmp_path, version="1.3.0")
    assert base != _key(_config(), tmp_path, gpu="NVIDIA A100-SXM4-80GB sm80")


@pytest.mark.parametrize(
    "change",
    [
        {"tensorrt": {"kv_cache_free_gpu_memory_fraction": 0.5}},
        {"tensorrt": {"enable_block_reuse": False}},
        {"tensorrt": {"engine_cache": False}},
        {"n_prompts": 7},
        {"max_output_tokens": 64},
        {"decoder": {"preset": "standard"}},
        {"random_seed": 1},
        {"ignore_eos": False},
        {"name": "label"},
        {"warmup": {"n_batches": 5}},
    ],
)
def test_runtime_only_change_keeps_key(tmp_path: Path, change: dict[str, Any]) -> None:
    """Runtime and workload settings do not invalidate the engine."""
    assert _key(_config(), tmp_path) == _key(_config(**change), tmp_path)


def test_local_weights_fingerprint_tracks_files(tmp_path: Path) -> None:
    """Replacing weight files in a local checkpoint changes its fingerprint."""
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    weights = model / "model.safetensors"
    weights.write_bytes(b"a" * 10)
    config = _config(model=str(model), load_format="auto")
    source = prepare_model_source(config, tmp_path / "w")
    before = model_fingerprint(source)
    weights.write_bytes(b"b" * 11)
    after = model_fingerprint(source)
    assert before != after
    assert before["files"][1][0] == "model.safetensors"


def test_second_experiment_hits_cache_and_skips_build(tmp_path: Path) -> None:
    """Two experiments with the same build settings build once; the second reports a hit."""
    fake = FakeTRTLLM()
    cache = tmp_path / "cache"
    with fake.installed():
        first = TensorRTBackend(
            clock=fake.behaviour.clock, engine_cache_dir=cache, gpu_identity=GPU
        )
        info1 = first.load(_config(tensorrt={"max_batch_size": 8}))
        first.close()
        # Different runtime settings, same build settings.
        second = TensorRTBackend(
            clock=fake.behaviour.clock, engine_cache_dir=cache, gpu_identity=GPU
        )
        info2 = second.load(
            _config(
                n_prompts=50,
                tensorrt={"max_batch_size": 8, "kv_cache_free_gpu_memory_fraction": 0.5},
            )
        )
        second.close()
    assert len(fake.builds) == 1
    assert info1.engine_cache_hit is False and info2.engine_cache_hit is True
    assert info2.engine_build_s == 0.0
    assert info2.extra["cached_engine_build_s"] == pytest.approx(fake.behaviour.build_time_s)
    assert first.cache_key == second.cache_key
    assert fake.engine_loads == [str(cache / first.cache_key)] * 2  # type: ignore[operator]
    # The measured engine saw the second experiment's runtime setting.
    assert fake.llm_kwargs[-1]["kv_cache_config"].free_gpu_memory_fraction == 0.5


def test_build_change_rebuilds(tmp_path: Path) -> None:
    """A build-affecting change builds a second engine next to the first."""
    fake = FakeTRTLLM()
    cache = tmp_path / "cache"
    with fake.installed():
        for batch in (8, 16):
            backend = TensorRTBackend(
                clock=fake.behaviour.clock, engine_cache_dir=cache, gpu_identity=GPU
            )
            backend.load(_config(tensorrt={"max_batch_size": batch}))
            backend.close()
    assert len(fake.builds) == 2
    entries = sorted(p for p in cache.iterdir() if p.is_dir())
    assert len(entries) == 2
    assert all((p / MARKER_FILE).is_file() for p in entries)


def test_cache_dir_from_environment(tmp_path: Path) -> None:
    """LLEM_ENGINE_CACHE_DIR (read in the constructor) selects the cache directory."""
    fake = FakeTRTLLM()
    with fake.installed():
        backend = TensorRTBackend(
            clock=fake.behaviour.clock,
            environ={ENV_ENGINE_CACHE_DIR: str(tmp_path / "env-cache")},
            gpu_identity=GPU,
        )
        info = backend.load(_config())
        backend.close()
    assert info.extra["engine_cache_dir"] == str(tmp_path / "env-cache")
    assert (tmp_path / "env-cache" / backend.cache_key / MARKER_FILE).is_file()  # type: ignore[operator]


@pytest.mark.parametrize("how", ["disabled", "no dir"])
def test_without_cache_builds_every_time(tmp_path: Path, how: str) -> None:
    """engine_cache: false, or no cache directory, builds each time and reports no hit/miss."""
    fake = FakeTRTLLM()
    cache = tmp_path / "cache" if how == "disabled" else None
    section = {"engine_cache": False} if how == "disabled" else {}
    with fake.installed():
        for _ in range(2):
            backend = TensorRTBackend(
                clock=fake.behaviour.clock, engine_cache_dir=cache, environ={}, gpu_identity=GPU
            )
            info = backend.load(_config(tensorrt=section))
            backend.close()
            assert info.engine_cache_hit is None
            assert info.engine_build_s == pytest.approx(fake.behaviour.build_time_s)
    assert len(fake.builds) == 2
    assert cache is None or not cache.exists()


def test_entry_without_marker_is_rebuilt(tmp_path: Path) -> None:
    """A directory left without its completion marker is not trusted: it is rebuilt."""
    fake = FakeTRTLLM()
    cache = tmp_path / "cache"
    config = _config()
    with fake.installed():
        source = prepare_model_source(config, tmp_path / "w")
        entry_key = engine_cache_key(
            config, trtllm_version="1.2.1", gpu_identity=GPU, fingerprint=model_fingerprint(source)
        )
        (cache / entry_key).mkdir(parents=True)
        (cache / entry_key / "rank0.engine").write_bytes(b"half")
        backend = TensorRTBackend(
            clock=fake.behaviour.clock, engine_cache_dir=cache, gpu_identity=GPU
        )
        info = backend.load(config)
        backend.close()
    assert info.engine_cache_hit is False
    assert len(fake.builds) == 1
    assert (cache / entry_key / MARKER_FILE).is_file()


def test_publish_is_atomic_rename(tmp_path: Path) -> None:
    """publish() moves a complete staging directory into place in one rename."""
    cache = EngineCache(tmp_path)
    staging = cache.staging_dir("k1")
    (staging / "rank0.engine").write_bytes(b"x")
    assert cache.lookup("k1") is None
    entry = cache.publish("k1", staging, {"build_s": 1.5})
    assert not staging.exists()
    assert entry.path == tmp_path / "k1"
    found = cache.lookup("k1")
    assert found is not None and found.meta["build_s"] == 1.5


_HOLDER = """
import sys, time
from pathlib import Path
from llenergymeasure_harness.backends.tensorrt import EngineCache
with EngineCache(Path(sys.argv[1])).lock("k"):
    print("locked", flush=True)
    time.sleep(0.5)
"""


def test_lock_excludes_a_second_process(tmp_path: Path) -> None:
    """While one process holds a key's lock, another waits for it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with EngineCache(tmp_path).lock("k"):
            waited = time.monotonic() - start
    finally:
        proc.communicate(timeout=10)
    assert waited > 0.2
    assert proc.returncode == 0


def test_model_source_passes_local_dir(tmp_path: Path) -> None:
    """A local config.json path is loaded from its directory; nothing is written for it."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    config = _config(model=str(model / "config.json"), load_format="dummy")
    source = prepare_model_source(config, tmp_path / "w")
    assert isinstance(source, ModelSource)
    assert source.model == str(model)
    assert source.dummy_dir is None
    assert not (tmp_path / "w").exists() or not os.listdir(tmp_path / "w")
