"""The transformers backend on CPU with the tiny dummy Llama, and the full entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.harness.conftest import make_config

from llenergymeasure.results import ExperimentResult
from llenergymeasure_harness.backends import get_backend
from llenergymeasure_harness.prompts import build_requests

pytestmark = pytest.mark.torch


def test_dummy_load_and_generate_exact_lengths() -> None:
    """Dummy tiny Llama loads on CPU, generates exactly output_len tokens with timestamps."""
    cfg = make_config(n_prompts=3, max_output_tokens=5, dataset={"input_len": 8, "output_len": 5})
    backend = get_backend("pytorch")
    info = backend.load(cfg)
    try:
        assert info.dtype == "float32"
        assert info.parameter_count and info.parameter_count > 0
        assert backend.warmup_unit == 2
        recs = backend.run(build_requests(cfg))
        assert [r.request_id for r in recs] == [0, 1, 2]
        for r in recs:
            assert r.input_tokens == 8 and r.output_tokens == 5
            assert len(r.token_times_s) == 5
            assert r.submit_s <= r.first_token_s <= r.end_s
            assert r.token_times_s == sorted(r.token_times_s)
        assert backend.peak_memory_bytes() is None  # CPU
    finally:
        backend.close()
        backend.close()


def test_left_padding_excluded_from_input_counts() -> None:
    """Prompts of different lengths in one batch count their own tokens only."""
    from llenergymeasure_harness.backends.base import GenerationRequest

    cfg = make_config(n_prompts=2)
    backend = get_backend("pytorch")
    backend.load(cfg)
    try:
        reqs = [GenerationRequest(0, [5, 6, 7], 2), GenerationRequest(1, [5, 6, 7, 8, 9, 10], 2)]
        recs = backend.run(reqs)
        assert [r.input_tokens for r in recs] == [3, 6]
        assert [r.output_tokens for r in recs] == [2, 2]
    finally:
        backend.close()


def test_seeded_greedy_is_deterministic() -> None:
    """Two loads with the same seed build the same random weights (same parameter sum)."""
    cfg = make_config()
    sums = []
    for _ in range(2):
        b = get_backend("pytorch")
        b.load(cfg)
        sums.append(float(sum(p.detach().sum() for p in b.model.parameters())))
        b.close()
    assert sums[0] == sums[1]


def test_quantization_with_dummy_is_a_config_error() -> None:
    """bitsandbytes needs CUDA and real weights: refused clearly, never half-loaded."""
    from llenergymeasure.errors import ConfigError

    cfg = make_config(precision="bfloat16", pytorch={"batch_size": 1, "quantization": "bnb_4bit"})
    with pytest.raises(ConfigError):
        get_backend("pytorch").load(cfg)


@pytest.mark.slow
def test_entry_point_end_to_end_on_cpu(tmp_path: Path) -> None:
    """`python -m llenergymeasure_harness` runs the tiny Llama on CPU and writes a result."""
    cfg = make_config(n_prompts=4, energy={"sampler": "auto"})
    out = tmp_path / "out"
    env = {
        **os.environ,
        "LLEM_CONFIG_JSON": cfg.to_json(),
        "LLEM_RUN_ID": "e2e",
        "LLEM_RESULTS_DIR": str(out),
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "llenergymeasure_harness"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = ExperimentResult.load(out)
    assert result.throughput.output_tokens == 16
    assert result.latency.ttft_s is not None
    assert result.compute.flops_total and result.compute.flops_total > 0
    assert result.environment.backend_version
    assert (out / "requests.parquet").exists()
    if result.energy.sampler == "null":  # the CI machine: no GPU
        assert result.energy.gpu_energy_j is None
        assert "no_energy" in {f.code for f in result.quality_flags}


def test_load_from_local_path_and_static_cache(tmp_path: Path) -> None:
    """A checkpoint saved to disk loads with load_format auto; the static KV cache works."""
    src = get_backend("pytorch")
    src.load(make_config())
    src.model.save_pretrained(tmp_path / "ckpt")
    src.close()
    cfg = make_config(
        model=str(tmp_path / "ckpt"),
        load_format="auto",
        n_prompts=2,
        pytorch={"batch_size": 2, "static_kv_cache": True},
    )
    backend = get_backend("pytorch")
    info = backend.load(cfg)
    try:
        assert info.parameter_count and info.parameter_count > 0
        recs = backend.run(build_requests(cfg))
        assert [r.output_tokens for r in recs] == [4, 4]
    finally:
        backend.close()
