"""Real NVML and CUDA paths; these run only on a machine with an NVIDIA GPU."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def nvml():
    from llenergymeasure_harness.energy.nvml import RealNvml

    n = RealNvml()
    yield n
    n.shutdown()


def test_real_nvml_reads_every_sampled_field(nvml) -> None:
    """Power, temperature, clocks, reasons, memory and utilisation all read on GPU 0."""
    s = nvml.sample(0)
    assert s.power_w is not None and s.power_w > 10
    assert s.temperature_c is not None
    assert s.sm_clock_mhz and s.mem_clock_mhz
    assert s.clock_event_reasons is not None
    assert s.memory_used_bytes is not None
    assert nvml.info(0)["uuid"].startswith("GPU-")


def test_counter_window_under_load_matches_integrated_power(nvml) -> None:
    """A 3 s matmul burst: counter energy > 0 and within 15 % of integrated instant power."""
    import torch

    from llenergymeasure_harness.energy import NvmlEnergyMeter, TimeseriesSampler
    from llenergymeasure_harness.energy.sampler import integrate_power

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    meter = NvmlEnergyMeter(nvml, [0])
    sampler = TimeseriesSampler(nvml, [0], rate_hz=20)
    sampler.start()
    with meter.window("burst", torch.cuda.synchronize) as w:
        t_end = time.perf_counter() + 3.0
        while time.perf_counter() < t_end:
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()
    sampler.stop()
    e = w.result.gpu_energy_j
    assert e is not None and e > 100
    integrated = integrate_power(
        sampler.power_series(0, w.result.start_s, w.result.end_s), w.result.start_s, w.result.end_s
    )
    assert integrated is not None
    assert abs(integrated - e) / e < 0.15


def test_step_timestamper_events_are_on_the_perf_counter_clock() -> None:
    """CUDA-event step times land between the call's start and end on perf_counter."""
    import torch

    from llenergymeasure_harness.backends.pytorch import StepTimestamper

    st = StepTimestamper(torch.device("cuda"))
    x = torch.ones(4, device="cuda")
    t0 = time.perf_counter()
    for _ in range(5):
        x = x @ torch.ones(4, 4, device="cuda")
        st(x.reshape(1, -1))
    times = st.finish()
    t1 = time.perf_counter()
    assert len(times) == 5
    assert all(t0 <= t <= t1 + 1e-3 for t in times)
    assert times == sorted(times)
