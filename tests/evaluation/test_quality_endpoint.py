"""Log-likelihood tasks over HTTP: ``backend: endpoint`` with ``endpoint.completions_logprobs``
and vLLM in server mode, against the reference completions server (echo + logprobs on a real
model, a stand-in for ``vllm serve``), scored like lm-eval's own ``hf`` model; a chat-only
endpoint and ``transformers serve`` are refused."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from tests.evaluation.conftest import assert_scores_equal_hf, endpoint_quality_study
from tests.evaluation.test_quality_smollm2 import EXAMPLES, REPO, hf_scores

from llenergymeasure.cli import main
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_harness.backends.base import ScoreRequest

#: Items per task: small, the CPU is shared; the same items are given to lm-eval's hf model.
LIMIT = 8


def endpoint_config(model: Path, url: str, **endpoint: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": str(model),
            "backend": "endpoint",
            "gpus": [],
            "endpoint": {"url": url, **endpoint},
            "quality": {"tasks": [str(EXAMPLES / "facts_mc.yaml")], "limit": 2},
        }
    )


@pytest.mark.torch
@pytest.mark.slow
def test_endpoint_scores_equal_a_forward_pass_of_the_same_model(
    smollm2_dir: Path, reference_server: str
) -> None:
    """With completions_logprobs the endpoint backend scores continuations (and rolling
    windows) from the server's echoed prompt log-probabilities: the same numbers, and the same
    greedy flags, as the PyTorch backend's forward pass on the same model."""
    from transformers import AutoTokenizer

    from llenergymeasure_harness.backends.pytorch import PyTorchBackend
    from llenergymeasure_harness.evaluation_lm import EngineLM
    from llenergymeasure_harness.serving.backends import EndpointBackend

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = "Question: What is the capital of Italy?\nAnswer: Rome\n\n"
    ctx = tok.encode(prompt + "Question: What is the capital of France?\nAnswer:")
    requests = [
        ScoreRequest(ctx, tok.encode(" Paris")),
        ScoreRequest(ctx, tok.encode(" a small green frog")),
        ScoreRequest(ctx[-3:], tok.encode(" Rome")),
    ]
    endpoint = EndpointBackend()
    endpoint.load(endpoint_config(smollm2_dir, reference_server, completions_logprobs=True))
    local = PyTorchBackend()
    local.load(
        ExperimentConfig.model_validate(
            {"model": str(smollm2_dir), "gpus": [], "precision": "float32", "n_prompts": 2}
        )
    )
    try:
        remote = endpoint.loglikelihood(requests, batch_size=2, max_length=2048)
        mine = local.loglikelihood(requests, batch_size=2, max_length=2048)
        # cut to the last max_length + 1 tokens as in process
        cut_remote = endpoint.loglikelihood(requests[:1], batch_size=1, max_length=4)
        cut_local = local.loglikelihood(requests[:1], batch_size=1, max_length=4)
        text = "The quick brown fox jumps over the lazy dog. " * 3
        rolling = [
            EngineLM(engine, tok, batch_size=2, max_length=16).loglikelihood_rolling(
                [SimpleNamespace(args=(text,))]
            )
            for engine in (endpoint, local)
        ]
    finally:
        endpoint.close()
        local.close()
    for theirs, ours in zip([*remote, *cut_remote], [*mine, *cut_local], strict=True):
        assert theirs.logprob == pytest.approx(ours.logprob, abs=1e-3)
        assert theirs.is_greedy == ours.is_greedy
        assert theirs.input_tokens == ours.input_tokens
    assert remote[0].is_greedy is True and remote[1].is_greedy is False
    assert cut_remote[0].input_tokens == 5
    assert rolling[0][0] == pytest.approx(rolling[1][0], abs=1e-3) and rolling[0][0] < 0


def test_a_server_without_prompt_logprobs_fails_with_its_answer() -> None:
    """A server that ignores echo/logprobs (as transformers serve does) fails the pass with
    an ExperimentError quoting its answer, not with a wrong score."""
    from llenergymeasure_contract.errors import ExperimentError
    from llenergymeasure_harness.serving.backends import EndpointBackend
    from llenergymeasure_harness.testing.fake_sse_server import FakeSSEBehaviour, FakeSSEServer

    with FakeSSEServer(FakeSSEBehaviour(model="org/m")) as srv:
        cfg = endpoint_config(Path("org/m"), srv.base_url, completions_logprobs=True)
        backend = EndpointBackend()
        backend.load(cfg)
        with pytest.raises(ExperimentError, match="without the prompt's log-probabilities"):
            backend.loglikelihood([ScoreRequest([1, 2], [3])], batch_size=1, max_length=8)
    (sent,) = srv.behaviour.requests
    assert sent["prompt"] == [1, 2, 3] and sent["echo"] is True
    assert sent["logprobs"] == 1 and sent["max_tokens"] == 1 and sent["temperature"] == 0.0


def test_a_chat_only_endpoint_refuses_a_multiple_choice_task_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llem run`` of a multiple-choice task on an endpoint without completions_logprobs
    exits 2 before anything runs, naming the task, the backend and the key that enables it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").symlink_to(EXAMPLES)
    Path("study.yaml").write_text(
        "model: org/m\nbackend: endpoint\nendpoint: {url: http://127.0.0.1:9}\n"
        "quality: {tasks: [tasks/facts_mc.yaml]}\n"
    )
    capsys.readouterr()
    code = main(["run", "study.yaml", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "'llem_facts_mc'" in err and "backend endpoint" in err
    assert "endpoint.completions_logprobs: true" in err
    assert "Traceback" not in err


def test_server_mode_scores_on_vllm_serve_and_refuses_transformers_serve() -> None:
    """Server mode: vllm serve returns prompt log-probabilities (a multiple-choice hub task
    loads); transformers serve does not (refused, naming it)."""
    from llenergymeasure_contract.evaluation import quality_problem

    base = {"gpus": [0], "server": {}, "quality": {"tasks": ["hellaswag"]}}
    vllm = ExperimentConfig.model_validate({"model": "org/m", "backend": "vllm", **base})
    assert quality_problem(vllm) is None
    with pytest.raises(ValueError, match=r"pytorch in server mode \(transformers serve\)"):
        ExperimentConfig.model_validate({"model": "org/m", "backend": "pytorch", **base})


def test_completions_logprobs_left_out_of_the_config_hash_at_its_default() -> None:
    """endpoint.completions_logprobs: false is not dumped (earlier endpoint results keep their
    config hash); true is."""
    off = endpoint_config(Path("org/m"), "http://127.0.0.1:9")
    on = endpoint_config(Path("org/m"), "http://127.0.0.1:9", completions_logprobs=True)
    assert "completions_logprobs" not in off.model_dump()["endpoint"]
    assert on.model_dump()["endpoint"]["completions_logprobs"] is True


@pytest.mark.torch
@pytest.mark.slow
def test_llem_run_scores_multiple_choice_through_an_endpoint_like_lm_eval(
    smollm2_dir: Path, reference_server: str, tmp_path: Path
) -> None:
    """``llem run study.yaml --runner local`` with backend endpoint and
    completions_logprobs: true against the reference server: exit 0, and both local tasks'
    scores (multiple choice by log-likelihood, generation) equal lm-eval's hf model's on the
    same model, items and few-shot setting."""
    (tmp_path / "tasks").symlink_to(EXAMPLES)
    study = endpoint_quality_study(
        "quality-endpoint", str(smollm2_dir), reference_server, limit=LIMIT
    )
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(REPO / p) for p in ("contract", "harness", "orchestrator")
        ),
        "LLEM_USER_CONFIG": str(tmp_path / "no-user-config.yaml"),
    }
    proc = subprocess.run(
        ["llem", "run", "study.yaml", "--runner", "local", "--no-gaps", "--yes"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = sorted((tmp_path / "results").glob("*/runs/*/result.json"))
    r = json.loads(path.read_text())
    ev = r["evaluation"]
    assert r["timings"]["evaluation_s"] == ev["duration_s"] > 0
    assert ev["input_tokens"] > 0 and ev["output_tokens"] > 0
    print("endpoint vs lm-eval hf:", assert_scores_equal_hf(r, smollm2_dir, LIMIT))


@pytest.mark.torch
@pytest.mark.slow
def test_vllm_server_mode_scores_multiple_choice_like_lm_eval(
    smollm2_dir: Path, reference_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM in server mode runs a multiple-choice task through the real ServerBackend, with
    the reference server in place of the ``vllm serve`` process: lm-eval's hf scores."""
    import time

    from llenergymeasure_harness.evaluation import run_evaluation
    from llenergymeasure_harness.serving import backends as serving_backends

    launched: list[list[str]] = []

    class ReferenceServe:
        """Stands in for ManagedServer: the argv is recorded, the reference server answers."""

        def __init__(self, argv: list[str], **_: Any) -> None:
            launched.append(argv)
            self.base_url = reference_server

        def start(self) -> None:
            pass

        def wait_healthy(self, timeout_s: float) -> float:
            return 0.0

        def stop(self, grace_s: float = 0.0) -> int:
            return 0

    monkeypatch.setattr(serving_backends, "ManagedServer", ReferenceServe)
    cfg = ExperimentConfig.model_validate(
        {
            "model": str(smollm2_dir),
            "backend": "vllm",
            "precision": "float32",
            "server": {},
            "quality": {"tasks": [str(EXAMPLES / "facts_mc.yaml")], "limit": LIMIT},
        }
    )
    backend = serving_backends.ServerBackend()
    backend.output_dir = tmp_path
    backend.load(cfg)
    try:
        ev = run_evaluation(cfg, backend, meter=None, sync=None, clock=time.perf_counter)
    finally:
        backend.close()
    assert "serve" in launched[0]
    (task,) = ev.tasks
    hf = hf_scores(smollm2_dir, "float32", limit=LIMIT)["llem_facts_mc"]
    assert task.n_items == LIMIT
    for key, value in task.metrics.items():
        assert value == pytest.approx(hf[key]), key
