"""A reference OpenAI completions server on a real local model, standing in for ``vllm serve``
where vLLM cannot run (a CPU): the same ``/v1/completions`` answers, computed by transformers.

Serves, on one model folder (no download; ``HF_HUB_OFFLINE`` is set):

* ``GET /health`` and ``GET /v1/models`` (the served name: the folder path unless told);
* ``POST /v1/completions`` with one prompt (text, or token ids as vLLM takes them):
  greedy generation (``temperature: 0``; sampled above it, seeded), ``stop`` strings cut
  out of the text, ``max_tokens``, ``min_tokens`` / ``ignore_eos``; ``logprobs: N`` gives each
  generated token's log-probability and the top N; ``echo: true`` puts the prompt in front of
  the text and, with ``logprobs``, the prompt tokens' log-probabilities (None for the first),
  as vLLM does (``vllm/entrypoints/openai/completion/serving.py``: the prompt's
  ``prompt_logprobs`` then the output's, each top-N dict keyed by the decoded token, holding
  the chosen token too). ``stream: true`` sends the answer as server-sent events, one chunk
  per token, then ``usage`` when ``stream_options.include_usage`` asks.

Log-probabilities are ``log_softmax`` of the float32 logits of one unpadded forward pass per
request, which is what lm-eval's ``hf`` model computes, so scores match it. One request at a
time (the model is not thread-safe); this is a reference for correctness, not for speed::

    python -m llenergymeasure_harness.testing.completions_server MODEL_DIR --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

#: The line printed (and flushed) once the server listens; tests wait for it.
READY_LINE = "llem reference completions server ready"


class ReferenceModel:
    """A causal LM and its tokenizer answering completion requests (synchronously).

    Args:
        path: A local model folder (config, weights, tokenizer).
        dtype: torch dtype name of the weights.
    """

    def __init__(self, path: str | Path, dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=getattr(torch, dtype)
        ).eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        if self.tokenizer.eos_token_id is not None:
            eos_ids.append(self.tokenizer.eos_token_id)
        self.eos_ids = {int(e) for e in eos_ids if e is not None}

    # ------------------------------------------------------------------ model

    def _logprobs(self, ids: list[int]) -> Any:
        """Log-probabilities (float32) of the next token after every prefix of ``ids``."""
        with self.torch.inference_mode():
            logits = self.model(input_ids=self.torch.tensor([ids])).logits[0]
        return self.torch.log_softmax(logits.float(), dim=-1)

    def _entry(self, row: Any, token: int, n: int) -> tuple[float, dict[str, float]]:
        """The chosen token's log-probability and the top-``n`` dict (holding it too)."""
        top: dict[str, float] = {}
        for value, alt in zip(*self.torch.topk(row, n), strict=True):
            top.setdefault(self.tokenizer.decode([int(alt)]), float(value))
        chosen = float(row[token])
        top.setdefault(self.tokenizer.decode([token]), chosen)
        return max(chosen, -9999.0), top

    def complete(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """The non-streamed ``/v1/completions`` answer for ``body`` (one prompt), and the
        token ids generated.

        Raises:
            ValueError: a request this server does not take (the caller answers 400).
        """
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            ids = list(self.tokenizer.encode(prompt))
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = [int(t) for t in prompt]
        else:
            raise ValueError("prompt must be one string or one list of token ids")
        max_tokens = int(body["max_tokens"] if body.get("max_tokens") is not None else 16)
        min_tokens = max_tokens if body.get("ignore_eos") else int(body.get("min_tokens") or 0)
        temperature = float(body.get("temperature") or 0.0)
        n_top = body.get("logprobs")
        stop = body.get("stop") or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        generator = self.torch.Generator().manual_seed(int(body.get("seed") or 0))

        out: list[int] = []
        rows: list[Any] = []
        finish = "length"
        text = ""
        prompt_rows = self._logprobs(ids) if body.get("echo") and n_top is not None else None
        for _ in range(max_tokens):
            row = self._logprobs(ids + out)[-1]
            if len(out) < min_tokens:
                row = row.clone()
                row[list(self.eos_ids)] = -math.inf
            if temperature > 0:
                probs = self.torch.softmax(row / temperature, dim=-1)
                token = int(self.torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(row.argmax())
            out.append(token)
            rows.append(row)
            if token in self.eos_ids and len(out) > min_tokens:
                finish = "stop"
                break
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s and s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
        else:
            text = self.tokenizer.decode(out, skip_special_tokens=True)
        if finish == "stop" and out and out[-1] in self.eos_ids:
            text = self.tokenizer.decode(out, skip_special_tokens=True)

        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish}
        if n_top is not None:
            tokens: list[int] = []
            entries: list[tuple[float, dict[str, float]] | None] = []
            if prompt_rows is not None:
                tokens += ids
                entries.append(None)
                entries += [
                    self._entry(prompt_rows[i - 1], ids[i], int(n_top)) for i in range(1, len(ids))
                ]
            tokens += out
            entries += [self._entry(r, t, int(n_top)) for r, t in zip(rows, out, strict=True)]
            choice["logprobs"] = {
                "tokens": [self.tokenizer.decode([t]) for t in tokens],
                "token_logprobs": [e[0] if e else None for e in entries],
                "top_logprobs": [e[1] if e else None for e in entries],
            }
        if body.get("echo"):
            choice["text"] = self.tokenizer.decode(ids, skip_special_tokens=False) + text
        answer = {
            "id": f"cmpl-{time.monotonic_ns()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(out),
                "total_tokens": len(ids) + len(out),
            },
        }
        return answer, out


def make_app(model: ReferenceModel, served_name: str) -> Any:
    """The aiohttp application serving ``model`` as ``served_name``."""
    from aiohttp import web

    lock = asyncio.Lock()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": served_name, "object": "model"}]}
        )

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return web.json_response({"detail": "the body is not JSON"}, status=400)
        if not isinstance(body, dict) or body.get("model") != served_name:
            unknown = {"detail": f"unknown model; serving {served_name}"}
            return web.json_response(unknown, status=404)
        try:
            async with lock:
                answer, tokens = await asyncio.to_thread(model.complete, body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"detail": str(exc)}, status=400)
        if not body.get("stream"):
            return web.json_response(answer)
        return await _stream(request, body, answer, model.tokenizer, tokens)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return app


async def _stream(
    request: Any, body: dict[str, Any], answer: dict[str, Any], tokenizer: Any, tokens: list[int]
) -> web.StreamResponse:
    """Send ``answer`` as server-sent events: one chunk per generated token's text (the
    text up to that token minus the text before it; the last chunks cut at a stop string)."""
    from aiohttp import web

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    choice = answer["choices"][0]
    text = str(choice["text"])
    pieces: list[str] = []
    sent = 0
    for i in range(1, len(tokens) + 1):
        upto = min(len(tokenizer.decode(tokens[:i], skip_special_tokens=True)), len(text))
        pieces.append(text[sent:upto])
        sent = max(sent, upto)

    async def send(payload: object) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await resp.write(f"data: {data}\n\n".encode())

    base = {k: answer[k] for k in ("id", "object", "created", "model")}
    for piece in pieces:
        await send({**base, "choices": [{"index": 0, "text": piece, "finish_reason": None}]})
    await send(
        {**base, "choices": [{"index": 0, "text": "", "finish_reason": choice["finish_reason"]}]}
    )
    if (body.get("stream_options") or {}).get("include_usage"):
        await send({**base, "choices": [], "usage": answer["usage"]})
    await send("[DONE]")
    await resp.write_eof()
    return resp


def main(argv: list[str] | None = None) -> None:
    """Serve a model folder until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a local model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from aiohttp import web

    model = ReferenceModel(args.model, args.dtype)
    app = make_app(model, args.served_model_name or args.model)

    def ready(message: str) -> None:  # run_app prints once the socket listens
        sys.stdout.write(f"{READY_LINE} on http://{args.host}:{args.port}\n")
        sys.stdout.flush()

    web.run_app(app, host=args.host, port=args.port, print=ready)


if __name__ == "__main__":
    main(sys.argv[1:])


__all__ = ["READY_LINE", "ReferenceModel", "main", "make_app"]
