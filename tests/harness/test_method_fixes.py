"""The method fixes a real vLLM showed were needed (issue 10), against fake engines and NVML.

Warmup and prefill-pass prompts share no prefix with measured ones, the measured window's
prefix-cache hits are recorded and flagged when not asked for, the latency mode is stated,
prefill and decode energy are split by a named method, compile caches are keyed and reported,
and child processes get NVLink multicast off.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure.errors import ConfigError
from llenergymeasure.results import ExperimentResult
from llenergymeasure_contract.sizing import steady_state_n_prompts
from llenergymeasure_harness import compile_cache
from llenergymeasure_harness.backends.base import GenerationRequest, RequestRecord
from llenergymeasure_harness.backends.vllm import VLLMBackend
from llenergymeasure_harness.child_env import MULTICAST_OFF, apply_child_env, child_env
from llenergymeasure_harness.experiment import Deps, run_experiment
from llenergymeasure_harness.phase_energy import timeline_split
from llenergymeasure_harness.prompts import distinct_requests
from llenergymeasure_harness.testing.engines import FakeVLLM, FakeVLLMBehaviour
from llenergymeasure_harness.testing.engines._sim import FakeClock
from llenergymeasure_harness.testing.fake_backend import FakeBackend
from llenergymeasure_harness.testing.fake_nvml import FakeNvml

# --------------------------------------------------------------------------- distinct prompts


def _measured(n: int = 6, length: int = 32) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            request_id=i, prompt_token_ids=[100 + i] + [500] * (length - 1), max_new_tokens=9
        )
        for i in range(n)
    ]


def test_distinct_requests_keep_shapes_and_share_no_first_token() -> None:
    """Same lengths and output caps, no first token of a measured prompt, deterministic."""
    measured = _measured()
    warm = distinct_requests(measured, "warmup", random_seed=1, vocab_size=1000)
    assert [len(r.prompt_token_ids) for r in warm] == [32] * 6
    assert [r.max_new_tokens for r in warm] == [9] * 6
    assert {r.prompt_token_ids[0] for r in warm}.isdisjoint(
        {r.prompt_token_ids[0] for r in measured}
    )
    assert warm == distinct_requests(measured, "warmup", random_seed=1, vocab_size=1000)
    again = distinct_requests(measured, "prefill_pass", random_seed=1, max_new_tokens=1)
    assert [r.max_new_tokens for r in again] == [1] * 6
    assert all(max(r.prompt_token_ids) <= 500 for r in again)  # bound: largest measured id


def test_distinct_requests_refuse_when_no_free_first_token() -> None:
    """A vocabulary every id of which starts a measured prompt cannot give distinct prompts."""
    measured = [
        GenerationRequest(request_id=i, prompt_token_ids=[i, 0], max_new_tokens=1) for i in range(3)
    ]
    with pytest.raises(ConfigError, match="no token id"):
        distinct_requests(measured, "warmup", random_seed=0, vocab_size=3)


# --------------------------------------------------------------------------- harness + fake vLLM


def _vllm_run(
    tmp_path: Path, *, dataset: dict[str, Any] | None = None, n_prompts: int = 40, **vllm: Any
) -> tuple[ExperimentResult, FakeVLLM]:
    fake = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.05, prefill_time_per_token_s=0.0001))
    clock = fake.behaviour.clock
    extra: dict[str, Any] = {}
    if dataset is not None:
        extra["dataset"] = dataset
        extra["tokenizer"] = "char-tokenizer"  # see the char_tokenizer fixture
    config = ExperimentConfig(
        model="tiny-llama",
        load_format="dummy",
        backend="vllm",
        n_prompts=n_prompts,
        max_input_tokens=48,
        max_output_tokens=16,
        baseline={"enabled": False},
        energy={"sampler": "nvml"},
        vllm={"max_num_seqs": 8, **vllm},
        **extra,
    )
    env = HarnessEnv(config=config, run_id="m", results_dir=str(tmp_path / "out"))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: VLLMBackend(clock=clock),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        result = run_experiment(env, deps)
    return result, fake


def test_warmup_and_prefill_pass_prompts_share_no_prefix_with_measured(tmp_path: Path) -> None:
    """What the engine received: warmup, measured and prefill-pass prompts start differently."""
    result, fake = _vllm_run(tmp_path)
    by_run: dict[str, list[list[int]]] = {}
    for request_id, ids, _params in fake.added_requests:
        by_run.setdefault(request_id.split("-")[0], []).append(ids)
    runs = sorted(by_run, key=lambda k: int(k.removeprefix("llem")))
    m = max(range(len(runs)), key=lambda i: len(by_run[runs[i]]))
    warmups, measured, passes = runs[:m], runs[m], runs[m + 1 :]  # the pass runs in waves
    measured_firsts = {ids[0] for ids in by_run[measured]}
    for run in [*warmups, *passes]:
        assert measured_firsts.isdisjoint({ids[0] for ids in by_run[run]}), run
    assert len(by_run[measured]) == 40
    assert all(len(by_run[p]) == 8 for p in passes)  # whole waves of max_num_seqs
    assert result.prefix_cache is not None
    assert result.prefix_cache.cached_input_tokens == 0
    assert result.prefix_cache.hit_rate == 0.0
    assert "prefix_cache_hits" not in {f.code for f in result.quality_flags}


def _jsonl(tmp_path: Path, lines: list[str]) -> dict[str, Any]:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in lines), encoding="utf-8")
    return {"source": "jsonl", "path": str(path)}


@pytest.fixture
def char_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text datasets without a tokenizer download: one token per character."""
    from llenergymeasure_harness import prompts

    monkeypatch.setattr(
        prompts, "load_tokenizer", lambda cfg: lambda text: [100 + ord(c) % 50 for c in text]
    )


@pytest.mark.usefixtures("char_tokenizer")
def test_repeated_dataset_prompts_hit_the_cache_and_are_flagged(tmp_path: Path) -> None:
    """A dataset that repeats itself hits vLLM's default prefix cache: recorded and flagged."""
    result, _ = _vllm_run(tmp_path, dataset=_jsonl(tmp_path, ["the same prompt " * 3] * 4))
    usage = result.prefix_cache
    assert usage is not None and usage.requested is None
    assert usage.cached_input_tokens and usage.cached_input_tokens > 0
    assert usage.hit_rate is not None and 0 < usage.hit_rate < 1
    flag = next(f for f in result.quality_flags if f.code == "prefix_cache_hits")
    assert "did not ask" in flag.message


@pytest.mark.usefixtures("char_tokenizer")
def test_prefix_cache_asked_for_is_recorded_not_flagged(tmp_path: Path) -> None:
    """enable_prefix_caching: true measures with the cache on purpose: hits, no flag."""
    result, _ = _vllm_run(
        tmp_path, dataset=_jsonl(tmp_path, ["the same prompt " * 3]), enable_prefix_caching=True
    )
    assert result.prefix_cache is not None and result.prefix_cache.requested is True
    assert result.prefix_cache.cached_input_tokens
    assert "prefix_cache_hits" not in {f.code for f in result.quality_flags}


@pytest.mark.usefixtures("char_tokenizer")
def test_prefix_cache_off_serves_nothing(tmp_path: Path) -> None:
    """enable_prefix_caching: false: every prefill computed, zero hits."""
    result, _ = _vllm_run(
        tmp_path, dataset=_jsonl(tmp_path, ["the same prompt " * 3]), enable_prefix_caching=False
    )
    assert result.prefix_cache is not None and result.prefix_cache.cached_input_tokens == 0


def test_result_states_latency_mode_and_phase_energy(tmp_path: Path) -> None:
    """Offline latency mode named; the prefill pass's energy is the counter's over its window."""
    result, _ = _vllm_run(tmp_path)
    assert result.latency.mode == "offline_queueing"
    phases = result.phase_energy
    assert phases is not None and phases.prefill_pass is not None
    assert phases.prefill_pass.method == "prefill_pass_difference"
    assert result.timings.prefill_pass_s is not None and result.timings.prefill_pass_s > 0
    # FakeNvml: 300 W constant, so the pass's energy is 300 W x its window exactly.
    assert phases.prefill_pass.prefill_energy_j == pytest.approx(
        300.0 * result.timings.prefill_pass_s
    )
    assert phases.prefill_pass.prefill_tokens == 40 * 48
    assert phases.decode_tokens == 40 * 15
    total = result.energy.gpu_energy_j
    assert total is not None
    assert phases.prefill_pass.decode_energy_j == pytest.approx(
        total - phases.prefill_pass.prefill_energy_j
    )


def test_short_steady_state_is_flagged_with_a_sized_n_prompts(tmp_path: Path) -> None:
    """An invalid window says how many prompts a 30 s one needs, from this run's throughput."""
    result, _ = _vllm_run(tmp_path, n_prompts=40)
    flag = next(f for f in result.quality_flags if f.code == "steady_state_invalid")
    steady = result.steady_state
    assert steady is not None and not steady.valid
    assert steady.suggested_n_prompts is not None and steady.suggested_n_prompts > 40
    assert f"n_prompts >= {steady.suggested_n_prompts}" in flag.message
    # 8 sequences at ~51 ms a step: ~157 tok/s -> 8 + 1 + 1.1 x 30 x 157 / 16, whole batches.
    rate = steady.output_tokens_per_s
    assert rate is not None
    assert steady.suggested_n_prompts == steady_state_n_prompts(8, 16, rate)


def test_suggested_n_prompts_gives_a_valid_window(tmp_path: Path) -> None:
    """Following the suggestion gives a steady state of at least 30 s on the same engine."""
    first, _ = _vllm_run(tmp_path / "a", n_prompts=40)
    assert first.steady_state is not None and first.steady_state.suggested_n_prompts
    result, _ = _vllm_run(tmp_path / "b", n_prompts=first.steady_state.suggested_n_prompts)
    assert result.steady_state is not None and result.steady_state.valid
    assert result.steady_state.duration_s >= 30
    assert "steady_state_invalid" not in {f.code for f in result.quality_flags}


# --------------------------------------------------------------------------- timeline method


def _simulated_cb(
    n: int = 40, k: int = 4, prompt: int = 100, out: int = 10, spread: int = 0
) -> tuple[list[RequestRecord], list[tuple[float, float]], float, float]:
    """Continuous batching by hand: 20 ms decode steps at 300 W; a prefill adds 1 ms per
    prompt token at 600 W. Returns records, a 1 kHz power trace, and the true prefill J."""
    t = 0.0
    waiting = list(range(n))
    running: dict[int, int] = {}
    times: dict[int, list[float]] = {i: [] for i in range(n)}
    power: list[tuple[float, float]] = []
    prefill_j = 0.0

    def trace(t0: float, t1: float, watts: float) -> None:
        steps = max(1, round((t1 - t0) * 1000))
        for j in range(steps):
            power.append((t0 + (t1 - t0) * j / steps, watts))

    while waiting or running:
        admitted = []
        while waiting and len(running) < k:
            admitted.append(waiting.pop(0))
        for i in admitted:
            running[i] = 0
        extra = 0.001 * prompt * len(admitted)
        trace(t, t + extra, 600.0)
        prefill_j += 600.0 * extra
        t += extra
        trace(t, t + 0.02, 300.0)
        t += 0.02
        for i in list(running):
            times[i].append(t)
            running[i] += 1
            if running[i] == out + (i % (spread + 1)) * 3:
                del running[i]
    power.append((t, 300.0))
    records = [
        RequestRecord(
            request_id=i,
            input_tokens=prompt,
            output_tokens=len(times[i]),
            submit_s=0.0,
            end_s=times[i][-1],
            first_token_s=times[i][0],
            token_times_s=times[i],
        )
        for i in range(n)
    ]
    return records, power, prefill_j, t


def test_timeline_split_recovers_prefill_energy() -> None:
    """On a hand-built continuous-batching trace the decode fit gives back the prefill joules.

    A mixed step with decoding requests is charged a decode step's 6 J; the first step has no
    decode, so its own 6 J of decode time go to prefill: the only bias, one step's worth.
    """
    records, power, true_prefill, end = _simulated_cb()
    total = sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(power))
    split = timeline_split(records, [power], t0=0.0, t1=end, total_j=total, guard_s=0.0)
    assert split["reason"] is None, split
    assert split["prefill_energy_j"] == pytest.approx(true_prefill + 6.0, rel=0.02)
    assert split["decode_energy_j"] == pytest.approx(total - split["prefill_energy_j"])
    assert split["prefill_tokens"] == 40 * 100 and split["decode_tokens"] == 40 * 9


def test_timeline_split_refuses_without_clean_decode_steps() -> None:
    """Without decode-only steps to fit, no figures and a reason (the pass is the headline)."""
    records, power, _, end = _simulated_cb(n=4, k=4, out=3)
    split = timeline_split(records, [power], t0=0.0, t1=end, total_j=100.0, guard_s=0.0)
    assert split["prefill_energy_j"] is None and "decode-only steps" in split["reason"]


def test_pytorch_headline_is_the_prefill_pass(tmp_path: Path) -> None:
    """Static batching: phase energy from the prefill-only pass, by name."""
    clock = FakeClock()
    config = ExperimentConfig(
        model="tiny-llama",
        n_prompts=8,
        max_input_tokens=16,
        max_output_tokens=8,
        baseline={"enabled": False},
        energy={"sampler": "nvml"},
        pytorch={"batch_size": 4},
    )
    env = HarnessEnv(config=config, run_id="p", results_dir=str(tmp_path / "out"))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=200.0),
        make_backend=lambda name: FakeBackend(batch_size=4, step_s=0.01, clock=clock),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    result = run_experiment(env, deps)
    phases = result.phase_energy
    assert phases is not None and phases.method == "prefill_pass_difference"
    # The fake spends one 10 ms step per token: the pass (2 batches x 1 token) costs 4 J.
    assert phases.prefill_energy_j == pytest.approx(200.0 * 0.02)
    assert phases.j_per_prefill_token == pytest.approx(4.0 / (8 * 16))
    assert phases.timeline is None


# --------------------------------------------------------------------------- compile cache


def test_compile_cache_cold_then_warm(tmp_path: Path) -> None:
    """First activation is cold and points every cache variable in; files make the next warm."""
    env: dict[str, str] = {}
    first = compile_cache.activate(str(tmp_path), "vllm", env)
    assert first.state == "cold" and first.path is not None
    assert set(env) == set(compile_cache.CACHE_VARIABLES)
    assert all(v.startswith(first.path) for v in env.values())
    (Path(env["TRITON_CACHE_DIR"]) / "kernel.cubin").write_bytes(b"x" * 10)
    second = compile_cache.activate(str(tmp_path), "vllm", {})
    assert second.state == "warm" and second.files_before == 1 and second.bytes_before == 10
    assert second.to_dict()["files_after"] == 1
    assert compile_cache.activate(None, "vllm", {}).state == "off"


def test_compile_cache_key_names_engine_and_torch_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A changed engine version is a different directory, so a stale cache is never reused."""
    versions = {"vllm": "0.26.0", "torch": "2.11.0", "triton": "3.6.0"}
    monkeypatch.setattr(compile_cache, "_version", lambda dist: versions.get(dist, "none"))
    key = compile_cache.cache_key("vllm")
    assert key.startswith("vllm-0.26.0_torch-2.11.0_triton-3.6.0_py")
    versions["vllm"] = "0.33.0"
    assert compile_cache.cache_key("vllm") != key


def test_harness_reports_compile_cache_state_and_load_time(tmp_path: Path) -> None:
    """The result says cold, then warm, beside the load time, for the same cache root."""
    states = []
    for run in ("a", "b"):
        clock = FakeClock()
        config = ExperimentConfig(
            model="tiny-llama", n_prompts=2, max_input_tokens=4, max_output_tokens=2, gpus=[]
        )
        env = HarnessEnv(
            config=config,
            run_id=run,
            results_dir=str(tmp_path / run),
            compile_cache_dir=str(tmp_path / "cc"),
        )
        deps = Deps(
            open_nvml=lambda: None,
            make_backend=lambda name, c=clock: FakeBackend(clock=c),
            clock=clock,
            sleep=clock.advance,
            cuda_visible=None,
        )
        result = run_experiment(env, deps)
        assert result.compile_cache is not None and result.timings.load_s is not None
        states.append(result.compile_cache.state)
        if run == "a":  # what Inductor would leave behind
            (Path(result.compile_cache.path or "") / "inductor" / "graph.py").write_text("x")
    assert states == ["cold", "warm"]


# --------------------------------------------------------------------------- child env


def test_child_env_turns_multicast_off_but_keeps_user_values() -> None:
    """NCCL/PyTorch/NVSHMEM multicast off for children, unless the user set a value."""
    env = {"NCCL_NVLS_ENABLE": "1", "PATH": "/bin"}
    applied = apply_child_env(env)
    assert applied == {**MULTICAST_OFF, "NCCL_NVLS_ENABLE": "1"}
    assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1" and env["NVSHMEM_DISABLE_NVLS"] == "1"
    fresh = child_env({"PATH": "/bin"})
    assert {k: fresh[k] for k in MULTICAST_OFF} == MULTICAST_OFF and fresh["PATH"] == "/bin"


def test_harness_sets_multicast_off_before_the_engine_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's load() already sees the variables: its worker processes inherit them."""
    import os

    for name in MULTICAST_OFF:
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, str | None] = {}

    class Probe(FakeBackend):
        def load(self, config: ExperimentConfig) -> Any:
            seen.update({n: os.environ.get(n) for n in MULTICAST_OFF})
            return super().load(config)

    clock = FakeClock()
    config = ExperimentConfig(
        model="tiny-llama", n_prompts=2, max_input_tokens=4, max_output_tokens=2, gpus=[]
    )
    env = HarnessEnv(config=config, run_id="c", results_dir=str(tmp_path / "o"))
    deps = Deps(
        open_nvml=lambda: None,
        make_backend=lambda name: Probe(clock=clock),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    run_experiment(env, deps)
    assert seen == MULTICAST_OFF


def test_unfilled_batch_gets_no_n_prompts_suggestion() -> None:
    """More prompts do not fill a batch that runs in waves: no suggestion for that reason."""
    from llenergymeasure_contract.windows import WindowProblem
    from llenergymeasure_harness.backends.steady_state import SteadyStateWindow
    from llenergymeasure_harness.experiment import suggest_n_prompts

    config = ExperimentConfig(
        model="tiny-llama", backend="vllm", n_prompts=1536, vllm={"max_num_seqs": 64}
    )
    unfilled = SteadyStateWindow(
        start_s=0.0,
        end_s=36.4,
        problems=(WindowProblem.UNDERFILLED,),
        reason="the batch never filled: 44.2 requests running on average, under 80% of 64",
        target_concurrency=64,
        n_requests=1536,
        output_tokens=188_000,
    )
    assert suggest_n_prompts(config, [], unfilled) is None


def test_timeline_split_refuses_a_negative_decode_slope() -> None:
    """Decode steps cheaper the more tokens they carry: no split, the reason says why."""
    records, power, _, end = _simulated_cb(n=12, spread=3)
    # Make the drain's small-batch steps (the end of the run) cost more than full ones.
    tail = end * 0.8
    skewed = [(t, w * (3.0 if t > tail else 1.0)) for t, w in power]
    total = sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(skewed))
    split = timeline_split(records, [skewed], t0=0.0, t1=end, total_j=total, guard_s=0.0)
    assert split["prefill_energy_j"] is None and "negative slope" in split["reason"]


def test_server_mode_phase_energy_is_the_prefill_pass() -> None:
    """Through a server the token times are the client's chunk receipt times: the timeline
    method is refused with that reason and the prefill pass is the headline, for vLLM too."""
    records, power, _, end = _simulated_cb()
    total = sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(power))
    served = ExperimentConfig.model_validate(
        {"model": "tiny-llama", "backend": "vllm", "load_format": "dummy", "server": {}}
    )
    in_process = served.model_copy(update={"server": None})
    assert served.served_over_http and not in_process.served_over_http
    split = timeline_split(
        records,
        [power],
        t0=0.0,
        t1=end,
        total_j=total,
        guard_s=0.0,
        client_timed=served.served_over_http,
    )
    assert split["prefill_energy_j"] is None and "chunk receipt times" in split["reason"]
    from llenergymeasure_harness.phase_energy import phase_energy, prefill_pass_split

    pass_split = prefill_pass_split(
        total_j=total, pass_j=total / 4, records=records, pass_records=records, pass_duration_s=1.0
    )
    headline = phase_energy("vllm", pass_split=pass_split, timeline=split)
    assert headline is not None and headline["method"] == "prefill_pass_difference"


def test_vllm_group_builds_one_engine_for_greedy_and_sampled(tmp_path: Path) -> None:
    """Engine reuse in-process on (fake) vLLM: greedy and sampled decoding share one LLM (the
    decoder is run-time); each run's requests carry its own sampling parameters."""
    from llenergymeasure_contract.reuse import EngineGroup, GroupMember, engine_key
    from llenergymeasure_harness.group import run_group

    fake = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.05, prefill_time_per_token_s=0.0001))
    clock = fake.behaviour.clock

    def config(decoder: dict[str, Any]) -> ExperimentConfig:
        return ExperimentConfig(
            model="tiny-llama",
            load_format="dummy",
            backend="vllm",
            n_prompts=16,
            max_input_tokens=32,
            max_output_tokens=8,
            decoder=decoder,
            baseline={"enabled": False},
            energy={"sampler": "nvml"},
            vllm={"max_num_seqs": 8},
        )

    configs = [config({"temperature": 0.0}), config({"temperature": 0.7, "top_p": 0.9})]
    assert engine_key(configs[0]) == engine_key(configs[1])
    members = [
        GroupMember(run_id=f"r{i}", config=c, results_dir=str(tmp_path / f"r{i}"))
        for i, c in enumerate(configs)
    ]
    group = EngineGroup(group_id="g1", engine_key=engine_key(configs[0]), members=members)
    env = HarnessEnv(config=configs[0], run_id="r0", results_dir=str(tmp_path / "r0"))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: VLLMBackend(clock=clock),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        outcome = run_group(env, group, deps)
    assert [m.state for m in outcome.members] == ["completed", "completed"]
    assert len(fake.instances) == 1
    temps = {params.temperature for _rid, _ids, params in fake.added_requests}
    assert temps == {0.0, 0.7}
