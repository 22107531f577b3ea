"""Idle baseline and its TTL cache, warmup modes, quality flags and GPU mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llenergymeasure.config import WarmupConfig
from llenergymeasure.errors import PreflightError
from llenergymeasure_harness.energy import (
    BaselineCache,
    NvmlEnergyMeter,
    map_gpus,
    measure_idle_power,
)
from llenergymeasure_harness.quality import quality_flags
from llenergymeasure_harness.testing import FakeNvml, ManualClock
from llenergymeasure_harness.warmup import coefficient_of_variation, run_warmup


def test_idle_power_is_counter_energy_over_duration() -> None:
    """80 W + 120 W idle for 5 s measures exactly those powers, 200 W in total."""
    clock = ManualClock()
    nvml = FakeNvml(2, clock=clock, power_w=80.0)
    nvml.set_power(1, 120.0)
    meter = NvmlEnergyMeter(nvml, [0, 1], clock=clock)
    b = measure_idle_power(meter, 5.0, sleep=clock.advance)
    assert b["state"] == "cuda_context_model_loaded"
    assert b["source"] == "measured"
    assert b["power_w_per_gpu"] == {"0": pytest.approx(80.0), "1": pytest.approx(120.0)}
    assert b["total_power_w"] == pytest.approx(200.0)
    assert b["duration_s"] == pytest.approx(5.0)


def test_idle_power_falls_back_to_polled_power_without_counter() -> None:
    """Without an energy counter the mean of polled power is used."""
    clock = ManualClock()
    nvml = FakeNvml(1, clock=clock, power_w=70.0, supports_energy=False)
    meter = NvmlEnergyMeter(nvml, [0], clock=clock)
    b = measure_idle_power(meter, 1.0, sleep=clock.advance)
    assert b["total_power_w"] == pytest.approx(70.0)


def _m(power: float = 100.0) -> dict:
    return {
        "state": "s",
        "source": "measured",
        "duration_s": 1.0,
        "power_w_per_gpu": {"0": power},
        "total_power_w": power,
        "measured_at": "x",
    }


def test_cache_hit_within_ttl_and_miss_after(tmp_path: Path) -> None:
    """An entry is reused until ttl_s passes, then ignored."""
    now = [1000.0]
    cache = BaselineCache(tmp_path / "b.json", ttl_s=60, clock=lambda: now[0])
    key = BaselineCache.key(["GPU-b", "GPU-a"], "s")
    assert cache.get(key) is None
    cache.put(key, _m())
    now[0] += 59
    assert cache.get(key) == _m()
    now[0] += 2
    assert cache.get(key) is None


def test_cache_key_depends_on_uuids_and_state(tmp_path: Path) -> None:
    """Other GPUs or another state do not hit; UUID order does not matter."""
    cache = BaselineCache(tmp_path / "b.json", ttl_s=60, clock=lambda: 0.0)
    cache.put(BaselineCache.key(["GPU-a", "GPU-b"], "s"), _m())
    assert cache.get(BaselineCache.key(["GPU-b", "GPU-a"], "s")) is not None
    assert cache.get(BaselineCache.key(["GPU-a"], "s")) is None
    assert cache.get(BaselineCache.key(["GPU-a", "GPU-b"], "other")) is None


def test_cache_ttl_zero_always_measures(tmp_path: Path) -> None:
    """cache_ttl_s = 0 disables reuse."""
    cache = BaselineCache(tmp_path / "b.json", ttl_s=0, clock=lambda: 0.0)
    cache.put("k", _m())
    assert cache.get("k") is None


def test_cache_key_separates_workloads() -> None:
    """One model's loaded-idle power is never reused for another model, backend or precision."""
    from llenergymeasure.config import ExperimentConfig

    base = ExperimentConfig(model="tiny-llama", load_format="dummy")
    gpus = ["GPU-a", "GPU-b"]

    def key(cfg: ExperimentConfig, uuids: list[str | None] = gpus) -> str:
        return BaselineCache.key(uuids, "s", BaselineCache.workload_of(cfg))

    same_workload = base.model_copy(update={"n_prompts": 99})  # a batch/prompt sweep shares
    assert key(base) == key(same_workload)
    assert key(base) == key(base, ["GPU-b", "GPU-a"])
    others = [
        ExperimentConfig(model="llama-3.2-1b", load_format="dummy"),
        ExperimentConfig(model="tiny-llama", load_format="dummy", precision="float16"),
        ExperimentConfig(model="tiny-llama", load_format="dummy", backend="vllm"),
    ]
    assert len({key(base), *(key(c) for c in others)}) == 1 + len(others)
    assert key(base) != key(base, ["GPU-a"])
    assert key(base) != BaselineCache.key(gpus, "other", BaselineCache.workload_of(base))


def test_old_cache_version_is_not_reused(tmp_path: Path) -> None:
    """A version-1 file (keys without the workload) is treated as empty."""
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"version": 1, "entries": {"k": {"measured_at_epoch": 0.0}}}))
    assert BaselineCache(path, ttl_s=60, clock=lambda: 0.0).get("k") is None


def test_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    """A corrupt file reads as empty and the next put replaces it with valid JSON."""
    path = tmp_path / "b.json"
    path.write_text("{not json")
    cache = BaselineCache(path, ttl_s=60, clock=lambda: 0.0)
    assert cache.get("k") is None
    cache.put("k", _m(90.0))
    assert json.loads(path.read_text())["version"] == BaselineCache.VERSION
    assert cache.get("k")["total_power_w"] == 90.0


def _steps(latencies: list[float], clock: ManualClock):
    it = iter(latencies)

    def step() -> None:
        clock.advance(next(it))

    return step


def test_fixed_warmup_runs_n_batches() -> None:
    """Fixed mode runs exactly n_batches steps and records their latencies."""
    clock = ManualClock()
    out = run_warmup(WarmupConfig(n_batches=3), _steps([3.0, 1.0, 1.0], clock), clock=clock)
    assert out["n_batches"] == 3
    assert out["step_latencies_s"] == pytest.approx([3.0, 1.0, 1.0])
    assert out["converged"] is None


def test_convergence_warmup_stops_when_cv_below_threshold() -> None:
    """Stops at the first window of 3 whose CV < 5 %."""
    clock = ManualClock()
    cfg = WarmupConfig(mode="convergence", window=3, cv_threshold=0.05, max_batches=10)
    out = run_warmup(cfg, _steps([5.0, 2.0, 1.0, 1.01, 0.99, 1.0, 1.0], clock), clock=clock)
    assert out["converged"] is True
    assert out["n_batches"] == 5
    assert out["final_cv"] < 0.05


def test_convergence_warmup_is_capped() -> None:
    """Never converging stops at max_batches with converged False."""
    clock = ManualClock()
    cfg = WarmupConfig(mode="convergence", window=2, cv_threshold=0.01, max_batches=4)
    out = run_warmup(cfg, _steps([1.0, 2.0, 1.0, 2.0], clock), clock=clock)
    assert out == {**out, "converged": False, "n_batches": 4}


def test_thermal_floor_keeps_warming() -> None:
    """min_duration_s extends warmup beyond n_batches until the floor is reached."""
    clock = ManualClock()
    out = run_warmup(
        WarmupConfig(n_batches=1, min_duration_s=3.5), _steps([1.0] * 10, clock), clock=clock
    )
    assert out["n_batches"] == 4
    assert out["duration_s"] >= 3.5


def test_zero_warmup() -> None:
    """n_batches = 0 runs nothing."""
    out = run_warmup(WarmupConfig(n_batches=0), lambda: pytest.fail("ran"), clock=ManualClock())
    assert out["n_batches"] == 0


def test_cv() -> None:
    """CV is std/mean and undefined for < 2 values."""
    assert coefficient_of_variation([1.0]) is None
    assert coefficient_of_variation([1.0, 1.0]) == 0.0
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(0.5)


def _codes(**kw) -> set[str]:
    base = {"energy_measured": True, "duration_s": 10.0}
    return {f["code"] for f in quality_flags(**{**base, **kw})}


def test_clean_run_has_no_flags() -> None:
    """Enough duration, no throttling, persistence on, alone on the GPU: no flags."""
    assert _codes(persistence={0: True}, pids={0: [123]}, own_pid=123, mismatch_pct=2.0) == set()


def test_short_run_flag() -> None:
    """Windows under 10 counter periods (1 s) are flagged."""
    assert "short_run" in _codes(duration_s=0.5)
    assert "short_run" not in _codes(duration_s=1.0)


def test_throttle_flags_from_samples_and_violation_counters() -> None:
    """Thermal/power clock-event bits in samples or violation time raise the flags."""
    assert _codes(samples=[{"clock_event_reasons": 0x40}]) == {"thermal_throttle"}
    assert _codes(samples=[{"clock_event_reasons": 0x4}]) == {"power_throttle"}
    assert _codes(samples=[{"clock_event_reasons": 0x1}]) == set()  # idle is not throttling
    assert _codes(violation_ns={0: {"power": 5, "thermal": 0}}) == {"power_throttle"}


def test_persistence_other_processes_mismatch_and_no_energy() -> None:
    """Each remaining condition raises its own flag."""
    assert _codes(persistence={0: False}) == {"persistence_off"}
    assert _codes(pids={0: [1, 2]}, own_pid=1) == {"other_processes"}
    assert _codes(pids={0: [999]}, own_pid=1, in_container=True) == set()
    assert _codes(pids={0: [999, 5]}, own_pid=1, in_container=True) == {"other_processes"}
    assert _codes(mismatch_pct=-12.0) == {"energy_mismatch"}
    assert _codes(energy_measured=False) == {"no_energy"}
    assert _codes(warmup_converged=False) == {"warmup_not_converged"}
    assert _codes(baseline_source="cache") == {"baseline_cached"}


def test_map_gpus() -> None:
    """Host indices, renumbered containers and CUDA_VISIBLE_DEVICES all map correctly."""
    assert map_gpus([0, 1], 8, "") == [(0, 0), (1, 1)]
    assert map_gpus([2, 3], 2, "") == [(0, 0), (1, 1)]  # container saw only its two GPUs
    assert map_gpus([5], 8, "5") == [(0, 5)]
    assert map_gpus([1], 8, "4,6") == [(1, 6)]
    assert map_gpus([0], 8, "GPU-abc") == [(0, "GPU-abc")]
    with pytest.raises(PreflightError):
        map_gpus([3], 2, "")
    with pytest.raises(PreflightError):
        map_gpus([0, 5], 8, "1,2,3")
