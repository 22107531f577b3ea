"""The evaluation methods of the HTTP engines (server mode, ``backend: endpoint``).

Both go to ``POST /v1/completions`` (not streamed: the evaluation window times the pass, not
tokens), at most ``quality.batch_size`` requests in flight (and at most
``endpoint.max_concurrency``).

* Generation: greedy unless the task samples, with the server's own ``stop`` strings.
* Log-likelihood, as lm-eval's own ``local-completions`` model asks for it
  (``lm_eval/models/openai_completions.py``): the token ids of context + continuation as the
  ``prompt``, ``echo: true``, ``logprobs: 1``, ``max_tokens: 1``, ``temperature: 0``. The server
  answers with each prompt token's log-probability (``token_logprobs``, None for the first)
  and the top alternatives (``top_logprobs``); the score is the sum over the continuation's
  tokens, greedy when each of them is its position's most likely token. Token ids, not text,
  so the continuation's tokens are exactly lm-eval's. The one token each request generates is
  not counted. Only servers that return prompt log-probabilities can do this (``vllm serve``,
  SGLang; not ``transformers serve``, nor a chat-only endpoint): the registry refuses such
  tasks at load for the others (:func:`~llenergymeasure_contract.evaluation.loglikelihood_support`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from llenergymeasure_contract.errors import ConfigError, ExperimentError
from llenergymeasure_contract.evaluation import loglikelihood_support
from llenergymeasure_harness.backends.base import Generated, Score, ScoreRequest, TextRequest
from llenergymeasure_harness.serving.client import ClientSettings, auth_header


async def _complete_all(
    settings: ClientSettings,
    bodies: list[dict[str, Any]],
    concurrency: int,
) -> list[dict[str, Any]]:
    import aiohttp

    auth = auth_header(settings.api_key, settings.authorization)
    headers = {"Authorization": auth} if auth else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=settings.request_timeout_s)
    if settings.max_in_flight is not None:
        concurrency = min(concurrency, settings.max_in_flight)
    gate = asyncio.Semaphore(max(1, concurrency))

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


def score_texts(
    settings: ClientSettings,
    requests: Sequence[ScoreRequest],
    *,
    batch_size: int,
    max_length: int,
) -> list[Score]:
    """Each continuation's summed log-probability from the server's echoed prompt
    log-probabilities, in request order (see the module docstring).

    Context + continuation are cut to their last ``max_length + 1`` tokens, as the in-process
    backends cut them (the first token of the prompt is only context: it has no
    log-probability).

    Raises:
        ExperimentError: the server refused a request, or answered without the prompt's
            log-probabilities (it does not support ``echo`` with ``logprobs``).
    """
    bodies: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []  # (prompt tokens, continuation tokens scored)
    for req in requests:
        whole = (req.context_ids + req.continuation_ids)[-(max_length + 1) :]
        bodies.append(
            {
                "model": settings.model,
                "prompt": whole,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": 1,
                "echo": True,
            }
        )
        spans.append((len(whole), min(len(req.continuation_ids), len(whole) - 1)))
    answers = asyncio.run(_complete_all(settings, bodies, batch_size))
    out = []
    for answer, (length, n) in zip(answers, spans, strict=True):
        logprobs = ((answer.get("choices") or [{}])[0] or {}).get("logprobs") or {}
        token_lps = logprobs.get("token_logprobs")
        tops = logprobs.get("top_logprobs")
        if not isinstance(token_lps, list) or not isinstance(tops, list) or len(token_lps) < length:
            raise ExperimentError(
                "the server answered /v1/completions without the prompt's log-probabilities "
                f"(echo: true, logprobs: 1 gave {str(answer)[:300]}): it cannot score "
                "quality: tasks by log-likelihood",
                hint="use a server that supports echo with logprobs (vllm serve, SGLang), or "
                "set endpoint.completions_logprobs: false and use generate_until tasks",
            )
        span = token_lps[length - n : length]
        greedy = True
        for value, top in zip(span, tops[length - n : length], strict=True):
            if value is None or not top:
                raise ExperimentError(
                    "the server gave no log-probability for a continuation token "
                    f"({str(answer)[:300]})"
                )
            if float(value) < max(float(v) for v in top.values()):
                greedy = False
        out.append(Score(logprob=float(sum(span)), is_greedy=greedy, input_tokens=length))
    return out


class HTTPEvaluationMethods:
    """:class:`~llenergymeasure_harness.backends.base.Evaluable` for the HTTP backends."""

    _client: Any
    _config: Any
    _tokenizer: Any
    _prompt_format: str

    def loglikelihood(
        self, requests: Sequence[ScoreRequest], *, batch_size: int, max_length: int
    ) -> list[Score]:
        """``/v1/completions`` with echo and logprobs for each request (see
        :func:`score_texts`); refused for a server that cannot return them."""
        if self._client is None or self._config is None:
            raise ExperimentError("loglikelihood() called before load()")
        ok, engine = loglikelihood_support(self._config)
        if not ok:
            raise ConfigError(
                f"{engine} cannot return log-probabilities of given text: quality: tasks "
                "scored by log-likelihood are refused on it",
                hint="set endpoint.completions_logprobs: true for a server that answers "
                "/v1/completions with echo and logprobs, or use generate_until tasks",
            )
        return score_texts(
            self._client.settings, requests, batch_size=batch_size, max_length=max_length
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
