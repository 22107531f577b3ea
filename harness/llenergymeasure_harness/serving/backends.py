"""Backends that generate over HTTP: server mode (:class:`ServerBackend`) and
``backend: endpoint`` (:class:`EndpointBackend`), both driven by one
:class:`~llenergymeasure_harness.serving.client.StreamingClient`.

Both satisfy the harness's backend protocol, so the harness's timeline is unchanged: ``load``
(server start-up, health wait, ``/v1/models``: outside the energy window), warmup runs, the
measured ``run`` (the client following the arrival plan), ``close`` (the server stopped; an
external endpoint is left alone). ``LoadInfo.extra["server"]`` describes what served the
requests and ends up in ``result.traffic.server``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llenergymeasure_contract.errors import ConfigError, ExperimentError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_harness.backends.base import GenerationRequest, LoadInfo, RequestRecord
from llenergymeasure_harness.backends.engine_common import (
    prepare_model_source,
    warn_short_outputs,
)
from llenergymeasure_harness.lora import (
    AdapterSet,
    GaugeProbe,
    LabelSet,
    parse_lora_gauge,
    prepare_adapters,
)
from llenergymeasure_harness.serving.client import (
    ClientSettings,
    StreamingClient,
    basic_authorization,
    fetch_metrics,
    fetch_models,
    output_length_forced,
)
from llenergymeasure_harness.serving.evaluation import HTTPEvaluationMethods
from llenergymeasure_harness.serving.server import (
    SERVER_LOG,
    ManagedServer,
    free_port,
    serve_command,
    vllm_resolved_from_log,
)
from llenergymeasure_harness.traffic import ArrivalPlan

logger = logging.getLogger(__name__)

#: Requests one warmup step sends when the backend has no batch of its own.
DEFAULT_WARMUP_UNIT = 8


def _load_tokenizer(config: ExperimentConfig) -> Any | None:
    """The tokenizer of ``tokenizer:`` or a local model directory, or None."""
    name = config.tokenizer
    if name is None and Path(config.model).expanduser().is_dir():
        name = str(Path(config.model).expanduser())
    if name is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            name, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except Exception as exc:
        raise ConfigError(
            f"cannot load the tokenizer {name!r} to turn prompts into text: {exc}",
            hint="set tokenizer: to a local tokenizer directory, or endpoint.prompt_format: "
            "token_ids if the server accepts token-id prompts",
        ) from exc


class _HTTPBackend(HTTPEvaluationMethods):
    """What server mode and the endpoint backend share."""

    name = "http"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.perf_counter,
        environ: dict[str, str] | None = None,
    ) -> None:
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._config: ExperimentConfig | None = None
        self._client: StreamingClient | None = None
        self._tokenizer: Any = None
        self._prompt_format = "token_ids"
        #: ``Authorization`` header for HTTP basic authentication (endpoint.basic_auth_env).
        self._authorization: str | None = None
        #: Where the server log goes (set by the harness to the results directory).
        self.output_dir: Path | None = None
        self.server_info: dict[str, Any] = {}
        #: vLLM's adapter counts from ``GET /metrics`` (with ``lora:``; see ..lora).
        self.lora_probe: GaugeProbe | None = None

    @property
    def warmup_unit(self) -> int:
        if self._config is None:
            return 1
        return max(1, min(self._config.n_prompts, DEFAULT_WARMUP_UNIT))

    def _prompt_of(self, request: GenerationRequest) -> str | list[int]:
        if self._prompt_format == "token_ids":
            return list(request.prompt_token_ids)
        if request.prompt_text is not None:
            return request.prompt_text
        if self._tokenizer is None:
            raise ConfigError("text prompts need a tokenizer (set tokenizer:)")
        text: str = self._tokenizer.decode(request.prompt_token_ids, skip_special_tokens=True)
        return text

    def _make_client(
        self, config: ExperimentConfig, base_url: str, model: str, api_key: str | None
    ) -> StreamingClient:
        dec = config.decoder
        timeout = 600.0
        endpoint = getattr(config, "endpoint", None)
        if endpoint is not None:
            timeout = endpoint.request_timeout_s
        settings = ClientSettings(
            base_url=base_url,
            model=model,
            api_key=api_key,
            authorization=self._authorization,
            temperature=dec.temperature,
            top_p=dec.top_p,
            seed=config.random_seed if dec.do_sample else None,
            ignore_eos=config.ignore_eos,
            request_timeout_s=timeout,
        )
        return StreamingClient(settings, prompt_of=self._prompt_of, clock=self._clock)

    def rebind(self, config: ExperimentConfig) -> None:
        """Take another experiment's run-time settings against the same server (engine
        reuse): a new client with its decoder settings, keeping the server's URL, model,
        output-length forcing and extra request fields."""
        old = self._client
        if old is None:
            raise ExperimentError(f"{type(self).__name__}.rebind() called before load()")
        s = old.settings
        client = self._make_client(config, s.base_url, s.model, s.api_key)
        client.settings.extra_body.update(s.extra_body)
        client.settings.max_in_flight = s.max_in_flight
        if self._config is not None and config.ignore_eos == self._config.ignore_eos:
            client.forcing = old.forcing
        else:  # lengths no longer forced: none; newly forced: probe the server again
            client.forcing = None if config.ignore_eos else "none"
        self._config = config
        self._client = client

    def _models(self, base_url: str, api_key: str | None) -> dict[str, Any] | None:
        try:
            return asyncio.run(
                fetch_models(base_url, api_key=api_key, authorization=self._authorization)
            )
        except Exception as exc:  # informational; the requests themselves will tell
            logger.warning("GET %s/v1/models failed: %s", base_url, exc)
            return None

    def _metrics_probe(self, base_url: str, api_key: str | None, source: str) -> GaugeProbe:
        """A probe reading vLLM's LoRA gauge from the server's ``GET /metrics``."""

        def read() -> dict[LabelSet, float]:
            text = asyncio.run(
                fetch_metrics(base_url, api_key=api_key, authorization=self._authorization)
            )
            return parse_lora_gauge(text)

        return GaugeProbe(read, source)

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        """Send the requests through the streaming client (following ``plan``)."""
        if self._client is None or self._config is None:
            raise ExperimentError(f"{type(self).__name__}.run() called before load()")
        records = self._client.run(requests, plan)
        requested = {r.request_id: r.max_new_tokens for r in requests}
        forced = output_length_forced(records, requested) if self._config.ignore_eos else None
        self.server_info.update(
            {
                "output_length_forcing": self._client.forcing,
                "rejected_forcing": dict(self._client.rejected_forcing),
                "output_length_forced": forced,
            }
        )
        warn_short_outputs(
            records, requested, engine=self.server_info.get("engine", "server"), ignore_eos=True
        )
        return records

    def peak_memory_bytes(self) -> dict[int, int] | None:
        """Not observable from the client (the server is another process)."""
        return None


class ServerBackend(_HTTPBackend):
    """Server mode: the engine's own OpenAI-compatible server, started and stopped here."""

    name = "server"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server: ManagedServer | None = None
        self._workdir: Path | None = None
        self._runs = 0
        self.adapters = AdapterSet()

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Start the server and wait until it is healthy (all outside the energy window)."""
        if config.server is None:
            raise ConfigError("ServerBackend needs a server: section")
        self._config = config
        t0 = self._clock()
        port = config.server.port or free_port()
        model = config.model
        if config.backend == "vllm" and config.load_format == "dummy":
            # As in-process: a built-in architecture becomes a config-only directory, so the
            # server builds random weights without the network (a local path stays as it is).
            self._workdir = Path(tempfile.mkdtemp(prefix="llem-serve-"))
            model = prepare_model_source(config, self._workdir).model
        lora_modules: list[tuple[str, str]] = []
        if config.lora is not None:
            # Generated adapters are written before the server starts; it loads them by path.
            self._workdir = self._workdir or Path(tempfile.mkdtemp(prefix="llem-serve-"))
            self.adapters = prepare_adapters(config, self._workdir)
            lora_modules = [(a.name, a.path or "") for a in self.adapters.adapters]
        argv = serve_command(config, port, model=model, lora_modules=lora_modules)
        log_path = (self.output_dir or Path.cwd()) / SERVER_LOG
        self._server = ManagedServer(argv, port=port, log_path=log_path)
        self._server.start()
        startup = self._server.wait_healthy(config.server.startup_timeout_s)
        base_url = self._server.base_url
        models = self._models(base_url, None)
        served = _first_model_id(models) or config.model
        if config.backend == "pytorch":
            # transformers serve takes text prompts only.
            self._prompt_format = "text"
            self._tokenizer = _load_tokenizer(config)
        self._client = self._make_client(config, base_url, served, None)
        if config.backend == "pytorch":
            self._client.forcing = "generation_config" if config.ignore_eos else "none"
        elif config.backend in ("vllm", "tensorrt"):
            self._client.forcing = "min_tokens" if config.ignore_eos else "none"
        if config.backend == "vllm":
            # Without a tokenizer (dummy weights) vLLM streams empty text; ask for the ids.
            self._client.settings.extra_body["return_token_ids"] = True
            if config.lora is not None:
                self.lora_probe = self._metrics_probe(
                    base_url, None, "GET /metrics of the vllm serve process"
                )
        resolved = None
        if config.backend == "vllm":
            resolved = vllm_resolved_from_log(
                log_path.read_text("utf-8", errors="replace") if log_path.is_file() else ""
            )
        self.server_info = {
            "mode": "server",
            "external": False,
            "engine": config.backend,
            "url": base_url,
            "command": argv,
            "startup_s": startup,
            "models": models,
            "log": SERVER_LOG,
            "engine_resolved": resolved,
        }
        vocab = len(self._tokenizer) if self._tokenizer is not None else None
        return LoadInfo(
            backend_version=_engine_version(config.backend),
            parameter_count=None,
            dtype=config.precision,
            load_duration_s=self._clock() - t0,
            devices=list(config.gpus),
            extra={"server": self.server_info, "vocab_size": vocab},
        )

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        """As :meth:`_HTTPBackend.run`; vLLM gets one prefix-cache salt per run.

        Warmup sends the measured prompts first; without a fresh ``cache_salt`` the measured
        run would find their KV blocks cached and skip the prefill the in-process backend does
        (it salts each run the same way).
        """
        if self._config is not None and self._config.backend == "vllm" and self._client:
            self._runs += 1
            self._client.settings.extra_body["cache_salt"] = f"llem-run-{self._runs}"
        return super().run(requests, plan)

    def close(self) -> None:
        """Stop the server (always; safe to call twice). Its log stays in the results."""
        server, self._server = self._server, None
        if server is not None:
            code = server.stop()
            self.server_info["exit_code"] = code
        self.adapters.close()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


class EndpointBackend(_HTTPBackend):
    """``backend: endpoint``: a server that is already running somewhere on this host."""

    name = "endpoint"

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Check the server answers, record ``/v1/models``, prepare the client."""
        # the endpoint: section joins the config with its registry entry
        section: Any = getattr(config, "endpoint", None)
        if section is None:
            raise ConfigError("backend endpoint needs an endpoint: section with its url")
        self._config = config
        t0 = self._clock()
        api_key: str | None = None
        if section.api_key_env is not None:
            api_key = self._environ.get(section.api_key_env)
            if not api_key:
                raise ConfigError(
                    f"endpoint.api_key_env names {section.api_key_env}, which is not set "
                    "in the harness environment",
                    hint=f"export {section.api_key_env} on the host and pass it through to the "
                    "harness by name (docs/runner.md), or run with --runner local",
                )
        self._authorization = None
        basic_env = getattr(section, "basic_auth_env", None)
        if basic_env is not None:
            user_password = self._environ.get(basic_env)
            if not user_password or ":" not in user_password:
                raise ConfigError(
                    f"endpoint.basic_auth_env names {basic_env}, which is not set (to "
                    "user:password) in the harness environment",
                    hint=f"export {basic_env}=user:password on the host and pass it through to "
                    "the harness by name (docs/runner.md), or run with --runner local",
                )
            self._authorization = basic_authorization(user_password)
        models = self._models(section.url, api_key)
        if models is None:
            raise ExperimentError(
                f"the endpoint {section.url} does not answer GET /v1/models",
                hint="start the server first, and check endpoint.url (the container needs "
                "network_mode: host to reach 127.0.0.1)",
            )
        ids = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
        if ids and config.model not in ids:
            raise ConfigError(
                f"the endpoint serves {ids}, not model {config.model!r}",
                hint="set model: to one of the served names",
            )
        missing = [r.name for r in config.lora.refs() if r.name not in ids] if config.lora else []
        if ids and missing:
            raise ConfigError(
                f"the endpoint serves {ids}, not LoRA adapter(s) {missing}",
                hint="list as {served: NAME} the adapter names the server serves",
            )
        fmt = section.prompt_format
        if fmt in ("auto", "text"):
            self._tokenizer = _load_tokenizer(config)
            if self._tokenizer is None and fmt == "text":
                raise ConfigError(
                    "endpoint.prompt_format: text needs a tokenizer for synthetic prompts",
                    hint="set tokenizer: to a local tokenizer directory",
                )
        self._prompt_format = "text" if self._tokenizer is not None else "token_ids"
        if config.dataset.source != "synthetic":
            self._prompt_format = "text"
        self._client = self._make_client(config, section.url, config.model, api_key)
        if config.lora is not None:
            # A vLLM server says which adapters it ran; counts every request it served.
            self.lora_probe = self._metrics_probe(
                section.url,
                api_key,
                "GET /metrics of the endpoint (all its requests in the window, not only llem's)",
            )
        # Offline traffic: at most max_concurrency requests in flight, as the registry says.
        self._client.settings.max_in_flight = getattr(section, "max_concurrency", None)
        self.server_info = {
            "mode": "endpoint",
            "external": True,
            "engine": "external",
            "url": section.url,
            "models": models,
            "api_key_env": section.api_key_env,  # the variable's name; the key is never kept
            "basic_auth_env": basic_env,
            "prompt_format": self._prompt_format,
        }
        vocab = len(self._tokenizer) if self._tokenizer is not None else None
        return LoadInfo(
            backend_version="external",
            parameter_count=None,
            dtype="unknown (external server)",
            load_duration_s=self._clock() - t0,
            devices=list(config.gpus),
            extra={"server": self.server_info, "vocab_size": vocab},
        )

    def close(self) -> None:
        """Nothing to stop: the server belongs to someone else."""
        self._client = None


def _first_model_id(models: dict[str, Any] | None) -> str | None:
    if not models:
        return None
    for entry in models.get("data", []):
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            return str(entry["id"])
    return None


def _engine_version(backend: str) -> str:
    return REGISTRY.get(backend).engine_version() or "unknown"


__all__ = ["EndpointBackend", "ServerBackend"]
