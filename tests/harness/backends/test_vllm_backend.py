"""Contract tests of the vLLM backend against the fake ``vllm`` package (vLLM 0.33.0 shapes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.harness.backends.engine_inputs import engine_config, engine_requests

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.errors import ConfigError, ExperimentError
from llenergymeasure_harness.backends.base import Backend, GenerationRequest
from llenergymeasure_harness.backends.engine_common import (
    EngineOutOfMemoryError,
    UnsupportedModelError,
    prepare_model_source,
)
from llenergymeasure_harness.backends.vllm import (
    VLLMBackend,
    build_engine_args,
    build_sampling_kwargs,
)
from llenergymeasure_harness.testing.engines import FakeVLLM, FakeVLLMBehaviour
from llenergymeasure_harness.testing.engines.fake_vllm import RequestOutputKind


def _config(**overrides: Any) -> ExperimentConfig:
    return engine_config("vllm", **overrides)


_requests = engine_requests


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    controller = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.01))
    with controller.installed():
        yield controller


@pytest.fixture
def backend(fake: FakeVLLM, tmp_path: Path) -> Iterator[VLLMBackend]:
    instance = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path)
    yield instance
    instance.close()


# --------------------------------------------------------------------------- mapping


def test_satisfies_backend_protocol() -> None:
    """VLLMBackend is a Backend in the runtime-checkable protocol's sense."""
    assert isinstance(VLLMBackend(), Backend)
    assert VLLMBackend.name == "vllm"


def test_engine_args_map_every_knob(tmp_path: Path) -> None:
    """Each vllm: knob lands on its EngineArgs field; CUDA graph knobs go to compilation_config."""
    config = _config(
        load_format="auto",
        model="meta-llama/Llama-3.1-8B",
        revision="abc123",
        precision="float16",
        random_seed=7,
        gpus=[0, 1, 2, 3],
        vllm={
            "tensor_parallel_size": 2,
            "pipeline_parallel_size": 2,
            "gpu_memory_utilization": 0.8,
            "max_num_seqs": 64,
            "max_num_batched_tokens": 4096,
            "max_model_len": 2048,
            "enable_chunked_prefill": True,
            "enable_prefix_caching": False,
            "kv_cache_dtype": "fp8",
            "block_size": 32,
            "quantization": "fp8",
            "cudagraph_mode": "PIECEWISE",
            "cudagraph_capture_sizes": [8, 1, 64, 8],
            "async_scheduling": True,
            "speculative_config": {"method": "ngram", "num_speculative_tokens": 4},
            "engine_args": {"swap_space": 0, "disable_custom_all_reduce": True},
        },
    )
    source = prepare_model_source(config, tmp_path)
    args = build_engine_args(config, source)
    assert args == {
        "model": "meta-llama/Llama-3.1-8B",
        "revision": "abc123",
        "dtype": "float16",
        "seed": 7,
        "trust_remote_code": False,
        "load_format": "auto",
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "max_num_seqs": 64,
        "max_num_batched_tokens": 4096,
        "max_model_len": 2048,
        "enable_chunked_prefill": True,
        "enable_prefix_caching": False,
        "kv_cache_dtype": "fp8",
        "block_size": 32,
        "quantization": "fp8",
        "enforce_eager": False,
        "async_scheduling": True,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4},
        "compilation_config": {
            "cudagraph_mode": "PIECEWISE",
            "cudagraph_capture_sizes": [1, 8, 64],
        },
        "disable_log_stats": True,
        "swap_space": 0,
        "disable_custom_all_reduce": True,
    }


def test_unset_optional_knobs_are_left_to_vllm(tmp_path: Path) -> None:
    """Knobs left at None are not passed, so vLLM's own defaults apply to them."""
    config = _config(load_format="auto", model="meta-llama/Llama-3.1-8B")
    args = build_engine_args(config, prepare_model_source(config, tmp_path))
    for absent in (
        "max_num_batched_tokens",
        "max_model_len",
        "enable_chunked_prefill",
        "enable_prefix_caching",
        "block_size",
        "quantization",
        "compilation_config",
        "speculative_config",
        "skip_tokenizer_init",
        "tokenizer",
        "revision",
    ):
        assert absent not in args
    assert args["max_num_seqs"] == 256  # pinned: vLLM's own default depends on the GPU


def test_dummy_builtin_writes_config_dir_and_skips_tokenizer(tmp_path: Path) -> None:
    """Dummy weights of a built-in architecture load from a config-only directory, no tokenizer."""
    config = _config()
    source = prepare_model_source(config, tmp_path)
    args = build_engine_args(config, source)
    written = json.loads((Path(args["model"]) / "config.json").read_text())
    assert written["architectures"] == source.architecture.hf_config["architectures"]  # type: ignore[union-attr]
    assert args["load_format"] == "dummy"
    assert args["skip_tokenizer_init"] is True


def test_dummy_with_tokenizer_keeps_tokenizer(tmp_path: Path) -> None:
    """A configured tokenizer is passed on and the tokenizer is initialised."""
    config = _config(tokenizer="meta-llama/Llama-3.1-8B")
    args = build_engine_args(config, prepare_model_source(config, tmp_path))
    assert args["tokenizer"] == "meta-llama/Llama-3.1-8B"
    assert "skip_tokenizer_init" not in args


def test_enforce_eager_maps_and_adds_no_compilation_config(tmp_path: Path) -> None:
    """enforce_eager is passed through and no CUDA graph settings are sent with it."""
    config = _config(vllm={"enforce_eager": True})
    args = build_engine_args(config, prepare_model_source(config, tmp_path))
    assert args["enforce_eager"] is True
    assert "compilation_config" not in args


def test_sampling_fixed_length_greedy() -> None:
    """ignore_eos fixes the output length: min_tokens = max_tokens; greedy means temperature 0."""
    kwargs = build_sampling_kwargs(_config(), max_new_tokens=5, request_id=3)
    assert kwargs == {
        "max_tokens": 5,
        "min_tokens": 5,
        "ignore_eos": True,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "detokenize": False,
    }


def test_sampling_with_eos_and_seeded_sampling() -> None:
    """Without ignore_eos min_tokens is 0; sampling seeds each request with random_seed + id."""
    config = _config(ignore_eos=False, random_seed=100, decoder={"preset": "standard"})
    kwargs = build_sampling_kwargs(config, max_new_tokens=5, request_id=3)
    assert kwargs["min_tokens"] == 0
    assert kwargs["ignore_eos"] is False
    assert kwargs["temperature"] == 0.7
    assert kwargs["top_k"] == 50
    assert kwargs["seed"] == 103


# --------------------------------------------------------------------------- load / run


def test_load_passes_engine_args_to_vllm_llm(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """load() constructs vllm.LLM once with the mapped arguments and reports LoadInfo."""
    config = _config(vllm={"max_num_seqs": 4, "gpu_memory_utilization": 0.5})
    info = backend.load(config)
    assert len(fake.llm_kwargs) == 1
    sent = fake.llm_kwargs[0]
    assert sent["max_num_seqs"] == 4
    assert sent["gpu_memory_utilization"] == 0.5
    assert sent["load_format"] == "dummy"
    assert info.backend_version == "0.33.0"
    assert info.dtype == "bfloat16"
    assert info.load_duration_s == pytest.approx(fake.behaviour.load_time_s)
    assert info.parameter_count and info.parameter_count > 0
    assert info.devices == [0]
    assert info.engine_build_s is None
    assert info.extra["engine_args"]["max_num_seqs"] == 4
    assert info.extra["vocab_size"] == 2048  # tiny-llama, from vLLM's model config
    assert info.extra["hf_config"]["architectures"] == ["LlamaForCausalLM"]
    assert backend.steady_state_target == 4
    assert backend.warmup_unit == 4


def test_devices_are_the_first_world_size_gpus(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """LoadInfo.devices lists the tp x pp GPUs the engine uses, from config.gpus."""
    info = backend.load(_config(gpus=[0, 1, 2], vllm={"tensor_parallel_size": 2}))
    assert info.devices == [0, 1]


def test_run_counts_tokens_from_engine_outputs(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """Every request gets exactly max_new_tokens output tokens and its prompt length as input."""
    backend.load(_config(vllm={"max_num_seqs": 4}))
    records = backend.run(_requests(10, prompt_len=8, max_new=5))
    assert [r.request_id for r in records] == list(range(10))
    assert all(r.output_tokens == 5 for r in records)
    assert all(r.input_tokens == 8 for r in records)
    assert all(r.finish_reason == "length" for r in records)
    assert all(len(r.token_times_s) == r.output_tokens for r in records)


def test_run_streams_delta_outputs_with_fixed_length_params(
    fake: FakeVLLM, backend: VLLMBackend
) -> None:
    """Requests are rendered token prompts with DELTA output and min_tokens = max_tokens."""
    backend.load(_config(vllm={"max_num_seqs": 4}))
    backend.run(_requests(3))
    assert fake.prompt_forms == ["rendered"] * 3  # not vLLM 0.33's deprecated raw prompt
    request_id, token_ids, params = fake.added_requests[0]
    assert isinstance(request_id, str)
    assert token_ids == [3] * 8
    assert params.output_kind is RequestOutputKind.DELTA
    assert params.max_tokens == params.min_tokens == 5
    assert params.ignore_eos is True
    assert params.detokenize is False


def test_latency_records_follow_engine_steps(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """TTFT and inter-token gaps equal the fake engine's step times on the shared clock."""
    backend.load(_config(vllm={"max_num_seqs": 2}))
    clock = fake.behaviour.clock
    t0 = clock()
    records = backend.run(_requests(4, max_new=3))
    first, second, third = records[0], records[1], records[2]
    # Requests 0 and 1 are admitted in step 1; 2 and 3 wait until 0 and 1 finish (step 3).
    assert first.submit_s == pytest.approx(t0)
    assert first.first_token_s == pytest.approx(t0 + 0.01)
    assert first.token_times_s == pytest.approx([t0 + 0.01, t0 + 0.02, t0 + 0.03])
    assert first.end_s == pytest.approx(t0 + 0.03)
    assert second.token_times_s == first.token_times_s
    assert third.first_token_s == pytest.approx(t0 + 0.04)
    assert third.end_s == pytest.approx(t0 + 0.06)


def test_eos_stops_early_without_ignore_eos(fake: FakeVLLM, tmp_path: Path) -> None:
    """With ignore_eos off, a request that hits EOS reports fewer tokens and reason 'stop'."""
    fake.behaviour.eos_after = 2
    backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path)
    backend.load(_config(ignore_eos=False, vllm={"max_num_seqs": 4}))
    records = backend.run(_requests(2, max_new=5))
    backend.close()
    assert [r.output_tokens for r in records] == [2, 2]
    assert {r.finish_reason for r in records} == {"stop"}


def test_each_run_has_its_own_prefix_cache_salt(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """Warmup cannot pre-fill the measured run's prefix cache: every run() salts its prompts."""
    backend.load(_config(vllm={"max_num_seqs": 4}))
    backend.run(_requests(2))
    backend.run(_requests(2))
    assert fake.cache_salts == ["llem-run-1", "llem-run-1", "llem-run-2", "llem-run-2"]


def test_raw_prompt_when_llm_has_no_renderer(
    fake: FakeVLLM, backend: VLLMBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Releases without LLM._preprocess_cmpl_one get the raw TokensPrompt."""
    backend.load(_config(vllm={"max_num_seqs": 4}))
    monkeypatch.setattr(type(fake.instances[0]), "_preprocess_cmpl_one", None)
    records = backend.run(_requests(2))
    assert fake.prompt_forms == ["raw", "raw"]
    assert [r.output_tokens for r in records] == [5, 5]


def test_max_model_len_cuts_output_and_is_logged(
    fake: FakeVLLM, backend: VLLMBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A request running into max_model_len stops early (as in vLLM) and the backend warns."""
    fake.behaviour.model_max_len = 10  # a model whose context ends 2 tokens after the prompt
    backend.load(_config(vllm={"max_num_seqs": 4}))
    with caplog.at_level("WARNING"):
        records = backend.run(_requests(2, prompt_len=8, max_new=5))
    assert [r.output_tokens for r in records] == [2, 2]
    assert "fewer tokens than requested for 2 of 2" in caplog.text


def test_speculative_bundles_share_a_timestamp(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """Several tokens delivered in one step (speculation) are stamped with that step's time."""
    fake.behaviour.tokens_per_step = 2
    backend.load(_config(vllm={"max_num_seqs": 4}))
    (record,) = backend.run(_requests(1, max_new=4))
    assert record.output_tokens == 4
    assert record.token_times_s[0] == record.token_times_s[1]
    assert record.token_times_s[2] == record.token_times_s[3]
    assert record.token_times_s[2] > record.token_times_s[1]


def test_steady_state_computed_after_run(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """After run() the backend exposes the steady-state window of that run's records."""
    backend.load(_config(n_prompts=40, vllm={"max_num_seqs": 4}))
    records = backend.run(_requests(40, max_new=50))
    window = backend.last_steady_state
    assert window is not None
    assert window.target_concurrency == 4
    assert window.start_s == sorted(r.first_token_s for r in records)[3]  # type: ignore[type-var]
    assert window.mean_concurrency is not None and window.mean_concurrency > 3.5
    assert window.valid is False  # 40 x 50 steps of 10 ms is far below the 30 s minimum
    assert "30 s minimum" in (window.reason or "")


def test_batch_never_filled_is_flagged(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """A KV cache holding fewer sequences than max_num_seqs makes the window invalid."""
    fake.behaviour.kv_capacity_seqs = 2
    fake.behaviour.step_time_s = 1.0
    backend.load(_config(n_prompts=40, vllm={"max_num_seqs": 8}))
    backend.run(_requests(40, max_new=20))
    window = backend.last_steady_state
    assert window is not None and not window.valid
    assert "never filled" in (window.reason or "")


def test_run_before_load_is_an_error(backend: VLLMBackend) -> None:
    """run() without load() fails clearly."""
    with pytest.raises(ExperimentError, match="before load"):
        backend.run(_requests(1))


def test_close_is_idempotent_and_shuts_engine_core(fake: FakeVLLM, tmp_path: Path) -> None:
    """close() shuts the engine core down once and may be called again."""
    backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path)
    backend.load(_config())
    core = fake.instances[0].llm_engine.engine_core
    backend.close()
    backend.close()
    assert core.shutdown_calls == 1


def test_default_dummy_folder_is_stable_across_runs(
    fake: FakeVLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a workdir the dummy config goes to one folder per config under vLLM's cache
    root, the same path in every run (vLLM's compile-cache key holds the model path) and kept
    after close(); the backend's own temporary directory is removed."""
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    paths = []
    for _ in range(2):
        backend = VLLMBackend(clock=fake.behaviour.clock)
        backend.load(_config())
        own = backend._own_workdir
        backend.close()
        assert own is not None and not own.exists()
        paths.append(fake.llm_kwargs[-1]["model"])
    assert paths[0] == paths[1]
    model_dir = Path(paths[0])
    assert model_dir.parent.parent == tmp_path / "vllm" / "llem-dummy-models"
    assert (model_dir / "config.json").is_file()
    other = VLLMBackend(clock=fake.behaviour.clock)
    other.load(_config(model="llama-3.1-8b"))
    other.close()
    assert fake.llm_kwargs[-1]["model"] != paths[0]


# --------------------------------------------------------------------------- errors


def test_oom_on_load_becomes_engine_oom_error(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """torch.cuda.OutOfMemoryError while loading becomes EngineOutOfMemoryError with a hint."""
    fake.behaviour.oom_on_load = True
    with pytest.raises(EngineOutOfMemoryError) as info:
        backend.load(_config())
    assert isinstance(info.value, ExperimentError)
    assert "vLLM ran out of GPU memory during load" in str(info.value)
    assert "max_num_seqs" in (info.value.hint or "")
    # torch.cuda.OutOfMemoryError, or the fake engines' stand-in on a host without torch
    assert type(info.value.__cause__).__name__ in ("OutOfMemoryError", "FakeOutOfMemoryError")


def test_kv_cache_too_small_is_oom(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """vLLM's 'No available memory for the cache blocks' is reported as out of memory."""
    fake.behaviour.kv_cache_too_small = True
    with pytest.raises(EngineOutOfMemoryError, match="cache blocks"):
        backend.load(_config())


def test_engine_core_init_failure(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """The multiprocess 'Engine core initialization failed' is an ExperimentError with a hint."""
    fake.behaviour.engine_init_failure = True
    with pytest.raises(ExperimentError, match="start-up failed") as info:
        backend.load(_config())
    assert not isinstance(info.value, ConfigError)
    assert "root cause" in (info.value.hint or "")


def test_oom_mid_run(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """An OOM raised by an engine step becomes EngineOutOfMemoryError naming the run phase."""
    backend.load(_config(vllm={"max_num_seqs": 2}))
    fake.behaviour.oom_at_step = 2
    with pytest.raises(EngineOutOfMemoryError, match="during run"):
        backend.run(_requests(4))


def test_engine_dead_mid_run(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """EngineDeadError mid-run becomes a plain ExperimentError."""
    backend.load(_config())
    fake.behaviour.engine_dead_at_step = 1
    with pytest.raises(ExperimentError, match="EngineDeadError"):
        backend.run(_requests(2))


def test_unsupported_architecture_is_config_error(fake: FakeVLLM, tmp_path: Path) -> None:
    """vLLM's 'not supported for now' becomes UnsupportedModelError (a ConfigError)."""
    model_dir = tmp_path / "odd-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps({"architectures": ["FancyNewForCausalLM"], "hidden_size": 8})
    )
    backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path)
    with pytest.raises(UnsupportedModelError) as info:
        backend.load(_config(model=str(model_dir), load_format="auto"))
    assert isinstance(info.value, ConfigError)
    assert "does not support the architecture" in str(info.value)
    assert fake.llm_kwargs[0]["model"] == str(model_dir)


def test_rejected_engine_argument_is_config_error(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """A passthrough argument vLLM does not know becomes a ConfigError naming the section."""
    with pytest.raises(ConfigError, match="rejected") as info:
        backend.load(_config(vllm={"engine_args": {"not_a_vllm_arg": 1}}))
    assert "vllm: section" in (info.value.hint or "")


def test_missing_vllm_is_experiment_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without vllm importable, load() says which image to use."""
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ExperimentError, match="not installed") as info:
        VLLMBackend(workdir=tmp_path).load(_config())
    assert "vllm image" in (info.value.hint or "")


def test_wrong_section_is_config_error(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """A config for another backend is refused before anything loads."""
    with pytest.raises(ConfigError, match="not 'vllm'"):
        backend.load(ExperimentConfig(model="tiny-llama", load_format="dummy"))


# --------------------------------------------------------------------------- 0.26 and 0.33


@pytest.mark.parametrize("version", ["0.26.0", "0.33.0"])
def test_both_releases_take_the_rendered_path(version: str, tmp_path: Path) -> None:
    """0.26 and 0.33 both have LLM._preprocess_cmpl_one: prompts go in rendered."""
    controller = FakeVLLM(FakeVLLMBehaviour(version=version))
    with controller.installed():
        backend = VLLMBackend(clock=controller.behaviour.clock, workdir=tmp_path)
        info = backend.load(_config(vllm={"max_num_seqs": 4}))
        records = backend.run(_requests(3))
        backend.close()
    assert info.backend_version == version
    assert info.extra["prompt_path"] == "rendered" and backend.prompt_path == "rendered"
    assert controller.prompt_forms == ["rendered"] * 3
    assert [r.output_tokens for r in records] == [5, 5, 5]


def test_broken_private_renderer_falls_back_to_raw_prompts(tmp_path: Path) -> None:
    """A renderer whose private signature changed: logged, raw TokensPrompt, run completes."""
    controller = FakeVLLM(FakeVLLMBehaviour(renderer="broken"))
    with controller.installed():
        backend = VLLMBackend(clock=controller.behaviour.clock, workdir=tmp_path)
        backend.load(_config(vllm={"max_num_seqs": 4}))
        records = backend.run(_requests(3))
        backend.close()
    assert backend.prompt_path == "raw"
    assert controller.prompt_forms == ["raw"] * 3
    assert controller.cache_salts == ["llem-run-1"] * 3  # the salt travels either way
    assert len(records) == 3


def test_render_prompts_false_forces_the_raw_path(fake: FakeVLLM, tmp_path: Path) -> None:
    """The fallback can be chosen (the real-engine test runs both paths on one release)."""
    backend = VLLMBackend(clock=fake.behaviour.clock, workdir=tmp_path, render_prompts=False)
    info = backend.load(_config(vllm={"max_num_seqs": 4}))
    backend.run(_requests(2))
    backend.close()
    assert info.extra["prompt_path"] == "raw" and fake.prompt_forms == ["raw", "raw"]


def test_num_cached_tokens_become_cached_input_tokens(fake: FakeVLLM, backend: VLLMBackend) -> None:
    """Identical prompts in one run: whole 16-token blocks hit, never the last prompt token."""
    backend.load(_config(vllm={"max_num_seqs": 1}))
    same = [
        GenerationRequest(request_id=i, prompt_token_ids=[7] * 40, max_new_tokens=2)
        for i in range(2)
    ]
    records = backend.run(same)
    assert [r.cached_input_tokens for r in records] == [0, 32]
    exact = [
        GenerationRequest(request_id=i, prompt_token_ids=[9] * 32, max_new_tokens=2)
        for i in range(2)
    ]
    assert [r.cached_input_tokens for r in backend.run(exact)] == [0, 16]


@pytest.mark.parametrize(
    ("root_cause", "expected"),
    [
        (
            "ValueError: No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine.",
            EngineOutOfMemoryError,
        ),
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            EngineOutOfMemoryError,
        ),
    ],
)
@pytest.mark.parametrize("delay_s", [0.0, 0.5])
def test_engine_core_root_cause_in_its_stderr_is_translated(
    fake: FakeVLLM,
    backend: VLLMBackend,
    root_cause: str,
    expected: type[Exception],
    delay_s: float,
) -> None:
    """vLLM's engine core dies in its own process; its stderr names the cause, also when it
    arrives after the front end raised (seen on the H200): OOM is found."""
    fake.behaviour.engine_init_failure = True
    fake.behaviour.engine_init_root_cause = root_cause
    fake.behaviour.engine_init_root_cause_delay_s = delay_s
    with pytest.raises(expected) as info:
        backend.load(_config())
    assert "root cause in the engine process" in str(info.value)
    assert root_cause.split(":", maxsplit=1)[0] in str(info.value)


def test_stderr_tail_passes_everything_through_and_keeps_the_end(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The tee hands every byte on to the real stderr and keeps the last ones."""
    import os
    import time

    from llenergymeasure_harness.backends.engine_common import StderrTail

    tail = StderrTail(limit=64).start()
    os.write(2, b"x" * 100 + b"\nValueError: the end\n")
    text = tail.wait_for(lambda t: "the end" in t, timeout_s=2.0)
    tail.stop()
    time.sleep(0.1)
    assert text.endswith("ValueError: the end\n") and len(text) <= 64 + 100
    assert "ValueError: the end" in capfd.readouterr().err


def test_real_unsupported_architecture_error_shape_is_translated(tmp_path: Path) -> None:
    """vLLM 0.26 on the H200 raised pydantic's ValidationError around the registry message
    (not a bare ValueError as the fake does): still UnsupportedModelError, not 'rejected'."""
    from llenergymeasure_harness.backends.engine_common import translate_engine_error

    class ValidationError(ValueError):  # pydantic_core's name, as the real engine raised it
        pass

    exc = ValidationError(
        "1 validation error for ModelConfig\n  Value error, Model architectures "
        "['FancyNewForCausalLM'] are not supported for now. Supported architectures: ..."
    )
    err = translate_engine_error(exc, engine="vLLM", phase="load", config=_config())
    assert isinstance(err, UnsupportedModelError)
