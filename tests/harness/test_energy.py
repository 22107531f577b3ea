"""Energy windows, the sampler and power integration against the fake NVML (exact joules)."""

from __future__ import annotations

import time

import pytest

from llenergymeasure.errors import MeasurementError
from llenergymeasure_harness.energy import (
    NullSampler,
    NvmlEnergyMeter,
    TimeseriesSampler,
    integrate_power,
    make_sampler,
    resolve_sampler_kind,
)
from llenergymeasure_harness.testing import FakeNvml, ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_window_energy_is_power_times_time_on_every_gpu(clock: ManualClock) -> None:
    """300 W and 150 W for 2 s read exactly 600 J and 300 J, 900 J in total."""
    nvml = FakeNvml(2, clock=clock, power_w=300.0)
    nvml.set_power(1, 150.0)
    meter = NvmlEnergyMeter(nvml, [0, 1], clock=clock)
    with meter.window("m") as w:
        clock.advance(2.0)
    assert w.result.energy_j_per_gpu == {0: 600.0, 1: 300.0}
    assert w.result.gpu_energy_j == 900.0
    assert w.result.duration_s == pytest.approx(2.0)


def test_power_change_inside_window_is_integrated_exactly(clock: ManualClock) -> None:
    """100 W for 1 s then 400 W for 0.5 s is 300 J."""
    nvml = FakeNvml(1, clock=clock, power_w=100.0)
    meter = NvmlEnergyMeter(nvml, [0], clock=clock)
    meter.begin_window("m")
    clock.advance(1.0)
    nvml.set_power(0, 400.0)
    clock.advance(0.5)
    assert meter.end_window("m").gpu_energy_j == 300.0


def test_labels_differ_from_nvml_indices(clock: ManualClock) -> None:
    """Results are keyed by the harness label, reads go to the NVML index."""
    nvml = FakeNvml(4, clock=clock, power_w=50.0)
    nvml.set_power(3, 200.0)
    meter = NvmlEnergyMeter(nvml, [3], labels=[0], clock=clock)
    with meter.window("m") as w:
        clock.advance(1.0)
    assert w.result.energy_j_per_gpu == {0: 200.0}


def test_nested_and_overlapping_windows(clock: ManualClock) -> None:
    """Windows are independent by name and may nest."""
    nvml = FakeNvml(1, clock=clock, power_w=100.0)
    meter = NvmlEnergyMeter(nvml, [0], clock=clock)
    meter.begin_window("outer")
    clock.advance(1.0)
    meter.begin_window("inner")
    clock.advance(1.0)
    assert meter.end_window("inner").gpu_energy_j == 100.0
    clock.advance(1.0)
    assert meter.end_window("outer").gpu_energy_j == 300.0


def test_unsupported_counter_gives_none_never_zero(clock: ManualClock) -> None:
    """A GPU without an energy counter reports None and the total is None."""
    nvml = FakeNvml(1, clock=clock, supports_energy=False)
    meter = NvmlEnergyMeter(nvml, [0], clock=clock)
    with meter.window("m") as w:
        clock.advance(1.0)
    assert w.result.energy_j_per_gpu == {0: None}
    assert w.result.gpu_energy_j is None


def test_counter_going_backwards_is_unknown(clock: ManualClock) -> None:
    """A counter reset (driver reload) mid-window yields None, not a negative energy."""
    nvml = FakeNvml(1, clock=clock, power_w=100.0)
    meter = NvmlEnergyMeter(nvml, [0], clock=clock)
    clock.advance(5.0)
    meter.begin_window("m")
    nvml._acc_mj[0] = -1e9  # simulate a reset
    assert meter.end_window("m").gpu_energy_j is None


def test_window_misuse_raises(clock: ManualClock) -> None:
    """Opening a window twice or closing an unknown one is a MeasurementError."""
    meter = NvmlEnergyMeter(FakeNvml(1, clock=clock), [0], clock=clock)
    meter.begin_window("a")
    with pytest.raises(MeasurementError):
        meter.begin_window("a")
    with pytest.raises(MeasurementError):
        meter.end_window("b")
    with pytest.raises(MeasurementError):
        NvmlEnergyMeter(FakeNvml(1), [], clock=clock)


def test_counter_quantisation_of_short_windows(clock: ManualClock) -> None:
    """With a 100 ms update period a 50 ms window can read 0 J: why short runs are flagged."""
    nvml = FakeNvml(1, clock=clock, power_w=100.0, counter_update_period_s=0.1)
    meter = NvmlEnergyMeter(nvml, [0], clock=clock)
    clock.advance(0.01)
    with meter.window("m") as w:
        clock.advance(0.05)
    assert w.result.gpu_energy_j == 0.0


def test_violation_counters_are_differenced(clock: ManualClock) -> None:
    """Throttle time over a window is the delta of the cumulative violation counters."""
    nvml = FakeNvml(1, clock=clock)
    nvml.violation[0] = {"power": 1_000, "thermal": 5}
    meter = NvmlEnergyMeter(nvml, [0], clock=clock)
    meter.begin_window("m")
    nvml.violation[0] = {"power": 3_000_000, "thermal": 5}
    w = meter.end_window("m")
    assert w.violation_ns_per_gpu == {0: {"power": 2_999_000, "thermal": 0}}


def test_sampler_rows_and_counter_rate(clock: ManualClock) -> None:
    """Each tick samples every GPU; the energy counter only every rate/counter_rate ticks."""
    nvml = FakeNvml(2, clock=clock, power_w=123.0)
    s = TimeseriesSampler(nvml, [0, 1], rate_hz=10, counter_rate_hz=1, clock=clock)
    s.phase = "measure"
    for _ in range(20):
        s.sample_once()
        clock.advance(0.1)
    rows = s.rows()
    assert len(rows) == 40
    assert {r["gpu"] for r in rows} == {0, 1}
    assert all(r["power_w"] == 123.0 and r["phase"] == "measure" for r in rows)
    assert sum(r["energy_mj"] is not None for r in rows) == 4  # ticks 0 and 10, two GPUs
    assert nvml.calls["energy_mj"] == 4
    cols = s.columns()
    assert len(cols["t_s"]) == 40 and list(cols) == list(rows[0])


def test_sampler_without_counter_never_reads_it(clock: ManualClock) -> None:
    """counter_rate_hz=0 keeps the slow counter read out of the sampler entirely."""
    nvml = FakeNvml(1, clock=clock)
    s = TimeseriesSampler(nvml, [0], counter_rate_hz=0, clock=clock)
    for _ in range(5):
        s.sample_once()
    assert "energy_mj" not in nvml.calls


def test_sampler_thread_runs_at_about_its_rate() -> None:
    """The thread samples at ~the asked rate and stops promptly; stop is idempotent."""
    nvml = FakeNvml(1)
    s = TimeseriesSampler(nvml, [0], rate_hz=50)
    s.start()
    s.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    s.stop()
    s.stop()
    assert time.perf_counter() - t0 < 1.0
    assert 10 <= len(s.rows()) <= 40
    assert s.cpu_s is not None


def test_sampler_survives_a_failing_read() -> None:
    """A read that raises is counted, not fatal."""

    class Broken(FakeNvml):
        def sample(self, index: int):  # type: ignore[override]
            raise RuntimeError("boom")

    s = TimeseriesSampler(Broken(1), [0], rate_hz=100)
    s.start()
    time.sleep(0.1)
    s.stop()
    assert s.errors >= 1


def test_null_sampler_records_nothing() -> None:
    """The null sampler is inert and reports no power."""
    s = NullSampler()
    s.start()
    s.sample_once()
    s.stop()
    assert s.rows() == [] and s.power_series(0, 0, 1) == []
    assert all(v == [] for v in s.columns().values())


def test_integrate_power_trapezoid_is_exact_for_linear_power() -> None:
    """A ramp 100->300 W over 2 s is 400 J; edges hold the nearest sample."""
    assert integrate_power([(0.0, 100.0), (1.0, 200.0), (2.0, 300.0)], 0.0, 2.0) == 400.0
    assert integrate_power([(0.5, 100.0), (1.5, 100.0)], 0.0, 2.0) == 200.0
    assert integrate_power([(0.5, 100.0)], 0.0, 2.0) is None


def test_sampler_kind_resolution() -> None:
    """auto is nvml with a GPU and null without; optional samplers fall back to nvml."""
    nvml = FakeNvml(1)
    assert resolve_sampler_kind("auto", nvml) == "nvml"
    assert resolve_sampler_kind("auto", None) == "null"
    assert resolve_sampler_kind("nvml", None) == "null"
    assert resolve_sampler_kind("codecarbon", nvml) in ("codecarbon", "nvml")
    assert isinstance(make_sampler("null", nvml=nvml, gpus=[0]), NullSampler)
    assert isinstance(make_sampler("nvml", nvml=None, gpus=[0]), NullSampler)
    assert isinstance(make_sampler("nvml", nvml=nvml, gpus=[0]), TimeseriesSampler)
