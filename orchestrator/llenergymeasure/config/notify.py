"""Webhook notifications: :class:`NotifyConfig` (the study's ``notify:`` section).

.. code-block:: yaml

    notify:
      webhooks:
        - https://hooks.example.org/llem                    # a URL alone
        - url: https://ci.example.org/hook
          secret_env: LLEM_WEBHOOK_SECRET                   # HMAC-SHA256 key, by env-var name
          events: [study_end]                               # default: both events
      timeout_s: 5          # per POST
      retries: 3            # after the first attempt, with backoff 0.5 s, 1 s, 2 s ...

The secret itself never appears in a study file, the plan or a result: only the name of the
environment variable that holds it. Sending is done by :mod:`llenergymeasure.notify`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llenergymeasure_contract.strict import StrictModel, check_url

NotifyEvent = Literal["experiment_end", "study_end"]
ALL_EVENTS: tuple[NotifyEvent, ...] = ("experiment_end", "study_end")


class _Model(StrictModel):
    """Frozen, strict input (:mod:`llenergymeasure_contract.strict`)."""


class WebhookConfig(_Model):
    """One webhook endpoint."""

    url: str = Field(pattern=r"^https?://\S+$", description="http(s) URL that receives a POST.")
    secret_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the HMAC-SHA256 key; the "
        "signature goes in the X-LLEM-Signature header as sha256=<hex>.",
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(ALL_EVENTS), min_length=1, description="What to send."
    )

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        return check_url(
            url,
            "notify.webhooks[].url",
            "Authenticate the POSTs by signing them instead: secret_env: NAME names the "
            "environment variable holding the HMAC key, and the receiver checks the "
            "X-LLEM-Signature header.",
        )

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data


class NotifyConfig(_Model):
    """Where and how to notify; sending never fails or delays the study."""

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    timeout_s: float = Field(5.0, gt=0.0, le=60.0, description="Timeout of one POST.")
    retries: int = Field(3, ge=0, le=10, description="Retries after a failed POST.")
    backoff_s: float = Field(0.5, ge=0.0, le=30.0, description="First retry delay, doubled.")
