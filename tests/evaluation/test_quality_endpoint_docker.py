"""Log-likelihood tasks on ``backend: endpoint`` through the Docker runner: the reference
completions server (a stand-in for ``vllm serve``) runs in a test container of the pytorch
image, the study in another container of it, and the scores equal lm-eval's hf model's."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import LlemWorkdir
from tests.evaluation.conftest import assert_scores_equal_hf, endpoint_quality_study
from tests.evaluation.test_quality_smollm2 import EXAMPLES

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.torch]

LIMIT = 4
SERVER_MODULE = "llenergymeasure_harness.testing.completions_server"


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
    smollm2_dir: Path, llem_workdir: LlemWorkdir, server_in_container: str
) -> None:
    """``llem run study.yaml --runner docker`` with backend endpoint and
    completions_logprobs: true, the model named by its local folder (as `vllm serve` names it):
    exit 0, the harness ran in a container, and the multiple-choice and generation scores
    equal lm-eval's hf model's on the same items."""
    wd = llem_workdir
    (wd.cwd / "tasks").mkdir()
    for name in ("facts_mc.yaml", "facts_mc.jsonl", "facts_gen.yaml", "facts_gen.jsonl"):
        (wd.cwd / "tasks" / name).write_bytes((EXAMPLES / name).read_bytes())
    study = endpoint_quality_study(
        "quality-endpoint-docker", str(smollm2_dir), server_in_container, limit=LIMIT
    )
    wd.write_study(
        **study,
        load_format="auto",
        images={"endpoint": wd.image},
        # host network: the harness container reaches the server on 127.0.0.1
        docker={"network_mode": "host"},
    )
    proc = wd.run("run", "study.yaml", "--runner", "docker", "--yes", timeout_s=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = wd.result_files()
    r = json.loads(path.read_text())
    assert r["environment"]["in_container"] is True
    assert r["traffic"]["server"]["external"] is True
    print("endpoint (docker) vs lm-eval hf:", assert_scores_equal_hf(r, smollm2_dir, LIMIT))
