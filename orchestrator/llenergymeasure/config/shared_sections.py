"""One frozen section object per distinct section of an expanded study (memory at 10k points)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from llenergymeasure_contract.experiment import (
    BaselineConfig,
    DecoderConfig,
    EnergyConfig,
    WarmupConfig,
)
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.traffic import TrafficConfig


def _frozen(value: Any) -> Any:
    """A hashable, order-insensitive key for plain YAML data (``TypeError`` otherwise)."""
    if isinstance(value, dict):
        return frozenset((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("list", tuple(_frozen(v) for v in value))
    hash(value)
    return (type(value), value)  # 1 and True and 1.0 stay apart


class SharedSections:
    """One frozen section object per distinct section, shared by the experiments that set it.

    A 10,000-point sweep over ten batch sizes then holds ten ``PyTorchConfig`` objects, not
    10,000: the configs are immutable, so sharing is safe, and the cyclic garbage collector
    has far fewer live objects to rescan while the sweep grows (instead of pausing it).
    A section that does not validate on its own is left as data, so the experiment's own
    validation reports it with the usual key path.
    """

    def __init__(self) -> None:
        self._models: dict[str, type[BaseModel]] = {
            "decoder": DecoderConfig,
            "warmup": WarmupConfig,
            "baseline": BaselineConfig,
            "energy": EnergyConfig,
            "traffic": TrafficConfig,
            **{spec.name: spec.section for spec in REGISTRY},
        }
        self._seen: dict[tuple[str, Any], BaseModel] = {}

    def intern(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with each section dict replaced by the shared validated section."""
        out = data
        for key, model in self._models.items():
            value = data.get(key)
            if not isinstance(value, dict):
                continue
            try:
                memo = (key, _frozen(value))
                section = self._seen.get(memo)
            except TypeError:
                continue  # not plain data: let the experiment's validation judge it
            if section is None:
                try:
                    section = model.model_validate(value)
                except ValidationError:
                    continue
                self._seen[memo] = section
            if out is data:
                out = dict(data)
            out[key] = section
        return out
