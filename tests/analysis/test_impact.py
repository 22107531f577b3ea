"""Carbon and cost inputs: precedence, provenance, arithmetic, and absence without input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llenergymeasure.analysis.impact import impact_metrics
from llenergymeasure.config.impact import CarbonConfig, CostConfig, ImpactInputs
from llenergymeasure.config.loader import load_study
from llenergymeasure.config.user import load_user_defaults
from llenergymeasure.errors import ConfigError
from llenergymeasure.results.study import RunMetrics

REPO = Path(__file__).resolve().parents[2]


def study_file(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump({"base": str(REPO / "examples" / "cpu-quickstart.yaml"), **extra})
    )
    return path


def test_no_input_means_no_figure(tmp_path: Path) -> None:
    """Without carbon:/cost: the inputs are empty and every figure stays None."""
    study = load_study(study_file(tmp_path))
    assert study.impact.empty
    m = impact_metrics(RunMetrics(j_per_output_token=0.5), study.impact)
    assert m.gco2e_per_1k_output_tokens is None and m.cost_per_1k_output_tokens is None


def test_study_file_overrides_user_config_key_by_key(tmp_path: Path) -> None:
    """User defaults fill what the study does not give; each value records its source."""
    user_path = tmp_path / "config.yaml"
    user_path.write_text(
        yaml.safe_dump(
            {
                "carbon": {"grid_gco2_per_kwh": 250, "pue": 1.5},
                "cost": {"price_per_kwh": 0.2, "currency": "USD"},
            }
        )
    )
    user = load_user_defaults(user_path)
    study = load_study(study_file(tmp_path, carbon={"pue": 1.1}), user=user)
    imp = study.impact
    assert imp.carbon == CarbonConfig(grid_gco2_per_kwh=250, pue=1.1)
    assert imp.cost == CostConfig(price_per_kwh=0.2, currency="USD")
    assert imp.sources["carbon.pue"].startswith("study file ")
    assert imp.sources["carbon.grid_gco2_per_kwh"] == f"user config {user_path}"


def test_arithmetic_gross_and_net() -> None:
    """gCO2e/1k tok = J/tok x 1000 / 3.6e6 x PUE x grid; cost alike; per request too."""
    inputs = ImpactInputs(
        carbon=CarbonConfig(grid_gco2_per_kwh=400.0, pue=1.2),
        cost=CostConfig(price_per_kwh=0.25, currency="EUR"),
        sources={"carbon.grid_gco2_per_kwh": "x"},
    )
    m = impact_metrics(
        RunMetrics(j_per_output_token=0.9, net_j_per_output_token=0.6, j_per_request=90.0),
        inputs,
    )
    kwh = 0.9 * 1000 / 3.6e6
    assert m.gco2e_per_1k_output_tokens == pytest.approx(kwh * 1.2 * 400.0)
    assert m.net_gco2e_per_1k_output_tokens == pytest.approx(0.6 * 1000 / 3.6e6 * 1.2 * 400)
    assert m.cost_per_1k_output_tokens == pytest.approx(kwh * 1.2 * 0.25)
    assert m.gco2e_per_request == pytest.approx(90.0 / 3.6e6 * 1.2 * 400)
    assert m.net_cost_per_request is None  # net J/request not measured
    assert m.cost_currency == "EUR"


def test_no_pue_uses_gpu_energy_alone() -> None:
    """PUE not given: the GPU energy is used as it is (factor 1), not a guessed PUE."""
    inputs = ImpactInputs(carbon=CarbonConfig(grid_gco2_per_kwh=100.0), sources={"c": "x"})
    m = impact_metrics(RunMetrics(j_per_output_token=3600.0), inputs)  # 1 kWh per 1k
    assert m.gco2e_per_1k_output_tokens == pytest.approx(100.0)
    assert m.cost_per_1k_output_tokens is None and m.cost_currency is None


def test_bad_inputs_name_the_key(tmp_path: Path) -> None:
    """A price without currency, a PUE below 1: one problem line each, with the key path."""
    with pytest.raises(ConfigError) as exc:
        load_study(study_file(tmp_path, cost={"price_per_kwh": 0.3}, carbon={"pue": 0.5}))
    text = str(exc.value)
    assert "cost.currency is required" in text and "carbon.pue" in text
