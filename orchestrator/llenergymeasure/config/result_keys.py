"""The study keys about what is done with the results: ``carbon:``, ``cost:`` and ``notify:``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from llenergymeasure.config.impact import CarbonConfig, CostConfig, ImpactInputs
from llenergymeasure.config.inputs import echo
from llenergymeasure.config.notify import NotifyConfig
from llenergymeasure.config.problems import format_section_validation
from llenergymeasure.config.user import UserDefaults


def impact_inputs(
    raw: Mapping[str, Any], user: UserDefaults, source: str, problems: list[str]
) -> ImpactInputs:
    """``carbon:`` and ``cost:``: the study file over the user defaults, key by key."""
    sections: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, model in (("carbon", CarbonConfig), ("cost", CostConfig)):
        merged: dict[str, Any] = {}
        defaults = getattr(user, key)
        if defaults is not None:
            for k, v in defaults.model_dump(exclude_none=True).items():
                merged[k] = v
                sources[f"{key}.{k}"] = f"user config {user.source or '(defaults)'}"
        given = raw.get(key)
        if given is not None and not isinstance(given, dict):
            problems.append(f"{key}: must be a mapping, got {echo(given)}")
            given = None
        for k, v in (given or {}).items():
            merged[k] = v
            if v is not None:
                sources[f"{key}.{k}"] = f"study file {source}"
            else:
                sources.pop(f"{key}.{k}", None)
        try:
            sections[key] = model.model_validate(merged)
        except ValidationError as exc:
            problems.extend(format_section_validation(exc, key))
            sections[key] = model()
    return ImpactInputs(carbon=sections["carbon"], cost=sections["cost"], sources=sources)


#: The optional extra that brings the webhook HTTP client.
WEBHOOKS_EXTRA = "llenergymeasure[webhooks]"


def notify_config(raw: Mapping[str, Any], problems: list[str]) -> NotifyConfig:
    """``notify:`` validated (the default where absent or invalid, with problems added)."""
    given = raw.get("notify")
    if given is None:
        return NotifyConfig()
    if not isinstance(given, dict):
        problems.append(
            f"notify: must be a mapping (notify: {{webhooks: [URL, ...]}}), got {echo(given)}"
        )
        return NotifyConfig()
    try:
        cfg = NotifyConfig.model_validate(given)
    except ValidationError as exc:
        problems.extend(format_section_validation(exc, "notify"))
        return NotifyConfig()
    if cfg.webhooks:
        import importlib.util

        if importlib.util.find_spec("httpx") is None:
            problems.append(
                "notify.webhooks: needs the HTTP client of the webhooks extra, which is not "
                f"installed; run: pip install '{WEBHOOKS_EXTRA}' (or remove notify:)"
            )
    return cfg
