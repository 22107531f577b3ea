"""What the load generator (the harness's streaming client) costs, and how fast it can go.

Against a fast fake OpenAI-compatible SSE server in another process
(``llenergymeasure_harness.testing.fake_sse_server``, 127.0.0.1 only), so the server's CPU is
not counted:

1. Client CPU time per request: ``time.process_time()`` of this process over a closed-loop run
   (``--concurrency`` users, ``--n`` requests of ``--tokens`` streamed tokens), divided by n.
2. The highest Poisson arrival rate whose scheduling error (``submit_s - arrival_s``: when a
   request actually starts going out, minus when it was due) stays under 1 ms at p99. Rates
   double from ``--start-rate`` to ``--max-rate`` (stopping early once the median error passes
   10 ms); each runs ``--seconds`` of arrivals. The machine's own floor (asyncio sleeping to
   the same kind of schedule, no HTTP) is printed first: on a shared, loaded box it, not the
   client, sets the p99.

Every loop is bounded in count and time and talks to 127.0.0.1 only.

    python benchmarks/bench_load_generator.py            # defaults: the figures in docs/traffic.md
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from typing import Any


def _percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def start_server(port: int, token_delay_s: float) -> subprocess.Popen[bytes]:
    import urllib.request

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llenergymeasure_harness.testing.fake_sse_server",
            "--port",
            str(port),
            "--token-delay-s",
            str(token_delay_s),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fake server did not start")


def _client(port: int, spin_s: float | None = None) -> Any:
    """The harness's client; ``spin_s`` None keeps its default."""
    from llenergymeasure_harness.serving.client import ClientSettings, StreamingClient

    settings = ClientSettings(
        base_url=f"http://127.0.0.1:{port}", model="fake-model", forcing="min_tokens"
    )
    if spin_s is not None:
        settings.spin_s = spin_s
    return StreamingClient(settings, prompt_of=lambda r: list(r.prompt_token_ids))


def _requests(n: int, tokens: int) -> list[Any]:
    from llenergymeasure_harness.backends.base import GenerationRequest

    return [GenerationRequest(i, [100 + i % 50] * 16, tokens) for i in range(n)]


def bench_cpu(port: int, n: int, tokens: int, concurrency: int) -> dict[str, float]:
    from llenergymeasure_harness.traffic import ArrivalPlan

    client = _client(port)
    client.run(_requests(50, tokens), ArrivalPlan(pattern="closed_loop", concurrency=8))  # warm
    c0, w0 = time.process_time(), time.perf_counter()
    records = client.run(
        _requests(n, tokens), ArrivalPlan(pattern="closed_loop", concurrency=concurrency)
    )
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert all(r.output_tokens == tokens for r in records)
    return {
        "cpu_ms_per_request": cpu / n * 1000,
        "cpu_us_per_token": cpu / (n * tokens) * 1e6,
        "requests_per_s": n / wall,
        "client_cpu_fraction": cpu / wall,
    }


def timer_floor(rate: float, n: int) -> dict[str, float]:
    """The machine's own floor: asyncio sleeping to Poisson due times, no HTTP at all."""
    import asyncio
    import random

    async def go() -> list[float]:
        rng, t, errs = random.Random(1), 0.0, []
        t0 = time.perf_counter()
        for _ in range(n):
            t += rng.expovariate(rate)
            due = t0 + t
            while (d := due - time.perf_counter()) > 0:
                await asyncio.sleep(d)
            errs.append(time.perf_counter() - due)
        return errs

    errors = asyncio.run(go())
    return {"p50_ms": _percentile(errors, 50) * 1000, "p99_ms": _percentile(errors, 99) * 1000}


def bench_rate(
    port: int, rate: float, seconds: float, tokens: int, spin_s: float
) -> dict[str, float]:
    from llenergymeasure.config import TrafficConfig
    from llenergymeasure_harness.traffic import ArrivalPlan

    n = max(100, min(int(rate * seconds), 20_000))
    plan = ArrivalPlan.from_config(TrafficConfig(pattern="poisson", rate_per_s=rate, seed=1), n)
    c0, w0 = time.process_time(), time.perf_counter()
    records = _client(port, spin_s).run(_requests(n, tokens), plan)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    errors = [r.submit_s - r.arrival_s for r in records if r.arrival_s is not None]
    return {
        "rate_per_s": rate,
        "n": n,
        "client_cpu_fraction": cpu / wall,
        "p50_ms": _percentile(errors, 50) * 1000,
        "p99_ms": _percentile(errors, 99) * 1000,
        "max_ms": max(errors) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18123)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--token-delay-s", type=float, default=0.002)
    parser.add_argument("--start-rate", type=float, default=25.0)
    parser.add_argument("--max-rate", type=float, default=3200.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--spin-ms",
        type=float,
        nargs="+",
        default=[2.0, 1.0, 0.0],
        help="ClientSettings.spin_s values to ladder, in ms (default: 2 1 0; the client uses 2)",
    )
    args = parser.parse_args()
    server = start_server(args.port, args.token_delay_s)
    try:
        cpu = bench_cpu(args.port, args.n, args.tokens, args.concurrency)
        print(
            f"client CPU, closed loop of {args.concurrency} users, {args.n} requests x "
            f"{args.tokens} streamed tokens (server {args.token_delay_s * 1000:g} ms/token):"
        )
        print(f"  CPU per request            {cpu['cpu_ms_per_request']:7.3f} ms")
        print(f"  CPU per streamed token     {cpu['cpu_us_per_token']:7.1f} us")
        print(f"  throughput                 {cpu['requests_per_s']:7.0f} requests/s")
        print(f"  client CPU busy            {cpu['client_cpu_fraction'] * 100:7.0f} %")
        floor = timer_floor(100.0, 400)
        print(
            "machine floor (asyncio.sleep to Poisson due times at 100/s, no HTTP): "
            f"p50 {floor['p50_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        for spin in (ms / 1000 for ms in args.spin_ms):
            print(
                f"scheduling error (submit - arrival), Poisson, {args.seconds:g} s of arrivals "
                f"each, spin_s={spin * 1000:g} ms:"
            )
            best = None  # highest rate that passed
            sustained = None  # highest rate that passed with every lower rate passing too
            failed_below = False
            rate = args.start_rate
            while rate <= args.max_rate:
                r = bench_rate(args.port, rate, args.seconds, args.tokens, spin)
                ok = r["p99_ms"] < 1.0
                print(
                    f"  {rate:7.0f}/s  n={r['n']:5d}  p50 {r['p50_ms']:6.3f} ms  "
                    f"p99 {r['p99_ms']:6.3f} ms  max {r['max_ms']:7.3f} ms  "
                    f"client CPU {r['client_cpu_fraction'] * 100:3.0f} %  "
                    f"{'ok' if ok else 'FAIL'}"
                )
                if ok:
                    best = rate
                    if not failed_below:
                        sustained = rate
                else:
                    failed_below = True
                if r["p50_ms"] > 10.0:  # the client itself is saturated: stop the ladder
                    break
                rate *= 2
            print(
                f"  highest rate with p99 scheduling error < 1 ms: {best or 0:g} requests/s; "
                f"every rate up to {sustained or 0:g} requests/s under 1 ms"
            )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
