"""Throughput, latency, energy-efficiency and FLOPs figures from per-request records.

Definitions (all on the harness ``perf_counter`` clock, seconds):

* ``e2e``  = end − start.
* ``ttft`` = first output token − start.
* ``itl``  = gaps between consecutive output tokens of a request, pooled over requests.
* ``tpot`` = (end − first token) / (output_tokens − 1), one value per request.
* ``queue`` = submit − arrival: time a due request waited before the engine got it.

``start`` depends on the latency mode. ``offline_queueing`` (traffic offline): the submit time,
when the request's batch was handed to the engine, so queueing inside the engine counts and
waiting for an earlier batch does not. ``arrivals`` (any other traffic pattern): the request's
scheduled arrival, so every wait a user would see counts, as in ``vllm bench serve``.

Token counts exclude padding and anything after EOS. Throughput divides by the measured window
(the energy window), so tokens/s and J/token describe the same interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from llenergymeasure_harness.backends.base import RequestRecord


def stats(values: Sequence[float]) -> dict[str, Any] | None:
    """count/mean/p50/p90/p99/min/max (nearest-rank percentiles), None when empty."""
    if not values:
        return None
    xs = sorted(values)

    def pct(p: float) -> float:
        k = max(0, min(len(xs) - 1, math.ceil(p / 100.0 * len(xs)) - 1))
        return float(xs[k])

    return {
        "count": len(xs),
        "mean": float(sum(xs) / len(xs)),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "min": float(xs[0]),
        "max": float(xs[-1]),
    }


def throughput(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    inp = sum(r.input_tokens for r in records)
    out = sum(r.output_tokens for r in records)
    d = duration_s if duration_s > 0 else float("nan")
    return {
        "n_requests": len(records),
        "input_tokens": inp,
        "output_tokens": out,
        "total_tokens": inp + out,
        "duration_s": duration_s,
        "output_tokens_per_s": out / d,
        "total_tokens_per_s": (inp + out) / d,
        "requests_per_s": len(records) / d,
    }


LATENCY_MODES = ("offline_queueing", "arrivals")


def _first(r: RequestRecord) -> float | None:
    if r.first_token_s is not None:
        return r.first_token_s
    return r.token_times_s[0] if r.token_times_s else None


def start_of(r: RequestRecord, mode: str = "offline_queueing") -> float:
    """Where a request's TTFT and E2E start in ``mode`` (see the module docstring)."""
    if mode == "arrivals" and r.arrival_s is not None:
        return r.arrival_s
    return r.submit_s


def request_tpot_s(r: RequestRecord) -> float | None:
    """(end − first token) / (output_tokens − 1), or None for fewer than two tokens."""
    first = _first(r)
    if first is None or r.output_tokens <= 1:
        return None
    return (r.end_s - first) / (r.output_tokens - 1)


def latency(records: Sequence[RequestRecord], mode: str = "offline_queueing") -> dict[str, Any]:
    """TTFT, ITL, TPOT, E2E and queueing-delay summaries in the given latency mode."""
    ttft: list[float] = []
    itl: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    queue: list[float] = []
    for r in records:
        start = start_of(r, mode)
        e2e.append(r.end_s - start)
        if r.arrival_s is not None:
            queue.append(max(0.0, r.submit_s - r.arrival_s))
        first = _first(r)
        if first is not None:
            ttft.append(first - start)
        per_token = request_tpot_s(r)
        if per_token is not None:
            tpot.append(per_token)
        ts = r.token_times_s
        itl.extend(b - a for a, b in itertools.pairwise(ts))
    return {
        "mode": mode,
        "ttft_s": stats(ttft),
        "itl_s": stats(itl),
        "tpot_s": stats(tpot),
        "e2e_s": stats(e2e),
        "queue_s": stats(queue),
    }


def meets_slo(
    r: RequestRecord, ttft_s: float | None, tpot_s: float | None, mode: str = "arrivals"
) -> bool:
    """True when the request met every objective given (a missing measurement fails it)."""
    if ttft_s is not None:
        first = _first(r)
        if first is None or first - start_of(r, mode) > ttft_s:
            return False
    if tpot_s is not None:
        per_token = request_tpot_s(r)
        # One output token has no TPOT; it cannot miss a per-token objective.
        if per_token is not None and per_token > tpot_s:
            return False
        if per_token is None and _first(r) is None:
            return False
    return True


def goodput(
    records: Sequence[RequestRecord],
    *,
    duration_s: float,
    gross_j: float | None,
    ttft_s: float | None,
    tpot_s: float | None,
    mode: str,
) -> dict[str, Any]:
    """Requests meeting the SLO: count, fraction, per second of the window, and J per one."""
    good = [r for r in records if meets_slo(r, ttft_s, tpot_s, mode)]
    n = len(good)
    return {
        "ttft_s": ttft_s,
        "tpot_s": tpot_s,
        "n_requests_meeting_slo": n,
        "slo_attainment": n / len(records) if records else None,
        "goodput_requests_per_s": n / duration_s if duration_s > 0 else None,
        "goodput_output_tokens_per_s": (
            sum(r.output_tokens for r in good) / duration_s if duration_s > 0 else None
        ),
        "j_per_slo_request": gross_j / n if gross_j is not None and n else None,
    }


def efficiency(gross_j: float | None, net_j: float | None, tp: dict[str, Any]) -> dict[str, Any]:
    """J per output token / token / request, tokens per J; None where energy is unknown."""

    def div(a: float | None, b: float) -> float | None:
        return None if a is None or b <= 0 else a / b

    out, total, n = tp["output_tokens"], tp["total_tokens"], tp["n_requests"]
    return {
        "j_per_output_token": div(gross_j, out),
        "j_per_token": div(gross_j, total),
        "j_per_request": div(gross_j, n),
        "output_tokens_per_j": None if not gross_j else out / gross_j,
        "net_j_per_output_token": div(net_j, out),
        "net_j_per_request": div(net_j, n),
    }


def flops(arch: Any, records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Forward FLOPs of the measured requests from an ``ArchitectureSpec`` (None if unknown)."""
    if arch is None:
        return {"flops_total": None, "flops_per_output_token": None, "flops_method": None}
    from llenergymeasure_contract.architecture import FLOPS_METHOD

    try:
        total = sum(arch.generation_flops(r.input_tokens, r.output_tokens) for r in records)
    except Exception:  # an unusual config.json without the fields the estimate needs
        return {"flops_total": None, "flops_per_output_token": None, "flops_method": None}
    out = sum(r.output_tokens for r in records)
    return {
        "flops_total": float(total),
        "flops_per_output_token": float(total) / out if out else None,
        "flops_method": FLOPS_METHOD,
    }


def request_columns(
    records: Sequence[RequestRecord], mode: str = "offline_queueing"
) -> dict[str, list[Any]]:
    """Raw per-request records, column-wise, for requests.parquet.

    ``ttft_s`` and ``e2e_s`` are in the run's latency mode (from ``arrival_s`` with arrivals,
    from ``submit_s`` offline); ``arrival_s`` is None offline.
    """
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "request_id",
            "input_tokens",
            "output_tokens",
            "arrival_s",
            "submit_s",
            "queue_s",
            "first_token_s",
            "end_s",
            "ttft_s",
            "e2e_s",
            "finish_reason",
            "token_times_s",
            "cached_input_tokens",
            "output_sha256",
        )
    }
    for r in records:
        first = r.first_token_s
        if first is None and r.token_times_s:
            first = r.token_times_s[0]
        cols["request_id"].append(r.request_id)
        cols["input_tokens"].append(r.input_tokens)
        cols["output_tokens"].append(r.output_tokens)
        cols["arrival_s"].append(r.arrival_s)
        cols["submit_s"].append(r.submit_s)
        cols["queue_s"].append(None if r.arrival_s is None else r.submit_s - r.arrival_s)
        cols["first_token_s"].append(first)
        cols["end_s"].append(r.end_s)
        start = start_of(r, mode)
        cols["ttft_s"].append(None if first is None else first - start)
        cols["e2e_s"].append(r.end_s - start)
        cols["finish_reason"].append(r.finish_reason)
        cols["token_times_s"].append(list(r.token_times_s))
        cols["cached_input_tokens"].append(r.cached_input_tokens)
        cols["output_sha256"].append(r.output_sha256)
    return cols
