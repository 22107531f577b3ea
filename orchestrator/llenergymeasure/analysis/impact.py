"""Carbon and cost per 1,000 output tokens and per request, from the measured energy.

::

    kWh            = J / 3.6e6
    facility kWh   = kWh x PUE            (PUE not given: 1, the GPU energy alone)
    gCO2e          = facility kWh x carbon.grid_gco2_per_kwh
    cost           = facility kWh x cost.price_per_kwh   (in cost.currency)

computed twice: from the gross GPU energy (``gco2e_per_1k_output_tokens``, ...) and from the
idle-adjusted energy (``net_...``). A figure is ``None`` when its energy was not measured or its
input was not given; nothing is assumed.
"""

from __future__ import annotations

from llenergymeasure.config.impact import ImpactInputs
from llenergymeasure.results.study import RunMetrics

J_PER_KWH = 3.6e6


def _scaled(j: float | None, per: float, factor: float | None) -> float | None:
    if j is None or factor is None:
        return None
    return j * per / J_PER_KWH * factor


def impact_metrics(metrics: RunMetrics, inputs: ImpactInputs) -> RunMetrics:
    """A copy of ``metrics`` with the carbon and cost figures that ``inputs`` allow."""
    pue = inputs.carbon.pue if inputs.carbon.pue is not None else 1.0
    grid = inputs.carbon.grid_gco2_per_kwh
    price = inputs.cost.price_per_kwh
    g = grid * pue if grid is not None else None
    c = price * pue if price is not None else None
    m = metrics
    return m.model_copy(
        update={
            "gco2e_per_1k_output_tokens": _scaled(m.j_per_output_token, 1000.0, g),
            "net_gco2e_per_1k_output_tokens": _scaled(m.net_j_per_output_token, 1000.0, g),
            "gco2e_per_request": _scaled(m.j_per_request, 1.0, g),
            "net_gco2e_per_request": _scaled(m.net_j_per_request, 1.0, g),
            "cost_per_1k_output_tokens": _scaled(m.j_per_output_token, 1000.0, c),
            "net_cost_per_1k_output_tokens": _scaled(m.net_j_per_output_token, 1000.0, c),
            "cost_per_request": _scaled(m.j_per_request, 1.0, c),
            "net_cost_per_request": _scaled(m.net_j_per_request, 1.0, c),
            "cost_currency": inputs.cost.currency if price is not None else None,
        }
    )
