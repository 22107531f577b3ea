"""Choosing and building the runner of a study: the one place that knows the runner kinds.

``runner: auto`` picks Docker when it is reachable and has every image the plan needs;
otherwise the local runner when this host can run every backend; otherwise Docker (whose
preflight then says how to get the images). Everything else about a kind is a property of its
class (:class:`~llenergymeasure.runners.base.Runner`), looked up here by name.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from rich.console import Console

from llenergymeasure.errors import PreflightError, RunnerError
from llenergymeasure.runners.base import Runner
from llenergymeasure.runners.docker import DockerRunner, connect
from llenergymeasure.runners.local import LocalRunner
from llenergymeasure.runners.preflight import HARNESS_MODULE, backend_modules
from llenergymeasure.runners.slurm import SlurmRunner
from llenergymeasure.runners.spec import RunRequest

if TYPE_CHECKING:
    from llenergymeasure.config.study import RunnerSettings
    from llenergymeasure.study.options import StudyRunOptions
    from llenergymeasure.study.plan import StudyPlan

#: The runner class of each kind a study may name (``auto`` resolves to docker or local).
RUNNER_CLASSES: dict[str, type[DockerRunner] | type[LocalRunner] | type[SlurmRunner]] = {
    "docker": DockerRunner,
    "local": LocalRunner,
    "slurm": SlurmRunner,
}


def ran_image(kind: str, settings: RunnerSettings) -> bool:
    """Whether runs of runner ``kind`` (a manifest's ``runner``) ran in the planned image."""
    cls = RUNNER_CLASSES.get(kind)
    return cls is not None and cls.ran_image(settings)


def adopts_jobs(kind: str) -> bool:
    """Whether runner ``kind`` adopts the jobs an earlier session left running."""
    cls = RUNNER_CLASSES.get(kind)
    return cls is not None and cls.adopts_jobs


def runner_kind(plan: StudyPlan, opts: StudyRunOptions, runner: Runner | None = None) -> str:
    """The kind of runner the study runs with: the given one's, the option's, the study's."""
    if runner is not None:
        return runner.name
    return opts.runner or plan.study.runner.runner


def missing_images(plan: StudyPlan, client: Any) -> list[str]:
    """Images of the plan that the Docker engine does not have locally."""
    from docker.errors import ImageNotFound

    missing = []
    for image in sorted({e.image for e in plan.experiments}):
        try:
            client.images.get(image)
        except ImageNotFound:
            missing.append(image)
    return missing


def runs_locally(plan: StudyPlan) -> bool:
    """Whether every backend of the plan (and the harness) is importable on this host."""
    modules = {HARNESS_MODULE}
    for e in plan.experiments:
        modules.update(backend_modules(e.config.backend))
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


def make_runner(
    plan: StudyPlan,
    opts: StudyRunOptions,
    runner: Runner | None = None,
    client: Any = None,
    *,
    con: Console | None = None,
) -> Runner:
    """The runner of the study: ``runner`` when given, else built for the chosen kind.

    Raises:
        PreflightError: ``runner: docker`` and the Docker daemon cannot be reached.
    """
    if runner is not None:
        return runner
    from llenergymeasure.study.options import (
        base_dir,
        compile_cache_root,
        container_settings,
    )

    kind = runner_kind(plan, opts)
    if kind == "slurm":
        return SlurmRunner(
            plan.study.runner.slurm, container_settings(plan, opts), base_dir=str(base_dir(plan))
        )
    if kind in ("docker", "auto"):
        try:
            client = client if client is not None else connect()
        except RunnerError as exc:
            if kind == "docker":
                raise PreflightError([str(exc.message)], hint=exc.hint) from exc
            client = None
        missing = missing_images(plan, client) if client is not None and kind == "auto" else []
        if client is not None and missing and runs_locally(plan):
            if con is not None and not opts.quiet:
                con.print(
                    f"note: runner auto: {', '.join(missing)} not present in Docker, so the "
                    "study runs on this host (local runner); `llem images build` gives Docker "
                    "the image(s)"
                )
            client = None
        if client is not None:
            return DockerRunner(container_settings(plan, opts), client=client)
    d = plan.study.runner.docker
    base_env = dict(os.environ)
    base_env.update(d.env)
    base_env.update(opts.extra_env)
    return LocalRunner(
        command=opts.local_command,
        base_env=base_env,
        hf_cache_dir=d.hf_cache_dir,
        engine_cache_dir=d.engine_cache_dir,
        compile_cache_dir=compile_cache_root(plan),
    )


def dry_run_job_scripts(
    plan: StudyPlan, options: StudyRunOptions | None = None
) -> list[tuple[str, str]] | None:
    """``(run_id, job script)`` for every run of a batch-scheduler plan, for ``--dry-run``;
    ``None`` for a runner that submits no job scripts.

    The study folder does not exist yet: the scripts name it with a placeholder time stamp.
    """
    from llenergymeasure.study.directory import PLACEHOLDER_STAMP, study_dir_name
    from llenergymeasure.study.options import (
        StudyRunOptions,
        absolute,
        base_dir,
        container_settings,
    )

    if RUNNER_CLASSES.get(plan.study.runner.runner) is not SlurmRunner:
        return None
    opts = options or StudyRunOptions()
    study_dir = absolute(plan.study.results_dir) / study_dir_name(plan, PLACEHOLDER_STAMP)
    inputs = str(base_dir(plan))
    runner = SlurmRunner(plan.study.runner.slurm, container_settings(plan, opts), base_dir=inputs)
    by_hash = {e.config_hash: e for e in plan.experiments}
    out = []
    for key in plan.runs:
        exp = by_hash[key.config_hash]
        request = RunRequest(
            config=exp.config,
            study_id=study_dir.name,
            run_id=key.run_id,
            cycle=key.cycle,
            run_dir=study_dir / "runs" / key.run_id,
            log_path=study_dir / "logs" / f"{key.run_id}.log",
            image=exp.image,
            study_cache_dir=study_dir / "cache",
            timeout_s=plan.study.execution.experiment_timeout_s,
            host_uid=os.getuid(),
            host_gid=os.getgid(),
            input_base_dir=inputs,
        )
        out.append((key.run_id, runner.job_script(request).text))
    return out
