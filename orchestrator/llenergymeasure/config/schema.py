"""JSON Schema of ``study.yaml``, for editors with a YAML language server.

Usage: ``llem config schema -o study.schema.json`` then, at the top of a study file::

    # yaml-language-server: $schema=./study.schema.json
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from llenergymeasure.config.impact import CarbonConfig, CostConfig
from llenergymeasure.config.notify import NotifyConfig
from llenergymeasure.config.slurm import SlurmSettings
from llenergymeasure.config.study import DockerSettings, ExecutionConfig, PullPolicy, RunnerName
from llenergymeasure_contract.experiment import ExperimentConfig


def _partial_experiment_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, info in ExperimentConfig.model_fields.items():
        annotation: Any = info.annotation
        fields[name] = (annotation | None, Field(None, description=info.description))
    model: type[BaseModel] = create_model(
        "ExperimentFields",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    return model


def study_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a study file."""
    partial = _partial_experiment_model()
    study_fields: dict[str, Any] = {
        "name": (str | None, Field(None, description="Study name; default: file name.")),
        "base": (str | None, Field(None, description="Another study file to inherit from.")),
        "sweep": (
            dict[str, list[Any]] | None,
            Field(
                None,
                description="Grid: dotted experiment key -> list of values. Keys starting with "
                "a backend name (pytorch.batch_size) multiply only that backend's experiments.",
            ),
        ),
        "experiments": (
            list[partial] | None,  # type: ignore[valid-type]
            Field(None, description="Explicit experiments, each merged over the shared fields."),
        ),
        "execution": (ExecutionConfig | None, None),
        "results_dir": (str | None, None),
        "max_experiments": (
            int | None,
            Field(
                None,
                ge=1,
                description="Refuse to expand to more experiments than this (default 100000).",
            ),
        ),
        "runner": (RunnerName | None, None),
        "images": (dict[str, str] | None, Field(None, description="backend -> image")),
        "pull_policy": (PullPolicy | None, None),
        "cuda_major": (int | None, None),
        "docker": (DockerSettings | None, None),
        "carbon": (CarbonConfig | None, None),
        "cost": (CostConfig | None, None),
        "notify": (NotifyConfig | None, None),
        "slurm": (SlurmSettings | None, None),
    }
    study_model: type[BaseModel] = create_model(
        "StudyFile",
        __base__=partial,
        **study_fields,
    )
    schema = study_model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llenergymeasure study"
    return schema
