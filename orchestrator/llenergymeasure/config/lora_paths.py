"""Local LoRA adapter paths of a study: made absolute, checked, their rank read.

The loader calls :func:`resolve_adapter_paths` on every experiment's raw ``lora:`` section,
before validation: a path adapter (``./adapters/sql`` or ``{path: ...}``) is resolved relative
to the study file (like a local model path), must be a directory holding
``adapter_config.json``, and, when the study does not give its ``rank``, gets the ``r`` that
file records, so ``ExperimentConfig`` can check it against ``lora.max_lora_rank``. The runner
mounts the directories into the container as it mounts a local model
(:func:`llenergymeasure.runners.spec.rewrite_host_paths`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llenergymeasure.config.inputs import check_regular_file
from llenergymeasure.errors import ConfigError
from llenergymeasure_contract.architecture import is_local_path

#: peft's adapter config file name.
ADAPTER_CONFIG = "adapter_config.json"
#: An adapter_config.json is a few hundred bytes; anything this large is not one.
MAX_ADAPTER_CONFIG_BYTES = 1_000_000


def resolve_adapter_paths(
    lora: dict[str, Any],
    resolve: Callable[[str, str], str],
    where: str,
    problems: list[str],
) -> None:
    """Rewrite the path adapters of a raw ``lora:`` dict in place (see the module docstring).

    Args:
        lora: The raw section (mutated).
        resolve: ``(value, key) -> absolute path``; appends a problem when it does not exist.
        where: How the section is named in messages (``study.yaml: lora``).
        problems: Where problems are appended.
    """
    adapters = lora.get("adapters")
    if not isinstance(adapters, list):
        return
    for i, raw in enumerate(adapters):
        given = {"path": raw} if isinstance(raw, str) and is_local_path(raw) else raw
        if not isinstance(given, dict) or not isinstance(given.get("path"), str):
            continue
        entry = dict(given)
        key = f"lora.adapters[{i}].path"
        entry["path"] = resolved = resolve(entry["path"], key)
        adapters[i] = entry
        path = Path(resolved)
        if not path.exists():
            continue  # resolve() reported it
        config = path / ADAPTER_CONFIG
        try:
            st = check_regular_file(config, ADAPTER_CONFIG)
        except ConfigError:
            problems.append(
                f"{where}.adapters[{i}].path: {resolved} holds no {ADAPTER_CONFIG}; an adapter "
                "is a directory in peft's format (adapter_config.json + adapter_model.safetensors)"
            )
            continue
        if entry.get("rank") is None:
            try:
                if st.st_size > MAX_ADAPTER_CONFIG_BYTES:
                    raise ValueError(f"larger than {MAX_ADAPTER_CONFIG_BYTES:,} bytes")
                rank = json.loads(config.read_text(encoding="utf-8")).get("r")
            except (OSError, ValueError, AttributeError) as exc:
                problems.append(f"{where}.adapters[{i}].path: cannot read {config}: {exc}")
                continue
            if isinstance(rank, int) and not isinstance(rank, bool):
                entry["rank"] = rank
