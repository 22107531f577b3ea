"""A backend that generates nothing but satisfies the protocol, with injectable failures.

Each ``run`` advances the given clock by ``step_s`` per generated token (and the FakeNvml
counter with it), so energy and throughput figures are exact in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_harness.backends.base import GenerationRequest, LoadInfo, RequestRecord
from llenergymeasure_harness.traffic import ArrivalPlan, ArrivalQueue


class FakeBackendError(RuntimeError):
    """Raised by :class:`FakeBackend` where told to fail."""


class FakeBackend:
    """Satisfies :class:`~llenergymeasure_harness.backends.base.Backend`.

    Args:
        batch_size: The warmup unit.
        step_s: Clock seconds per generated token step.
        clock: The clock to read (and advance, if it has ``advance``).
        fail_in: ``"load"``, ``"run"`` (every call), or ``"measure"`` (runs after warmup).
        warmup_runs: How many ``run`` calls warmup makes (for ``fail_in="measure"``).
    """

    name = "fake"

    def __init__(
        self,
        *,
        batch_size: int = 2,
        step_s: float = 0.01,
        clock: Callable[[], float] = time.perf_counter,
        fail_in: str | None = None,
        warmup_runs: int = 0,
    ) -> None:
        self.batch_size = batch_size
        self.step_s = step_s
        self.clock = clock
        self.fail_in = fail_in
        self.warmup_runs = warmup_runs
        self.runs = 0
        self.closed = 0
        self.loaded = False
        self.loads = 0
        self.rebinds: list[ExperimentConfig] = []

    @property
    def warmup_unit(self) -> int:
        return self.batch_size

    def load(self, config: ExperimentConfig) -> LoadInfo:
        if self.fail_in == "load":
            raise FakeBackendError("model failed to load")
        self.loaded = True
        self.loads += 1
        return LoadInfo(
            backend_version="0.0-fake",
            backend_library="fake",
            parameter_count=1000,
            dtype="float32",
            load_duration_s=0.0,
            devices=list(config.gpus),
            extra={"vocab_size": 2048},
        )

    def rebind(self, config: ExperimentConfig) -> None:
        """Engine reuse: remember the config (its batch size is this fake's warmup unit)."""
        self.rebinds.append(config)

    def _advance(self, seconds: float) -> None:
        adv = getattr(self.clock, "advance", None)
        if adv is not None:
            adv(seconds)
        elif seconds > 0:
            time.sleep(seconds)

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        self.runs += 1
        if self.fail_in == "run" or (self.fail_in == "measure" and self.runs > self.warmup_runs):
            raise FakeBackendError("generation failed")
        if plan is not None and not plan.is_offline:
            return self._run_arrivals(requests, plan)
        out: list[RequestRecord] = []
        for i in range(0, len(requests), self.batch_size):
            out.extend(self._batch(requests[i : i + self.batch_size]))
        return out

    def _run_arrivals(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan
    ) -> list[RequestRecord]:
        """Batches of whatever is due when the previous batch ends (waits for the first)."""
        queue: ArrivalQueue[GenerationRequest] = ArrivalQueue(list(requests), plan, self.clock())
        out: list[RequestRecord] = []
        while queue.pending:
            due = queue.next_due_s()
            assert due is not None
            self._advance(max(0.0, due - self.clock()))
            batch = queue.pop_due(self.clock(), limit=self.batch_size)
            records = self._batch([r for r, _ in batch])
            for record, (_, arrival) in zip(records, batch, strict=True):
                record.arrival_s = arrival
            out.extend(records)
            queue.completed(len(batch), self.clock())
        return sorted(out, key=lambda r: r.request_id)

    def _batch(self, batch: Sequence[GenerationRequest]) -> list[RequestRecord]:
        out: list[RequestRecord] = []
        if batch:
            submit = self.clock()
            n = max(r.max_new_tokens for r in batch)
            times = []
            for _ in range(n):
                self._advance(self.step_s)
                times.append(self.clock())
            for r in batch:
                tt = times[: r.max_new_tokens]
                out.append(
                    RequestRecord(
                        request_id=r.request_id,
                        input_tokens=len(r.prompt_token_ids),
                        output_tokens=len(tt),
                        submit_s=submit,
                        end_s=tt[-1],
                        first_token_s=tt[0],
                        token_times_s=tt,
                        finish_reason="length",
                    )
                )
        return out

    def peak_memory_bytes(self) -> dict[int, int] | None:
        return None

    def close(self) -> None:
        self.closed += 1
