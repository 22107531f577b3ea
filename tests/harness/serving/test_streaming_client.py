"""The streaming client against a real OpenAI-compatible server (``transformers serve``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.serving.client import (
    ClientSettings,
    EndpointError,
    StreamingClient,
    fetch_models,
)
from llenergymeasure_harness.traffic import ArrivalPlan

pytestmark = [pytest.mark.torch, pytest.mark.docker]


def _requests(n: int, max_new: int = 6) -> list[GenerationRequest]:
    texts = ["the quick brown fox", "energy per token", "a server answers", "lazy dog"]
    return [
        GenerationRequest(i, [1, 2, 3], max_new, prompt_text=texts[i % len(texts)])
        for i in range(n)
    ]


def _client(url: str, model: Path, **kw: object) -> StreamingClient:
    settings = ClientSettings(base_url=url, model=str(model), **kw)  # type: ignore[arg-type]
    return StreamingClient(settings, prompt_of=lambda r: r.prompt_text or "")


def test_models_lists_the_served_checkpoint(
    transformers_server: str, tiny_checkpoint: Path
) -> None:
    """GET /v1/models answers with the checkpoint the server was started with."""
    models = asyncio.run(fetch_models(transformers_server))
    assert [m["id"] for m in models["data"]] == [str(tiny_checkpoint)]


def test_poisson_stream_counts_from_usage_and_forces_length(
    transformers_server: str, tiny_checkpoint: Path
) -> None:
    """Poisson arrivals over SSE: usage token counts, fixed lengths via the accepted strategy."""
    client = _client(transformers_server, tiny_checkpoint)
    requests = _requests(6)
    offsets = (0.0, 0.05, 0.1, 0.3, 0.35, 0.6)
    records = client.run(requests, ArrivalPlan(pattern="poisson", offsets_s=offsets))
    # transformers serve rejects min_tokens/ignore_eos (422) and takes generation_config.
    assert client.forcing == "generation_config"
    assert "min_tokens" in client.rejected_forcing
    t0 = records[0].arrival_s
    assert t0 is not None
    assert [r.arrival_s - t0 for r in records] == pytest.approx(offsets)  # type: ignore[operator]
    for r in records:
        assert r.arrival_s is not None and r.submit_s >= r.arrival_s
        assert r.output_tokens == 6  # from usage, and forced
        assert r.input_tokens > 0
        assert r.finish_reason == "length"
        assert r.first_token_s is not None and r.submit_s < r.first_token_s <= r.end_s
        assert r.token_times_s == sorted(r.token_times_s)


def test_closed_loop_keeps_at_most_concurrency_in_flight(
    transformers_server: str, tiny_checkpoint: Path
) -> None:
    """closed_loop with 2 users: request k+2 is sent only after request k ended."""
    client = _client(transformers_server, tiny_checkpoint)
    records = client.run(_requests(5, 3), ArrivalPlan(pattern="closed_loop", concurrency=2))
    ends = sorted(r.end_s for r in records)
    for r in records[2:]:
        assert r.arrival_s is not None
        # Someone had finished by the time this request arrived.
        assert any(e <= r.arrival_s + 1e-3 for e in ends)


def test_a_server_error_is_an_endpoint_error(transformers_server: str) -> None:
    """A request for a model the server does not serve fails with the server's answer."""
    client = _client(transformers_server, Path("no-such-model"), forcing="none")
    with pytest.raises(EndpointError, match="answered 400"):
        client.run(_requests(1))
