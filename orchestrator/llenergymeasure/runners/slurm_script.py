"""Slurm job scripts, rendered without I/O from a run's request.

The script uses the same :class:`~llenergymeasure.runners.spec.RunRequest`, environment
contract (:class:`~llenergymeasure.contract.HarnessEnv`) and per-run directory as the Docker
and local runners; only the *launcher* inside the job differs::

    local       exec python3 -m llenergymeasure_harness        (host paths, the harness on the node)
    docker      docker run --rm ... <image> (the Docker runner's ContainerSpec, as CLI flags)
    apptainer   apptainer exec --cleanenv --nv --bind ... docker://<image> | <file>.sif
    singularity the same with singularity and SINGULARITYENV_
    enroot      srun --container-image=<image> --container-mounts=... (pyxis)

:class:`~llenergymeasure.runners.slurm.SlurmRunner` submits them.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from llenergymeasure._version import __version__
from llenergymeasure.errors import ConfigError
from llenergymeasure.runners.spec import (
    HARNESS_COMMAND,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    ContainerSettings,
    ContainerSpec,
    RunRequest,
    build_container_spec,
    host_harness_env,
)
from llenergymeasure_contract.strict import control_chars

if TYPE_CHECKING:
    from llenergymeasure.config.slurm import SlurmSettings

JOB_PREFIX = "llem-"
JOBS_DIR = "jobs"
#: The job's comment carries the study id and run folder, so a resume can find a job that was
#: submitted but whose id never reached the manifest.
COMMENT_STUDY = "llem.study"
COMMENT_DIR = "llem.dir"
LABEL_SLURM_JOB = "llem.slurm_job"
#: Passed into the container by name from the job's environment, never written into a job
#: script: secrets (sbatch exports the submitter's environment) and the job id the harness
#: records in result.json.
PASSTHROUGH_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "SLURM_JOB_ID", "SLURMD_NODENAME")
#: Seconds `docker stop` waits in a cancelled job; below Slurm's default KillWait (30 s), so
#: the container is gone before Slurm SIGKILLs the job's processes.
DOCKER_STOP_GRACE_S = 8


def comment_for(study_id: str, run_folder: str) -> str:
    """The job comment naming the study and the run folder (no spaces: sbatch-safe)."""
    return f"{COMMENT_STUDY}={study_id},{COMMENT_DIR}={run_folder}"


def time_limit_min(settings: SlurmSettings, experiment_timeout_s: float | None) -> int:
    """The ``--time`` in minutes: the explicit limit, or the experiment timeout + margin."""
    seconds = settings.time_limit_s
    if seconds is None:
        seconds = (experiment_timeout_s or 3600.0) + settings.startup_margin_s
    return max(1, math.ceil(seconds / 60.0))


def gpu_request(settings: SlurmSettings, n_gpus: int) -> str | None:
    """``--gres=gpu[:type]:N`` or ``--gpus=[type:]N``; ``None`` for a CPU experiment."""
    if n_gpus <= 0:
        return None
    kind = f"{settings.gpu_type}:" if settings.gpu_type else ""
    if settings.gpu_request == "gpus":
        return f"--gpus={kind}{n_gpus}"
    return f"--gres=gpu:{kind}{n_gpus}"


def _sbatch_line(option: str) -> str:
    """One ``#SBATCH`` line. sbatch reads these with its own quoting (double quotes and
    backslash escapes); a value with a space is double-quoted, and anything sbatch would read
    differently from what was meant (a line break, a quote, a backslash) is refused here,
    whatever validated it before."""
    key, sep, value = option.partition("=")
    if control_chars(option) or '"' in option or "\\" in option:
        raise ConfigError(
            f"the sbatch option {option[:80]!r} cannot be written into a job script "
            "(control characters, quotes or backslashes)",
            hint="check the slurm: section and results_dir of the study",
        )
    if sep and any(c.isspace() for c in value):
        return f'#SBATCH {key}="{value}"'
    return f"#SBATCH {option}"


def _q(value: str) -> str:
    return shlex.quote(value)


def apptainer_image(image: str) -> str:
    """An image reference Apptainer can run: files as they are, registry images as docker://."""
    if "://" in image or image.startswith(("/", "./", "../")) or image.endswith(".sif"):
        return image
    return f"docker://{image}"


def pyxis_image(image: str) -> str:
    """An image reference for pyxis: files as they are, ``registry#path`` for a registry host."""
    if image.startswith(("/", "./", "../")) or image.endswith(".sqsh") or "#" in image:
        return image
    image = image.removeprefix("docker://")
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return f"{first}#{rest}"
    return image


@dataclass(frozen=True)
class JobScript:
    """A rendered job script and what the runner needs to know about it."""

    text: str
    run_folder: str
    launcher: str
    n_gpus: int
    time_limit_min: int
    env_names: tuple[str, ...] = field(default_factory=tuple)


def render_job_script(
    request: RunRequest,
    slurm: SlurmSettings,
    container: ContainerSettings,
    *,
    base_dir: str,
) -> JobScript:
    """The batch script for ``request``. Pure: no filesystem or Slurm access.

    Every path in it is absolute (the job runs on another machine, from another directory).
    Secrets are never written: ``HF_TOKEN`` and friends reach the harness by name from the
    job's environment.
    """
    run_dir = os.path.abspath(request.run_dir)
    log_path = os.path.abspath(request.log_path)
    folder = os.path.basename(run_dir)
    study_dir = os.path.dirname(os.path.dirname(run_dir))
    n_gpus = len(request.config.gpus) if container.request_gpus else 0
    minutes = time_limit_min(slurm, request.timeout_s)
    request = _absolute(request)

    options = [
        f"--job-name={JOB_PREFIX}{request.run_id}",
        f"--comment={comment_for(request.study_id, folder)}",
        f"--output={log_path}",
        "--open-mode=append",
        f"--chdir={study_dir}",
        f"--time={minutes}",
        "--nodes=1",
        "--ntasks=1",
    ]
    for flag, value in (
        ("--partition", slurm.partition),
        ("--account", slurm.account),
        ("--qos", slurm.qos),
        ("--cpus-per-task", slurm.cpus_per_task),
        ("--mem", slurm.mem),
    ):
        if value is not None:
            options.append(f"{flag}={value}")
    gpus = gpu_request(slurm, n_gpus)
    if gpus:
        options.append(gpus)
    if slurm.exclusive:
        options.append("--exclusive")
    options.extend(slurm.sbatch_args)

    lines = [
        "#!/bin/bash",
        f"# llenergymeasure {__version__} job: study {request.study_id}, run {request.run_id}",
        f"# run folder: runs/{folder}; launcher: {slurm.launcher}. Submitted by llem with",
        "# `sbatch --parsable <this file>`; the harness writes result.json (or error.json) there.",
        *(_sbatch_line(o) for o in options),
        "set -uo pipefail",
        'echo "[llem] slurm job ${SLURM_JOB_ID:-?} on ${SLURMD_NODENAME:-$(hostname)}: '
        f'run {request.run_id} (launcher {slurm.launcher})"',
        *slurm.setup,
    ]
    dirs = [run_dir]
    if request.study_cache_dir is not None:
        dirs.append(str(request.study_cache_dir))
    if slurm.launcher == "local":
        env, body = _local_launcher(request, slurm, container)
    else:
        spec = build_container_spec(request, container, base_dir=base_dir)
        # every writable bind source must exist before the container starts
        dirs.extend(m.source for m in spec.mounts if not m.read_only and m.source not in dirs)
        env = dict(spec.env)
        if slurm.launcher == "docker":
            body = _docker_launcher(spec, n_gpus)
        elif slurm.launcher in ("apptainer", "singularity"):
            env, body = _apptainer_launcher(spec, slurm.launcher, n_gpus)
        else:
            body = _enroot_launcher(spec)
    lines.append("mkdir -p " + " ".join(_q(d) for d in dirs))
    lines.append("# the harness environment contract (llenergymeasure.contract.HarnessEnv)")
    lines.extend(f"export {k}={_q(v)}" for k, v in sorted(env.items()))
    lines.extend(body)
    return JobScript(
        text="\n".join(lines) + "\n",
        run_folder=folder,
        launcher=slurm.launcher,
        n_gpus=n_gpus,
        time_limit_min=minutes,
        env_names=tuple(sorted(env)),
    )


def _absolute(request: RunRequest) -> RunRequest:
    cache = request.study_cache_dir
    return replace(
        request,
        run_dir=Path(os.path.abspath(request.run_dir)),
        log_path=Path(os.path.abspath(request.log_path)),
        study_cache_dir=Path(os.path.abspath(cache)) if cache is not None else None,
    )


def _local_launcher(
    request: RunRequest, slurm: SlurmSettings, container: ContainerSettings
) -> tuple[dict[str, str], list[str]]:
    # The harness on the node, like the local runner: no image (its provenance would be
    # wrong), and the job's own environment (sbatch exports the submitter's) for the rest.
    request = replace(request, image=None, image_digest=None, image_labels=None)
    env = dict(container.extra_env)
    env.update(
        host_harness_env(
            request,
            python=slurm.python,
            hf_cache_dir=container.hf_cache_dir,
            engine_cache_dir=container.engine_cache_dir,
            compile_cache_dir=container.compile_cache_dir,
        )
    )
    command = container.command or (slurm.python, "-m", "llenergymeasure_harness")
    return env, ["exec " + " ".join(_q(c) for c in command)]


def docker_run_options(spec: ContainerSpec) -> list[str]:
    """``docker run`` options for ``spec`` (no name, no GPUs); env passed by name only."""
    argv = ["--rm", f"--network={spec.network_mode}"]
    if spec.init:
        argv.append("--init")
    for key, value in sorted(spec.labels.items()):
        argv.append(f"--label={key}={value}")
    for m in spec.mounts:
        argv.append(
            f"--mount=type=bind,source={m.source},target={m.target}"
            + (",readonly" if m.read_only else "")
        )
    if spec.ipc_mode is not None:
        argv.append(f"--ipc={spec.ipc_mode}")
    if spec.shm_size is not None:
        argv.append(f"--shm-size={spec.shm_size}")
    for key, limit in sorted(spec.ulimits.items()):
        soft, hard = limit if isinstance(limit, tuple) else (limit, limit)
        argv.append(f"--ulimit={key}={soft}:{hard}")
    if spec.user is not None:
        argv.append(f"--user={spec.user}")
    if spec.mem_limit is not None:
        argv.extend([f"--memory={spec.mem_limit}", f"--memory-swap={spec.mem_limit}"])
    argv.extend(f"--env={k}" for k in sorted(spec.env))
    return argv


def docker_command(spec: ContainerSpec) -> list[str]:
    """The image and the command after it (the image keeps its own entrypoint)."""
    return [spec.image, *(spec.command or HARNESS_COMMAND)]


def _docker_launcher(spec: ContainerSpec, n_gpus: int) -> list[str]:
    words = [
        "docker",
        "run",
        '--name="$container"',
        f'--label={LABEL_SLURM_JOB}="${{SLURM_JOB_ID:-none}}"',
        # The owner is this script: llem's leftover cleanup on the node spares the container
        # while the job lives (and removes it if the job was SIGKILLed before stopping it).
        f'--label={LABEL_OWNER_PID}="$$"',
        f'--label={LABEL_OWNER_HOST}="$(hostname)"',
        *(_q(o) for o in docker_run_options(spec)),
        *(f"${{{n}:+--env={n}}}" for n in PASSTHROUGH_ENV),
    ]
    lines = [f'container={_q(spec.name)}-"${{SLURM_JOB_ID:-$$}}"']
    if n_gpus:
        # Docker names host GPUs; SLURM_JOB_GPUS holds the allocated host indices.
        words.append('--gpus="\\"device=$gpus\\""')
        lines += [
            'gpus="${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}"',
            'if [ -z "$gpus" ]; then echo "[llem] no GPUs allocated to this job (asked for '
            f'{n_gpus})" >&2; exit 1; fi',
        ]
    words.extend(_q(w) for w in docker_command(spec))
    lines += [
        "# scancel and the time limit SIGTERM this script: stop the container before Slurm's",
        "# KillWait runs out (a killed `docker run` client would leave the container running).",
        "# shellcheck disable=SC2329  # invoked by the trap",
        f'stop_container() {{ docker stop --time {DOCKER_STOP_GRACE_S} "$container" '
        ">/dev/null 2>&1 || true; }",
        "trap stop_container TERM INT",
        " ".join(words) + " &",
        "child=$!",
        'wait "$child"; rc=$?',
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done',
        'exit "$rc"',
    ]
    return lines


def _apptainer_launcher(
    spec: ContainerSpec, binary: str, n_gpus: int
) -> tuple[dict[str, str], list[str]]:
    # --cleanenv: only what we pass reaches the harness; APPTAINERENV_X becomes X inside.
    # HOME is Apptainer's own (--no-home keeps the real one unmounted); caches are under /tmp.
    prefix = "APPTAINERENV_" if binary == "apptainer" else "SINGULARITYENV_"
    env = {f"{prefix}{k}": v for k, v in spec.env.items() if k != "HOME"}
    argv = [binary, "exec", "--cleanenv", "--no-home"]
    if n_gpus:
        argv.append("--nv")
    for m in spec.mounts:
        argv.append(f"--bind={m.source}:{m.target}" + (":ro" if m.read_only else ""))
    argv.append(apptainer_image(spec.image))
    argv.extend(spec.command or HARNESS_COMMAND)
    quoted = [_q(a) for a in argv]
    passthrough = [f'[ -z "${{{n}:-}}" ] || export {prefix}{n}="${n}"' for n in PASSTHROUGH_ENV]
    return env, [*passthrough, "exec " + " ".join(quoted)]


def _enroot_launcher(spec: ContainerSpec) -> list[str]:
    mounts = ",".join(
        f"{m.source}:{m.target}" + (":ro" if m.read_only else "") for m in spec.mounts
    )
    names = ",".join(sorted({*spec.env, *PASSTHROUGH_ENV}))
    argv = [
        "srun",
        "--ntasks=1",
        f"--container-image={pyxis_image(spec.image)}",
        f"--container-mounts={mounts}",
        "--no-container-mount-home",
        "--container-workdir=/tmp",
        f"--container-env={names}",
        *(spec.command or HARNESS_COMMAND),
    ]
    return ["exec " + " ".join(_q(a) for a in argv)]


# --------------------------------------------------------------------------- outcomes


def parse_comment(comment: str | None) -> dict[str, str]:
    """The ``key=value`` pairs of a job comment written by :func:`comment_for`."""
    out: dict[str, str] = {}
    for part in (comment or "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out
