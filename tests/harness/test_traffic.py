"""Arrival processes, the arrival queue, arrival-mode metrics and a whole run with arrivals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from tests.harness.conftest import World, harness_env, make_config

from llenergymeasure.config import TrafficConfig
from llenergymeasure_contract.sizing import arrival_steady_state_n_prompts
from llenergymeasure_harness import metrics
from llenergymeasure_harness.backends.base import RequestRecord
from llenergymeasure_harness.backends.steady_state import arrival_steady_state_window
from llenergymeasure_harness.experiment import (
    run_experiment,
    steady_state_flag,
    suggest_arrival_n_prompts,
)
from llenergymeasure_harness.traffic import ArrivalPlan, ArrivalQueue
from llenergymeasure_harness.traffic.arrivals import (
    arrival_offsets,
    coefficient_of_variation,
    inter_arrival_gaps,
)

N_DRAWS = 5000


def _traffic(**kw: Any) -> TrafficConfig:
    return TrafficConfig.model_validate(kw)


# --------------------------------------------------------------------------- arrival processes


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("rate", [0.5, 4.0, 250.0])
def test_poisson_gaps_have_mean_one_over_rate_and_cv_near_one(seed: int, rate: float) -> None:
    """Poisson: over 5000 draws the mean gap is within 10 % of 1/rate and the CV near 1."""
    offsets = arrival_offsets(_traffic(pattern="poisson", rate_per_s=rate, seed=seed), N_DRAWS)
    assert offsets is not None and offsets[0] == 0.0
    gaps = inter_arrival_gaps(offsets)
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(1.0 / rate, rel=0.10)
    cv = coefficient_of_variation(gaps)
    assert cv is not None and cv == pytest.approx(1.0, abs=0.08)
    assert all(g >= 0 for g in gaps)


def test_constant_gaps_have_cv_zero() -> None:
    """Constant: every gap is exactly 1/rate (CV ~ 0)."""
    offsets = arrival_offsets(_traffic(pattern="constant", rate_per_s=8.0), N_DRAWS)
    assert offsets is not None
    gaps = inter_arrival_gaps(offsets)
    assert sum(gaps) / len(gaps) == pytest.approx(0.125)
    cv = coefficient_of_variation(gaps)
    assert cv is not None and cv < 1e-9


@pytest.mark.parametrize("shape", [0.25, 1.0, 4.0])
def test_gamma_gaps_have_the_mean_and_the_cv_of_their_shape(shape: float) -> None:
    """Gamma(shape): mean 1/rate within 10 %, CV within 10 % of 1/sqrt(shape)."""
    offsets = arrival_offsets(
        _traffic(pattern="gamma", rate_per_s=2.0, burstiness=shape, seed=3), N_DRAWS
    )
    assert offsets is not None
    gaps = inter_arrival_gaps(offsets)
    assert sum(gaps) / len(gaps) == pytest.approx(0.5, rel=0.10)
    assert coefficient_of_variation(gaps) == pytest.approx(1.0 / math.sqrt(shape), rel=0.10)


@pytest.mark.parametrize("pattern", ["poisson", "gamma"])
def test_same_seed_same_schedule_other_seed_other_schedule(pattern: str) -> None:
    """The schedule is a pure function of the seed."""
    kw: dict[str, Any] = {"pattern": pattern, "rate_per_s": 3.0}
    if pattern == "gamma":
        kw["burstiness"] = 0.5
    a = arrival_offsets(_traffic(**kw, seed=11), 500)
    b = arrival_offsets(_traffic(**kw, seed=11), 500)
    c = arrival_offsets(_traffic(**kw, seed=12), 500)
    assert a == b
    assert a != c


def test_the_schedule_is_pinned_across_processes_and_versions() -> None:
    """The first Poisson offsets of seed 7 are literals: the draw never changes silently."""
    offsets = arrival_offsets(_traffic(pattern="poisson", rate_per_s=1.0, seed=7), 4)
    assert offsets is not None
    assert [round(x, 6) for x in offsets] == [0.0, 0.391315, 0.554833, 1.607329]


def test_offline_and_closed_loop_have_no_schedule() -> None:
    """Offline and closed_loop draw nothing (all at once; next-on-completion)."""
    assert arrival_offsets(_traffic(), 10) is None
    assert arrival_offsets(_traffic(pattern="closed_loop", concurrency=2), 10) is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pattern": "poisson"}, "needs traffic.rate_per_s"),
        ({"pattern": "offline", "rate_per_s": 2.0}, "rate_per_s has no effect"),
        ({"pattern": "closed_loop"}, "needs traffic.concurrency"),
        ({"pattern": "poisson", "rate_per_s": 1.0, "concurrency": 4}, "closed_loop only"),
        ({"pattern": "poisson", "rate_per_s": 1.0, "burstiness": 0.5}, "set pattern: gamma"),
        ({"pattern": "poisson", "rate_per_s": 0}, "greater than 0"),
        ({"slo": {}}, "sets no objective"),
        ({"pattern": "uniform"}, "pattern"),
    ],
)
def test_bad_traffic_sections_say_what_to_fix(kw: dict[str, Any], message: str) -> None:
    """Each inconsistent traffic section is refused with a message naming the fix."""
    with pytest.raises(ValidationError, match=message):
        _traffic(**kw)


# --------------------------------------------------------------------------- arrival queue


def test_open_loop_queue_releases_requests_at_their_offsets() -> None:
    """Requests come due at t0 + offset, in order, each with its arrival time."""
    plan = ArrivalPlan(pattern="constant", offsets_s=(0.0, 1.0, 2.0))
    q: ArrivalQueue[str] = ArrivalQueue(["a", "b", "c"], plan, t0=10.0)
    assert q.pop_due(10.0) == [("a", 10.0)]
    assert q.pop_due(10.5) == []
    assert q.next_due_s() == 11.0
    assert q.due_s_of_nth(1) == 12.0
    assert q.pop_due(12.5) == [("b", 11.0), ("c", 12.0)]
    assert q.pending == 0 and q.next_due_s() is None


def test_closed_loop_queue_sends_the_next_request_when_one_ends() -> None:
    """Two users: two due at t0; each completion makes one more due at its end time."""
    plan = ArrivalPlan(pattern="closed_loop", concurrency=2)
    q: ArrivalQueue[int] = ArrivalQueue([0, 1, 2, 3, 4], plan, t0=0.0)
    assert q.pop_due(0.0) == [(0, 0.0), (1, 0.0)]
    assert q.next_due_s() is None  # both users are waiting on their requests
    q.completed(1, 3.0)
    assert q.pop_due(5.0) == [(2, 3.0)]
    q.completed(2, 6.0)
    assert q.pop_due(6.0) == [(3, 6.0), (4, 6.0)]
    q.completed(2, 7.0)  # nothing left to send
    assert q.pending == 0


def test_plan_from_config_has_one_offset_per_request() -> None:
    """ArrivalPlan.from_config draws the offsets of exactly n requests."""
    plan = ArrivalPlan.from_config(_traffic(pattern="poisson", rate_per_s=5.0, seed=1), 20)
    assert plan.offsets_s is not None and len(plan.offsets_s) == 20
    assert not plan.is_offline
    assert ArrivalPlan.from_config(_traffic(), 20).is_offline


# --------------------------------------------------------------------------- metrics


def _rec(
    i: int, *, arrival: float, submit: float, first: float, end: float, n: int
) -> RequestRecord:
    step = (end - first) / (n - 1) if n > 1 else 0.0
    return RequestRecord(
        request_id=i,
        input_tokens=4,
        output_tokens=n,
        submit_s=submit,
        end_s=end,
        first_token_s=first,
        token_times_s=[first + k * step for k in range(n)],
        arrival_s=arrival,
    )


def test_arrival_mode_latency_starts_at_the_arrival() -> None:
    """With arrivals, TTFT and E2E start at arrival_s and queueing is submit - arrival."""
    rec = _rec(0, arrival=1.0, submit=1.5, first=2.0, end=3.0, n=3)
    lat = metrics.latency([rec], "arrivals")
    assert lat["mode"] == "arrivals"
    assert lat["ttft_s"]["mean"] == pytest.approx(1.0)
    assert lat["e2e_s"]["mean"] == pytest.approx(2.0)
    assert lat["queue_s"]["mean"] == pytest.approx(0.5)
    assert lat["tpot_s"]["mean"] == pytest.approx(0.5)
    offline = metrics.latency([rec], "offline_queueing")
    assert offline["ttft_s"]["mean"] == pytest.approx(0.5)


def test_goodput_counts_requests_meeting_every_objective() -> None:
    """Goodput: SLO-meeting requests per second of the window, and J per such request."""
    good = _rec(0, arrival=0.0, submit=0.0, first=0.2, end=0.4, n=3)  # ttft 0.2, tpot 0.1
    slow_first = _rec(1, arrival=0.0, submit=0.0, first=0.9, end=1.1, n=3)  # ttft 0.9
    slow_tokens = _rec(2, arrival=0.0, submit=0.0, first=0.2, end=1.2, n=3)  # tpot 0.5
    out = metrics.goodput(
        [good, slow_first, slow_tokens],
        duration_s=2.0,
        gross_j=300.0,
        ttft_s=0.5,
        tpot_s=0.2,
        mode="arrivals",
    )
    assert out["n_requests_meeting_slo"] == 1
    assert out["slo_attainment"] == pytest.approx(1 / 3)
    assert out["goodput_requests_per_s"] == pytest.approx(0.5)
    assert out["j_per_slo_request"] == pytest.approx(300.0)
    none = metrics.goodput(
        [slow_first], duration_s=2.0, gross_j=None, ttft_s=0.5, tpot_s=None, mode="arrivals"
    )
    assert none["n_requests_meeting_slo"] == 0 and none["j_per_slo_request"] is None


def test_open_loop_steady_state_spans_first_finish_to_last_arrival() -> None:
    """The steady state of an open-loop run: first request finished .. last arrival."""
    recs = [
        _rec(i, arrival=float(i), submit=float(i), first=i + 0.5, end=i + 2.0, n=3)
        for i in range(6)
    ]
    w = arrival_steady_state_window(recs, min_duration_s=1.0)
    assert (w.start_s, w.end_s) == (2.0, 5.0)
    assert w.valid
    assert w.mean_concurrency == pytest.approx(1.5)
    short = arrival_steady_state_window(recs[:3], min_duration_s=1.0)
    assert not short.valid


def _constant_arrivals(n: int, *, rate: float, lifetime: float) -> list[RequestRecord]:
    """``n`` requests arriving every ``1 / rate`` s from t=0, each living ``lifetime`` s."""
    return [
        _rec(
            i,
            arrival=i / rate,
            submit=i / rate,
            first=i / rate + lifetime / 4,
            end=i / rate + lifetime,
            n=3,
        )
        for i in range(n)
    ]


def _open_loop_config(n: int, rate: float = 4.0) -> Any:
    return make_config(n_prompts=n, traffic={"pattern": "constant", "rate_per_s": rate})


def test_a_short_open_loop_window_suggests_n_prompts_from_rate_and_lifetime() -> None:
    """40 requests at 4/s living 2 s: window 2.0 .. 9.75 s (7.75 s). The suggestion is
    1 + 1.1 x 4 x (30 + 2) = 141.8 -> 142, and the flag carries it."""
    recs = _constant_arrivals(40, rate=4.0, lifetime=2.0)
    cfg = _open_loop_config(40)
    w = arrival_steady_state_window(recs)
    assert (w.start_s, w.end_s) == (2.0, 9.75)
    assert not w.valid and w.reason is not None and "lasted" in w.reason
    assert suggest_arrival_n_prompts(cfg, recs, w) == 142
    flag = steady_state_flag(cfg, recs)
    assert flag is not None and flag["code"] == "steady_state_invalid"
    assert "open-loop steady state invalid: steady state lasted 7.750 s" in flag["message"]
    assert (
        "use n_prompts >= 142 (sized from this run's request lifetime at 4 req/s)"
        in (flag["message"])
    )
    # following it gives a valid window on the same system: 2.0 .. 35.25 s
    sized = arrival_steady_state_window(_constant_arrivals(142, rate=4.0, lifetime=2.0))
    assert sized.valid and sized.duration_s == pytest.approx(33.25)
    assert (
        steady_state_flag(_open_loop_config(142), _constant_arrivals(142, rate=4.0, lifetime=2.0))
        is None
    )


def test_the_lifetime_runs_from_the_first_arrival_to_the_first_finish() -> None:
    """Arrivals that end before the first request finishes: lifetime 10 s, measured from the
    earliest arrival (records out of order), so 1 + 1.1 x 4 x (30 + 10) = 177."""
    recs = list(reversed(_constant_arrivals(5, rate=4.0, lifetime=10.0)))
    w = arrival_steady_state_window(recs)
    assert w.reason is not None and "arrivals ended before the first request finished" in w.reason
    assert suggest_arrival_n_prompts(_open_loop_config(5), recs, w) == 177
    flag = steady_state_flag(_open_loop_config(5), recs)
    assert flag is not None and "use n_prompts >= 177" in flag["message"]


def test_no_open_loop_suggestion_when_more_prompts_are_not_the_fix() -> None:
    """A valid window suggests nothing; neither do too few records to place a window."""
    recs = _constant_arrivals(200, rate=4.0, lifetime=2.0)  # 2.0 .. 49.75 s
    cfg = _open_loop_config(200)
    w = arrival_steady_state_window(recs)
    assert w.valid
    assert suggest_arrival_n_prompts(cfg, recs, w) is None
    assert steady_state_flag(cfg, recs) is None
    few = _constant_arrivals(2, rate=4.0, lifetime=2.0)
    assert suggest_arrival_n_prompts(cfg, few, arrival_steady_state_window(few)) is None


# --------------------------------------------------------------------------- a whole run


def test_a_poisson_run_records_arrivals_latency_mode_and_goodput(
    tmp_path: Path, world: World
) -> None:
    """A run with poisson traffic stores arrival_s per request and reports the arrival mode."""
    cfg = make_config(
        traffic={
            "pattern": "poisson",
            "rate_per_s": 0.5,
            "seed": 3,
            "slo": {"ttft_s": 1.0, "tpot_s": 0.6},
        }
    )
    result = run_experiment(harness_env(tmp_path, cfg), world.deps())
    offsets = arrival_offsets(cfg.traffic, cfg.n_prompts)
    assert offsets is not None
    assert result.latency.mode == "arrivals"
    assert result.latency.queue_s is not None
    assert result.traffic is not None
    assert result.traffic.pattern == "poisson"
    assert result.traffic.latency_mode == "arrivals"
    assert result.traffic.arrival_span_s == pytest.approx(offsets[-1])
    slo = result.traffic.slo
    assert slo is not None and slo.ttft_s == 1.0
    assert 0 <= slo.n_requests_meeting_slo <= cfg.n_prompts
    assert slo.j_per_slo_request is None or slo.j_per_slo_request > 0
    # The window opens at the first arrival and closes at the last end: it covers the span.
    assert result.throughput.duration_s >= offsets[-1]
    rows = pq.read_table(tmp_path / "out" / "requests.parquet").to_pylist()
    t0 = rows[0]["arrival_s"]
    assert [r["arrival_s"] - t0 for r in rows] == pytest.approx(offsets)
    for r in rows:
        assert r["submit_s"] >= r["arrival_s"]
        assert r["queue_s"] == pytest.approx(r["submit_s"] - r["arrival_s"])
        assert r["ttft_s"] == pytest.approx(r["first_token_s"] - r["arrival_s"])
    assert result.steady_state is not None  # open-loop steady state, pytorch included
    # 8 requests at 0.5/s are ~14 s of arrivals: too short, sized from the measured lifetime
    steady = result.steady_state
    assert not steady.valid
    lifetime = min(r["end_s"] for r in rows) - min(r["arrival_s"] for r in rows)
    assert steady.suggested_n_prompts == arrival_steady_state_n_prompts(0.5, lifetime)
    flag = next(f for f in result.quality_flags if f.code == "steady_state_invalid")
    assert f"n_prompts >= {steady.suggested_n_prompts}" in flag.message


def test_an_offline_run_has_no_traffic_block_and_offline_latency(
    tmp_path: Path, world: World
) -> None:
    """The default traffic leaves the result as it was: offline mode, no arrivals."""
    result = run_experiment(harness_env(tmp_path), world.deps())
    assert result.latency.mode == "offline_queueing"
    assert result.latency.queue_s is None
    assert result.traffic is None
    rows = pq.read_table(tmp_path / "out" / "requests.parquet").to_pylist()
    assert all(r["arrival_s"] is None for r in rows)


def _closed_loop(n: int, users: int, *, lifetime: float, tokens: int) -> list[RequestRecord]:
    """``users`` users, each sending its next request as its last ends: waves of ``users``."""
    recs = []
    for i in range(n):
        start = (i // users) * lifetime
        recs.append(
            _rec(i, arrival=start, submit=start, first=start + 0.1, end=start + lifetime, n=tokens)
        )
    return recs


def test_a_short_closed_loop_window_is_flagged_in_waves_of_its_users() -> None:
    """4 users, 20 requests of 10 tokens living 1 s: 5 waves; the window runs from the 4th
    first token (0.1 s) to the 15th finish (4.0 s), 3.9 s. The users (not the engine's batch of
    2) are K, and the size is in waves of 4 at the window's throughput (about 41 tok/s:
    4 + 1 + 1.1 x 30 x 41 / 10 = 140.3 -> 144)."""
    from llenergymeasure_contract.sizing import steady_state_n_prompts
    from llenergymeasure_harness.backends.steady_state import steady_state_window

    cfg = make_config(
        n_prompts=20,
        max_output_tokens=10,
        traffic={"pattern": "closed_loop", "concurrency": 4},
    )
    recs = _closed_loop(20, 4, lifetime=1.0, tokens=10)
    flag = steady_state_flag(cfg, recs)
    assert flag is not None and flag["code"] == "steady_state_invalid"
    assert flag["message"].startswith("closed-loop (4 users) steady state invalid")
    w = steady_state_window(recs, 4)
    assert w.duration_s == pytest.approx(3.9) and w.output_tokens_per_s is not None
    need = steady_state_n_prompts(4, 10, w.output_tokens_per_s)
    assert need == 144 and need % 4 == 0
    expected = (
        "lasted 3.900 s, under the 30 s minimum (increase n_prompts); "
        f"use n_prompts >= {need} (sized from this run's throughput)"
    )
    assert expected in flag["message"]
    # following it: (144 - 4 - 1) / 4 waves of 1 s less the 0.1 s offset, about 34.9 s, valid
    assert steady_state_flag(cfg, _closed_loop(need, 4, lifetime=1.0, tokens=10)) is None
