"""The evaluation methods of the engines (vLLM against its fake) and the evaluation window."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure_harness.backends.base import Evaluable, ScoreRequest, TextRequest
from llenergymeasure_harness.backends.pytorch import PyTorchBackend
from llenergymeasure_harness.backends.vllm import VLLMBackend
from llenergymeasure_harness.testing.engines import FakeVLLM, FakeVLLMBehaviour
from llenergymeasure_harness.testing.engines.fake_vllm import fake_prompt_logprob

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "quality"


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    controller = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.01))
    with controller.installed():
        yield controller


def vllm_config(model: str, **quality: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "backend": "vllm",
            "n_prompts": 4,
            "max_input_tokens": 8,
            "max_output_tokens": 4,
            "quality": {
                "tasks": [str(EXAMPLES / "facts_mc.yaml"), str(EXAMPLES / "facts_gen.yaml")],
                "limit": 3,
                **quality,
            },
        }
    )


def write_model(folder: Path) -> None:
    """A config.json the fake engine and the architecture reader accept (no weights)."""
    (folder / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, '
        '"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, '
        '"num_key_value_heads": 4, "intermediate_size": 128, "max_position_embeddings": 2048}'
    )


def test_engines_are_evaluable() -> None:
    """The PyTorch and vLLM backends implement the evaluation protocol."""
    assert isinstance(PyTorchBackend(), Evaluable)
    assert isinstance(VLLMBackend(), Evaluable)


def test_vllm_scores_continuations_from_prompt_logprobs(fake: FakeVLLM, tmp_path: Path) -> None:
    """loglikelihood sums the continuation's prompt log-probabilities (one generated token,
    greedy sampling) and is greedy only when each of its tokens ranks first."""
    write_model(tmp_path)
    backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path / "w")
    backend.load(vllm_config(str(tmp_path)))
    try:
        reqs = [ScoreRequest([5, 6, 7], [9, 12]), ScoreRequest([5, 6], [10])]
        scores = backend.loglikelihood(reqs, batch_size=8, max_length=2048)
        want = fake_prompt_logprob(9, 3).logprob + fake_prompt_logprob(12, 4).logprob
        assert scores[0].logprob == pytest.approx(want)
        assert scores[0].is_greedy is True  # 9 and 12 rank first in the fake
        assert scores[1].is_greedy is False and scores[1].input_tokens == 3
        params = [p for _, _, p in fake.added_requests]
        assert all(p.prompt_logprobs == 1 and p.max_tokens == 1 for p in params)
        assert all(p.temperature == 0.0 for p in params)
        # max_length cuts from the left
        fake.added_requests.clear()
        backend.loglikelihood([ScoreRequest(list(range(3, 13)), [15])], batch_size=1, max_length=4)
        assert fake.added_requests[0][1] == [10, 11, 12, 15]
    finally:
        backend.close()


def test_vllm_generates_with_its_own_stop_strings(fake: FakeVLLM, tmp_path: Path) -> None:
    """generate_texts hands stop strings and max_new_tokens to SamplingParams."""
    write_model(tmp_path)
    backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path / "w")
    backend.load(vllm_config(str(tmp_path)))
    try:
        out = backend.generate_texts(
            [TextRequest([5, 6, 7], 3, ("\n",)), TextRequest([8], 2)], batch_size=4, tokenizer=None
        )
        assert [o.output_tokens for o in out] == [3, 2]
        params = [p for _, _, p in fake.added_requests]
        assert params[0].stop == ["\n"] and params[0].max_tokens == 3
        assert params[1].stop is None and params[0].temperature == 0.0
    finally:
        backend.close()


@dataclass
class _Window:
    start_s: float
    end_s: float
    gpu_energy_j: float | None


class _Meter:
    """Records the windows it was asked for; each lasts 2 s and costs 300 J."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin_window(self, name: str, sync: Any = None) -> None:
        self.calls.append(f"begin:{name}")

    def end_window(self, name: str, sync: Any = None) -> _Window:
        self.calls.append(f"end:{name}")
        return _Window(10.0, 12.0, 300.0)


def test_evaluation_pass_on_fake_vllm_in_its_own_window(
    fake: FakeVLLM, tmp_path: Path, smollm2_dir: Path
) -> None:
    """run_evaluation scores both local tasks through lm-eval on the (fake) vLLM engine in an
    'evaluation' window, and derives J per item, J per correct and quality_per_joule."""
    from llenergymeasure_harness.evaluation import run_evaluation

    cfg = vllm_config(str(smollm2_dir), batch_size=4)
    backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path / "w")
    backend.load(cfg)
    meter = _Meter()
    try:
        ev = run_evaluation(cfg, backend, meter=meter, sync=None, clock=lambda: 0.0)
    finally:
        backend.close()
    assert meter.calls == ["begin:evaluation", "end:evaluation"]
    assert {t.task for t in ev.tasks} == {"llem_facts_mc", "llem_facts_gen"}
    assert ev.n_items == 6 and ev.gpu_energy_j == 300.0 and ev.duration_s == 2.0
    assert ev.j_per_item == pytest.approx(50.0)
    assert ev.correct is not None
    if ev.correct:
        assert ev.j_per_correct == pytest.approx(300.0 / ev.correct)
        assert ev.quality_per_joule == pytest.approx(ev.correct / 300.0)
    assert any(p.prompt_logprobs == 1 for _, _, p in fake.added_requests)
    assert any(p.stop for _, _, p in fake.added_requests)


def test_assemble_counts_correct_answers_by_the_accuracy_metric() -> None:
    """correct = accuracy metric x items (acc before acc_norm; a named filter when no 'none');
    quality_per_joule = correct / J; None energy gives None efficiency figures."""
    pytest.importorskip("lm_eval")
    from llenergymeasure_harness.evaluation import assemble

    out = {
        "results": {
            "mc": {"alias": "mc", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.75},
            "gen": {"exact_match,strip": 0.25, "exact_match_stderr,strip": 0.2},
            "ppl": {"word_perplexity,none": 30.0},
        },
        "n-samples": {
            "mc": {"original": 40, "effective": 20},
            "gen": {"original": 40, "effective": 8},
            "ppl": {"original": 5, "effective": 5},
        },
        "versions": {"mc": 1.0, "gen": "2"},
        "configs": {"mc": {"output_type": "multiple_choice"}},
    }
    ev = assemble(out, energy_j=40.0, duration_s=4.0, input_tokens=10, output_tokens=2, settings={})
    by = {t.task: t for t in ev.tasks}
    assert by["mc"].primary_metric == "acc,none" and by["mc"].correct == 10.0
    assert by["mc"].stderr == {"acc,none": 0.1} and by["mc"].version == "1.0"
    assert by["gen"].primary_metric == "exact_match,strip" and by["gen"].correct == 2.0
    assert by["ppl"].correct is None
    assert ev.correct == 12.0 and ev.accuracy == pytest.approx(12 / 28)
    assert ev.n_items == 33 and ev.j_per_item == pytest.approx(40 / 33)
    assert ev.j_per_correct == pytest.approx(40 / 12)
    assert ev.quality_per_joule == pytest.approx(12 / 40)
    cpu = assemble(out, energy_j=None, duration_s=4.0, input_tokens=0, output_tokens=0, settings={})
    assert cpu.j_per_item is None and cpu.quality_per_joule is None and cpu.correct == 12.0


@pytest.mark.torch
def test_pytorch_generates_until_a_stop_string_and_scores_like_a_forward_pass(
    smollm2_dir: Path,
) -> None:
    """PyTorch: greedy generation stops at the stop string (the text holds it, the caller
    cuts); a continuation's score is the sum of its tokens' log-softmax, greedy when argmax."""
    import torch
    from transformers import AutoTokenizer

    cfg = ExperimentConfig.model_validate(
        {"model": str(smollm2_dir), "gpus": [], "precision": "float32", "n_prompts": 2}
    )
    backend = PyTorchBackend()
    backend.load(cfg)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    try:
        prompt = "Question: What is the capital of Italy?\nAnswer: Rome\n\n"
        prompt += "Question: What is the capital of France?\nAnswer:"
        ids = tok.encode(prompt)
        (gen,) = backend.generate_texts([TextRequest(ids, 8, ("\n",))], batch_size=1, tokenizer=tok)
        assert gen.text.split("\n")[0].strip() == "Paris"
        assert gen.output_tokens < 8  # stopped at the newline, not at max_new_tokens
        cont = tok.encode(" Paris")
        (score,) = backend.loglikelihood([ScoreRequest(ids, cont)], batch_size=1, max_length=2048)
        with torch.inference_mode():
            logits = backend.model(torch.tensor([ids + cont[:-1]])).logits.float()
        lp = torch.log_softmax(logits, -1)[0, len(ids) - 1 :]
        want = sum(float(lp[i, t]) for i, t in enumerate(cont))
        assert score.logprob == pytest.approx(want, abs=1e-4)
        assert score.is_greedy is True and score.input_tokens == len(ids) + len(cont)
    finally:
        backend.close()


def test_endpoint_generation_task_through_completions(tmp_path: Path, smollm2_dir: Path) -> None:
    """backend endpoint runs a generate_until task through /v1/completions: one request per
    item with the task's stop strings, greedy, the server's usage as output tokens; scoring
    by log-likelihood is refused."""
    from llenergymeasure_harness.evaluation import run_evaluation
    from llenergymeasure_harness.serving.backends import EndpointBackend
    from llenergymeasure_harness.testing.fake_sse_server import FakeSSEBehaviour, FakeSSEServer

    behaviour = FakeSSEBehaviour(model=str(smollm2_dir), stop_after=2)
    with FakeSSEServer(behaviour) as srv:
        cfg = ExperimentConfig.model_validate(
            {
                "model": str(smollm2_dir),
                "backend": "endpoint",
                "gpus": [],
                "endpoint": {"url": srv.base_url},
                "quality": {"tasks": [str(EXAMPLES / "facts_gen.yaml")], "limit": 3},
            }
        )
        backend = EndpointBackend()
        backend.load(cfg)
        try:
            ev = run_evaluation(cfg, backend, meter=None, sync=None, clock=lambda: 0.0)
            with pytest.raises(Exception, match="log-likelihood"):
                backend.loglikelihood([ScoreRequest([1], [2])], batch_size=1, max_length=8)
        finally:
            backend.close()
    sent = [r for r in behaviour.requests if not r.get("stream")]
    assert len(sent) == 3
    assert all(r["stop"][0] == "\n" and r["temperature"] == 0.0 for r in sent)
    assert all(r["max_tokens"] == 8 and isinstance(r["prompt"], str) for r in sent)
    assert "Question:" in sent[0]["prompt"]
    (task,) = ev.tasks
    assert task.task == "llem_facts_gen" and task.n_items == 3
    assert task.metrics == {"exact_match,strip": 0.0}  # the fake answers "xx"
    assert ev.output_tokens == 3 * 2 and ev.input_tokens > 0
