"""Energy per prefill token and per decode token, with the method named in the result.

Two methods; the result's ``phase_energy.method`` says which one its headline figures use.

``prefill_pass_difference`` (every backend; the headline for static batching, PyTorch)::

    measured window: prefill + decode of N requests ──► E_total   (NVML counter, window edges)
    prefill pass:    the same shapes, max_new_tokens=1 ──► E_prefill (its own counter window)
    E_decode = E_total - E_prefill

  The pass runs inside the experiment, right after the measured window, on prompts that share
  no prefix with the measured ones (:func:`~llenergymeasure_harness.prompts.distinct_requests`),
  so no prefix cache serves it. Its single output token per request is the prefill's own
  logits, so it counts as prefill. Per token: ``E_prefill / prompt tokens`` and
  ``E_decode / (output tokens - N)`` (the first output token of each request comes out of the
  prefill).

  The pass is sized to what its figure needs (:func:`prefill_pass_waves`): whole waves of the
  measured batch (``backend.warmup_unit`` requests) until it has lasted
  :data:`PREFILL_PASS_MIN_S` or every shape ran. The NVML energy counter moves about every
  100 ms, so 2 s is at least 20 updates: one update's quantisation is then at most 5 % of the
  pass, less than the run-to-run spread. With n of the N requests run, its energy is scaled
  per prefill token to the measured set: ``E_prefill = E_pass x P_N / P_n`` (P: prompt tokens;
  the factor is ``prefill_pass_scale``, 1.0 when all N ran).

``timeline_decode_fit`` (continuous batching: vLLM, TensorRT-LLM)::

    engine steps ─┬─ s1 ─┬─ s2 ─┬─ ... ─┬─ sK ──   step i = (s_{i-1}, s_i], energy e_i from
                  │ p,d  │ p,d  │       │           the power samples (scaled to the counter)
    p_i: prompt tokens of requests whose first token came at s_i (prefilled in that step)
    d_i: the other tokens of step i (one per decoding request)

  Steps with ``p_i = 0`` far from any prefill (``guard_s``, so the power sampler's smoothing
  does not blur a prefill into them) fit a decode-only cost ``e(d) = u + v d``. A step that
  mixes prefill and decode is charged ``min(e_i, e(d_i))`` to decode (0 when ``d_i = 0``) and
  the rest to prefill; pure-decode steps are all decode. Decode is the sum, prefill what is
  left of the counter's total. A fused step has no unique split: this is a convention
  ("decode costs what a decode-only step of that batch costs"), stated beside the figures.
  Engine steps that emit no token (a chunked prefill's early chunks) fall into the next step
  that does. Without enough clean decode steps, or with a fit whose slope is negative (decode
  steps cheaper the more tokens they carry, seen on the H200 at 64 sequences), the fit is
  refused (``None`` with a reason) and the prefill pass is the headline; so it is in server
  mode and for ``backend: endpoint``, where the token times are the streaming client's chunk
  receipt times and the engine's steps cannot be recovered from them. On the H200 at 256
  sequences the two methods agreed within 3 % (prefill) and 6 % (decode): docs/gpu-results.md.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from llenergymeasure_harness.backends.base import GenerationRequest, RequestRecord

METHOD_PASS = "prefill_pass_difference"
METHOD_TIMELINE = "timeline_decode_fit"

#: Fewest clean decode steps the timeline fit accepts.
MIN_CLEAN_STEPS = 8

#: The prefill pass stops after the first whole wave that brings it to this many seconds:
#: 20 updates of NVML's ~100 ms energy counter (see the module docstring).
PREFILL_PASS_MIN_S = 2.0


def prefill_pass_waves(n_requests: int, wave: int) -> list[tuple[int, int]]:
    """The pass's waves as ``(start, end)`` slices: whole waves of ``wave`` requests (the last
    one shorter when ``wave`` does not divide ``n_requests``)."""
    wave = max(1, wave)
    return [(i, min(n_requests, i + wave)) for i in range(0, n_requests, wave)]


def _div(a: float | None, b: float) -> float | None:
    return a / b if a is not None and b > 0 else None


def _first_time(record: RequestRecord) -> float | None:
    if record.token_times_s:
        return record.token_times_s[0]
    return record.first_token_s


def token_counts(records: Sequence[RequestRecord]) -> tuple[int, int]:
    """(prefill tokens, decode tokens) of a run: prompt tokens not served from a prefix cache,
    and output tokens after each request's first."""
    prefill = sum(r.input_tokens - (r.cached_input_tokens or 0) for r in records)
    decode = sum(max(0, r.output_tokens - 1) for r in records)
    return prefill, decode


def run_prefill_pass(
    backend: Any,
    requests: Sequence[GenerationRequest],
    clock: Callable[[], float],
    min_s: float = PREFILL_PASS_MIN_S,
) -> list[RequestRecord]:
    """Run the prefill pass in whole waves of the measured batch until it has lasted
    ``min_s`` or every request ran (the caller's counter window bounds it)."""
    records: list[RequestRecord] = []
    t0 = clock()
    for start, end in prefill_pass_waves(len(requests), int(backend.warmup_unit)):
        records.extend(backend.run(requests[start:end]))
        if clock() - t0 >= min_s:
            break
    return records


def prefill_pass_split(
    *,
    total_j: float | None,
    pass_j: float | None,
    records: Sequence[RequestRecord],
    pass_records: Sequence[RequestRecord],
    pass_duration_s: float,
) -> dict[str, Any]:
    """The prefill-pass method's figures (see the module docstring)."""
    pass_tokens = sum(r.input_tokens - (r.cached_input_tokens or 0) for r in pass_records)
    _, decode_tokens = token_counts(records)
    scale = 1.0
    prefill_tokens = pass_tokens
    if 0 < len(pass_records) < len(records) and pass_tokens > 0:
        # a sized pass: its J per prefill token, over the prompt tokens of every measured shape
        prefill_tokens = sum(r.input_tokens for r in records)
        scale = prefill_tokens / pass_tokens
    prefill_j = pass_j * scale if pass_j is not None else None
    decode_j = total_j - prefill_j if total_j is not None and prefill_j is not None else None
    return {
        "method": METHOD_PASS,
        "prefill_energy_j": prefill_j,
        "decode_energy_j": decode_j,
        "prefill_tokens": prefill_tokens,
        "decode_tokens": decode_tokens,
        "j_per_prefill_token": _div(pass_j, pass_tokens),
        "j_per_decode_token": _div(decode_j, decode_tokens),
        "prefill_pass_duration_s": pass_duration_s,
        "prefill_pass_requests": len(pass_records),
        "prefill_pass_scale": scale,
        "reason": None if decode_j is not None else "energy not measured",
    }


def _cumulative(series: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    pts = sorted(series)
    times = [t for t, _ in pts]
    cum = [0.0]
    for (t0, w0), (t1, w1) in itertools.pairwise(pts):
        cum.append(cum[-1] + (t1 - t0) * (w0 + w1) / 2.0)
    return times, cum


def _energy_at(times: list[float], cum: list[float], watts: list[float], t: float) -> float:
    """Energy from the first sample to ``t`` (linear power between samples, flat outside)."""
    if t <= times[0]:
        return -(times[0] - t) * watts[0]
    if t >= times[-1]:
        return cum[-1] + (t - times[-1]) * watts[-1]
    i = bisect.bisect_right(times, t) - 1
    t0, t1 = times[i], times[i + 1]
    w0, w1 = watts[i], watts[i + 1]
    frac = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
    wt = w0 + (w1 - w0) * frac
    return cum[i] + (t - t0) * (w0 + wt) / 2.0


def timeline_split(
    records: Sequence[RequestRecord],
    power_series: Sequence[Sequence[tuple[float, float]]],
    *,
    t0: float,
    t1: float,
    total_j: float | None,
    guard_s: float = 0.2,
    client_timed: bool = False,
) -> dict[str, Any]:
    """The timeline method's figures (see the module docstring).

    Args:
        records: The measured run, tokens stamped per engine step (equal stamps = one step).
        power_series: (time, watts) samples per GPU over the window.
        t0, t1: The measured window.
        total_j: The counter's energy over the window (the split adds up to it).
        guard_s: Clean decode steps lie at least this far from any step with a prefill.
        client_timed: The token times are a streaming client's chunk receipt times (server
            mode, endpoint): requests of one engine step arrive at different times, so the
            steps cannot be recovered and the method is refused with that reason.
    """
    prefill_tokens, decode_tokens = token_counts(records)
    out: dict[str, Any] = {
        "method": METHOD_TIMELINE,
        "prefill_energy_j": None,
        "decode_energy_j": None,
        "prefill_tokens": prefill_tokens,
        "decode_tokens": decode_tokens,
        "j_per_prefill_token": None,
        "j_per_decode_token": None,
        "n_steps": 0,
        "n_clean_decode_steps": 0,
        "decode_fit_j": None,
        "reason": None,
    }
    if client_timed:
        # On the H200 (vLLM serve, 640 requests) every chunk became a "step" of one token
        # and the fit charged 99.9 % of the energy to decode.
        out["reason"] = (
            "token times are the streaming client's chunk receipt times, not engine steps "
            "(requests of one step arrive apart): the steps cannot be recovered"
        )
        return out
    tokens_at, prefill_at, firsts_at = _tokens_per_step(records)
    steps = sorted(t for t in tokens_at if t0 <= t <= t1)
    out["n_steps"] = len(steps)
    if total_j is None:
        out["reason"] = "energy not measured"
        return out
    usable = [s for s in power_series if len(s) >= 2]
    if not usable or len(usable) != len(power_series) or not steps:
        out["reason"] = "no power samples or no per-token timestamps over the window"
        return out
    edges = [t0, *steps]
    edges[-1] = t1  # the tail after the last token (the closing sync) joins the last step
    raw = _energy_between(usable, edges)
    raw_total = sum(raw)
    if raw_total <= 0:
        out["reason"] = "integrated power over the window is zero"
        return out
    scale = total_j / raw_total
    e = [x * scale for x in raw]
    p = [prefill_at.get(s, 0) for s in steps]
    d = [tokens_at[s] - firsts_at.get(s, 0) for s in steps]
    clean = _clean_decode_steps(steps, edges, p, d, guard_s)
    out["n_clean_decode_steps"] = len(clean)
    if len(clean) < MIN_CLEAN_STEPS:
        out["reason"] = (
            f"only {len(clean)} decode-only steps away from prefills (need "
            f"{MIN_CLEAN_STEPS}); the decode cost cannot be fitted"
        )
        return out
    xs = [float(d[i]) for i in clean]
    ys = [e[i] for i in clean]
    if max(xs) - min(xs) >= 2:
        v, u = statistics.linear_regression(xs, ys)
    else:  # one batch size only: a constant cost per step at that batch
        u, v = statistics.fmean(ys), 0.0
    out["decode_fit_j"] = {"u_j_per_step": u, "v_j_per_token": v}
    if v < 0:
        # Decode steps that cost less the more tokens they carry: the clean steps do not
        # follow the model (seen on the H200 at max_num_seqs 64), so no split from it.
        out["reason"] = (
            f"decode fit has a negative slope ({v:.4f} J per token, {u:.3f} J per step): "
            "the decode-only steps do not support the model"
        )
        return out
    decode_j = _decode_energy(e, p, d, u, v)
    prefill_j = total_j - decode_j
    out.update(
        {
            "prefill_energy_j": prefill_j,
            "decode_energy_j": decode_j,
            "j_per_prefill_token": _div(prefill_j, prefill_tokens),
            "j_per_decode_token": _div(decode_j, decode_tokens),
        }
    )
    return out


def _tokens_per_step(
    records: Sequence[RequestRecord],
) -> tuple[Counter[float], defaultdict[float, int], Counter[float]]:
    """Per token time (one engine step): tokens stamped, uncached prefill tokens of the
    requests whose first token it is, and how many requests got their first token there."""
    tokens_at: Counter[float] = Counter()
    prefill_at: defaultdict[float, int] = defaultdict(int)
    firsts_at: Counter[float] = Counter()
    for r in records:
        tokens_at.update(r.token_times_s)
        first = _first_time(r)
        if first is not None:
            prefill_at[first] += r.input_tokens - (r.cached_input_tokens or 0)
            firsts_at[first] += 1
    return tokens_at, prefill_at, firsts_at


def _energy_between(
    power_series: Sequence[Sequence[tuple[float, float]]], edges: Sequence[float]
) -> list[float]:
    """Integrated power summed over GPUs between consecutive ``edges`` (never negative)."""
    curves = []
    for series in power_series:
        pts = sorted(series)
        times, cum = _cumulative(pts)
        curves.append((times, cum, [w for _, w in pts]))

    def energy(a: float, b: float) -> float:
        return sum(_energy_at(ts, c, ws, b) - _energy_at(ts, c, ws, a) for ts, c, ws in curves)

    return [max(0.0, energy(a, b)) for a, b in itertools.pairwise(edges)]


def _clean_decode_steps(
    steps: Sequence[float],
    edges: Sequence[float],
    prefill: Sequence[int],
    decode: Sequence[int],
    guard_s: float,
) -> list[int]:
    """Indices of decode-only steps at least ``guard_s`` away from any step with a prefill."""
    mixed_times = [s for s, pi in zip(steps, prefill, strict=True) if pi > 0]

    def near_prefill(i: int) -> bool:
        lo, hi = edges[i] - guard_s, edges[i + 1] + guard_s
        j = bisect.bisect_left(mixed_times, lo)
        return j < len(mixed_times) and mixed_times[j] <= hi

    return [
        i for i in range(len(steps)) if prefill[i] == 0 and decode[i] > 0 and not near_prefill(i)
    ]


def _decode_energy(
    energy_j: Sequence[float], prefill: Sequence[int], decode: Sequence[int], u: float, v: float
) -> float:
    """Decode energy over the steps: all of a decode-only step, the fitted ``u + v * tokens``
    (capped at the step's energy) of a mixed one."""
    decode_j = 0.0
    for i in range(len(energy_j)):
        if prefill[i] == 0:
            decode_j += energy_j[i]
        elif decode[i] > 0:
            decode_j += min(energy_j[i], max(0.0, u + v * decode[i]))
    return decode_j


def phase_energy(
    backend: str,
    *,
    pass_split: dict[str, Any] | None,
    timeline: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """The result's ``phase_energy``: the headline method's figures plus both methods."""
    if pass_split is None and timeline is None:
        return None
    headline = pass_split
    if backend != "pytorch" and timeline is not None and timeline.get("reason") is None:
        headline = timeline
    if headline is None:
        headline = timeline
    assert headline is not None
    return {
        "method": headline["method"],
        "prefill_energy_j": headline["prefill_energy_j"],
        "decode_energy_j": headline["decode_energy_j"],
        "prefill_tokens": headline["prefill_tokens"],
        "decode_tokens": headline["decode_tokens"],
        "j_per_prefill_token": headline["j_per_prefill_token"],
        "j_per_decode_token": headline["j_per_decode_token"],
        "prefill_pass": pass_split,
        "timeline": timeline,
    }


__all__ = [
    "METHOD_PASS",
    "METHOD_TIMELINE",
    "phase_energy",
    "prefill_pass_split",
    "prefill_pass_waves",
    "run_prefill_pass",
    "timeline_split",
    "token_counts",
]
