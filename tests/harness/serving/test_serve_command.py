"""The serve command of each backend's server mode (pure mapping; the engines are not run)."""

from __future__ import annotations

from typing import Any

from llenergymeasure.config import ExperimentConfig
from llenergymeasure_harness.serving.server import serve_command


def _cfg(**kw: Any) -> ExperimentConfig:
    base: dict[str, Any] = {"model": "tiny-llama", "load_format": "dummy", "server": {}}
    base.update(kw)
    return ExperimentConfig.model_validate(base)


def test_vllm_serve_gets_the_vllm_section_as_engine_flags() -> None:
    """vllm serve MODEL --host 127.0.0.1 --port P, and every vllm: knob as its flag."""
    argv = serve_command(
        _cfg(
            backend="vllm",
            vllm={"max_num_seqs": 64, "enforce_eager": True, "cudagraph_mode": None},
            server={"args": ["--max-log-len", "5"]},
        ),
        8123,
    )
    assert argv[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", "tiny-llama"]
    assert "--served-model-name" not in argv  # the name is what vLLM serves already
    joined = " ".join(argv)
    for flag in (
        "--host 127.0.0.1",
        "--port 8123",
        "--max-num-seqs 64",
        "--enforce-eager",
        "--load-format dummy",
        "--skip-tokenizer-init",
        "--dtype bfloat16",
        "--seed 42",
    ):
        assert flag in joined, flag
    assert "--disable-log-stats" not in joined  # the server keeps its own stats
    assert argv[-2:] == ["--max-log-len", "5"]


def test_vllm_serve_of_a_dummy_directory_keeps_the_experiment_name() -> None:
    """Dummy weights serve from a config-only directory under the experiment's model name."""
    argv = serve_command(_cfg(backend="vllm"), 8123, model="/tmp/x/dummy-model")
    assert argv[4] == "/tmp/x/dummy-model"
    i = argv.index("--served-model-name")
    assert argv[i + 1] == "tiny-llama"


def test_trtllm_serve_gets_its_limits() -> None:
    """trtllm-serve MODEL with the backend flow, batch limit and parallel sizes."""
    cfg = _cfg(
        backend="tensorrt", load_format="auto", model="org/m", tensorrt={"max_batch_size": 16}
    )
    argv = serve_command(cfg, 9000)
    assert argv[:2] == ["trtllm-serve", "org/m"]
    joined = " ".join(argv)
    assert "--max_batch_size 16" in joined and "--backend tensorrt" in joined
    assert "--port 9000" in joined and "--tp_size 1" in joined


def test_transformers_serve_pins_the_device_dtype_and_seed() -> None:
    """transformers serve MODEL on the CPU for gpus: [], with the experiment's dtype and seed."""
    argv = serve_command(
        _cfg(load_format="auto", model="/ckpt", gpus=[], precision="float32", random_seed=7),
        8000,
    )
    assert argv[1:5] == ["-m", "transformers.cli.transformers", "serve", "/ckpt"]
    joined = " ".join(argv)
    assert "--device cpu" in joined and "--dtype float32" in joined
    assert "--default-seed 7" in joined and "--port 8000" in joined
