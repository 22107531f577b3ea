"""LoRA adapters in the harness: selection, generated adapters, engines (fakes), accounting."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.harness.conftest import endpoint_lora_config

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure.errors import ConfigError
from llenergymeasure_contract.architecture import resolve_architecture
from llenergymeasure_contract.lora import GenerateSpec, select_adapters
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.backends.engine_common import ModelSource
from llenergymeasure_harness.backends.tensorrt import TensorRTBackend, lora_config_dict
from llenergymeasure_harness.backends.vllm import VLLMBackend, build_engine_args
from llenergymeasure_harness.experiment import Deps, run_experiment
from llenergymeasure_harness.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    module_shapes,
    prepare_adapters,
    write_generated_adapter,
)
from llenergymeasure_harness.prompts import build_requests
from llenergymeasure_harness.serving.client import ClientSettings, StreamingClient
from llenergymeasure_harness.serving.server import serve_command
from llenergymeasure_harness.testing.engines import (
    FakeTRTLLM,
    FakeTRTLLMBehaviour,
    FakeVLLM,
    FakeVLLMBehaviour,
)
from llenergymeasure_harness.testing.fake_nvml import FakeNvml


def _tiny() -> dict[str, Any]:
    arch = resolve_architecture("tiny-llama")
    assert arch is not None
    return dict(arch.hf_config)


TINY = _tiny()


def _lora(count: int = 2, rank: int = 8, **extra: Any) -> dict[str, Any]:
    return {"adapters": [{"generate": {"count": count, "rank": rank}}], **extra}


def _config(backend: str = "vllm", **overrides: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "model": "tiny-llama",
        "load_format": "dummy",
        "backend": backend,
        "n_prompts": 12,
        "max_input_tokens": 8,
        "max_output_tokens": 5,
        "lora": _lora(),
    }
    if backend == "tensorrt":
        base["tensorrt"] = {"trtllm_backend": "pytorch"}
    base.update(overrides)
    return ExperimentConfig(**base)


# --------------------------------------------------------------------------- selection


def test_round_robin_is_exact() -> None:
    """Round robin gives request i adapter i mod n."""
    assert select_adapters(7, ["a", "b", "c"], "round_robin", seed=1) == list("abcabca")


def test_uniform_draws_are_even_and_seeded() -> None:
    """Uniform draws hit every adapter about equally often, the same for the same seed."""
    names = ["a", "b", "c", "d"]
    picks = select_adapters(20_000, names, "uniform", seed=3)
    counts = Counter(picks)
    for n in names:
        assert counts[n] / 20_000 == pytest.approx(0.25, abs=0.015)
    assert picks == select_adapters(20_000, names, "uniform", seed=3)
    assert picks != select_adapters(20_000, names, "uniform", seed=4)


def test_zipf_frequencies_follow_one_over_k_to_the_s() -> None:
    """Zipf draws give adapter k a share of (1/k^s) / sum_j (1/j^s)."""
    names = [f"a{k}" for k in range(1, 6)]
    s = 1.2
    picks = select_adapters(30_000, names, "zipf", seed=0, zipf_s=s)
    counts = Counter(picks)
    norm = sum(1 / k**s for k in range(1, 6))
    for k, n in enumerate(names, start=1):
        assert counts[n] / 30_000 == pytest.approx((1 / k**s) / norm, abs=0.015)


def test_requests_carry_the_policy_adapter_and_warmup_keeps_it() -> None:
    """build_requests names each request's adapter by the policy; without lora: none."""
    cfg = _config("pytorch", gpus=[], lora=_lora(3))
    requests = build_requests(cfg)
    assert [r.adapter for r in requests[:4]] == ["lora-0", "lora-1", "lora-2", "lora-0"]
    assert all(r.adapter is None for r in build_requests(_config("pytorch", gpus=[], lora=None)))


# --------------------------------------------------------------------------- generated


def test_generated_adapter_has_peft_names_and_shapes(tmp_path: Path) -> None:
    """The safetensors file holds lora_A [r, in] and lora_B [out, r] per layer and module."""
    safetensors = pytest.importorskip("safetensors.numpy")
    spec = GenerateSpec(rank=4, target_modules=["q_proj", "v_proj", "down_proj"], seed=7)
    out = write_generated_adapter(tmp_path / "a", TINY, spec, 0, "tiny-llama")
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 4)
    tensors = safetensors.load_file(str(out / ADAPTER_WEIGHTS))
    shapes = module_shapes(TINY)
    layers = TINY["num_hidden_layers"]
    assert len(tensors) == layers * 3 * 2
    a = tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    assert a.shape == (4, shapes["down_proj"][0])
    assert b.shape == (shapes["v_proj"][1], 4)
    assert abs(b).sum() > 0  # B non-zero: the adapter changes outputs


def test_generated_adapters_are_seeded(tmp_path: Path) -> None:
    """The same spec and index give the same bytes; another index gives others."""
    spec = GenerateSpec(rank=2)
    one = write_generated_adapter(tmp_path / "x", TINY, spec, 0, "m")
    two = write_generated_adapter(tmp_path / "y", TINY, spec, 0, "m")
    three = write_generated_adapter(tmp_path / "z", TINY, spec, 1, "m")
    data = [(p / ADAPTER_WEIGHTS).read_bytes() for p in (one, two, three)]
    assert data[0] == data[1] != data[2]


# peft 0.21 still reads transformers' deprecated is_gradient_checkpointing (transformers 5).
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_peft_loads_generated_adapters_and_outputs_change(tmp_path: Path) -> None:
    """peft loads two generated adapters onto the tiny model; each changes the greedy output."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(TINY)
    model_type = cfg.pop("model_type")
    cfg.pop("torch_dtype", None)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.inference_mode():
        expected = base.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()
    adapters = prepare_adapters(_config("pytorch", gpus=[]), tmp_path)
    first, second = adapters.adapters
    model = peft.PeftModel.from_pretrained(base, first.path, adapter_name=first.name)
    model.load_adapter(second.path, adapter_name=second.name)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.repeat(3, 1),
            max_new_tokens=6,
            do_sample=False,
            adapter_names=["lora-0", "lora-1", "__base__"],
        ).tolist()
    assert out[2] == expected
    assert out[0] != expected and out[1] != expected and out[0] != out[1]
    adapters.close()
    assert adapters.workdir is None


# --------------------------------------------------------------------------- vLLM (fake)


def test_vllm_engine_args_enable_lora() -> None:
    """lora: becomes enable_lora, max_loras (default all), max_lora_rank rounded to vLLM's."""
    cfg = _config(lora=_lora(3, rank=12, max_cpu_loras=8))
    args = build_engine_args(cfg, ModelSource(model="m", architecture=None, dummy_dir=None))
    assert (args["enable_lora"], args["max_loras"], args["max_lora_rank"]) == (True, 3, 16)
    assert args["max_cpu_loras"] == 8
    plain = build_engine_args(
        _config(lora=None), ModelSource(model="m", architecture=None, dummy_dir=None)
    )
    assert "enable_lora" not in plain


def test_vllm_sends_one_lora_request_per_request(tmp_path: Path) -> None:
    """Every request reaches add_request with its adapter's LoRARequest (name, id, path)."""
    fake = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.01))
    cfg = _config()
    with fake.installed():
        backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path)
        backend.load(cfg)
        records = backend.run(build_requests(cfg))
        lora = [r for _, r in fake.lora_requests]
        assert [r.lora_name for r in lora] == ["lora-0", "lora-1"] * 6
        assert {r.lora_name: r.lora_int_id for r in lora} == {"lora-0": 1, "lora-1": 2}
        assert all((Path(r.lora_path) / ADAPTER_CONFIG).is_file() for r in lora)
        assert len(records) == 12
        assert all(r.output_sha256 is not None for r in records)  # digest of streamed ids
        backend.close()
    assert not Path(lora[0].lora_path).exists()  # generated adapters are removed on close


def test_vllm_fake_refuses_rank_above_max_lora_rank(tmp_path: Path) -> None:
    """An adapter directory whose rank exceeds max_lora_rank fails in the engine, as in vLLM."""
    big = write_generated_adapter(tmp_path / "big", TINY, GenerateSpec(rank=32), 0, "m")
    cfg = _config(lora={"adapters": [{"path": str(big)}], "max_lora_rank": 16})
    fake = FakeVLLM()
    with fake.installed():
        backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path)
        backend.load(cfg)
        with pytest.raises(Exception, match="greater than max_lora_rank 16"):
            backend.run(build_requests(cfg)[:1])
        backend.close()


def test_harness_accounts_energy_per_adapter(tmp_path: Path) -> None:
    """A whole vLLM experiment (fakes): per-adapter tokens sum to the run's, energy is split by
    output tokens, requests.parquet names every request's adapter."""
    fake = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.05))
    clock = fake.behaviour.clock
    cfg = _config(
        n_prompts=30,
        lora=_lora(3, selection="zipf"),
        baseline={"enabled": False},
        energy={"sampler": "nvml"},
    )
    env = HarnessEnv(config=cfg, run_id="lora", results_dir=str(tmp_path))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: VLLMBackend(clock=clock),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        result = run_experiment(env, deps)
    lora = result.lora
    assert lora is not None and lora.n_adapters == 3 and lora.selection == "zipf"
    shares = lora.per_adapter
    assert sum(s.requests for s in shares) == 30
    assert sum(s.output_tokens for s in shares) == result.throughput.output_tokens
    gross = result.energy.gpu_energy_j
    assert gross is not None
    assert sum(s.energy_j or 0.0 for s in shares) == pytest.approx(gross)
    for s in shares:
        assert s.energy_j == pytest.approx(gross * s.output_tokens / (30 * 5))
    rows = pq.read_table(tmp_path / "requests.parquet").to_pydict()
    expected = [r.adapter for r in build_requests(cfg)]
    assert rows["adapter"] == expected
    assert Counter(expected) == {s.adapter: s.requests for s in shares}


# --------------------------------------------------------------------------- server, client


def test_vllm_serve_command_serves_the_adapters() -> None:
    """vllm serve gets --enable-lora, the knobs and one --lora-modules name=path per adapter."""
    cfg = _config(server={}, lora=_lora(2, max_loras=1, max_cpu_loras=2))
    argv = serve_command(cfg, 8000, lora_modules=[("lora-0", "/a/0"), ("lora-1", "/a/1")])
    i = argv.index("--lora-modules")
    assert argv[i + 1 : i + 3] == ["lora-0=/a/0", "lora-1=/a/1"]
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-loras") + 1] == "1"
    assert argv[argv.index("--max-lora-rank") + 1] == "8"
    assert argv[argv.index("--max-cpu-loras") + 1] == "2"


def test_client_sends_the_adapter_as_the_model() -> None:
    """Over HTTP a request's model field is its adapter's served name (the base otherwise)."""
    client = StreamingClient(
        ClientSettings(base_url="http://x", model="base"), prompt_of=lambda r: "p"
    )
    with_adapter = GenerationRequest(0, [1, 2], 3, adapter="lora-1")
    assert client._payload(with_adapter, None)["model"] == "lora-1"
    assert client._payload(GenerationRequest(1, [1], 3), None)["model"] == "base"


# --------------------------------------------------------------------------- TensorRT-LLM (fake)


def test_tensorrt_passes_lora_config_and_requests(tmp_path: Path) -> None:
    """TensorRT-LLM gets lora_config (rank, slots, modules) and a LoRARequest per request."""
    cfg = _config("tensorrt", lora=_lora(2, rank=8, max_cpu_loras=4))
    assert lora_config_dict(cfg) == {
        "lora_dir": [],
        "max_lora_rank": 8,
        "max_loras": 2,
        "lora_target_modules": ["attn_q", "attn_v"],
        "max_cpu_loras": 4,
    }
    fake = FakeTRTLLM(FakeTRTLLMBehaviour())
    with fake.installed():
        backend = TensorRTBackend(clock=fake.behaviour.clock, workdir=tmp_path)
        backend.load(cfg)
        records = backend.run(build_requests(cfg))
        backend.close()
    assert len(records) == 12
    assert fake.llm_kwargs[-1]["lora_config"].max_lora_rank == 8
    names = [r.lora_name for r in fake.lora_requests if r is not None]
    assert names == ["lora-0", "lora-1"] * 6


def test_tensorrt_fake_refuses_a_lora_request_without_lora_config() -> None:
    """The fake, like TensorRT-LLM, refuses a LoRARequest when the LLM has no lora_config."""
    from llenergymeasure_harness.testing.engines.fake_tensorrt_llm import LoRARequest

    fake = FakeTRTLLM(FakeTRTLLMBehaviour())
    with fake.installed():
        import tensorrt_llm

        llm = tensorrt_llm.LLM("m", skip_tokenizer_init=True)
        with pytest.raises(ValueError, match="without lora_config"):
            asyncio.run(_one(llm, LoRARequest("a", 1, "/nowhere")))


async def _one(llm: Any, lora: Any) -> Any:
    import tensorrt_llm

    return llm.generate_async(
        [5, 6], tensorrt_llm.SamplingParams(end_id=2, max_tokens=2), lora_request=lora
    )


# --------------------------------------------------------------------------- PyTorch (peft)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_pytorch_backend_mixes_adapters_in_a_batch() -> None:
    """The PyTorch backend loads both adapters with peft and serves a batch mixing them and
    the base model; adapter rows differ from the base run's, base rows do not."""
    pytest.importorskip("peft")
    from llenergymeasure_harness.backends.pytorch import PyTorchBackend

    def run(lora: dict[str, Any] | None) -> list[str | None]:
        cfg = _config(
            "pytorch",
            gpus=[],
            precision="float32",
            n_prompts=4,
            pytorch={"batch_size": 4},
            lora=lora,
        )
        requests = build_requests(cfg)
        if lora is not None:  # the last request goes to the base model
            requests[-1] = GenerationRequest(3, requests[-1].prompt_token_ids, 5)
        backend = PyTorchBackend()
        backend.load(cfg)
        try:
            return [r.output_sha256 for r in backend.run(requests)]
        finally:
            backend.close()

    base = run(None)
    modules = ["q_proj", "v_proj", "o_proj", "down_proj"]
    mixed = run({"adapters": [{"generate": {"count": 2, "rank": 8, "target_modules": modules}}]})
    # one batch: lora-0, lora-1, lora-0, base
    assert all(h is not None for h in base + mixed)
    assert [a != b for a, b in zip(base, mixed, strict=True)] == [True, True, True, False]


# --------------------------------------------------------------------------- endpoint


def test_endpoint_sends_each_adapter_name_as_the_model() -> None:
    """backend: endpoint sends each request to its served adapter by name, and refuses at
    load an adapter the server does not serve."""
    from llenergymeasure_harness.lora import assign_adapters
    from llenergymeasure_harness.serving.backends import EndpointBackend
    from llenergymeasure_harness.testing.fake_sse_server import FakeSSEBehaviour, FakeSSEServer

    behaviour = FakeSSEBehaviour(model="base", lora_models=("sql", "chat"))
    with FakeSSEServer(behaviour) as srv:
        cfg = endpoint_lora_config(srv.base_url)
        backend = EndpointBackend()
        backend.load(cfg)
        requests = [GenerationRequest(i, [5, 6, 7, 8], 3) for i in range(4)]
        records = backend.run(assign_adapters(cfg, requests))
        assert [r.output_tokens for r in records] == [3] * 4
        # (the first request is the client's output-length probe, to the base model)
        assert [r["model"] for r in behaviour.requests][-4:] == ["sql", "chat", "sql", "chat"]
        missing = ExperimentConfig.model_validate(
            {**cfg.model_dump(), "lora": {"adapters": [{"served": "legal"}]}}
        )
        with pytest.raises(ConfigError, match="not LoRA adapter"):
            EndpointBackend().load(missing)
