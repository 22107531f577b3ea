"""Server mode: start the engine's own OpenAI-compatible server, wait for it, always stop it.

::

    load():  spawn `<serve command>` (own process group, log → logs/server.log)
             poll GET /health until 200 (or the process dies, or startup_timeout_s)  ─┐ outside
             GET /v1/models (what is served)                                          ─┘ the window
    run():   the streaming client drives it over 127.0.0.1             ◄── measured window
    close(): SIGTERM to the server's process group, SIGKILL after a grace period; the log stays

The serve commands, one per backend (:func:`serve_command`)::

    pytorch   transformers serve MODEL --device cpu|cuda:N --dtype D --host 127.0.0.1 --port P
    vllm      python -m vllm.entrypoints.cli.main serve MODEL --host 127.0.0.1 --port P
              + the vllm: section as engine flags (`vllm serve`; dummy weights: a config dir)
    tensorrt  trtllm-serve MODEL --host 127.0.0.1 --port P --backend B --max_batch_size N ...

``server.args`` are appended as given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from llenergymeasure_contract.errors import ConfigError, ExperimentError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.files import SERVER_LOG_FILE

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVER_LOG = SERVER_LOG_FILE  # the contract spells it (the host links it, engine groups)
#: Seconds between SIGTERM and SIGKILL when stopping.
STOP_GRACE_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _engine_flags(args: dict[str, Any], *, skip: set[str]) -> list[str]:
    """``{k: v}`` engine arguments as ``--k v`` flags (bools as ``--k`` / ``--no-k``)."""
    out: list[str] = []
    for key, value in args.items():
        if key in skip or value is None:
            continue
        if isinstance(value, bool):
            out.append(_flag(key) if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict | list):
            out += [_flag(key), json.dumps(value, sort_keys=True)]
        else:
            out += [_flag(key), str(value)]
    return out


def serve_command(
    config: ExperimentConfig,
    port: int,
    *,
    model: str | None = None,
    lora_modules: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The argv that starts the OpenAI-compatible server of ``config.backend``.

    ``lora_modules`` are ``(served name, adapter directory)`` pairs: vLLM serves each under its
    name (``--lora-modules name=path ...``; ``--enable-lora`` and the ``lora:`` knobs come with
    the engine arguments), and a request's ``model`` field picks one.

    Raises:
        ConfigError: the backend has no server mode.
    """
    server = config.server
    extra = list(server.args) if server is not None else []
    name = model or config.model
    if config.backend == "pytorch":
        device = f"cuda:{config.gpus[0]}" if config.gpus else "cpu"
        dtype = "auto" if config.precision == "auto" else config.precision
        argv = [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            name,
            "--device",
            device,
            "--dtype",
            dtype,
            "--host",
            HOST,
            "--port",
            str(port),
            "--default-seed",
            str(config.random_seed),
        ]
        if config.trust_remote_code:
            argv.append("--trust-remote-code")
        assert config.pytorch is not None
        if config.pytorch.attn_implementation:
            argv += ["--attn-implementation", config.pytorch.attn_implementation]
        return argv + extra
    if config.backend == "vllm":
        from llenergymeasure_harness.backends.engine_common import ModelSource
        from llenergymeasure_harness.backends.vllm_args import build_engine_args

        source = ModelSource(model=name, architecture=None, dummy_dir=None)
        args = build_engine_args(config, source)
        # The module rather than the `vllm` console script: the same code, found through the
        # interpreter that runs the harness whether or not its scripts directory is on PATH.
        argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", args.pop("model")]
        argv += ["--host", HOST, "--port", str(port)]
        if name != config.model:
            # a dummy-weights directory: serve it under the experiment's model name
            argv += ["--served-model-name", config.model]
        if lora_modules:
            argv += ["--lora-modules", *(f"{n}={p}" for n, p in lora_modules)]
        return argv + _engine_flags(args, skip={"disable_log_stats"}) + extra
    if config.backend == "tensorrt":
        assert config.tensorrt is not None
        t = config.tensorrt
        argv = [
            "trtllm-serve",
            name,
            "--host",
            HOST,
            "--port",
            str(port),
            "--backend",
            t.trtllm_backend,
            "--max_batch_size",
            str(t.max_batch_size),
            "--tp_size",
            str(t.tensor_parallel_size),
            "--pp_size",
            str(t.pipeline_parallel_size),
            "--kv_cache_free_gpu_memory_fraction",
            str(t.kv_cache_free_gpu_memory_fraction),
        ]
        if t.max_num_tokens is not None:
            argv += ["--max_num_tokens", str(t.max_num_tokens)]
        if t.max_seq_len is not None:
            argv += ["--max_seq_len", str(t.max_seq_len)]
        if config.trust_remote_code:
            argv.append("--trust_remote_code")
        return argv + extra
    raise ConfigError(f"backend {config.backend!r} has no server mode")


_VLLM_LOG_PATTERNS = {
    "max_num_batched_tokens": re.compile(
        r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)"
    ),
    "async_scheduling": re.compile(r"Asynchronous scheduling is (enabled|disabled)"),
    "enable_prefix_caching": re.compile(r"enable_prefix_caching=(True|False)"),
    "enable_chunked_prefill": re.compile(r"enable_chunked_prefill=(True|False)"),
}


def vllm_resolved_from_log(text: str) -> dict[str, Any] | None:
    """The settings ``vllm serve`` resolved, read from its start-up log.

    The same keys as the in-process backend's ``engine_resolved``
    (:data:`~llenergymeasure_harness.backends.vllm_args.RESOLVED_KNOBS`); None for a knob the log
    does not state, and None altogether when it states none (another release's wording).
    """
    from llenergymeasure_harness.backends.vllm_args import RESOLVED_KNOBS

    out: dict[str, Any] = {name: None for _, name in RESOLVED_KNOBS}
    for name, pattern in _VLLM_LOG_PATTERNS.items():
        match = pattern.search(text)
        if match is None:
            continue
        raw = match.group(1)
        out[name] = int(raw) if raw.isdigit() else raw in ("True", "enabled")
    return out if any(v is not None for v in out.values()) else None


class ManagedServer:
    """One server process: :meth:`start`, :meth:`wait_healthy`, :meth:`stop` (idempotent).

    Args:
        argv: The serve command.
        port: Its port on 127.0.0.1.
        log_path: Where its stdout and stderr go (kept after it stops).
        health_path: Polled until it answers 200.
        env: Its environment (default: ours).
        clock / sleep: Injectable for tests.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        port: int,
        log_path: Path,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.health_path = health_path
        self.env = env
        self._clock = clock
        self._sleep = sleep
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.startup_s: float | None = None
        self.exit_code: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        """Spawn the server in its own process group, output to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # its own group: stop() reaches its workers too
            )
        except OSError as exc:
            self._close_log()
            raise ExperimentError(
                f"cannot start the server ({self.argv[0]}): {exc}",
                hint="server mode needs the engine's serve command in the image",
            ) from exc

    def wait_healthy(self, timeout_s: float) -> float:
        """Poll the health endpoint until 200; returns the seconds it took.

        Raises:
            ExperimentError: the server exited, or did not answer within ``timeout_s``.
        """
        assert self.proc is not None, "start() first"
        t0 = self._clock()
        url = self.base_url + self.health_path
        while True:
            code = self.proc.poll()
            if code is not None:
                self.exit_code = code
                raise ExperimentError(
                    f"the server exited with code {code} before it was healthy; its log: "
                    f"{self.log_path}\n{self.log_tail()}"
                )
            if _answers_200(url):
                self.startup_s = self._clock() - t0
                return self.startup_s
            if self._clock() - t0 > timeout_s:
                raise ExperimentError(
                    f"the server did not answer {url} within {timeout_s:g} s; its log: "
                    f"{self.log_path}\n{self.log_tail()}",
                    hint="raise server.startup_timeout_s for large models",
                )
            self._sleep(0.25)

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines of the server log."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the server's process group, SIGKILL after ``grace_s``; its exit code."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    _signal_group(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=grace_s)
                    except subprocess.TimeoutExpired:
                        logger.warning("server did not stop in %.0f s; killing it", grace_s)
                        _signal_group(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=30)
                self.exit_code = proc.returncode
            finally:
                self._close_log()
        return self.exit_code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ManagedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers_200(url: str) -> bool:
    """True when GET ``url`` answers 200 within 2 s (stdlib: no event loop needed here)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):  # URLError, connection refused, reset, timeout
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the server leads (it was started with a new session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


__all__ = ["HOST", "SERVER_LOG", "ManagedServer", "free_port", "serve_command"]
