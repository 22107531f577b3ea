"""The steady-state window (ML.ENERGY's rule) as a pure function of request records."""

from __future__ import annotations

import pytest

from llenergymeasure_contract.windows import WindowProblem
from llenergymeasure_harness.backends.base import RequestRecord
from llenergymeasure_harness.backends.steady_state import (
    SteadyStateWindow,
    mean_running,
    steady_state_window,
)


def _record(
    i: int, first: float, end: float, tokens: int = 0, submit: float = 0.0
) -> RequestRecord:
    times = [first + (end - first) * k / max(tokens - 1, 1) for k in range(tokens)]
    return RequestRecord(
        request_id=i,
        input_tokens=4,
        output_tokens=tokens,
        submit_s=submit,
        end_s=end,
        first_token_s=first,
        token_times_s=times,
    )


def _waves(n: int, k: int, length: float) -> list[RequestRecord]:
    """N requests through a batch of K: wave w runs [w*length, (w+1)*length)."""
    return [_record(i, (i // k) * length, (i // k + 1) * length) for i in range(n)]


def test_window_bounds_follow_ml_energy_rule() -> None:
    """Start = K-th first token; end = (N-K-1)-th finish."""
    records = _waves(n=40, k=4, length=10.0)
    window = steady_state_window(records, 4, min_duration_s=1.0)
    assert window.start_s == 0.0  # the 4th first token (wave 0)
    # 40 - 4 - 1 = 35th finish (sorted): requests 32..35 finish at t=90 -> index 34 is t=90.
    assert window.end_s == 90.0
    assert window.duration_s == 90.0
    assert window.valid
    assert window.reason is None
    assert window.mean_concurrency == pytest.approx(4.0)
    assert window.n_requests == 40
    assert window.target_concurrency == 4


def test_first_token_order_not_request_order() -> None:
    """The window opens at the K-th first token in time, whatever the request order."""
    records = [_record(i, first=float(10 - i), end=100.0 + i) for i in range(10)]
    window = steady_state_window(records, 3, min_duration_s=0.0)
    assert window.start_s == 3.0  # first tokens at 1,2,3,... -> third is 3.0
    assert window.end_s == sorted(r.end_s for r in records)[10 - 3 - 1 - 1]


def test_too_few_requests_has_no_window() -> None:
    """N <= K + 1 leaves no steady state at all; the reason says how many are needed."""
    window = steady_state_window(_waves(n=5, k=4, length=1.0), 4)
    assert window.start_s is None and window.end_s is None
    assert not window.valid
    assert "too few requests" in (window.reason or "")
    assert window.duration_s is None


def test_fewer_prompts_than_batch_is_invalid() -> None:
    """With n_prompts < max_num_seqs the batch can never be full: invalid, no window."""
    window = steady_state_window(_waves(n=8, k=8, length=1.0), 16)
    assert not window.valid
    assert window.start_s is None


def test_short_window_is_flagged() -> None:
    """A window under the minimum duration is invalid but still placed (energy is computable)."""
    window = steady_state_window(_waves(n=40, k=4, length=1.0), 4, min_duration_s=30.0)
    assert not window.valid
    assert window.start_s == 0.0 and window.end_s == 9.0
    assert "under the 30 s minimum" in (window.reason or "")


def test_default_minimum_is_thirty_seconds() -> None:
    """The default minimum duration is ML.ENERGY's 30 s."""
    assert not steady_state_window(_waves(n=40, k=4, length=2.0), 4).valid
    assert steady_state_window(_waves(n=40, k=4, length=4.0), 4).valid


def test_batch_never_filled_is_flagged() -> None:
    """If only K/2 requests ever run at once, mean concurrency is under 80 % of K."""
    records = _waves(n=40, k=2, length=10.0)  # the engine ran 2 at a time
    window = steady_state_window(records, 4, min_duration_s=1.0)
    assert not window.valid
    assert window.mean_concurrency == pytest.approx(2.0)
    assert "never filled" in (window.reason or "")
    assert WindowProblem.UNDERFILLED in window.problems


def test_several_reasons_are_joined() -> None:
    """Both a short window and an unfilled batch are reported."""
    window = steady_state_window(_waves(n=40, k=2, length=0.1), 4)
    assert window.reason is not None
    assert "minimum" in window.reason and "never filled" in window.reason
    assert window.problems == (WindowProblem.TOO_SHORT, WindowProblem.UNDERFILLED)


def test_window_closing_before_opening_is_invalid() -> None:
    """If the (N-K-1)-th request finishes before the K-th first token, nothing is steady."""
    records = [_record(i, first=float(i), end=float(i) + 0.5) for i in range(10)]
    window = steady_state_window(records, 5, min_duration_s=0.0)
    assert not window.valid
    assert "never full" in (window.reason or "")


def test_output_tokens_counted_inside_window() -> None:
    """Only token timestamps inside [start, end] count toward the window's tokens."""
    records = [_record(i, first=float(i), end=float(i) + 9.0, tokens=10) for i in range(10)]
    window = steady_state_window(records, 2, min_duration_s=0.0)
    assert window.start_s == 1.0
    assert window.end_s == 15.0  # 10-2-1 = 7th finish: request 6 ends at 15
    inside = sum(1 for r in records for t in r.token_times_s if 1.0 <= t <= 15.0)
    assert window.output_tokens == inside
    assert window.output_tokens_per_s == pytest.approx(inside / 14.0)


def test_no_token_times_gives_no_token_count() -> None:
    """Records without per-token times leave output_tokens as None (not 0)."""
    window = steady_state_window(_waves(n=20, k=2, length=5.0), 2, min_duration_s=0.0)
    assert window.output_tokens is None
    assert window.output_tokens_per_s is None


def test_missing_first_token_times_fall_back_to_token_times() -> None:
    """first_token_s None falls back to the first token timestamp."""
    records = [_record(i, first=float(i), end=50.0 + i, tokens=3) for i in range(10)]
    for r in records:
        r.first_token_s = None
    window = steady_state_window(records, 2, min_duration_s=0.0)
    assert window.start_s == 1.0


def test_records_without_any_first_token_cannot_open() -> None:
    """Without first-token information the window cannot open and says why."""
    records = [
        RequestRecord(request_id=i, input_tokens=1, output_tokens=1, submit_s=0.0, end_s=float(i))
        for i in range(10)
    ]
    window = steady_state_window(records, 2)
    assert not window.valid and window.start_s is None
    assert "first-token time" in (window.reason or "")


def test_invalid_target_raises() -> None:
    """max_concurrency < 1 is a programming error."""
    with pytest.raises(ValueError, match=">= 1"):
        steady_state_window([], 0)


def test_mean_running_time_weighted() -> None:
    """mean_running integrates running requests over the window."""
    records = [_record(0, 0.0, 10.0), _record(1, 5.0, 10.0)]
    assert mean_running(records, 0.0, 10.0) == pytest.approx(1.5)
    assert mean_running(records, 5.0, 5.0) is None


def test_to_dict_is_json_ready() -> None:
    """to_dict carries the derived duration and throughput for the result file."""
    window = SteadyStateWindow(
        start_s=1.0,
        end_s=3.0,
        problems=(),
        reason=None,
        target_concurrency=2,
        n_requests=9,
        mean_concurrency=2.0,
        output_tokens=10,
    )
    data = window.to_dict()
    assert data["duration_s"] == 2.0
    assert data["output_tokens_per_s"] == 5.0
    assert data["valid"] is True
    assert data["problems"] == []
