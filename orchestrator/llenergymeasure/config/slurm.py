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

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Launcher = Literal["apptainer", "singularity", "docker", "enroot", "local"]
GpuRequest = Literal["gres", "gpus"]
OnInterrupt = Literal["cancel", "detach"]


class SlurmSettings(BaseModel):
    """Settings of the Slurm runner. Not part of the study design hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(None, description="sbatch --partition; default: the cluster's.")
    account: str | None = Field(None, description="sbatch --account.")
    qos: str | None = Field(None, description="sbatch --qos.")
    time_limit_s: float | None = Field(
        None,
        ge=60.0,
        description="Slurm time limit per experiment job (Slurm counts whole minutes); "
        "default: execution.experiment_timeout_s + startup_margin_s.",
    )
    startup_margin_s: float = Field(
        300.0, ge=0.0, description="Added to the experiment timeout for image start/pull."
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
    poll_min_s: float = Field(2.0, gt=0.0, description="First squeue poll interval.")
    poll_max_s: float = Field(30.0, gt=0.0, description="Poll interval ceiling (backoff).")
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
        300.0, gt=0.0, description="How long preflight waits for its probe job."
    )
