"""The ``slurm:`` study section: how ``runner: slurm`` submits one Slurm job per run.

:class:`SlurmSettings` holds what ``sbatch`` needs (partition, account, QOS, time limit, GPU
request, exclusivity, extra options), the launcher that starts the harness inside the job
(``apptainer``/``singularity``, ``docker``, ``enroot`` through pyxis, or ``local``), and how
the orchestrator watches (how many jobs at once, poll backoff, what Ctrl-C does). See
``docs/scale-out.md``.

.. code-block:: yaml

    runner: slurm
    slurm:
      partition: gpu
      account: my-project
      time_limit_s: 5400          # default: execution.experiment_timeout_s + startup_margin_s
      launcher: apptainer         # image from images:, as docker://<image> or a .sif path
      max_concurrent: 8           # experiments in flight at once (one job each)
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llenergymeasure_contract.strict import StrictModel, control_chars

Launcher = Literal["apptainer", "singularity", "docker", "enroot", "local"]
GpuRequest = Literal["gres", "gpus"]
OnInterrupt = Literal["cancel", "detach"]


#: A Slurm name (partition, account, QOS, GPU type): what sbatch takes unquoted. Several
#: partitions are separated by commas.
SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+@-]*(,[A-Za-z0-9_][A-Za-z0-9_.:+@-]*)*")
#: sbatch --mem: a whole number with an optional unit K, M (the default), G or T.
SLURM_MEM = re.compile(r"[0-9]+[KMGT]?", re.IGNORECASE)
#: Longest job time limit Slurm is asked for (a year; Slurm's own ceiling is its INFINITE).
MAX_TIME_LIMIT_S = 365 * 86_400.0
#: One sbatch option as written on an ``#SBATCH`` line: ``--flag`` or ``--flag=value``,
#: the value without quotes or backslashes (sbatch parses those itself).
SBATCH_ARG = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=[^\"'\\]*)?")


class SlurmSettings(StrictModel):
    """Settings of the Slurm runner. Not part of the study design hash.

    Everything that reaches the job script is checked here (no control characters, Slurm's
    formats) and quoted when the script is written (:mod:`llenergymeasure.runners.slurm`).
    """

    partition: str | None = Field(None, description="sbatch --partition; default: the cluster's.")
    account: str | None = Field(None, description="sbatch --account.")
    qos: str | None = Field(None, description="sbatch --qos.")
    time_limit_s: float | None = Field(
        None,
        ge=60.0,
        le=MAX_TIME_LIMIT_S,
        description="Slurm time limit per experiment job (Slurm counts whole minutes); "
        "default: execution.experiment_timeout_s + startup_margin_s.",
    )
    startup_margin_s: float = Field(
        300.0,
        ge=0.0,
        le=86_400.0,
        description="Added to the experiment timeout for image start/pull.",
    )
    gpu_request: GpuRequest = Field(
        "gres", description="gres: --gres=gpu[:type]:N; gpus: --gpus=[type:]N."
    )
    gpu_type: str | None = Field(None, description="GPU type in the request, e.g. h100.")
    exclusive: bool = Field(
        True,
        description="--exclusive: one run per node, so no neighbour's load changes the energy.",
    )
    cpus_per_task: int | None = Field(None, ge=1, description="sbatch --cpus-per-task.")
    mem: str | None = Field(None, description="sbatch --mem, e.g. 64G (0: all of the node's).")
    sbatch_args: list[str] = Field(
        default_factory=list,
        description="Extra sbatch options, one per item, written as #SBATCH lines "
        "(e.g. --constraint=h100).",
    )
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run in the job before the launcher (e.g. module load apptainer).",
    )
    launcher: Launcher = Field("apptainer", description="What starts the harness inside the job.")
    python: str = Field("python3", description="Interpreter of the local launcher on the nodes.")
    max_concurrent: int = Field(4, ge=1, le=10000, description="Experiment jobs in flight at once.")
    poll_min_s: float = Field(2.0, gt=0.0, le=3600.0, description="First squeue poll interval.")
    poll_max_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="Poll interval ceiling (backoff)."
    )
    on_interrupt: OnInterrupt = Field(
        "cancel",
        description="Ctrl-C: cancel the study's jobs (scancel), or detach and leave them "
        "running for --resume to adopt.",
    )
    check_shared_dir: bool = Field(
        True,
        description="Preflight: a tiny job writes a marker into the results directory from a "
        "compute node and checks the launcher and image there.",
    )
    preflight_timeout_s: float = Field(
        300.0, gt=0.0, le=86_400.0, description="How long preflight waits for its probe job."
    )

    @field_validator("partition", "account", "qos", "gpu_type")
    @classmethod
    def _slurm_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not SLURM_NAME.fullmatch(value):
            bad = control_chars(value)
            what = f"control characters ({', '.join(bad)})" if bad else "characters"
            raise ValueError(
                f"slurm.{info.field_name} has {what} that are not part of a Slurm name "
                "(letters, digits, _ . : + @ -; partitions separated by commas)"
            )
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not SLURM_MEM.fullmatch(value):
            raise ValueError(
                "slurm.mem is not in sbatch's --mem format: a whole number with an optional "
                "unit K, M, G or T (e.g. 64G; 0 means all of the node's memory)"
            )
        return value

    @field_validator("sbatch_args")
    @classmethod
    def _sbatch_args(cls, value: list[str]) -> list[str]:
        for i, arg in enumerate(value):
            bad = control_chars(arg)
            if bad:
                raise ValueError(
                    f"slurm.sbatch_args[{i}] contains control characters ({', '.join(bad)}); "
                    "give one option per item, each on one line"
                )
            if not SBATCH_ARG.fullmatch(arg):
                raise ValueError(
                    f"slurm.sbatch_args[{i}] is not one sbatch option (--flag or --flag=value, "
                    "without quotes or backslashes)"
                )
        return value

    @field_validator("setup")
    @classmethod
    def _one_line_each(cls, value: list[str]) -> list[str]:
        for i, line in enumerate(value):
            bad = control_chars(line.replace("\t", ""))
            if bad:
                raise ValueError(
                    f"slurm.setup[{i}] contains control characters ({', '.join(bad)}); "
                    "give each shell line as its own item"
                )
        return value

    @model_validator(mode="after")
    def _poll_order(self) -> SlurmSettings:
        if self.poll_min_s > self.poll_max_s:
            raise ValueError(
                f"slurm.poll_min_s ({self.poll_min_s:g}) is above slurm.poll_max_s "
                f"({self.poll_max_s:g}); the first poll interval must not exceed the ceiling"
            )
        return self
