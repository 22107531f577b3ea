"""Carbon and cost inputs: :class:`CarbonConfig` and :class:`CostConfig`.

Given in a study file (``carbon:``, ``cost:``) or as user defaults (same keys in
``~/.config/llenergymeasure/config.yaml``); the study file wins key by key. Nothing is assumed:
a figure whose input is not given is absent (``None``), never computed from a made-up default.
The inputs travel with the study result as :class:`ImpactInputs`, each with where it came from.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from llenergymeasure_contract.strict import StrictModel


class _Model(StrictModel):
    """Frozen, strict input (:mod:`llenergymeasure_contract.strict`)."""


class CarbonConfig(_Model):
    """Grid carbon intensity and data-centre overhead."""

    grid_gco2_per_kwh: float | None = Field(
        None, ge=0.0, description="Grid carbon intensity, gCO2e per kWh drawn from the grid."
    )
    pue: float | None = Field(
        None,
        ge=1.0,
        le=5.0,
        description="Power usage effectiveness (facility energy / IT energy); not given: "
        "the GPU energy is used as it is (PUE 1, said so in the provenance).",
    )


class CostConfig(_Model):
    """Electricity price."""

    price_per_kwh: float | None = Field(None, ge=0.0, description="Price of one kWh.")
    currency: str | None = Field(
        None,
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code of price_per_kwh, e.g. EUR, USD, GBP (required with it).",
    )

    @model_validator(mode="after")
    def _currency_with_price(self) -> CostConfig:
        if self.price_per_kwh is not None and self.currency is None:
            raise ValueError("cost.currency is required with cost.price_per_kwh (e.g. EUR)")
        return self


class ImpactInputs(_Model):
    """The carbon and cost inputs a study used, with the source of each given value.

    ``sources`` maps a key (``carbon.grid_gco2_per_kwh``, ``carbon.pue``,
    ``cost.price_per_kwh``, ``cost.currency``) to ``"study file <path>"`` or
    ``"user config <path>"``.
    """

    carbon: CarbonConfig = Field(default_factory=CarbonConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    sources: dict[str, str] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No input given at all."""
        return not self.sources
