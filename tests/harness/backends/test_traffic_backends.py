"""Each in-process backend follows the arrival plan: vLLM and TensorRT-LLM against their fakes,
PyTorch's dynamic batcher for real on the CPU with the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness.backends.engine_inputs import engine_config
from tests.harness.conftest import make_config

from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.backends.tensorrt import TensorRTBackend
from llenergymeasure_harness.backends.vllm import VLLMBackend
from llenergymeasure_harness.testing.engines import (
    FakeTRTLLM,
    FakeTRTLLMBehaviour,
    FakeVLLM,
    FakeVLLMBehaviour,
)
from llenergymeasure_harness.traffic import ArrivalPlan

STEP_S = 0.01


_config = engine_config


def _requests(n: int, max_new: int = 5) -> list[GenerationRequest]:
    return [GenerationRequest(i, [3 + i] * 8, max_new) for i in range(n)]


def _constant(n: int, gap_s: float) -> ArrivalPlan:
    return ArrivalPlan(pattern="constant", offsets_s=tuple(i * gap_s for i in range(n)))


# --------------------------------------------------------------------------- vLLM


@pytest.fixture
def vllm_fake() -> Iterator[FakeVLLM]:
    controller = FakeVLLM(FakeVLLMBehaviour(step_time_s=STEP_S))
    with controller.installed():
        yield controller


@pytest.fixture
def vllm_backend(vllm_fake: FakeVLLM, tmp_path: Path) -> Iterator[VLLMBackend]:
    clock = vllm_fake.behaviour.clock
    instance = VLLMBackend(clock=clock, sleep=clock.advance, workdir=tmp_path)
    instance.load(_config("vllm"))
    yield instance
    instance.close()


def test_vllm_adds_each_request_at_its_arrival_inside_the_step_loop(
    vllm_fake: FakeVLLM, vllm_backend: VLLMBackend
) -> None:
    """Sparse arrivals: each request is added when due (engine idle), one running at a time."""
    t0 = vllm_fake.behaviour.clock()
    records = vllm_backend.run(_requests(6), _constant(6, 0.5))
    assert [r.arrival_s for r in records] == pytest.approx([t0 + 0.5 * i for i in range(6)])
    for r in records:
        assert r.submit_s == pytest.approx(r.arrival_s)  # idle engine: no lateness
        assert r.output_tokens == 5
        assert r.first_token_s is not None and r.first_token_s > r.arrival_s
    assert vllm_fake.instances[0].llm_engine.max_running_seen == 1


def test_vllm_adds_arrivals_between_steps_while_it_is_busy(
    vllm_fake: FakeVLLM, vllm_backend: VLLMBackend
) -> None:
    """Dense arrivals: a request due mid-step is added right after that step (< 1 step late)."""
    records = vllm_backend.run(_requests(12), _constant(12, 0.004))
    for r in records:
        assert r.arrival_s is not None
        assert 0.0 <= r.submit_s - r.arrival_s <= STEP_S + 1e-9
    seen = vllm_fake.instances[0].llm_engine.max_running_seen
    assert 1 < seen < 12  # requests overlapped, but never all at once as offline does


def test_vllm_closed_loop_keeps_concurrency_requests_in_flight(
    vllm_fake: FakeVLLM, vllm_backend: VLLMBackend
) -> None:
    """closed_loop with 3 users: never more than 3 running; request 3 arrives as one ends."""
    records = vllm_backend.run(_requests(9), ArrivalPlan(pattern="closed_loop", concurrency=3))
    assert vllm_fake.instances[0].llm_engine.max_running_seen == 3
    ends = {r.end_s for r in records[:3]}
    assert records[3].arrival_s in ends


def test_vllm_offline_records_have_no_arrival(vllm_backend: VLLMBackend) -> None:
    """Without a plan every request is added at once, as before, and arrival_s is None."""
    records = vllm_backend.run(_requests(4))
    assert all(r.arrival_s is None for r in records)
    assert len({r.submit_s for r in records}) == 1


# --------------------------------------------------------------------------- TensorRT-LLM


@pytest.fixture
def trt_fake() -> Iterator[FakeTRTLLM]:
    controller = FakeTRTLLM(FakeTRTLLMBehaviour(step_time_s=STEP_S))
    with controller.installed():
        yield controller


@pytest.fixture
def trt_backend(trt_fake: FakeTRTLLM, tmp_path: Path) -> Iterator[TensorRTBackend]:
    clock = trt_fake.behaviour.clock

    async def fake_sleep(seconds: float) -> None:
        # Like a real sleep: the executor keeps stepping (advancing the clock) meanwhile;
        # an idle executor lets the clock jump to the wake-up time.
        wake = clock() + seconds
        while clock() < wake:
            if trt_fake.instances and trt_fake.instances[-1]._batcher.has_unfinished:
                await asyncio.sleep(0)
            else:
                clock.advance(wake - clock())

    instance = TensorRTBackend(
        clock=clock,
        async_sleep=fake_sleep,
        engine_cache_dir=tmp_path / "cache",
        gpu_identity="NVIDIA H100 80GB HBM3 sm90",
        workdir=tmp_path / "work",
    )
    instance.load(_config("tensorrt"))
    yield instance
    instance.close()


def test_tensorrt_enqueues_each_request_at_its_arrival(
    trt_fake: FakeTRTLLM, trt_backend: TensorRTBackend
) -> None:
    """Sparse arrivals: each request reaches the executor at its arrival, one at a time."""
    t0 = trt_fake.behaviour.clock()
    records = trt_backend.run(_requests(5), _constant(5, 0.5))
    assert [r.arrival_s for r in records] == pytest.approx([t0 + 0.5 * i for i in range(5)])
    for r in records:
        assert r.submit_s >= r.arrival_s - 1e-9
        assert r.output_tokens == 5
    llm = trt_fake.instances[-1]
    assert llm._batcher.max_running_seen == 1


def test_tensorrt_closed_loop_keeps_concurrency_requests_in_flight(
    trt_fake: FakeTRTLLM, trt_backend: TensorRTBackend
) -> None:
    """closed_loop with 2 users: at most 2 requests in the executor at once."""
    records = trt_backend.run(_requests(6), ArrivalPlan(pattern="closed_loop", concurrency=2))
    assert all(r.output_tokens == 5 for r in records)
    assert trt_fake.instances[-1]._batcher.max_running_seen == 2
    assert records[2].arrival_s is not None
    assert records[2].arrival_s >= min(r.end_s for r in records[:2]) - 1e-9


# --------------------------------------------------------------------------- PyTorch


@pytest.mark.torch
def test_pytorch_dynamic_batcher_closes_at_batch_size_or_max_wait() -> None:
    """Real generate on the CPU: a batch closes when full or after max_wait_s, never early."""
    from llenergymeasure_harness.backends import get_backend
    from llenergymeasure_harness.prompts import build_requests

    cfg = make_config(n_prompts=6, max_output_tokens=2, dataset={"input_len": 4, "output_len": 2})
    backend = get_backend("pytorch")
    backend.load(cfg)
    try:
        requests = build_requests(cfg)
        # Three arrive together (batch_size 2: one full batch, then one that waits max_wait_s),
        # then three spread far apart (each waits max_wait_s for a partner that is not due).
        plan = ArrivalPlan(
            pattern="constant",
            offsets_s=(0.0, 0.0, 0.0, 1.0, 2.0, 3.0),
            max_wait_s=0.15,
        )
        records = backend.run(requests, plan)
    finally:
        backend.close()
    t0 = records[0].arrival_s
    assert t0 is not None
    assert [r.arrival_s - t0 for r in records] == pytest.approx(plan.offsets_s)  # type: ignore[operator]
    # Batch 1 = requests 0 and 1, handed over as soon as the second was due.
    assert records[0].submit_s == records[1].submit_s
    # (Upper bounds are loose: a loaded 2-core CI box can oversleep by a lot.)
    assert records[0].submit_s - t0 < 1.0
    # Request 2 waited for generate to finish and then at most max_wait_s for company.
    assert records[2].submit_s >= records[1].end_s
    for r in records[3:]:
        assert r.arrival_s is not None
        waited = r.submit_s - r.arrival_s
        assert 0.15 - 0.005 <= waited < 0.15 + 1.0  # closed on the timeout, alone
    assert all(r.output_tokens == 2 for r in records)
    assert len({r.submit_s for r in records}) == 5  # 5 batches: [0, 1], [2], [3], [4], [5]
