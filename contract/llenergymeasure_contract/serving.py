"""Serving over HTTP: server mode (:class:`ServerConfig`) and the endpoint backend's section
(:class:`EndpointConfig`).

* ``server:`` on a pytorch/vllm/tensorrt experiment runs the engine's own OpenAI-compatible
  server inside the experiment's container (``transformers serve``, ``vllm serve``,
  ``trtllm-serve``) and measures it through the harness's streaming client; start-up is
  outside the energy window, the server's log is kept, and the server is always stopped.
* ``backend: endpoint`` measures a server that is already running (any engine), at
  ``endpoint.url``; energy comes from NVML on ``gpus`` (on this host), and the result says the
  server is external. An API key is given by the NAME of an environment variable
  (``endpoint.api_key_env``) and is never written anywhere.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from llenergymeasure_contract.strict import StrictModel, check_url, redact_url

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: How to give an endpoint its credentials instead of writing them into the URL.
ENDPOINT_CREDENTIALS_FIX = (
    "Pass credentials by the NAME of an environment variable: endpoint.api_key_env: NAME (a "
    "Bearer token), or endpoint.basic_auth_env: NAME holding user:password; export it and "
    "hand it to the container with docker: {env_passthrough: [NAME]}"
)
#: Flags of the serve commands the experiment itself decides.
RESERVED_SERVER_ARGS = ("--host", "--port", "--model", "--dtype", "--seed")


class _Model(StrictModel):
    """Frozen, strict input (:mod:`llenergymeasure_contract.strict`)."""


class ServerConfig(_Model):
    """Run the backend's own OpenAI-compatible server and drive it over localhost."""

    port: int = Field(0, ge=0, le=65535, description="Port on 127.0.0.1; 0 picks a free one.")
    startup_timeout_s: float = Field(
        900.0, gt=0.0, description="How long to wait for the server's health endpoint."
    )
    args: list[str] = Field(
        default_factory=list,
        description="Extra command-line arguments for the serve command, appended as given.",
    )

    @field_validator("args")
    @classmethod
    def _no_reserved(cls, value: list[str]) -> list[str]:
        taken = [a for a in value if a.split("=", 1)[0] in RESERVED_SERVER_ARGS]
        if taken:
            raise ValueError(
                f"server.args may not set {', '.join(taken)}: the experiment decides host, "
                "port, model, dtype and seed (set model/precision/random_seed/server.port)"
            )
        return value


class EndpointConfig(_Model):
    """An OpenAI-compatible server that is already running (``backend: endpoint``)."""

    url: str = Field(description="Base URL, e.g. http://127.0.0.1:8000 (without /v1).")
    api_key_env: str | None = Field(
        None,
        description="NAME of the environment variable holding the API key (never the key).",
    )
    basic_auth_env: str | None = Field(
        None,
        description="NAME of the environment variable holding 'user:password' for HTTP basic "
        "authentication (never the credentials, and never in the url).",
    )
    prompt_format: Literal["auto", "text", "token_ids"] = Field(
        "auto",
        description="auto: text when a tokenizer is available (tokenizer: or a local model "
        "path), else token ids; text needs a tokenizer for synthetic prompts.",
    )
    request_timeout_s: float = Field(600.0, gt=0.0, description="Per-request read timeout.")
    max_concurrency: int = Field(
        256,
        ge=1,
        description="Offline traffic: requests in flight at once (like vllm bench serve "
        "--max-concurrency); the arrival patterns set their own.",
    )
    completions_logprobs: bool = Field(
        False,
        description="The server answers /v1/completions with echo and logprobs for token-id "
        "prompts, as vLLM and SGLang do, so quality: tasks scored by log-likelihood (multiple "
        "choice) can run; false: a chat-only server, such tasks are refused at load.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        v = value.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint.url must start with http:// or https://, got {redact_url(value)!r}"
            )
        check_url(v, "endpoint.url", ENDPOINT_CREDENTIALS_FIX)
        if v.endswith("/v1"):
            v = v[: -len("/v1")]
        return v

    @field_validator("api_key_env", "basic_auth_env")
    @classmethod
    def _env_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            # the message never repeats the value: it may be the secret itself
            raise ValueError(
                f"endpoint.{info.field_name} is the NAME of an environment variable (letters, "
                f"digits, underscores), not the secret itself; e.g. {info.field_name}: "
                + ("OPENAI_API_KEY" if info.field_name == "api_key_env" else "LLEM_ENDPOINT_AUTH")
            )
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> EndpointConfig:
        if self.api_key_env is not None and self.basic_auth_env is not None:
            raise ValueError(
                "endpoint.api_key_env (a Bearer token) and endpoint.basic_auth_env (basic "
                "authentication) both set the Authorization header; keep one"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # basic_auth_env and completions_logprobs joined later: left out at their defaults, so
        # the config hash of every endpoint experiment measured before them stays the same.
        data: dict[str, Any] = handler(self)
        if data.get("basic_auth_env", "") is None:
            del data["basic_auth_env"]
        if data.get("completions_logprobs") is False:
            del data["completions_logprobs"]
        return data


__all__ = ["RESERVED_SERVER_ARGS", "EndpointConfig", "ServerConfig"]
