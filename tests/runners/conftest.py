"""Fixtures shared by the runner tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.runners.spec import RunRequest


def tiny_config(**overrides: Any) -> ExperimentConfig:
    """A small valid experiment config."""
    fields: dict[str, Any] = {
        "model": "tiny-llama",
        "load_format": "dummy",
        "n_prompts": 4,
        "max_input_tokens": 16,
        "max_output_tokens": 8,
    }
    fields.update(overrides)
    return ExperimentConfig(**fields)


@pytest.fixture
def make_request(tmp_path: Path) -> Callable[..., RunRequest]:
    """Build a RunRequest whose files live under tmp_path."""

    def make(config: ExperimentConfig | None = None, **kw: Any) -> RunRequest:
        cfg = config or tiny_config()
        run_id = kw.pop("run_id", f"{cfg.config_hash}_c1")
        fields: dict[str, Any] = {
            "config": cfg,
            "study_id": "study-1",
            "run_id": run_id,
            "cycle": 1,
            "run_dir": tmp_path / "runs" / run_id,
            "log_path": tmp_path / "logs" / f"{run_id}.log",
            "image": "llem/pytorch:test",
            "study_cache_dir": tmp_path / "cache",
            "host_uid": 1000,
            "host_gid": 1000,
        }
        fields.update(kw)
        return RunRequest(**fields)

    return make
