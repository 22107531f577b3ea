"""One engine-agnostic asynchronous streaming client for OpenAI-compatible servers.

:class:`StreamingClient` sends each request to ``POST {base_url}/v1/completions`` with
``stream: true`` at its arrival time (open loop) or when its user's previous request ended
(closed loop), reads the server-sent events (SSE) as they come, and stamps every chunk that
carries text on the harness ``perf_counter`` clock::

    arrival ─► POST (submit_s) ─► data: {text} ─► data: {text} ... data: {usage} ─► data: [DONE]
                                   first_token_s   token_times_s ...               end_s = last text

HTTP is `aiohttp <https://docs.aiohttp.org/>`_ (one ``ClientSession``, no connection limit so
a burst of arrivals is never queued in the client). aiohttp rather than httpx because the
client shares the host (in server mode, the container) with the engine it measures: against
the fake SSE server, 16 streamed tokens cost 0.6 ms of client CPU per request with aiohttp and
3.4 ms with httpx 0.28 (``benchmarks/bench_load_generator.py``). Token counts come
from the server's ``usage`` (``stream_options.include_usage``, sent on the last chunk by vLLM,
SGLang, TensorRT-LLM and transformers) when present, otherwise from the number of text chunks;
a chunk may hold several tokens (servers coalesce), so per-chunk times are a lower bound on
the token rate and ``output_tokens`` is always the server's count when it gives one.

Fixed output length (``ignore_eos``): servers disagree on how to ask for it, so the client
tries, in order, ``min_tokens`` + ``ignore_eos`` (vLLM, SGLang, TensorRT-LLM), then
``generation_config`` with ``min_new_tokens`` (``transformers serve``), then nothing; the first
that the server does not reject with a 4xx is used for the rest of the run
(:attr:`StreamingClient.forcing`). Whether the lengths really were fixed is judged from the
token counts afterwards (see :func:`output_length_forced`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llenergymeasure_contract.errors import ExperimentError
from llenergymeasure_harness.backends.base import GenerationRequest, RequestRecord
from llenergymeasure_harness.traffic import ArrivalPlan

logger = logging.getLogger(__name__)

#: Ways to ask for a fixed output length, tried in this order (see the module docstring).
FORCING_STRATEGIES = ("min_tokens", "generation_config", "none")


class EndpointError(ExperimentError):
    """The server refused or broke a request."""


@dataclass
class ClientSettings:
    """What every request carries.

    Attributes:
        base_url: ``http://host:port`` (``/v1/...`` is appended).
        model: The served model name (``/v1/models`` id).
        api_key: Bearer token, read from the environment by the caller; never logged.
        authorization: A whole ``Authorization`` header value (HTTP basic authentication),
            used instead of ``api_key``; never logged.
        temperature / top_p / seed: Decoding; greedy is temperature 0.
        ignore_eos: Ask for exactly ``max_new_tokens`` per request.
        request_timeout_s: Per-request read timeout.
    """

    base_url: str
    model: str
    api_key: str | None = None
    authorization: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = True
    request_timeout_s: float = 600.0
    forcing: str | None = None  # fixed beforehand (server mode knows its engine); None: probe
    # The last stretch before each arrival is spent yielding to the event loop instead of
    # sleeping: epoll rounds timeouts up to whole milliseconds, so a plain sleep is ~1 ms late
    # on average and ~2 ms late at p99 (the bench's machine floor, quiet 2-core box and the
    # 16-core GPU host alike); 2 ms of yielding covers that tail, 1 ms did not. Bounded: at
    # rate R it costs at most R x spin_s of one core (bench figures in docs/traffic.md); other
    # requests' streams keep being read meanwhile. 0 disables it.
    spin_s: float = 0.002
    # Server-specific request fields, e.g. vLLM's return_token_ids (its text is empty when
    # it runs without a tokenizer, as with dummy weights).
    extra_body: dict[str, Any] = field(default_factory=dict)
    # Offline traffic only: at most this many requests in flight (the rest wait their turn,
    # like `vllm bench serve --max-concurrency`); None sends them all at once.
    max_in_flight: int | None = None


@dataclass
class _Stream:
    submit_s: float
    arrival_s: float | None
    token_times_s: list[float] = field(default_factory=list)
    end_s: float | None = None
    finish_reason: str | None = None
    usage_prompt: int | None = None
    usage_completion: int | None = None


def output_length_forced(records: Sequence[RequestRecord], requested: dict[int, int]) -> bool:
    """True when every request produced exactly the tokens asked for."""
    return all(r.output_tokens == requested.get(r.request_id, r.output_tokens) for r in records)


class StreamingClient:
    """Drives an OpenAI-compatible server with streaming completions (module docstring).

    Args:
        settings: Endpoint and decoding settings.
        prompt_of: The ``prompt`` field for a request: its text, or its token ids when the
            server accepts them.
        clock: The harness clock.
        sleep: ``asyncio.sleep`` (a fake in tests).
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        prompt_of: Callable[[GenerationRequest], str | list[int]],
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._prompt_of = prompt_of
        self._clock = clock
        self._sleep = sleep
        self.forcing: str | None = settings.forcing
        self.rejected_forcing: dict[str, str] = {}

    # ----------------------------------------------------------------- public

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        """Send every request following ``plan`` (offline: all at once); records in order."""
        return asyncio.run(self.run_async(requests, plan))

    async def run_async(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        """The coroutine behind :meth:`run`."""
        import aiohttp

        plan = plan or ArrivalPlan.offline()
        headers = {"Accept": "text/event-stream"}
        auth = auth_header(self.settings.api_key, self.settings.authorization)
        if auth:
            headers["Authorization"] = auth
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=30.0, sock_read=self.settings.request_timeout_s
        )
        async with aiohttp.ClientSession(
            base_url=self.settings.base_url,
            headers=headers,
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=0),
            read_bufsize=2**20,
        ) as http:
            if self.forcing is None and requests:
                await self._probe_forcing(http, requests[0])
            else:
                # The session sets itself up on its first request: do it before the first
                # arrival is due, not on its clock.
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get("/v1/models") as resp:
                        await resp.read()
            return await self._drive(http, requests, plan)

    # ----------------------------------------------------------------- driving

    async def _drive(
        self, http: Any, requests: Sequence[GenerationRequest], plan: ArrivalPlan
    ) -> list[RequestRecord]:
        closed = plan.pattern == "closed_loop"
        users: asyncio.Semaphore | None = None
        if closed:
            users = asyncio.Semaphore(plan.concurrency or 1)
        elif plan.is_offline and self.settings.max_in_flight:
            users = asyncio.Semaphore(self.settings.max_in_flight)
        streams: list[_Stream] = []
        tasks: list[asyncio.Task[None]] = []
        t0 = self._clock()

        async def one(request: GenerationRequest, stream: _Stream) -> None:
            try:
                await self._stream(http, request, stream)
            finally:
                if users is not None:
                    users.release()

        try:
            for i, request in enumerate(requests):
                arrival: float | None = None
                if users is not None:
                    await users.acquire()
                    arrival = self._clock() if closed else None
                elif plan.offsets_s is not None:
                    arrival = t0 + plan.offsets_s[i]
                    await self._wait_until(arrival)
                stream = _Stream(submit_s=self._clock(), arrival_s=arrival)
                streams.append(stream)
                tasks.append(asyncio.create_task(one(request, stream)))
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [
            self._record(r, s)
            for r, s in zip(requests, streams, strict=True)  # every task has finished
        ]

    async def _wait_until(self, due: float) -> None:
        """Sleep until ``spin_s`` before ``due``, then yield to the loop until it is due."""
        spin = self.settings.spin_s
        while (delay := due - self._clock()) > spin:
            await self._sleep(delay - spin)
        while self._clock() < due:
            await asyncio.sleep(0)

    def _payload(self, request: GenerationRequest, forcing: str | None) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            # A LoRA request names its adapter's served name instead of the base model.
            "model": request.adapter or s.model,
            "prompt": self._prompt_of(request),
            "max_tokens": request.max_new_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": s.temperature,
            **s.extra_body,
        }
        if s.temperature > 0:
            body["top_p"] = s.top_p
            if s.seed is not None:
                body["seed"] = s.seed + request.request_id
        if s.ignore_eos and forcing == "min_tokens":
            body["min_tokens"] = request.max_new_tokens
            body["ignore_eos"] = True
        elif s.ignore_eos and forcing == "generation_config":
            gen: dict[str, Any] = {
                "max_new_tokens": request.max_new_tokens,
                "min_new_tokens": request.max_new_tokens,
                "do_sample": s.temperature > 0,
            }
            if s.temperature > 0:
                gen.update(temperature=s.temperature, top_p=s.top_p)
            body["generation_config"] = json.dumps(gen)
        return body

    async def _stream(self, http: Any, request: GenerationRequest, stream: _Stream) -> None:
        body = self._payload(request, self.forcing)
        # Submit is when this request starts going out (after the task got the loop), so
        # submit - arrival is the client's whole scheduling error.
        stream.submit_s = self._clock()
        async with http.post("/v1/completions", json=body) as resp:
            if resp.status != 200:
                detail = (await resp.read()).decode("utf-8", "replace")[:500]
                raise EndpointError(
                    f"{self.settings.base_url}/v1/completions answered {resp.status} for "
                    f"request {request.request_id}: {detail}"
                )
            async for raw in resp.content:
                now = self._clock()
                if not raw.startswith(b"data:"):
                    continue
                data = raw[5:].strip()
                if data == b"[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    logger.debug("unparsable SSE line: %s", data[:200])
                    continue
                if "error" in chunk and not chunk.get("choices"):
                    raise EndpointError(f"server error in the stream: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    if choice.get("text") or choice.get("token_ids"):
                        stream.token_times_s.append(now)
                        stream.end_s = now
                    if choice.get("finish_reason"):
                        stream.finish_reason = choice["finish_reason"]
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    stream.usage_prompt = usage.get("prompt_tokens")
                    stream.usage_completion = usage.get("completion_tokens")
        if stream.end_s is None:
            stream.end_s = self._clock()

    def _record(self, request: GenerationRequest, s: _Stream) -> RequestRecord:
        n_out = s.usage_completion if s.usage_completion is not None else len(s.token_times_s)
        n_in = s.usage_prompt if s.usage_prompt is not None else len(request.prompt_token_ids)
        return RequestRecord(
            request_id=request.request_id,
            input_tokens=int(n_in),
            output_tokens=int(n_out),
            submit_s=s.submit_s,
            end_s=s.end_s if s.end_s is not None else s.submit_s,
            first_token_s=s.token_times_s[0] if s.token_times_s else None,
            token_times_s=list(s.token_times_s),
            finish_reason=s.finish_reason,
            arrival_s=s.arrival_s,
        )

    # ----------------------------------------------------------------- forcing

    async def _probe_forcing(self, http: Any, request: GenerationRequest) -> None:
        """Pick the first forcing strategy the server does not reject (one short request)."""
        if not self.settings.ignore_eos:
            self.forcing = "none"
            return
        probe = GenerationRequest(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            max_new_tokens=1,
            prompt_text=request.prompt_text,
        )
        for strategy in FORCING_STRATEGIES:
            body = {**self._payload(probe, strategy), "stream": False}
            body.pop("stream_options", None)
            async with http.post("/v1/completions", json=body) as resp:
                status, text = resp.status, await resp.text()
            if status == 200:
                self.forcing = strategy
                return
            if 400 <= status < 500 and strategy != "none":
                self.rejected_forcing[strategy] = f"{status}: {text[:200]}"
                continue
            raise EndpointError(
                f"{self.settings.base_url}/v1/completions answered {status} to a probe "
                f"request: {text[:500]}"
            )
        self.forcing = "none"


def auth_header(api_key: str | None, authorization: str | None = None) -> str | None:
    """The ``Authorization`` header: the given value, else ``Bearer <api_key>``, else none."""
    if authorization:
        return authorization
    return f"Bearer {api_key}" if api_key else None


def basic_authorization(user_password: str) -> str:
    """``Basic <base64(user:password)>`` (RFC 7617) from ``user:password``."""
    import base64

    return "Basic " + base64.b64encode(user_password.encode("utf-8")).decode("ascii")


async def _get_text(
    base_url: str,
    path: str,
    *,
    api_key: str | None = None,
    authorization: str | None = None,
    timeout_s: float = 10.0,
) -> str:
    """``GET path`` of the server, its body as text (raises ``aiohttp`` errors)."""
    import aiohttp

    auth = auth_header(api_key, authorization)
    headers = {"Authorization": auth} if auth else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(base_url=base_url, headers=headers, timeout=timeout) as http,
        http.get(path) as resp,
    ):
        resp.raise_for_status()
        return await resp.text()


async def fetch_models(
    base_url: str,
    *,
    api_key: str | None = None,
    authorization: str | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """``GET /v1/models`` as JSON (raises ``aiohttp`` and JSON errors to the caller)."""
    text = await _get_text(
        base_url, "/v1/models", api_key=api_key, authorization=authorization, timeout_s=timeout_s
    )
    out: dict[str, Any] = json.loads(text)
    return out


async def fetch_metrics(
    base_url: str,
    *,
    api_key: str | None = None,
    authorization: str | None = None,
    timeout_s: float = 10.0,
) -> str:
    """``GET /metrics``: the server's Prometheus text exposition (raises ``aiohttp`` errors)."""
    return await _get_text(
        base_url, "/metrics", api_key=api_key, authorization=authorization, timeout_s=timeout_s
    )


__all__ = [
    "FORCING_STRATEGIES",
    "ClientSettings",
    "EndpointError",
    "StreamingClient",
    "fetch_metrics",
    "fetch_models",
    "output_length_forced",
]
