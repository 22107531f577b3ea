"""The streaming client against the in-package fake SSE server: counts, forcing, errors."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.serving.client import (
    ClientSettings,
    EndpointError,
    StreamingClient,
    output_length_forced,
)
from llenergymeasure_harness.testing.fake_sse_server import FakeSSEBehaviour, FakeSSEServer
from llenergymeasure_harness.traffic import ArrivalPlan

if importlib.util.find_spec("aiohttp") is None:  # `make install` installs it (dev extra)
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must run the streaming-client tests: aiohttp is missing")
    pytest.skip("aiohttp is not installed (make install)", allow_module_level=True)


@pytest.fixture
def server() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(FakeSSEBehaviour(token_delay_s=0.001)) as srv:
        yield srv


def _client(srv: FakeSSEServer, **kw: object) -> StreamingClient:
    settings = ClientSettings(base_url=srv.base_url, model="fake-model", **kw)  # type: ignore[arg-type]
    return StreamingClient(settings, prompt_of=lambda r: list(r.prompt_token_ids))


def _requests(n: int, max_new: int = 5) -> list[GenerationRequest]:
    return [GenerationRequest(i, [100 + i] * 4, max_new) for i in range(n)]


def test_min_tokens_is_used_where_the_server_accepts_it(server: FakeSSEServer) -> None:
    """A vLLM-like server takes min_tokens + ignore_eos; every request then has its length."""
    client = _client(server)
    records = client.run(
        _requests(4), ArrivalPlan(pattern="constant", offsets_s=(0, 0.01, 0.02, 0.03))
    )
    assert client.forcing == "min_tokens"
    body = server.behaviour.requests[-1]
    assert body["min_tokens"] == 5 and body["ignore_eos"] is True and body["stream"] is True
    assert body["prompt"] == [103] * 4  # token-id prompts pass through
    assert [r.output_tokens for r in records] == [5, 5, 5, 5]
    assert all(len(r.token_times_s) == 5 for r in records)
    assert output_length_forced(records, {i: 5 for i in range(4)})


def test_without_usage_the_stream_is_counted(server: FakeSSEServer) -> None:
    """A server that sends no usage: output tokens are the text chunks received."""
    server.behaviour.usage = False
    records = _client(server).run(_requests(2, 7))
    assert [r.output_tokens for r in records] == [7, 7]
    assert [r.input_tokens for r in records] == [4, 4]  # our prompt length, unverified


def test_a_server_that_cannot_be_forced_is_reported(server: FakeSSEServer) -> None:
    """Both forcing fields rejected and an early EOS: forcing 'none', lengths not forced."""
    server.behaviour.reject_fields = frozenset({"min_tokens", "generation_config"})
    server.behaviour.stop_after = 2
    client = _client(server)
    records = client.run(_requests(3, 6))
    assert client.forcing == "none"
    assert set(client.rejected_forcing) == {"min_tokens", "generation_config"}
    assert [r.output_tokens for r in records] == [2, 2, 2]
    assert [r.finish_reason for r in records] == ["stop"] * 3
    assert not output_length_forced(records, {i: 6 for i in range(3)})


def test_the_api_key_goes_in_the_authorization_header_only(server: FakeSSEServer) -> None:
    """The key is sent as a bearer token and never appears in the request body."""
    client = _client(server, api_key="sk-secret-123")
    client.run(_requests(1))
    assert all("sk-secret-123" not in str(b) for b in server.behaviour.requests)


def test_an_unknown_model_fails_with_the_server_answer(server: FakeSSEServer) -> None:
    """A 400 from the server becomes an EndpointError naming the status."""
    settings = ClientSettings(base_url=server.base_url, model="other", forcing="none")
    client = StreamingClient(settings, prompt_of=lambda r: list(r.prompt_token_ids))
    with pytest.raises(EndpointError, match="answered 400"):
        client.run(_requests(1))


def test_offline_with_max_in_flight_caps_the_requests_in_flight(server: FakeSSEServer) -> None:
    """Offline traffic with max_in_flight 2: no request starts before one of two has ended."""
    records = _client(server, max_in_flight=2).run(_requests(6, 3))
    assert all(r.arrival_s is None for r in records)  # offline: no arrival times
    for r in records:
        in_flight = sum(1 for o in records if o.submit_s <= r.submit_s < o.end_s)
        assert in_flight <= 2


def test_basic_authentication_goes_in_the_authorization_header_only(
    server: FakeSSEServer,
) -> None:
    """endpoint.basic_auth_env's user:password is sent as HTTP basic authentication on every
    request (models list included), never in a body."""
    import asyncio

    from llenergymeasure_harness.serving.client import basic_authorization, fetch_models

    auth = basic_authorization("admin:hunter2")
    assert auth == "Basic YWRtaW46aHVudGVyMg=="
    asyncio.run(fetch_models(server.base_url, authorization=auth))
    _client(server, authorization=auth, forcing="none").run(_requests(2))
    assert server.behaviour.authorizations and set(server.behaviour.authorizations) == {auth}
    assert all("hunter2" not in str(b) for b in server.behaviour.requests)


def test_an_unset_basic_auth_variable_is_named_without_any_request() -> None:
    """basic_auth_env naming an unset variable: a config error naming it, before any request."""
    from llenergymeasure_contract import ExperimentConfig
    from llenergymeasure_contract.errors import ConfigError
    from llenergymeasure_harness.serving.backends import EndpointBackend

    config = ExperimentConfig(
        model="m",
        backend="endpoint",
        gpus=[],
        endpoint={"url": "http://127.0.0.1:9", "basic_auth_env": "LLEM_EP_AUTH"},
    )
    with pytest.raises(ConfigError, match="LLEM_EP_AUTH"):
        EndpointBackend(environ={}).load(config)
