"""A tiny continuous-batching simulator shared by the fake vLLM and TensorRT-LLM modules.

It advances a :class:`FakeClock` instead of sleeping, so tests that pass the same clock to the
backend get exact, repeatable timestamps::

    step:      1        2        3        4   ...
    admit:   K reqs            (as running requests finish, waiting ones are admitted)
    tokens:  +1 each  +1 each  +1 each  ...   (the first token of a request comes from the
                                               step that admits it: prefill + first decode)

One step lasts ``step_time_s + prefill_time_per_token_s x (prompt tokens admitted)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


class FakeClock:
    """A manual clock: ``clock()`` returns the time, ``advance(dt)`` moves it forward."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        """Move the clock forward by ``dt`` seconds."""
        if dt < 0:
            raise ValueError("a clock cannot go backwards")
        self.now += dt


class FakeOutOfMemoryError(RuntimeError):
    """Stand-in for ``torch.cuda.OutOfMemoryError`` where torch is not importable."""


def cuda_oom(message: str) -> BaseException:
    """A CUDA OOM error of the real class when torch is importable."""
    try:
        import torch

        error: BaseException = torch.cuda.OutOfMemoryError(message)
        return error
    except (ImportError, AttributeError):  # pragma: no cover - torch is a dev dependency here
        return FakeOutOfMemoryError(message)


OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
    "of which 1.06 GiB is free."
)


@dataclass
class SimRequest:
    """One request inside the simulator."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    eos_token_id: int | None = None
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    admitted: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class SimEvent:
    """What one step did to one request."""

    request: SimRequest
    new_token_ids: list[int]


class ContinuousBatcher:
    """FIFO continuous batching with a cap on running requests.

    Args:
        clock: Advanced by every step.
        max_running: The engine's batch cap (max_num_seqs / max_batch_size).
        step_time_s: Time of one decode step.
        prefill_time_per_token_s: Extra step time per prompt token admitted in that step.
        tokens_per_step: Tokens each running request gains per step (>1 mimics speculation).
        eos_after: When set, requests that do not ignore EOS emit EOS as token number
            ``max(eos_after, min_tokens)`` and stop there ("stop").
        kv_capacity_seqs: When set, at most this many requests run at once, whatever
            ``max_running`` says (a KV cache too small for the batch).
        oom_at_step: Raise a CUDA OOM error at this step number (1-based).
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        max_running: int,
        step_time_s: float = 0.01,
        prefill_time_per_token_s: float = 0.0,
        tokens_per_step: int = 1,
        eos_after: int | None = None,
        kv_capacity_seqs: int | None = None,
        oom_at_step: int | None = None,
    ) -> None:
        self.clock = clock
        self.max_running = max(1, min(max_running, kv_capacity_seqs or max_running))
        self.step_time_s = step_time_s
        self.prefill_time_per_token_s = prefill_time_per_token_s
        self.tokens_per_step = max(1, tokens_per_step)
        self.eos_after = eos_after
        self.oom_at_step = oom_at_step
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.steps = 0
        self.max_running_seen = 0

    def add(self, request: SimRequest) -> None:
        """Queue a request."""
        self.waiting.append(request)

    def abort(self, request_id: str) -> None:
        """Drop a request wherever it is."""
        self.waiting = deque(r for r in self.waiting if r.request_id != request_id)
        self.running = [r for r in self.running if r.request_id != request_id]

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def _next_token(self, request: SimRequest) -> int:
        position = len(request.output_token_ids)
        if (
            not request.ignore_eos
            and self.eos_after is not None
            and request.eos_token_id is not None
            and position + 1 >= max(self.eos_after, request.min_tokens)
        ):
            return request.eos_token_id
        seed = sum(request.prompt_token_ids[:4]) + 7 * len(request.prompt_token_ids)
        return 10 + (seed + 31 * position) % 997

    def step(self) -> list[SimEvent]:
        """Run one engine step and return the requests that produced tokens."""
        self.steps += 1
        if self.oom_at_step is not None and self.steps >= self.oom_at_step:
            raise cuda_oom(OOM_MESSAGE)
        admitted_tokens = 0
        while self.waiting and len(self.running) < self.max_running:
            request = self.waiting.popleft()
            request.admitted = True
            admitted_tokens += len(request.prompt_token_ids)
            self.running.append(request)
        self.max_running_seen = max(self.max_running_seen, len(self.running))
        self.clock.advance(self.step_time_s + self.prefill_time_per_token_s * admitted_tokens)
        events: list[SimEvent] = []
        still_running: list[SimRequest] = []
        for request in self.running:
            new: list[int] = []
            for _ in range(self.tokens_per_step):
                token = self._next_token(request)
                new.append(token)
                request.output_token_ids.append(token)
                if (
                    token == request.eos_token_id
                    and not request.ignore_eos
                    and self.eos_after is not None
                ):
                    request.finish_reason = "stop"
                    break
                if len(request.output_token_ids) >= request.max_tokens:
                    request.finish_reason = "length"
                    break
            events.append(SimEvent(request=request, new_token_ids=new))
            if not request.finished:
                still_running.append(request)
        self.running = still_running
        return events
