"""The steady-state window of a continuous-batching run (vLLM, TensorRT-LLM).

A continuous-batching engine given all requests at once ramps up (the batch fills while the
first prompts are prefilled), runs full for a while, and drains at the end (fewer and fewer
requests left). Energy per token is only representative of the configured batch in the middle
part. We use the rule of the ML.ENERGY benchmark (``mlenergy/benchmark/llm/benchmark.py``,
``RequestTracker``)::

    requests in flight
      K ┤        ┌───────────────────────────────┐
        │       ╱│                               │╲
        │      ╱ │                               │ ╲
      0 ┼─────╯  │                               │  ╰──
        submit   start_s                     end_s      last request done
                 (K-th first token)          (N-K-1-th request finished)

``start_s`` is the time the ``K``-th request (``K = max_num_seqs``) received its first token;
``end_s`` is the time the ``(N - K - 1)``-th request finished, the ``- 1`` closing the window a
little early so that no ramp-down is included. The window is reported beside the whole-run
figures, never instead of them, and it is flagged invalid when:

* there are too few requests for a steady state at all (``N - K - 1 < 1``), or the window
  would close before it opens;
* it is shorter than ``min_duration_s`` (ML.ENERGY's benchmark validator rejects < 30 s: the
  energy counter updates about every 100 ms, and thermal state needs time to settle; their
  data toolkit drops published runs under 20 s);
* the batch never really filled: the time-averaged number of running requests inside the
  window is below ``min_fill_fraction`` x ``K`` (80 % here; ML.ENERGY's data toolkit: 85 % of
  ``max_num_seqs``, from vLLM's ``num_requests_running`` gauge), which happens when the KV
  cache cannot hold ``K`` sequences. A request counts from its first token, so its own prefill
  time counts as an empty slot: with fixed-length requests all submitted at t=0 the engine
  runs in waves and each wave's prefill empties the batch for a while. On the H200 (vLLM
  0.26.0, 8B, 512/128) that gave 44 of 64 running (69 %) at ``max_num_seqs`` 64 and passed at
  256. ML.ENERGY counts vLLM's scheduler's running requests (prefill included) on chat
  requests of varied length, which do not run in waves; the scheduler's timestamps are not
  read here (``disable_log_stats``), so this check is stricter than theirs.

Everything here is a pure function of the request records, so the harness can integrate energy
over ``[start_s, end_s]`` from its own counter readings or power time series. Why a window is
invalid is a :class:`~llenergymeasure_contract.windows.WindowProblem`; ``reason`` is the same in
words, for people. The thresholds of both rules are in :mod:`llenergymeasure_contract.windows`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llenergymeasure_contract.sizing import MIN_ARRIVAL_REQUESTS
from llenergymeasure_contract.windows import (
    MIN_DURATION_S,
    MIN_FILL_FRACTION,
    MLENERGY_MIN_BATCH_FRACTION,
    MLENERGY_MIN_DURATION_S,
    MLEnergySteadyState,
    WindowProblem,
)
from llenergymeasure_harness.backends.base import RequestRecord

#: ML.ENERGY's benchmark validator rejects steady states shorter than this.
DEFAULT_MIN_DURATION_S = MIN_DURATION_S
#: Runs whose average running batch is below this fraction of K are flagged.
DEFAULT_MIN_FILL_FRACTION = MIN_FILL_FRACTION


@dataclass(frozen=True)
class SteadyStateWindow:
    """Where the steady state of a run lies on the harness clock, and whether it is usable.

    Attributes:
        start_s: Window start (perf_counter seconds), or None if there is no window at all.
        end_s: Window end, or None if there is no window at all.
        problems: Why the window is invalid (empty when valid); energy over an invalid window
            is still computable (when ``start_s``/``end_s`` are set) but reported as flagged.
        reason: The problems in words (None when valid); several joined by "; ".
        target_concurrency: ``K``, the batch the engine was configured to keep full.
        n_requests: ``N``, the number of requests in the run.
        mean_concurrency: Time-averaged running requests (first token .. finish) in the window.
        output_tokens: Output tokens whose timestamps fall inside the window; None when the
            records carry no per-token timestamps.
    """

    start_s: float | None
    end_s: float | None
    problems: tuple[WindowProblem, ...]
    reason: str | None
    target_concurrency: int
    n_requests: int
    mean_concurrency: float | None = None
    output_tokens: int | None = None

    @property
    def valid(self) -> bool:
        """True when the window passed every check."""
        return not self.problems

    @property
    def duration_s(self) -> float | None:
        """Window length in seconds (None when there is no window)."""
        if self.start_s is None or self.end_s is None:
            return None
        return max(0.0, self.end_s - self.start_s)

    @property
    def output_tokens_per_s(self) -> float | None:
        """Output throughput inside the window."""
        duration = self.duration_s
        if self.output_tokens is None or not duration:
            return None
        return self.output_tokens / duration

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, derived values included."""
        out = asdict(self)
        out["problems"] = [p.value for p in self.problems]
        out["valid"] = self.valid
        out["duration_s"] = self.duration_s
        out["output_tokens_per_s"] = self.output_tokens_per_s
        return out


def _first_token_time(record: RequestRecord) -> float | None:
    if record.first_token_s is not None:
        return record.first_token_s
    if record.token_times_s:
        return record.token_times_s[0]
    return None


def mean_running(records: Sequence[RequestRecord], start_s: float, end_s: float) -> float | None:
    """Time-averaged number of requests between first token and finish within a window.

    A request counts as running from its first token to its end (the decode phase, what vLLM's
    ``num_requests_running`` mostly counts once prefill is done). Requests without a first-token
    time are counted from submission.
    """
    duration = end_s - start_s
    if duration <= 0:
        return None
    busy = 0.0
    for record in records:
        begin = _first_token_time(record)
        if begin is None:
            begin = record.submit_s
        overlap = min(record.end_s, end_s) - max(begin, start_s)
        if overlap > 0:
            busy += overlap
    return busy / duration


def steady_state_window(
    records: Sequence[RequestRecord],
    max_concurrency: int,
    *,
    min_duration_s: float = DEFAULT_MIN_DURATION_S,
    min_fill_fraction: float = DEFAULT_MIN_FILL_FRACTION,
) -> SteadyStateWindow:
    """Compute the steady-state window of one measured run (see the module docstring).

    Args:
        records: One record per request of the measured run, on the harness clock.
        max_concurrency: ``K``: the engine's ``max_num_seqs`` / ``max_batch_size``. Pass the
            configured value, not ``min(K, N)``: a run with fewer requests than ``K`` never
            fills the batch, and the window says so.
        min_duration_s: Shorter windows are flagged invalid.
        min_fill_fraction: Windows whose mean running batch is below this fraction of ``K``
            are flagged invalid.

    Returns:
        The window; ``start_s``/``end_s`` are None only when no window can be placed at all.

    Raises:
        ValueError: ``max_concurrency`` < 1.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    n = len(records)
    k = max_concurrency
    n_finished_at_end = n - k - 1
    if n_finished_at_end < 1:
        return SteadyStateWindow(
            start_s=None,
            end_s=None,
            problems=(WindowProblem.TOO_FEW_REQUESTS,),
            reason=(
                f"too few requests for a steady state: {n} requests with a batch of {k} "
                f"(need more than {k + 1}; use several times {k})"
            ),
            target_concurrency=k,
            n_requests=n,
        )
    first_tokens = sorted(t for t in (_first_token_time(r) for r in records) if t is not None)
    if len(first_tokens) < k:
        return SteadyStateWindow(
            start_s=None,
            end_s=None,
            problems=(WindowProblem.NO_FIRST_TOKENS,),
            reason=(
                f"only {len(first_tokens)} of {n} requests report a first-token time, fewer "
                f"than the batch of {k}; the window cannot open"
            ),
            target_concurrency=k,
            n_requests=n,
        )
    start_s = first_tokens[k - 1]
    end_s = sorted(r.end_s for r in records)[n_finished_at_end - 1]
    if end_s <= start_s:
        return SteadyStateWindow(
            start_s=start_s,
            end_s=end_s,
            problems=(WindowProblem.NEVER_FULL,),
            reason=(
                f"the batch of {k} was never full while requests were still arriving: the "
                f"{n_finished_at_end}-th request finished before the {k}-th first token"
            ),
            target_concurrency=k,
            n_requests=n,
        )
    running = mean_running(records, start_s, end_s)
    problems, reasons = _judge(
        end_s - start_s, running, k, min_duration_s=min_duration_s, min_fill=min_fill_fraction
    )
    return SteadyStateWindow(
        start_s=start_s,
        end_s=end_s,
        problems=problems,
        reason="; ".join(reasons) or None,
        target_concurrency=k,
        n_requests=n,
        mean_concurrency=running,
        output_tokens=_tokens_in(records, start_s, end_s),
    )


def _tokens_in(records: Sequence[RequestRecord], start_s: float, end_s: float) -> int | None:
    """Output tokens whose timestamps fall in the window (None without per-token times)."""
    if not any(r.token_times_s for r in records):
        return None
    return sum(sum(1 for t in r.token_times_s if start_s <= t <= end_s) for r in records)


def _judge(
    duration: float,
    running: float | None,
    k: int | None,
    *,
    min_duration_s: float,
    min_fill: float,
) -> tuple[tuple[WindowProblem, ...], list[str]]:
    """The duration and fill checks of a placed window: problems and their words."""
    problems: list[WindowProblem] = []
    reasons: list[str] = []
    if duration < min_duration_s:
        problems.append(WindowProblem.TOO_SHORT)
        reasons.append(
            f"steady state lasted {duration:.3f} s, under the {min_duration_s:g} s minimum "
            "(increase n_prompts)"
        )
    if k is not None and running is not None and running < min_fill * k:
        problems.append(WindowProblem.UNDERFILLED)
        reasons.append(
            f"the batch never filled: {running:.1f} requests running on average, under "
            f"{min_fill:.0%} of {k} (a KV cache too small for the batch, or "
            "fixed-length requests running in waves whose prefills leave slots empty: "
            "more prompts do not help)"
        )
    return tuple(problems), reasons


def arrival_steady_state_window(
    records: Sequence[RequestRecord], *, min_duration_s: float = DEFAULT_MIN_DURATION_S
) -> SteadyStateWindow:
    """The steady state of an open-loop run (constant, poisson, gamma arrivals).

    Arrivals fill the system from empty and, after the last arrival, it drains::

        requests in flight
          L ┤      ╭──╮ ╭─╮╭───╮ ╭──╮                  L ~ rate x latency (Little's law)
            │    ╭─╯  ╰─╯ ╰╯   ╰─╯  ╰─╮
          0 ┼────╯                    ╰───
            first       start_s     end_s      last request done
            arrival  (first request  (last
                      finished)      arrival)

    ``start_s`` is when the first request finished (by then requests have lived a full
    lifetime in the system, so the in-flight count has reached its level); ``end_s`` is the
    last arrival (after it nothing new enters and the system drains). ``target_concurrency`` is
    reported as the mean in flight over the window (rounded), for information.
    """
    n = len(records)
    arrivals = sorted(r.arrival_s for r in records if r.arrival_s is not None)
    if n < MIN_ARRIVAL_REQUESTS or len(arrivals) < n:
        return SteadyStateWindow(
            start_s=None,
            end_s=None,
            problems=(WindowProblem.TOO_FEW_REQUESTS,),
            reason=f"too few requests with arrival times for a steady state ({len(arrivals)})",
            target_concurrency=1,
            n_requests=n,
        )
    start_s = min(r.end_s for r in records)
    end_s = arrivals[-1]
    if end_s <= start_s:
        return SteadyStateWindow(
            start_s=start_s,
            end_s=end_s,
            problems=(WindowProblem.ARRIVALS_ENDED_EARLY,),
            reason=(
                "the arrivals ended before the first request finished: the system never "
                "reached a steady state (more requests, or a lower rate)"
            ),
            target_concurrency=1,
            n_requests=n,
        )
    running = mean_running(records, start_s, end_s)
    problems, reasons = _judge(
        end_s - start_s, running, None, min_duration_s=min_duration_s, min_fill=0.0
    )
    return SteadyStateWindow(
        start_s=start_s,
        end_s=end_s,
        problems=problems,
        reason="; ".join(reasons) or None,
        target_concurrency=max(1, round(running or 0.0)),
        n_requests=n,
        mean_concurrency=running,
        output_tokens=_tokens_in(records, start_s, end_s),
    )


def mlenergy_steady_state(
    records: Sequence[RequestRecord],
    max_num_seqs: int,
    energy_of: Callable[[float, float], float | None],
) -> MLEnergySteadyState:
    """ML.ENERGY's window and stability rule on this run, for a like-for-like comparison.

    The window is :func:`steady_state_window`'s with ``K = max_num_seqs`` whatever the traffic
    (ml-energy/benchmark ``mlenergy/benchmark/llm/benchmark.py``, ``RequestTracker``); J/token is
    the window's energy over the tokens produced inside it. Stable as their data toolkit decides
    (ml-energy/data ``mlenergy_data/records/runs.py``, ``_llm_stability_status``): a window of at
    least 20 s, a positive energy per token, and an average running batch of at least 85 % of
    ``max_num_seqs``. Their batch is vLLM's ``num_requests_running`` gauge averaged over the
    window; here it is the time-averaged count of requests between first token and end, from
    the records (:func:`mean_running`), for theirs and ours alike. The toolkit also drops every
    larger batch of a model/GPU once one is unstable (``cascade_from_unstable_batch``), which
    needs the whole sweep and is not applied per run.

    Args:
        records: The measured run's records.
        max_num_seqs: ``K`` (:attr:`ExperimentConfig.concurrency`).
        energy_of: GPU energy over ``[start_s, end_s]``, or None when not measured.
    """
    w = steady_state_window(
        records,
        max_num_seqs,
        min_duration_s=MLENERGY_MIN_DURATION_S,
        min_fill_fraction=MLENERGY_MIN_BATCH_FRACTION,
    )
    if w.start_s is None or w.end_s is None or not w.duration_s:
        problems = list(w.problems)
        if w.start_s is not None and WindowProblem.TOO_SHORT not in problems:
            problems.append(WindowProblem.TOO_SHORT)  # their window then lasts ~0 s
        return MLEnergySteadyState(
            max_num_seqs=max_num_seqs,
            start_s=w.start_s,
            end_s=w.end_s,
            duration_s=w.duration_s,
            stable=False,
            problems=problems,
        )
    energy = energy_of(w.start_s, w.end_s)
    tokens = w.output_tokens
    per_token = energy / tokens if energy is not None and tokens else None
    problems = list(w.problems)
    if per_token is None or per_token <= 0:
        problems.append(WindowProblem.NO_ENERGY)
    return MLEnergySteadyState(
        max_num_seqs=max_num_seqs,
        start_s=w.start_s,
        end_s=w.end_s,
        duration_s=w.duration_s,
        output_tokens=tokens,
        gpu_energy_j=energy,
        j_per_output_token=per_token,
        output_tokens_per_s=w.output_tokens_per_s,
        avg_running_batch=w.mean_concurrency,
        stable=not problems,
        problems=problems,
    )


__all__ = [
    "DEFAULT_MIN_DURATION_S",
    "DEFAULT_MIN_FILL_FRACTION",
    "SteadyStateWindow",
    "arrival_steady_state_window",
    "mean_running",
    "mlenergy_steady_state",
    "steady_state_window",
]
