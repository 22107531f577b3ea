"""The user defaults file: ``~/.config/llenergymeasure/config.yaml``.

``LLEM_USER_CONFIG`` overrides the path (set it to an empty string to use no file). Every key is
a default that a study file and then the command line may override:

.. code-block:: yaml

    results_dir: ~/llem-results
    runner: docker            # docker | local | auto
    images: {vllm: myregistry/llem-vllm:dev}
    cuda_major: 13
    pull_policy: never
    config_gap_s: 30
    cycle_gap_s: 60
    energy_sampler: nvml      # default energy.sampler of every experiment
    carbon: {grid_gco2_per_kwh: 250, pue: 1.2}     # defaults of a study's carbon: and cost:
    cost: {price_per_kwh: 0.30, currency: EUR}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError

from llenergymeasure.config.impact import CarbonConfig, CostConfig
from llenergymeasure.config.study import PullPolicy, RunnerName
from llenergymeasure.errors import ConfigError
from llenergymeasure_contract.strict import StrictModel

ENV_USER_CONFIG = "LLEM_USER_CONFIG"


class UserDefaults(StrictModel):
    """Host-wide defaults, lowest precedence after built-ins."""

    results_dir: str | None = None
    runner: RunnerName | None = None
    images: dict[str, str] = Field(default_factory=dict)
    cuda_major: int | None = None
    pull_policy: PullPolicy | None = None
    config_gap_s: float | None = Field(None, ge=0.0)
    cycle_gap_s: float | None = Field(None, ge=0.0)
    energy_sampler: Literal["auto", "nvml", "zeus", "codecarbon", "null"] | None = None
    carbon: CarbonConfig | None = None
    cost: CostConfig | None = None
    _source: str | None = PrivateAttr(None)  # the file read, for provenance

    @property
    def source(self) -> str | None:
        """The file these defaults were read from (None: built-in)."""
        return self._source


def user_config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the user defaults file is (it may not exist); None when disabled."""
    env = os.environ if environ is None else environ
    if ENV_USER_CONFIG in env:
        raw = env[ENV_USER_CONFIG]
        return Path(raw).expanduser() if raw else None
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llenergymeasure" / "config.yaml"


def load_user_defaults(path: Path | None) -> UserDefaults:
    """Read the user defaults file; a missing file means no defaults.

    Raises:
        ConfigError: the file exists but is not valid.
    """
    if path is None or not path.is_file():
        return UserDefaults()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError("the user defaults file must be a mapping", source=str(path))
    try:
        defaults = UserDefaults.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "invalid user defaults",
            source=str(path),
            problems=[f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()],
            hint=f"fix or remove {path} (or point {ENV_USER_CONFIG} elsewhere)",
        ) from exc
    defaults._source = str(path)
    return defaults
