"""The evaluation methods of the HTTP engines (server mode, ``backend: endpoint``).

Generation goes to ``POST /v1/completions`` (not streamed: the evaluation window times the
pass, not tokens), at most ``batch_size`` requests in flight, greedy unless the task samples,
with the server's own ``stop`` strings. Log-likelihood scoring is not offered: a chat endpoint
cannot return it, and the registry refuses such tasks at load
(``BackendSpec.supports_loglikelihood``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from llenergymeasure_contract.errors import ConfigError, ExperimentError
from llenergymeasure_harness.backends.base import Generated, Score, ScoreRequest, TextRequest
from llenergymeasure_harness.serving.client import ClientSettings


async def _complete_all(
    settings: ClientSettings,
    bodies: list[dict[str, Any]],
    concurrency: int,
) -> list[dict[str, Any]]:
    import aiohttp

    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=settings.request_timeout_s)
    gate = asyncio.Semaphore(concurrency)

    async def one(http: Any, body: dict[str, Any]) -> dict[str, Any]:
        async with gate, http.post("/v1/completions", json=body) as resp:
            if resp.status != 200:
                detail = (await resp.read()).decode("utf-8", "replace")[:500]
                raise ExperimentError(
                    f"the server answered {resp.status} to an evaluation request: {detail}"
                )
            out: dict[str, Any] = await resp.json(content_type=None)
            return out

    async with aiohttp.ClientSession(
        base_url=settings.base_url, headers=headers, timeout=timeout
    ) as http:
        return list(await asyncio.gather(*(one(http, b) for b in bodies)))


def complete_texts(
    settings: ClientSettings,
    requests: Sequence[TextRequest],
    *,
    batch_size: int,
    prompt_of: Callable[[TextRequest], str | list[int]],
    count_tokens: Callable[[str], int] | None,
) -> list[Generated]:
    """What the server generated for each request, in request order.

    Args:
        settings: The streaming client's settings (URL, model, key, timeout).
        requests: The generation requests.
        batch_size: Requests in flight at once.
        prompt_of: The prompt to send (token ids or text, as the measured run sends).
        count_tokens: Counts a text's tokens when the server reports no usage.
    """
    bodies = []
    for req in requests:
        body: dict[str, Any] = {
            "model": settings.model,
            "prompt": prompt_of(req),
            "max_tokens": req.max_new_tokens,
            "temperature": req.temperature,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        bodies.append(body)
    answers = asyncio.run(_complete_all(settings, bodies, batch_size))
    out = []
    for answer in answers:
        text = str((answer.get("choices") or [{}])[0].get("text") or "")
        usage = answer.get("usage") or {}
        n = usage.get("completion_tokens")
        if not isinstance(n, int):
            n = count_tokens(text) if count_tokens is not None else 0
        out.append(Generated(text, n))
    return out


class HTTPEvaluationMethods:
    """:class:`~llenergymeasure_harness.backends.base.Evaluable` for the HTTP backends."""

    _client: Any
    _tokenizer: Any
    _prompt_format: str

    def loglikelihood(
        self, requests: Sequence[ScoreRequest], *, batch_size: int, max_length: int
    ) -> list[Score]:
        """Refused: see the module docstring."""
        raise ConfigError(
            "an OpenAI-compatible server scores no given text here: quality: tasks scored "
            "by log-likelihood need backend pytorch or vllm",
        )

    def generate_texts(
        self, requests: Sequence[TextRequest], *, batch_size: int, tokenizer: Any
    ) -> list[Generated]:
        """``/v1/completions`` for each request (see :func:`complete_texts`)."""
        if self._client is None:
            raise ExperimentError("generate_texts() called before load()")
        tok = self._tokenizer if self._tokenizer is not None else tokenizer

        def prompt_of(req: TextRequest) -> str | list[int]:
            if self._prompt_format == "token_ids" or tok is None:
                return list(req.prompt_ids)
            return str(tok.decode(req.prompt_ids, skip_special_tokens=False))

        def count(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False))

        return complete_texts(
            self._client.settings,
            requests,
            batch_size=batch_size,
            prompt_of=prompt_of,
            count_tokens=count if tok is not None else None,
        )
