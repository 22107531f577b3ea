"""Traffic inside the harness: :class:`ArrivalPlan` (when each request is due) and
:class:`ArrivalQueue` (hands requests to a backend's loop as they come due).

Every backend follows the same plan::

    ArrivalPlan.from_config(cfg.traffic, requests)      drawn once per experiment (seeded)
          │
          ▼
    backend.run(requests, plan)
      t0 = clock()                                      the measured window has just opened
      loop: submit every request whose arrival (t0 + offset) has passed;
            step the engine (vLLM), enqueue (TensorRT-LLM), batch (PyTorch), send (endpoint);
            idle until the next arrival when there is nothing to do (sleep, never spin)

Each record carries ``arrival_s`` (scheduled, on the harness clock) beside ``submit_s`` (when
the engine got it): ``submit_s - arrival_s`` is the queueing delay outside the engine (the
PyTorch batcher's wait, the harness's own lateness), and with arrivals TTFT and E2E start at
``arrival_s``. Arrival schedules themselves are in :mod:`.arrivals`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from llenergymeasure.config import TrafficConfig
from llenergymeasure_harness.traffic.arrivals import arrival_offsets

T = TypeVar("T")


@dataclass(frozen=True)
class ArrivalPlan:
    """How the requests of one measured run arrive.

    Attributes:
        pattern: ``offline``, ``constant``, ``poisson``, ``gamma`` or ``closed_loop``.
        offsets_s: Per request (in request order), seconds after the run starts; None for
            offline (all at 0) and closed_loop (due when a user's previous request ends).
        concurrency: closed_loop users (requests in flight); None otherwise.
        max_wait_s: How long a batching backend holds an open batch for more arrivals.
    """

    pattern: str
    offsets_s: tuple[float, ...] | None = None
    concurrency: int | None = None
    max_wait_s: float = 0.0

    @classmethod
    def from_config(cls, traffic: TrafficConfig, n_requests: int) -> ArrivalPlan:
        """The plan of ``n_requests`` requests under ``traffic`` (seeded, deterministic)."""
        offsets = arrival_offsets(traffic, n_requests)
        return cls(
            pattern=traffic.pattern,
            offsets_s=tuple(offsets) if offsets is not None else None,
            concurrency=traffic.concurrency,
            max_wait_s=traffic.max_wait_s,
        )

    @classmethod
    def offline(cls) -> ArrivalPlan:
        """Everything at once (warmup, and the default)."""
        return cls(pattern="offline")

    @property
    def is_offline(self) -> bool:
        return self.pattern == "offline"


class ArrivalQueue(Generic[T]):
    """Requests not yet submitted, released as they come due (open or closed loop).

    Times are absolute on the backend's clock. Open loop: request ``i`` is due at
    ``t0 + offsets_s[i]``. Closed loop: the first ``concurrency`` are due at ``t0``, and each
    :meth:`completed` request makes the next one due at the time it ended. Offline: all at t0.

    Args:
        items: The requests, in request order.
        plan: Their arrival plan.
        t0: When the run started.
    """

    def __init__(self, items: Sequence[T], plan: ArrivalPlan, t0: float) -> None:
        self.plan = plan
        self.t0 = t0
        self._waiting: deque[T] = deque(items)
        self._offsets = plan.offsets_s
        if self._offsets is not None and len(self._offsets) != len(items):
            raise ValueError(f"{len(self._offsets)} arrival offsets for {len(items)} requests")
        self._next_index = 0
        self._closed_due: deque[float] = deque()
        if plan.pattern == "closed_loop":
            users = plan.concurrency or 1
            self._closed_due.extend([t0] * min(users, len(items)))

    @property
    def pending(self) -> int:
        """Requests not yet handed out."""
        return len(self._waiting)

    def next_due_s(self) -> float | None:
        """When the next request is due, or None (none left, or a closed loop is waiting)."""
        if not self._waiting:
            return None
        if self.plan.pattern == "closed_loop":
            return self._closed_due[0] if self._closed_due else None
        if self._offsets is None:
            return self.t0
        return self.t0 + self._offsets[self._next_index]

    def due_s_of_nth(self, n: int) -> float | None:
        """When the ``n``-th next request (0 = the next) is due, if it is known yet."""
        if n >= len(self._waiting):
            return None
        if self.plan.pattern == "closed_loop":
            return self._closed_due[n] if n < len(self._closed_due) else None
        if self._offsets is None:
            return self.t0
        return self.t0 + self._offsets[self._next_index + n]

    def pop_due(self, now: float, limit: int | None = None) -> list[tuple[T, float]]:
        """Every request due by ``now`` (at most ``limit``), with its arrival time."""
        out: list[tuple[T, float]] = []
        while self._waiting and (limit is None or len(out) < limit):
            due = self.next_due_s()
            if due is None or due > now:
                break
            out.append((self._waiting.popleft(), due))
            if self.plan.pattern == "closed_loop":
                self._closed_due.popleft()
            else:
                self._next_index += 1
        return out

    def completed(self, count: int, now: float) -> None:
        """``count`` requests ended at ``now``: in a closed loop their users send again."""
        if self.plan.pattern != "closed_loop" or count <= 0:
            return
        room = len(self._waiting) - len(self._closed_due)
        self._closed_due.extend([now] * max(0, min(count, room)))


__all__ = ["ArrivalPlan", "ArrivalQueue", "arrival_offsets"]
