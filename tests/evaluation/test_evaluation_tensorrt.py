"""quality: on TensorRT-LLM: the backend's evaluation methods against the fake engine
(context logits, stop strings), the refusal of an engine built without context logits, and a
whole experiment whose evaluation pass has its own energy window."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.cli import main
from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure_contract.evaluation import quality_problem
from llenergymeasure_harness.backends.base import Evaluable, ScoreRequest, TextRequest
from llenergymeasure_harness.backends.tensorrt import TensorRTBackend
from llenergymeasure_harness.experiment import Deps, run_experiment
from llenergymeasure_harness.testing.engines import FakeTRTLLM, FakeTRTLLMBehaviour
from llenergymeasure_harness.testing.engines.fake_tensorrt_llm import FAVOURITE_LOGIT
from llenergymeasure_harness.testing.fake_nvml import FakeNvml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "quality"
VOCAB = 512
GATHER = {"build_args": {"gather_context_logits": True}, "max_input_len": 2048}


@pytest.fixture
def fake() -> Iterator[FakeTRTLLM]:
    controller = FakeTRTLLM(FakeTRTLLMBehaviour(step_time_s=0.01, build_time_s=5.0))
    with controller.installed():
        yield controller


def trt_config(model: str, tensorrt: dict[str, Any], **quality: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "backend": "tensorrt",
            "n_prompts": 4,
            "max_input_tokens": 8,
            "max_output_tokens": 4,
            "tensorrt": tensorrt,
            "quality": {
                "tasks": [str(EXAMPLES / "facts_mc.yaml"), str(EXAMPLES / "facts_gen.yaml")],
                "limit": 3,
                **quality,
            },
        }
    )


def write_model(folder: Path) -> Path:
    """A config.json the fake engine and the architecture reader accept (no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", '
        f'"vocab_size": {VOCAB}, "hidden_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128, '
        '"max_position_embeddings": 2048}'
    )
    return folder


def expected_logprob(tokens: list[int]) -> float:
    """The fake's log-probability of ``tokens`` (each favoured when divisible by 3)."""
    norm = math.log(math.exp(FAVOURITE_LOGIT) + VOCAB - 1)
    return sum((FAVOURITE_LOGIT if t % 3 == 0 else 0.0) - norm for t in tokens)


def test_tensorrt_backend_is_evaluable() -> None:
    """The TensorRT-LLM backend implements the evaluation protocol."""
    assert isinstance(TensorRTBackend(), Evaluable)


@pytest.mark.parametrize(
    "tensorrt", [{"trtllm_backend": "pytorch"}, GATHER], ids=["pytorch-flow", "engine-gathers"]
)
def test_scores_continuations_from_context_logits(
    fake: FakeTRTLLM, tmp_path: Path, tensorrt: dict[str, Any]
) -> None:
    """loglikelihood prefills context + continuation with one greedy token, asks for the
    context logits and sums the continuation's log-softmax; greedy only when every token is
    its row's argmax; each request has its own cache salt; max_length cuts from the left."""
    model = write_model(tmp_path / "m")
    backend = TensorRTBackend(
        clock=fake.behaviour.clock, workdir=tmp_path / "w", engine_cache_dir=tmp_path / "c"
    )
    backend.load(trt_config(str(model), tensorrt))
    try:
        fake.requests.clear()
        fake.cache_salts.clear()
        reqs = [
            ScoreRequest([5, 6, 7], [9, 12]),
            ScoreRequest([5, 6], [10]),
            ScoreRequest([4], [3]),
        ]
        scores = backend.loglikelihood(reqs, batch_size=2, max_length=2048)
        assert scores[0].logprob == pytest.approx(expected_logprob([9, 12]))
        assert scores[0].is_greedy is True and scores[0].input_tokens == 5
        assert scores[1].logprob == pytest.approx(expected_logprob([10]))
        assert scores[1].is_greedy is False and scores[1].input_tokens == 3
        assert [ids for ids, _ in fake.requests] == [[5, 6, 7, 9, 12], [5, 6, 10], [4, 3]]
        params = [p for _, p in fake.requests]
        assert all(p.return_context_logits and p.max_tokens == 1 for p in params)
        assert all(p.top_k == 1 and not p.prompt_logprobs for p in params)
        assert len(set(fake.cache_salts)) == 3  # no KV reuse between scored requests
        fake.requests.clear()
        backend.loglikelihood([ScoreRequest(list(range(3, 13)), [15])], batch_size=1, max_length=4)
        assert fake.requests[0][0] == [10, 11, 12, 15]
    finally:
        backend.close()
    if "build_args" in tensorrt:
        assert fake.builds[-1]["build_config"]["gather_context_logits"] is True


def test_an_engine_without_context_logits_fails_loudly(fake: FakeTRTLLM, tmp_path: Path) -> None:
    """Asked to score on an engine built without gather_context_logits, the engine's own
    error comes back (the load-time rule keeps studies from getting here)."""
    model = write_model(tmp_path / "m")
    cfg = ExperimentConfig.model_validate(
        {"model": str(model), "backend": "tensorrt", "n_prompts": 4, "max_input_tokens": 8}
    )
    backend = TensorRTBackend(clock=fake.behaviour.clock, workdir=tmp_path / "w")
    backend.load(cfg)
    try:
        with pytest.raises(RuntimeError, match="gather_context_logits"):
            backend.loglikelihood([ScoreRequest([5, 6], [9])], batch_size=1, max_length=64)
    finally:
        backend.close()


def test_generates_with_stop_strings_greedy(fake: FakeTRTLLM, tmp_path: Path) -> None:
    """generate_texts hands stop strings and max_new_tokens to SamplingParams (greedy is
    top_k=1, sampling passes the temperature) and returns the text and token count."""
    model = write_model(tmp_path / "m")
    backend = TensorRTBackend(clock=fake.behaviour.clock, workdir=tmp_path / "w")
    backend.load(trt_config(str(model), {"trtllm_backend": "pytorch"}))
    try:
        fake.requests.clear()
        out = backend.generate_texts(
            [TextRequest([5, 6, 7], 3, ("\n",)), TextRequest([8], 2, (), 0.7)],
            batch_size=4,
            tokenizer=None,
        )
        assert [(o.text, o.output_tokens) for o in out] == [("xxx", 3), ("xx", 2)]
        (ids0, p0), (_, p1) = fake.requests
        assert ids0 == [5, 6, 7] and p0.stop == ["\n"] and p0.max_tokens == 3
        assert p0.top_k == 1 and p0.temperature is None
        assert p1.stop is None and p1.temperature == 0.7 and p1.top_k is None
        assert not p0.return_context_logits
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("tensorrt", "refused"),
    [({"max_input_len": 2048}, True), (GATHER, False), ({"trtllm_backend": "pytorch"}, False)],
    ids=["engine", "engine-gathers", "pytorch-flow"],
)
def test_loglikelihood_tasks_need_context_logits_at_load(
    tensorrt: dict[str, Any], refused: bool
) -> None:
    """A log-likelihood hub task on a TensorRT engine without gather_context_logits is
    refused at load naming the task, the backend and both fixes; generation tasks are not."""
    base = {"model": "org/m", "backend": "tensorrt", "tensorrt": tensorrt}
    cfg = ExperimentConfig.model_validate({**base, "quality": {"tasks": ["gsm8k"]}})
    assert quality_problem(cfg) is None
    if refused:
        with pytest.raises(ValueError, match="hellaswag") as err:
            ExperimentConfig.model_validate({**base, "quality": {"tasks": ["hellaswag"]}})
        assert "backend tensorrt" in str(err.value)
        assert "gather_context_logits: true" in str(err.value)
        assert "trtllm_backend: pytorch" in str(err.value)
    else:
        ExperimentConfig.model_validate({**base, "quality": {"tasks": ["hellaswag"]}})


@pytest.mark.parametrize("gathers", [False, True], ids=["plain-engine", "engine-gathers"])
def test_cli_checks_a_multiple_choice_task_file_against_the_engine(
    gathers: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`llem run study.yaml --dry-run` with the shipped multiple-choice task on backend
    tensorrt: a plain engine exits 2 naming the task and the fix; an engine built with
    gather_context_logits plans the run (exit 0)."""
    monkeypatch.chdir(tmp_path)
    model = write_model(tmp_path / "model")
    section = "{max_input_len: 2048, build_args: {gather_context_logits: true}}"
    if not gathers:
        section = "{max_input_len: 2048}"
    Path("s.yaml").write_text(
        f"model: {model}\nbackend: tensorrt\ntensorrt: {section}\n"
        f"quality: {{tasks: [{EXAMPLES / 'facts_mc.yaml'}]}}\n"
    )
    capsys.readouterr()
    code = main(["run", "s.yaml", "--dry-run"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if gathers:
        assert code == 0, err
        return
    assert code == 2, err
    assert "llem_facts_mc" in err and "backend tensorrt" in err
    assert "gather_context_logits: true" in err and "trtllm_backend: pytorch" in err


@pytest.mark.parametrize(
    ("tensorrt", "quality", "message"),
    [
        ({}, {}, "tensorrt.max_input_len: 2048"),
        ({"max_input_len": 256}, {}, "quality.max_length: 256"),
        ({"max_input_len": 2048, "max_seq_len": 2048}, {}, "tensorrt.max_seq_len above it"),
        ({"trtllm_backend": "pytorch", "max_num_tokens": 1024}, {}, "enable_chunked_prefill"),
        ({"trtllm_backend": "pytorch", "max_num_tokens": 1024}, {"max_length": 1024}, None),
        ({}, {"max_length": 512}, None),
    ],
    ids=["input-from-max-input-tokens", "input-len", "seq-len", "num-tokens", "fits", "small"],
)
def test_evaluation_prompts_must_fit_the_engine_limits(
    tensorrt: dict[str, Any], quality: dict[str, Any], message: str | None
) -> None:
    """TensorRT-LLM refuses prompts over its build limits instead of cutting them, so a
    quality.max_length above max_input_len, max_seq_len or (unchunked) max_num_tokens is
    refused at load with both fixes; limits that hold it pass."""
    data = {
        "model": "org/m",
        "backend": "tensorrt",
        "tensorrt": tensorrt,
        "quality": {"tasks": ["gsm8k"], **quality},
    }
    if message is None:
        ExperimentConfig.model_validate(data)
        return
    with pytest.raises(ValueError, match=r"quality\.max_length") as err:
        ExperimentConfig.model_validate(data)
    assert message in str(err.value)


def test_evaluation_pass_on_fake_tensorrt_in_its_own_window(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    """A whole experiment on the (fake) TensorRT-LLM PyTorch flow with both local tasks: the
    result's evaluation block is filled from lm-eval, its energy is 300 W x its own window
    (apart from the measured window), and the engine saw scoring and generation requests."""
    fake = FakeTRTLLM(FakeTRTLLMBehaviour(step_time_s=0.05))
    clock = fake.behaviour.clock
    config = ExperimentConfig.model_validate(
        {
            "model": str(smollm2_dir),
            "backend": "tensorrt",
            "n_prompts": 8,
            "max_input_tokens": 16,
            "max_output_tokens": 8,
            "baseline": {"enabled": False},
            "energy": {"sampler": "nvml"},
            "tensorrt": {"trtllm_backend": "pytorch", "max_batch_size": 4},
            "quality": {
                "tasks": [str(EXAMPLES / "facts_mc.yaml"), str(EXAMPLES / "facts_gen.yaml")],
                "limit": 3,
                "batch_size": 4,
            },
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    env = HarnessEnv(config=config, run_id="trt-q", results_dir=str(out))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: TensorRTBackend(clock=clock, workdir=tmp_path / "w"),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        result = run_experiment(env, deps)
    ev = result.evaluation
    assert ev is not None
    assert {t.task for t in ev.tasks} == {"llem_facts_mc", "llem_facts_gen"}
    assert ev.n_items == 6 and ev.input_tokens > 0 and ev.output_tokens > 0
    assert ev.duration_s > 0 and ev.gpu_energy_j == pytest.approx(300.0 * ev.duration_s)
    measured_s = result.throughput.duration_s
    assert result.energy.gpu_energy_j == pytest.approx(300.0 * measured_s, rel=1e-3)
    assert result.energy.gpu_energy_j != pytest.approx(ev.gpu_energy_j)
    assert result.timings.evaluation_s == ev.duration_s
    assert ev.j_per_item == pytest.approx(ev.gpu_energy_j / 6)
    mc = next(t for t in ev.tasks if t.task == "llem_facts_mc")
    assert mc.primary_metric == "acc,none" and mc.n_items == 3
    scored = [p for _, p in fake.requests if p.return_context_logits]
    generated = [p for _, p in fake.requests if p.stop]
    assert scored and generated
