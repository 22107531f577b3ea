"""Log-likelihood tasks on ``backend: endpoint`` through the Docker runner: the reference
completions server (a stand-in for ``vllm serve``) runs in a test container of the pytorch
image, the study in another container of it, and the scores equal lm-eval's hf model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.evaluation.test_quality_smollm2 import EXAMPLES, hf_scores

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.torch]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]
LIMIT = 4
SERVER_MODULE = "llenergymeasure_harness.testing.completions_server"
#: The served model name. Not the folder path: the Docker runner moves a local model path to
#: its mount point in the container, which is no longer the name the server serves under.


@pytest.fixture
def server_in_container(
    smollm2_dir: Path,
    pytorch_test_image: str,
    test_container: Callable[..., Any],
    require_in_image: Callable[[str, str, str], None],
) -> Iterator[str]:
    """Base URL of the reference completions server on SmolLM2, in a test container of the
    pytorch image on the host's network (the model mounted read-only at its own path)."""
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    from llenergymeasure_harness.serving.server import HOST, free_port
    from llenergymeasure_harness.testing.completions_server import READY_LINE

    require_in_image(pytorch_test_image, SERVER_MODULE, "the reference completions server")
    port = free_port()
    # served under its path, as `vllm serve /path` does
    command = ["python3", "-m", SERVER_MODULE, str(smollm2_dir)]
    command += ["--host", HOST]
    server = (
        test_container(pytorch_test_image, [*command, "--port", str(port)], network_mode="host")
        .with_volume_mapping(smollm2_dir, str(smollm2_dir), "ro")
        .waiting_for(LogMessageWaitStrategy(READY_LINE).with_startup_timeout(180))
    )
    with server:
        yield f"http://{HOST}:{port}"


def test_docker_run_scores_multiple_choice_on_an_endpoint_like_lm_eval(
    smollm2_dir: Path, tmp_path: Path, pytorch_test_image: str, server_in_container: str
) -> None:
    """``llem run study.yaml --runner docker`` with backend endpoint and
    completions_logprobs: true: exit 0, the harness ran in a container, and the multiple-choice
    and generation scores equal lm-eval's hf model's on the same items."""
    (tmp_path / "tasks").mkdir()
    for name in ("facts_mc.yaml", "facts_mc.jsonl", "facts_gen.yaml", "facts_gen.jsonl"):
        (tmp_path / "tasks" / name).write_bytes((EXAMPLES / name).read_bytes())
    study = {
        "name": "quality-endpoint-docker",
        # the server's name for the model, a local folder: the container keeps the name and
        # reads the tokenizer from the folder's mount (lm-eval tokenises there)
        "model": str(smollm2_dir),
        "backend": "endpoint",
        "endpoint": {"url": server_in_container, "completions_logprobs": True},
        "gpus": [],
        "n_prompts": 2,
        "max_input_tokens": 16,
        "max_output_tokens": 4,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "quality": {
            "tasks": ["tasks/facts_mc.yaml", "tasks/facts_gen.yaml"],
            "limit": LIMIT,
            "batch_size": 4,
        },
        "images": {"endpoint": pytorch_test_image},
        "execution": {"config_gap_s": 0, "cycle_gap_s": 0},
        # host network: the harness container reaches the server on 127.0.0.1
        "docker": {"network_mode": "host", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = {
        **os.environ,
        "LLEM_NO_GPU": "1",
        "LLEM_USER_CONFIG": str(tmp_path / "no-user-config.yaml"),
    }
    proc = subprocess.run(
        [*LLEM, "run", "study.yaml", "--runner", "docker", "--yes"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = sorted((tmp_path / "results").glob("*/runs/*/result.json"))
    r = json.loads(path.read_text())
    ev = r["evaluation"]
    assert r["environment"]["in_container"] is True
    assert r["traffic"]["server"]["external"] is True
    assert {t["task"] for t in ev["tasks"]} == {"llem_facts_mc", "llem_facts_gen"}
    hf = hf_scores(smollm2_dir, "float32", limit=LIMIT)
    figures = {}
    for task in ev["tasks"]:
        assert task["n_items"] == LIMIT
        for key, value in task["metrics"].items():
            figures[f"{task['task']}/{key}"] = (value, hf[task["task"]][key])
            assert value == pytest.approx(hf[task["task"]][key]), (task["task"], key)
    print("endpoint (docker) vs lm-eval hf:", json.dumps(figures))
