"""A small, fast OpenAI-compatible completions server for tests and the load-generator bench.

Speaks just enough HTTP/1.1 (keep-alive, chunked transfer) on 127.0.0.1 to serve:

* ``GET /health``, ``GET /v1/models`` and ``GET /metrics`` (vLLM's ``vllm:lora_requests_info``
  gauge when it serves LoRA adapters, as vLLM 0.26 fills it:
  :mod:`llenergymeasure_harness.testing.vllm_metrics`; each streamed token is an engine step);
* ``POST /v1/completions`` with ``stream: true``: ``max_tokens`` SSE chunks of one "token"
  each, ``token_delay_s`` apart, then a chunk with ``finish_reason`` and (when asked for and
  ``usage`` is on) ``usage``, then ``data: [DONE]``.

Knobs mimic real servers' differences: ``reject_fields`` answers 422 to requests carrying
those fields (as ``transformers serve`` does for ``min_tokens``), ``stop_after`` ends every
stream early when the request did not force its length (an EOS), and ``usage=False`` leaves
the token count to the client. Run it in a thread (:meth:`FakeSSEServer.start`) or as a
process: ``python -m llenergymeasure_harness.testing.fake_sse_server --port 8123``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from llenergymeasure_harness.testing.vllm_metrics import LoraGauge


@dataclass
class FakeSSEBehaviour:
    """What the fake server does (see the module docstring)."""

    model: str = "fake-model"
    token_delay_s: float = 0.0
    usage: bool = True
    reject_fields: frozenset[str] = frozenset()
    stop_after: int | None = None
    prompt_tokens: int = 4
    # LoRA adapters it serves besides ``model`` (listed in /v1/models, as vLLM lists
    # --lora-modules); a request naming any other model is refused.
    lora_models: tuple[str, ...] = ()
    max_loras: int | None = None  # the gauge's max_lora label; default len(lora_models)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: The ``Authorization`` header of every request received (None when absent), in order.
    authorizations: list[str | None] = field(default_factory=list)


class FakeSSEServer:
    """The server; :meth:`start` runs it in a daemon thread, :meth:`stop` ends it."""

    def __init__(self, behaviour: FakeSSEBehaviour | None = None, *, port: int = 0) -> None:
        self.behaviour = behaviour or FakeSSEBehaviour()
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        b = self.behaviour
        #: vLLM's LoRA gauge (registered only when the server serves adapters).
        self.lora_gauge = LoraGauge(b.max_loras or len(b.lora_models)) if b.lora_models else None
        self._in_engine: dict[int, str | None] = {}  # stream number -> its adapter
        self._streams = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self) -> None:
        """Serve until cancelled (the process entry point)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            await self._server.serve_forever()

    def start(self) -> FakeSSEServer:
        """Serve in a background thread; returns when the port is bound."""

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self.serve())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-sse-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake SSE server did not start")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            for task in asyncio.all_tasks(self._loop):
                self._loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeSSEServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                self.behaviour.authorizations.append(headers.get("authorization"))
                await self._route(method, path, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _plain(writer: asyncio.StreamWriter, status: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    async def _route(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        b = self.behaviour
        if method == "GET" and path == "/health":
            self._plain(writer, "200 OK", {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            ids = [b.model, *b.lora_models]
            self._plain(
                writer,
                "200 OK",
                {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]},
            )
        elif method == "GET" and path == "/metrics":
            text = (
                "# HELP vllm:num_requests_running Number of requests in model execution "
                "batches.\n# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{engine="0",model_name="{b.model}"}} '
                f"{float(len(self._in_engine))}\n"
            )
            if self.lora_gauge is not None:
                text += self.lora_gauge.exposition()
            data = text.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
        elif method == "POST" and path == "/v1/completions":
            req = json.loads(body or b"{}")
            b.requests.append(req)
            rejected = sorted(set(req) & b.reject_fields)
            if rejected:
                self._plain(
                    writer,
                    "422 Unprocessable Entity",
                    {"detail": f"Unexpected fields in the request: {set(rejected)}"},
                )
            elif req.get("model") not in (b.model, *b.lora_models):
                self._plain(writer, "400 Bad Request", {"detail": "unknown model"})
            elif req.get("stream"):
                await self._stream(req, writer)
            else:
                n = self._n_tokens(req)
                self._plain(writer, "200 OK", self._chunk("x" * n, "length", req, n, final=True))
        else:
            self._plain(writer, "404 Not Found", {"detail": "not found"})
        await writer.drain()

    def _engine_step(self) -> None:
        """An engine step with outputs: the LoRA gauge gets the adapters now in flight."""
        if self.lora_gauge is not None:
            self.lora_gauge.record(a for a in self._in_engine.values() if a is not None)

    def _n_tokens(self, req: dict[str, Any]) -> int:
        n = int(req.get("max_tokens") or 16)
        forced = bool(req.get("min_tokens")) or "generation_config" in req
        if self.behaviour.stop_after is not None and not forced:
            n = min(n, self.behaviour.stop_after)
        return n

    def _chunk(
        self, text: str, finish: str | None, req: dict[str, Any], n: int, *, final: bool
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "model": self.behaviour.model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish}],
        }
        wants_usage = not req.get("stream") or (req.get("stream_options") or {}).get(
            "include_usage"
        )
        if final and self.behaviour.usage and wants_usage:
            p = self.behaviour.prompt_tokens
            chunk["usage"] = {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}
        return chunk

    async def _stream(self, req: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

        def send(event: str) -> None:
            data = f"data: {event}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        n = self._n_tokens(req)
        self._streams += 1
        stream = self._streams
        model = req.get("model")
        self._in_engine[stream] = model if model in self.behaviour.lora_models else None
        try:
            for i in range(n):
                if self.behaviour.token_delay_s:
                    await asyncio.sleep(self.behaviour.token_delay_s)
                self._engine_step()
                send(json.dumps(self._chunk(f"t{i} ", None, req, n, final=False)))
                await writer.drain()
        finally:
            self._in_engine.pop(stream, None)
        self._engine_step()
        finish = "length" if n == int(req.get("max_tokens") or 16) else "stop"
        send(json.dumps(self._chunk("", finish, req, n, final=True)))
        send("[DONE]")
        writer.write(b"0\r\n\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="a fast fake OpenAI completions server")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--token-delay-s", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeSSEServer(
        FakeSSEBehaviour(model=args.model, token_delay_s=args.token_delay_s), port=args.port
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve())


if __name__ == "__main__":
    main()


__all__ = ["FakeSSEBehaviour", "FakeSSEServer"]
