"""Traffic: how the measured requests arrive (:class:`TrafficConfig`, the ``traffic:`` section).

``offline`` (the default) is the historical behaviour: every request is handed to the engine at
the start of the measured window and the engine queues them itself. The other patterns draw an
arrival time per request once, from ``traffic.seed``, and each backend submits each request at
its arrival time:

=============== ============================================================================
``constant``    one request every ``1 / rate_per_s`` seconds (coefficient of variation 0)
``poisson``     exponential inter-arrival gaps with mean ``1 / rate_per_s`` (CV 1)
``gamma``       gamma gaps with shape ``burstiness`` and mean ``1 / rate_per_s``
                (CV ``1 / sqrt(burstiness)``; 1.0 is Poisson, < 1 burstier, > 1 smoother)
``closed_loop`` ``concurrency`` users; each sends its next request when its last one ended
=============== ============================================================================

``traffic.slo`` sets per-request latency objectives; the result then reports goodput (requests
per second meeting every objective) and energy per SLO-meeting request beside the plain
figures. The section is part of the experiment's identity only when it differs from the
default, so results measured before it existed keep their config hash.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llenergymeasure_contract.strict import MAX_SEED, StrictModel

TrafficPattern = Literal["offline", "constant", "poisson", "gamma", "closed_loop"]
#: Patterns that draw arrival times from a rate.
RATE_PATTERNS: tuple[str, ...] = ("constant", "poisson", "gamma")


class _Model(StrictModel):
    """Frozen, strict input (:mod:`llenergymeasure_contract.strict`)."""


class SLOConfig(_Model):
    """Per-request latency objectives; a request meets the SLO when it meets every one set."""

    ttft_s: float | None = Field(
        None, gt=0.0, description="Time to first token, from the request's arrival (seconds)."
    )
    tpot_s: float | None = Field(
        None, gt=0.0, description="Time per output token after the first (seconds)."
    )

    @model_validator(mode="after")
    def _one_objective(self) -> SLOConfig:
        if self.ttft_s is None and self.tpot_s is None:
            raise ValueError(
                "traffic.slo sets no objective; give ttft_s and/or tpot_s, or remove traffic.slo"
            )
        return self


class TrafficConfig(_Model):
    """Arrival process of the measured requests (see the module docstring)."""

    pattern: TrafficPattern = Field(
        "offline",
        description="offline: all at t=0 (default); constant | poisson | gamma: arrivals at "
        "rate_per_s; closed_loop: `concurrency` users back to back.",
    )
    rate_per_s: float | None = Field(
        None, gt=0.0, le=1_000_000.0, description="Mean arrival rate (constant, poisson, gamma)."
    )
    burstiness: float = Field(
        1.0,
        gt=0.0,
        le=1000.0,
        description="Gamma shape: 1.0 is Poisson, < 1 burstier, > 1 more regular (gamma only).",
    )
    concurrency: int | None = Field(
        None, ge=1, description="closed_loop: users, each with one request in flight."
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed of the arrival times (the same seed, the same times).",
    )
    max_wait_s: float = Field(
        0.05,
        ge=0.0,
        le=3600.0,
        description="Batching backends (pytorch): a batch closes when it holds batch_size "
        "requests or its first request has waited this long.",
    )
    slo: SLOConfig | None = Field(None, description="Latency objectives for goodput.")

    @model_validator(mode="after")
    def _check(self) -> TrafficConfig:
        p = self.pattern
        if p in RATE_PATTERNS and self.rate_per_s is None:
            raise ValueError(
                f"traffic.pattern {p} needs traffic.rate_per_s (requests per second), "
                "e.g. rate_per_s: 4.0"
            )
        if p not in RATE_PATTERNS and self.rate_per_s is not None:
            raise ValueError(
                f"traffic.rate_per_s has no effect with pattern {p}; remove it or set "
                "pattern: poisson (or constant, gamma)"
            )
        if p == "closed_loop" and self.concurrency is None:
            raise ValueError(
                "traffic.pattern closed_loop needs traffic.concurrency (how many users), "
                "e.g. concurrency: 16"
            )
        if p != "closed_loop" and self.concurrency is not None:
            raise ValueError(
                f"traffic.concurrency applies to pattern closed_loop only, not {p}; remove it "
                "or set pattern: closed_loop"
            )
        if p != "gamma" and self.burstiness != 1.0:
            raise ValueError(
                f"traffic.burstiness shapes gamma arrivals only, not {p}; set pattern: gamma "
                "or remove burstiness"
            )
        return self

    @property
    def uses_arrivals(self) -> bool:
        """True when requests arrive over time instead of all at the start."""
        return self.pattern != "offline"

    @property
    def open_loop(self) -> bool:
        """True when requests arrive at ``rate_per_s`` whatever the system does (constant,
        poisson, gamma); closed loop and offline are not."""
        return self.pattern in RATE_PATTERNS

    @property
    def latency_mode(self) -> str:
        """Which clock TTFT starts from: ``offline_queueing`` (submit) or ``arrivals``."""
        return "arrivals" if self.uses_arrivals else "offline_queueing"


#: The default section; an experiment with it hashes as if the section did not exist.
DEFAULT_TRAFFIC = TrafficConfig()

__all__ = ["DEFAULT_TRAFFIC", "RATE_PATTERNS", "SLOConfig", "TrafficConfig", "TrafficPattern"]
