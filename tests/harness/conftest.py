"""Shared fixtures for the harness tests: configs, a fake world, the env contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure_harness.experiment import Deps
from llenergymeasure_harness.testing import FakeBackend, FakeNvml, ManualClock


def endpoint_lora_config(url: str) -> ExperimentConfig:
    """backend: endpoint at ``url`` (token-id prompts) serving the adapters ``sql`` and
    ``chat`` beside the base model ``base``: four requests of 4 tokens in, 3 out."""
    return ExperimentConfig(
        model="base",
        backend="endpoint",
        n_prompts=4,
        max_input_tokens=4,
        max_output_tokens=3,
        gpus=[],
        endpoint={"url": url, "prompt_format": "token_ids"},
        lora={"adapters": [{"served": "sql"}, {"served": "chat"}]},
    )


def make_config(**over: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "model": "tiny-llama",
        "load_format": "dummy",
        "precision": "float32",
        "n_prompts": 8,
        "max_input_tokens": 16,
        "max_output_tokens": 4,
        "pytorch": {"batch_size": 2},
        "warmup": {"n_batches": 1},
        "baseline": {"duration_s": 2.0},
        "energy": {"timeseries": False},
    }
    base.update(over)
    return ExperimentConfig.model_validate(base)


class World:
    """A fake GPU, clock and backend wired together: energy = power x clock time, exactly."""

    def __init__(self, *, power_w: float = 250.0, n_gpus: int = 1, **backend_kw: Any) -> None:
        self.clock = ManualClock()
        self.nvml = FakeNvml(n_gpus, clock=self.clock, power_w=power_w)
        self.backend = FakeBackend(clock=self.clock, step_s=0.5, **backend_kw)

    def deps(self, *, nvml: bool = True) -> Deps:
        return Deps(
            open_nvml=(lambda: self.nvml) if nvml else (lambda: None),
            make_backend=lambda name: self.backend,
            clock=self.clock,
            sleep=self.clock.advance,
            epoch=lambda: 1_700_000_000.0 + self.clock(),
            cuda_visible="",
        )


@pytest.fixture
def world() -> World:
    return World()


def harness_env(tmp_path: Path, config: ExperimentConfig | None = None, **kw: Any) -> HarnessEnv:
    return HarnessEnv(
        config=config or make_config(),
        run_id="run-1",
        results_dir=str(tmp_path / "out"),
        **kw,
    )


@pytest.fixture(autouse=True)
def _vllm_cache_root(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's cache root (where the vLLM backend keeps dummy-model folders) in a temporary
    directory, never the user's ~/.cache/vllm."""
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
