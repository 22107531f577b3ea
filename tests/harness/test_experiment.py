"""run_experiment end to end with the fake GPU, clock and backend: exact figures."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.harness.conftest import World, harness_env, make_config

from llenergymeasure.results import ExperimentResult
from llenergymeasure_harness.experiment import PhaseError, run_experiment


def test_energy_throughput_and_efficiency_are_exact(tmp_path: Path, world: World) -> None:
    """8 requests x 4 tokens in 4 batches of 0.5 s steps at 250 W: 8 s, 2000 J, 62.5 J/token."""
    result = run_experiment(harness_env(tmp_path), world.deps())
    e = result.energy
    assert e.sampler == "nvml"
    assert result.throughput.duration_s == pytest.approx(8.0)
    assert e.gpu_energy_j == pytest.approx(2000.0)
    assert e.gpu_energy_j_per_gpu == {"0": pytest.approx(2000.0)}
    assert e.avg_power_w == pytest.approx(250.0)
    assert result.throughput.output_tokens == 32
    assert result.throughput.input_tokens == 8 * 16
    assert result.throughput.output_tokens_per_s == pytest.approx(4.0)
    assert result.efficiency.j_per_output_token == pytest.approx(62.5)
    assert result.efficiency.j_per_request == pytest.approx(250.0)
    assert result.efficiency.j_per_token == pytest.approx(2000.0 / 160)
    assert result.efficiency.output_tokens_per_j == pytest.approx(32 / 2000)


def test_gross_and_idle_adjusted_energy(tmp_path: Path, world: World) -> None:
    """Baseline at 100 W idle, 250 W under load: net = 2000 - 100 x 8 = 1200 J."""
    world.nvml.set_power(0, 100.0)
    orig_run = world.backend.run

    def run(reqs):  # load power only while generating
        world.nvml.set_power(0, 250.0)
        try:
            return orig_run(reqs)
        finally:
            world.nvml.set_power(0, 100.0)

    world.backend.run = run  # type: ignore[method-assign]
    result = run_experiment(harness_env(tmp_path), world.deps())
    assert result.baseline is not None
    assert result.baseline.state == "cuda_context_model_loaded"
    assert result.baseline.total_power_w == pytest.approx(100.0)
    assert result.energy.gpu_energy_j == pytest.approx(2000.0)
    assert result.energy.idle_energy_j == pytest.approx(800.0)
    assert result.energy.net_gpu_energy_j == pytest.approx(1200.0)
    assert result.efficiency.net_j_per_output_token == pytest.approx(1200.0 / 32)


def test_outputs_written_and_result_loads_back(tmp_path: Path, world: World) -> None:
    """result.json round-trips and requests.parquet has one row per request."""
    env = harness_env(tmp_path, image="img:1", image_digest="sha256:x", image_labels={"a": "b"})
    run_experiment(env, world.deps())
    out = tmp_path / "out"
    loaded = ExperimentResult.load(out)
    assert loaded.run_id == "run-1"
    assert loaded.artifacts == {"requests": "requests.parquet"}
    assert loaded.environment.image == "img:1"
    assert loaded.environment.image_labels == {"a": "b"}
    assert loaded.environment.gpus[0].uuid == "GPU-fake-0000"
    rows = pq.read_table(out / "requests.parquet").to_pylist()
    assert [r["request_id"] for r in rows] == list(range(8))
    assert rows[0]["ttft_s"] == pytest.approx(0.5)
    assert len(rows[0]["token_times_s"]) == 4
    assert not list(out.glob(".*tmp"))  # no temp files left


def test_latency_stats(tmp_path: Path, world: World) -> None:
    """TTFT = one step, ITL = one step, e2e = four steps."""
    lat = run_experiment(harness_env(tmp_path), world.deps()).latency
    assert lat.ttft_s is not None and lat.ttft_s.p50 == pytest.approx(0.5)
    assert lat.itl_s is not None and lat.itl_s.mean == pytest.approx(0.5)
    assert lat.e2e_s is not None and lat.e2e_s.max == pytest.approx(2.0)


def test_no_gpu_leaves_energy_none_with_a_flag(tmp_path: Path, world: World) -> None:
    """Without NVML every energy figure is None (never 0) and no_energy is flagged."""
    result = run_experiment(harness_env(tmp_path), world.deps(nvml=False))
    assert result.energy.sampler == "null"
    assert result.energy.gpu_energy_j is None
    assert result.energy.avg_power_w is None
    assert result.efficiency.j_per_output_token is None
    assert result.baseline is None
    assert "no_energy" in {f.code for f in result.quality_flags}


def test_cpu_only_experiment_never_opens_nvml(tmp_path: Path, world: World) -> None:
    """gpus: [] runs on the CPU even where NVML sees a GPU: energy None, NVML never opened."""
    opened: list[bool] = []
    deps = world.deps()
    real_open = deps.open_nvml

    def spy() -> object:
        opened.append(True)
        return real_open()

    deps.open_nvml = spy  # type: ignore[method-assign, assignment]
    cfg = make_config().model_copy(update={"gpus": []})
    result = run_experiment(harness_env(tmp_path, cfg), deps)
    assert opened == []
    assert result.energy.sampler == "null"
    assert result.energy.gpu_energy_j is None
    assert result.efficiency.j_per_output_token is None


def test_baseline_cache_reused_by_the_next_run(tmp_path: Path) -> None:
    """The second experiment on the same GPUs reuses the cached baseline."""
    cache = tmp_path / "cache" / "baseline.json"
    w1, w2 = World(), World()
    w2.clock.advance(600.0)  # the next container starts ten minutes later
    r1 = run_experiment(harness_env(tmp_path / "a", baseline_cache=str(cache)), w1.deps())
    r2 = run_experiment(harness_env(tmp_path / "b", baseline_cache=str(cache)), w2.deps())
    assert r1.baseline is not None and r1.baseline.source == "measured"
    assert r2.baseline is not None and r2.baseline.source == "cache"
    assert r2.timings.baseline_s == pytest.approx(0.0)
    assert "baseline_cached" in {f.code for f in r2.quality_flags}


def test_timeseries_written_when_enabled(tmp_path: Path) -> None:
    """With the sampler on (real clock), timeseries.parquet holds phase-labelled rows."""
    from llenergymeasure_harness.experiment import Deps
    from llenergymeasure_harness.testing import FakeBackend, FakeNvml

    nvml = FakeNvml(1, power_w=200.0)
    backend = FakeBackend(step_s=0.02)
    deps = Deps(open_nvml=lambda: nvml, make_backend=lambda n: backend, cuda_visible="")
    cfg = make_config(energy={"sample_rate_hz": 50.0}, baseline={"enabled": False})
    result = run_experiment(harness_env(tmp_path, cfg), deps)
    table = pq.read_table(tmp_path / "out" / "timeseries.parquet").to_pylist()
    assert {r["phase"] for r in table} >= {"measure"}
    assert result.energy.n_samples > 0
    assert result.energy.integrated_power_energy_j is not None
    assert result.energy.counter_vs_integrated_diff_pct is not None
    assert abs(result.energy.counter_vs_integrated_diff_pct) < 15
    # each phase's window is recorded on the samples' clock, in order, for the report's shading
    w = result.timings.phase_windows_s
    assert list(w) == ["warmup", "measure", "prefill_pass"]  # baseline disabled: none
    assert w["warmup"][1] <= w["measure"][0] < w["measure"][1] <= w["prefill_pass"][0]
    assert w["measure"][1] - w["measure"][0] == pytest.approx(result.timings.measure_s)
    in_measure = [r["t_s"] for r in table if r["phase"] == "measure"]
    assert w["measure"][0] - 0.1 <= min(in_measure) and max(in_measure) <= w["measure"][1] + 0.1


def test_failures_carry_their_phase(tmp_path: Path) -> None:
    """Load, warmup and measure failures raise PhaseError naming the phase; close still runs."""
    for fail_in, warmup_runs, phase in (
        ("load", 0, "load"),
        ("run", 0, "warmup"),
        ("measure", 1, "measure"),
    ):
        w = World(fail_in=fail_in, warmup_runs=warmup_runs)
        with pytest.raises(PhaseError) as info:
            run_experiment(harness_env(tmp_path / fail_in), w.deps())
        assert info.value.phase == phase
        assert w.backend.closed == 1
        assert w.nvml.closed


def test_unknown_gpu_is_a_load_failure(tmp_path: Path, world: World) -> None:
    """Asking for a GPU NVML does not see fails in load with a PreflightError."""
    with pytest.raises(PhaseError) as info:
        run_experiment(harness_env(tmp_path, make_config(gpus=[0, 5])), world.deps())
    assert info.value.phase == "load"
    assert type(info.value.cause).__name__ == "PreflightError"


def test_continuous_batching_backends_get_a_steady_state(tmp_path: Path) -> None:
    """For non-PyTorch backends the steady-state window is computed beside the whole run."""
    w = World(batch_size=4)
    cfg = make_config(
        backend="vllm",
        pytorch=None,
        vllm={"max_num_seqs": 2},
        n_prompts=8,
    )
    result = run_experiment(harness_env(tmp_path, cfg), w.deps())
    assert result.steady_state is not None
    assert result.steady_state.duration_s >= 0
