"""Throughput, latency, energy-efficiency and FLOPs figures from per-request records.

Definitions (all on the harness ``perf_counter`` clock, seconds):

* ``e2e``  = end − submit (submit is when the request's batch was handed to the engine).
* ``ttft`` = first output token − submit.
* ``itl``  = gaps between consecutive output tokens of a request, pooled over requests.
* ``tpot`` = (end − first token) / (output_tokens − 1), one value per request.

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


def latency(records: Sequence[RequestRecord]) -> dict[str, Any]:
    ttft: list[float] = []
    itl: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    for r in records:
        e2e.append(r.end_s - r.submit_s)
        first = r.first_token_s
        if first is None and r.token_times_s:
            first = r.token_times_s[0]
        if first is not None:
            ttft.append(first - r.submit_s)
            if r.output_tokens > 1:
                tpot.append((r.end_s - first) / (r.output_tokens - 1))
        ts = r.token_times_s
        itl.extend(b - a for a, b in itertools.pairwise(ts))
    return {"ttft_s": stats(ttft), "itl_s": stats(itl), "tpot_s": stats(tpot), "e2e_s": stats(e2e)}


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
    from llenergymeasure.architecture import FLOPS_METHOD

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


def request_columns(records: Sequence[RequestRecord]) -> dict[str, list[Any]]:
    """Raw per-request records, column-wise, for requests.parquet."""
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "request_id",
            "input_tokens",
            "output_tokens",
            "submit_s",
            "first_token_s",
            "end_s",
            "ttft_s",
            "e2e_s",
            "finish_reason",
            "token_times_s",
            "cached_input_tokens",
        )
    }
    for r in records:
        first = r.first_token_s
        if first is None and r.token_times_s:
            first = r.token_times_s[0]
        cols["request_id"].append(r.request_id)
        cols["input_tokens"].append(r.input_tokens)
        cols["output_tokens"].append(r.output_tokens)
        cols["submit_s"].append(r.submit_s)
        cols["first_token_s"].append(first)
        cols["end_s"].append(r.end_s)
        cols["ttft_s"].append(None if first is None else first - r.submit_s)
        cols["e2e_s"].append(r.end_s - r.submit_s)
        cols["finish_reason"].append(r.finish_reason)
        cols["token_times_s"].append(list(r.token_times_s))
        cols["cached_input_tokens"].append(r.cached_input_tokens)
    return cols
