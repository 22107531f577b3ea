"""Run a study plan: every run in plan order, each in a fresh container (or subprocess).

:func:`run_study` starts a new study directory; :func:`resume` continues one. Both end in a
:class:`~llenergymeasure.results.study.StudyResult`. Sequence::

    choose runner ─► remove leftover containers ─► preflight (all problems at once)
      ─► study dir: plan.json + manifest.json (all runs pending)
      ─► for each run not yet completed, in plan order:
             [thermal gap, visible countdown]  ─► running (manifest) ─► runner.run
             ─► completed | failed (cause) | interrupted (manifest, each time)
             ─► stop after N consecutive failures (execution.max_consecutive_failures)
      ─► study_result.json + results.parquet (+ summary.csv)

Study directory::

    <results_dir>/<name>_<design8>_<UTC time>/
        plan.json  manifest.json  study_result.json  results.parquet  summary.csv
        runs/<config_hash>_c<cycle>/        (a retry: ..._c<cycle>_a2; never overwritten)
        logs/<run folder>.log
        cache/baseline.json                 (shared by the study's runs)

With ``runner: slurm`` the loop is :class:`~llenergymeasure.study.batch.BatchLoop` instead:
several runs in flight as Slurm jobs, one poller (docs/scale-out.md).

Ctrl-C stops the running container cleanly (SIGTERM, grace, SIGKILL; a second Ctrl-C kills),
marks the run interrupted, writes the manifest and raises
:class:`~llenergymeasure.errors.InterruptedStudy` (exit 130). Resuming skips completed runs and
re-runs failed and interrupted ones in new folders.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from llenergymeasure import __version__
from llenergymeasure.analysis.enrich import enrich
from llenergymeasure.errors import (
    ConfigError,
    InterruptedStudy,
    PreflightError,
    RunnerError,
    StorageError,
    UsageError,
)
from llenergymeasure.notify import Notifier, study_payload
from llenergymeasure.results.aggregate import export_study
from llenergymeasure.results.study import (
    STUDY_RESULT_FILE,
    RunMetrics,
    RunSummary,
    StudyResult,
)
from llenergymeasure.runners.base import FailureKind, Runner, RunOutcome, RunState, load_result
from llenergymeasure.runners.preflight import (
    DEFAULT_MIN_FREE_BYTES,
    HARNESS_MODULE,
    ImageFacts,
    PreflightReport,
    PreflightRequest,
    backend_modules,
    run_preflight,
)
from llenergymeasure.runners.spec import ContainerSettings, RunRequest, _looks_like_host_path
from llenergymeasure.study.lock import StudyLock
from llenergymeasure.study.manifest import (
    MANIFEST_FILE,
    Attempt,
    ManifestStore,
    RunRecord,
    StudyManifest,
    StudyState,
    damaged,
    read_damage_checked,
)
from llenergymeasure.study.plan import PlannedExperiment, StudyPlan, gap_after
from llenergymeasure.study.progress import StudyProgress, runner_label
from llenergymeasure.study.signals import StopSignals, Terminated
from llenergymeasure_contract.files import RESULT_FILE
from llenergymeasure_contract.results import write_json_atomic
from llenergymeasure_contract.timestamps import utc_compact, utc_iso

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
#: Set to 1 on CPU-only hosts (CI): containers get no GPU request at all, said out loud.
ENV_NO_GPU = "LLEM_NO_GPU"


@dataclass
class StudyRunOptions:
    """How to execute (not what to measure); the CLI fills it from flags.

    Attributes:
        quiet: Print only the final summary (``-q``).
        verbose: Stream harness/container logs to the console (``-v``).
        export_csv: Also write ``summary.csv``.
        assume_yes: Answer yes to questions (pulling a missing image).
        interactive: May ask questions; ``None``: when stdin is a terminal.
        runner: ``docker`` | ``local`` | ``auto``; ``None``: the study's ``runner.runner``.
        request_gpus: ``False`` runs containers without any GPU (CPU-only hosts);
            ``None``: ``True`` unless ``LLEM_NO_GPU=1``.
        preflight: Run the preflight checks (tests with fakes may turn them off).
        min_free_bytes: Preflight's free-disk threshold under the results dir.
        local_command: Local runner command override (tests).
        container_command: Container command override (tests; default: the harness).
    """

    quiet: bool = False
    verbose: bool = False
    export_csv: bool = True
    assume_yes: bool = False
    interactive: bool | None = None
    runner: str | None = None
    request_gpus: bool | None = None
    preflight: bool = True
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    local_command: tuple[str, ...] | None = None
    container_command: tuple[str, ...] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def run_study(
    plan: StudyPlan,
    options: StudyRunOptions | None = None,
    *,
    runner: Runner | None = None,
    docker_client: Any = None,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **flags: Any,
) -> StudyResult:
    """Execute ``plan`` in a new study directory under the study's ``results_dir``.

    A relative ``results_dir`` is taken relative to the working directory, once, here: every
    path handed on (bind mounts, the manifest's study dir) is absolute.

    Args:
        plan: The study plan (``llenergymeasure.study.plan.build_plan``).
        options: Execution options; keyword ``flags`` (``quiet``, ``verbose``,
            ``export_csv``, ``assume_yes``, ``runner``, ...) override its fields.
        runner: A ready runner (tests); default: chosen from the options/study.
        docker_client: A docker client to use instead of connecting (tests).
        console: Where to draw progress; default: stderr-free stdout console.
        sleep: Gap sleeper (tests).

    Returns:
        The StudyResult (``int(result)`` is the CLI exit status: 0 all completed, else 1).

    Raises:
        PreflightError: the host is not ready (every problem listed).
        InterruptedStudy: Ctrl-C or SIGTERM; the manifest is saved and the study can be resumed.
        RunnerError: Docker went away mid-study (the manifest is saved).
        StorageError: a study file could not be written (the study is saved as aborted).
    """
    opts = _merge_options(options, flags)
    notifier = Notifier.for_study(plan.study.notify)  # a missing secret: refused before anything
    con = console or Console()
    base = _absolute(plan.study.results_dir)
    with StopSignals() as signals:
        runner_obj, client = _make_runner(plan, opts, runner, docker_client, con=con)
        report = _preflight(plan, opts, runner=runner_obj, client=client, results_dir=base, con=con)
        study_dir = _new_study_dir(base, plan)
        with StudyLock(study_dir):
            now = utc_iso()
            manifest = StudyManifest(
                study_id=study_dir.name,
                study_name=plan.study.name,
                study_design_hash=plan.study_design_hash,
                source=plan.study.source,
                llem_version=__version__,
                runner=runner_obj.name,
                created_at=now,
                updated_at=now,
                runs=[
                    RunRecord(index=i, run_id=r.run_id, config_hash=r.config_hash, cycle=r.cycle)
                    for i, r in enumerate(plan.runs, start=1)
                ],
            )
            try:
                write_json_atomic(study_dir / PLAN_FILE, plan.model_dump_json(indent=1))
                store = ManifestStore(study_dir, manifest)
                store.write()
            except OSError as exc:
                raise _storage_error(exc, study_dir, resumable=False) from exc
            return _execute(
                plan,
                store,
                runner=runner_obj,
                report=report,
                opts=opts,
                con=con,
                sleep=sleep,
                signals=signals,
                notifier=notifier,
            )


#: Execution overrides that would change which runs exist or their order (fixed in plan.json).
_FIXED_ON_RESUME = {
    "n_cycles": "--cycles",
    "cycle_order": "--order",
    "shuffle_seed": "execution.shuffle_seed",
}


def resume(
    target: Path,
    options: StudyRunOptions | None = None,
    *,
    plan: StudyPlan | None = None,
    config: Path | None = None,
    execution_overrides: dict[str, Any] | None = None,
    runner_overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    runner: Runner | None = None,
    docker_client: Any = None,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **flags: Any,
) -> StudyResult:
    """Continue a study: skip completed runs, re-run failed and interrupted ones.

    ``target`` is a study directory (with ``manifest.json``), or a study file: then the most
    recent unfinished study under its ``results_dir`` with the same design hash is resumed.
    A relative ``target`` is relative to the working directory. ``config`` (optional) is
    checked to have the study's design hash. Execution and runner overrides (gaps, timeout,
    runner kind) are validated exactly as for a new study; ``n_cycles`` and ``cycle_order``
    cannot change a started study and are refused. The run order is the original one.

    Only one process may run a study: a second one is refused (``PreflightError``) at once.
    A run whose ``result.json`` was written before the study stopped (a signal right after
    the harness finished, a lost Docker connection) counts as completed and is not re-run.

    Raises:
        ConfigError: the study directory's ``manifest.json`` or ``plan.json`` is damaged, or
            an override is invalid (exit 2; nothing is rewritten).
        UsageError: an override that cannot apply to a started study (``--cycles``).
    """
    opts = _merge_options(options, flags)
    con = console or Console()
    execution_overrides = dict(execution_overrides or {})
    fixed = [flag for key, flag in _FIXED_ON_RESUME.items() if key in execution_overrides]
    if fixed:
        raise UsageError(
            f"{' and '.join(fixed)} cannot change a started study: its runs and their order "
            "are fixed in its plan.json",
            hint="resume without them, or start a new study with them",
        )
    study_dir = _find_study_dir(_absolute(target), plan)
    store, saved = _open_study_dir(study_dir)
    check = plan
    if check is None and config is not None and config.is_file():
        check = _plan_from_file(config)
    if check is not None and check.study_design_hash != store.manifest.study_design_hash:
        raise ConfigError(
            f"{study_dir} was run from a different study design "
            f"({store.manifest.study_design_hash}, this one {check.study_design_hash})",
            hint="resume with the study file it was started from, or start a new study",
        )
    plan_now = _apply_overrides(saved, execution_overrides, runner_overrides or {})
    jobs = {
        r.run_id: r.last.job_id
        for r in store.manifest.runs
        if r.state == "running" and r.last is not None and r.last.job_id is not None
    }
    slurm = (runner.name if runner is not None else None) == "slurm" or (
        opts.runner or plan_now.study.runner.runner
    ) == "slurm"
    if jobs and not slurm:
        raise ConfigError(
            f"{study_dir} has Slurm jobs that may still be queued or running "
            f"({', '.join(sorted(set(jobs.values())))})",
            hint="resume with --runner slurm (it adopts them), or scancel them first",
        )
    # The Slurm runner adopts every run left running: by job id, or by the job's comment when
    # the id never reached the manifest.
    keep = {r.run_id for r in store.manifest.runs if r.state == "running"} if slurm else set()
    todo = [r for r in store.manifest.runs if r.state != "completed"]
    if dry_run:  # reads only: no lock, no recovery written
        con.print(
            f"[bold]{study_dir}[/]: {len(todo)} of {len(store.manifest.runs)} runs to do "
            f"({', '.join(r.run_id for r in todo[:10])}{' ...' if len(todo) > 10 else ''})"
        )
        return _study_result(plan_now, store)
    with StopSignals() as signals, StudyLock(study_dir):
        if not todo:
            con.print(
                f"{study_dir}: all {len(store.manifest.runs)} runs are already completed; "
                "nothing to do"
            )
            return _study_result(plan_now, store)
        try:
            recovered = store.recover_running(keep=keep)
        except OSError as exc:
            raise _storage_error(exc, study_dir) from exc
        notifier = Notifier.for_study(plan_now.study.notify)
        if recovered:
            con.print(f"runs left running by an earlier crash, now interrupted: {recovered}")
        base = study_dir.parent
        runner_obj, client = _make_runner(plan_now, opts, runner, docker_client, con=con)
        todo_hashes = {r.config_hash for r in todo}
        report = _preflight(
            plan_now,
            opts,
            runner=runner_obj,
            client=client,
            results_dir=base,
            con=con,
            only=todo_hashes,
        )
        try:
            adopted = _adopt_finished(store)
        except OSError as exc:
            raise _storage_error(exc, study_dir) from exc
        if adopted:
            con.print(
                f"runs whose result.json was written before the study stopped, now completed: "
                f"{adopted}"
            )
        if store.manifest.runner != runner_obj.name:
            con.print(
                f"note: resuming with the {runner_obj.name} runner (started with "
                f"{store.manifest.runner})"
            )
        return _execute(
            plan_now,
            store,
            runner=runner_obj,
            report=report,
            opts=opts,
            con=con,
            sleep=sleep,
            signals=signals,
            notifier=notifier,
        )


def _absolute(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory (no resolve:
    a symlinked results folder keeps the name the user gave it)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _open_study_dir(study_dir: Path) -> tuple[ManifestStore, StudyPlan]:
    """The manifest and plan of ``study_dir``, checked against each other before any write.

    Raises:
        ConfigError: either file is missing, truncated, of the wrong schema, or they disagree
            (a run the plan does not know, another design); names the file and the problem.
    """
    store = ManifestStore.load(study_dir)
    plan_path = study_dir / PLAN_FILE
    saved = read_damage_checked(plan_path, StudyPlan, what="study plan")
    m = store.manifest
    if saved.study_design_hash != m.study_design_hash:
        raise damaged(
            store.path,
            "study manifest",
            [
                f"study_design_hash {m.study_design_hash} differs from {plan_path}'s "
                f"{saved.study_design_hash}"
            ],
        )
    known = {r.run_id for r in saved.runs}
    hashes = {e.config_hash for e in saved.experiments}
    unknown = [r.run_id for r in m.runs if r.run_id not in known or r.config_hash not in hashes]
    if unknown:
        raise damaged(
            store.path,
            "study manifest",
            [f"runs {unknown[:5]} are not in {plan_path}"],
        )
    missing = sorted(known - {r.run_id for r in m.runs})
    if missing:
        raise damaged(
            store.path,
            "study manifest",
            [f"runs {missing[:5]} of {plan_path} have no record here"],
        )
    return store, saved


def _adopt_finished(store: ManifestStore) -> list[str]:
    """Runs not marked completed whose last folder holds this run's valid ``result.json``.

    The harness writes ``result.json`` last and atomically, so its presence means the
    measurement finished; this happens when the study stopped (a signal, a lost Docker
    connection) after the harness had written it. Such a run is marked completed, so it is
    neither lost nor measured twice. Called after the leftover containers were removed.
    """
    adopted = []
    for rec in store.manifest.runs:
        last = rec.last
        if rec.state == "completed" or last is None:
            continue
        run_dir = store.study_dir / last.run_dir
        result, _ = load_result(run_dir)
        if result is None or result.run_id != rec.run_id:
            continue
        store.finish_attempt(
            rec.run_id,
            RunOutcome(
                status="completed",
                message=f"{last.state} ({last.failure_kind}) when the study stopped, but its "
                f"{RESULT_FILE} had been written: counted as completed",
                exit_code=last.exit_code,
                started_at=last.started_at,
                finished_at=last.finished_at or utc_iso(),
                duration_s=last.duration_s,
                result_path=str(run_dir / RESULT_FILE),
                result=result,
            ),
        )
        adopted.append(rec.run_id)
    return adopted


def _storage_error(exc: OSError, study_dir: Path, *, resumable: bool = True) -> StorageError:
    """A :class:`StorageError` naming the path that could not be written."""
    path = exc.filename or study_dir
    why = exc.strerror or str(exc)
    hint = "free some space (or fix the permissions)"
    if resumable:
        hint += f", then resume with: llem run --resume {study_dir}"
    else:
        hint += " and run the study again"
    return StorageError(f"cannot write {path}: {why}", path=str(path), hint=hint)


# --------------------------------------------------------------------------- setup helpers


def _merge_options(options: StudyRunOptions | None, flags: dict[str, Any]) -> StudyRunOptions:
    opts = StudyRunOptions() if options is None else options
    for key, value in flags.items():
        if not hasattr(opts, key):
            raise TypeError(f"unknown study option {key!r}")
        if value is not None:
            setattr(opts, key, value)
    return opts


def _request_gpus(opts: StudyRunOptions) -> bool:
    if opts.request_gpus is not None:
        return opts.request_gpus
    return os.environ.get(ENV_NO_GPU, "") in ("", "0", "false", "no")


#: Where compiled kernels are kept between experiments unless the study says otherwise.
DEFAULT_COMPILE_CACHE_DIR = "~/.cache/llenergymeasure/compile"


def _compile_cache_root(plan: StudyPlan) -> str | None:
    """The host compile-cache root (None when the study turned it off with '')."""
    configured = plan.study.runner.docker.compile_cache_dir
    if configured == "":
        return None
    return str(_absolute(configured or DEFAULT_COMPILE_CACHE_DIR))


def _container_settings(plan: StudyPlan, opts: StudyRunOptions) -> ContainerSettings:
    d = plan.study.runner.docker
    ulimits: dict[str, int | tuple[int, int]] | None = None
    if d.ulimits is not None:
        ulimits = {
            name: (int(value[0]), int(value[1])) if isinstance(value, list) else int(value)
            for name, value in d.ulimits.items()
        }
    hf = d.hf_cache_dir or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    engines = d.engine_cache_dir or "~/.cache/llenergymeasure/trt-engines"
    compiled = _compile_cache_root(plan)
    env = dict(d.env)
    env.update(_passthrough_env(plan))
    env.update(opts.extra_env)
    return ContainerSettings(
        network_mode=d.network_mode,
        shm_size=d.shm_size,
        ipc_mode=d.ipc_mode,
        ulimits=ulimits,
        mem_limit=d.mem_limit,
        hf_cache_dir=str(_absolute(hf)),
        engine_cache_dir=str(_absolute(engines)),
        compile_cache_dir=compiled,
        run_as_host_user=d.run_as_host_user,
        extra_env=env,
        command=opts.container_command,
        request_gpus=_request_gpus(opts),
    )


def _passthrough_env(plan: StudyPlan) -> dict[str, str]:
    """``docker.env_passthrough``: the named variables' values from this process's environment.

    The values exist only in memory and in the container's environment: never in the plan,
    the manifest, a log or the console (only the names are).
    """
    names = plan.study.runner.docker.env_passthrough
    return {name: os.environ[name] for name in names if name in os.environ}


def _missing_images(plan: StudyPlan, client: Any) -> list[str]:
    """Images of the plan that the Docker engine does not have locally."""
    from docker.errors import ImageNotFound

    missing = []
    for image in sorted({e.image for e in plan.experiments}):
        try:
            client.images.get(image)
        except ImageNotFound:
            missing.append(image)
    return missing


def _runs_locally(plan: StudyPlan) -> bool:
    """Whether every backend of the plan (and the harness) is importable on this host."""
    import importlib.util

    modules = {HARNESS_MODULE}
    for e in plan.experiments:
        modules.update(backend_modules(e.config.backend))
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


def _make_runner(
    plan: StudyPlan,
    opts: StudyRunOptions,
    runner: Runner | None,
    client: Any,
    *,
    con: Console | None = None,
) -> tuple[Runner, Any]:
    """Pick the runner. ``auto``: Docker when it is reachable and has every image the plan
    needs; otherwise the local runner when this host can run every backend; otherwise Docker
    (whose preflight then says how to get the images)."""
    if runner is not None:
        return runner, getattr(runner, "client", None) if runner.name == "docker" else None
    from llenergymeasure.runners.docker import DockerRunner, connect
    from llenergymeasure.runners.local import LocalRunner

    kind = opts.runner or plan.study.runner.runner
    if kind == "slurm":
        from llenergymeasure.runners.slurm import SlurmRunner

        settings = _container_settings(plan, opts)
        return SlurmRunner(plan.study.runner.slurm, settings, base_dir=str(_base_dir(plan))), None
    why = "runner: local asked for"  # said on the study's first line (runner local (why))
    if kind in ("docker", "auto"):
        try:
            client = client if client is not None else connect()
        except RunnerError as exc:
            if kind == "docker":
                raise PreflightError([str(exc.message)], hint=exc.hint) from exc
            client = None
            why = "auto: no Docker engine reachable"
        missing = _missing_images(plan, client) if client is not None and kind == "auto" else []
        if client is not None and missing and _runs_locally(plan):
            if con is not None and not opts.quiet:
                con.print(
                    f"note: runner auto: {', '.join(missing)} not present in Docker, so the "
                    "study runs on this host (local runner); `llem images build` gives Docker "
                    "the image(s)"
                )
            client = None
            why = f"auto: image {', '.join(missing)} not in Docker"
        if client is not None:
            return DockerRunner(_container_settings(plan, opts), client=client), client
    d = plan.study.runner.docker
    extra = dict(d.env)
    extra.update(opts.extra_env)
    base_env = dict(os.environ)
    base_env.update(extra)
    return (
        LocalRunner(
            command=opts.local_command,
            base_env=base_env,
            hf_cache_dir=d.hf_cache_dir,
            engine_cache_dir=d.engine_cache_dir,
            compile_cache_dir=_compile_cache_root(plan),
            chosen_because=why,
        ),
        None,
    )


def _input_paths(exp: PlannedExperiment, base_dir: Path) -> list[str]:
    cfg = exp.config
    out = [v for v in (cfg.model, cfg.tokenizer) if isinstance(v, str) and _looks_like_host_path(v)]
    path = getattr(cfg.dataset, "path", None)
    if isinstance(path, str):
        out.append(str(base_dir / Path(path).expanduser()))
    return out


def _base_dir(plan: StudyPlan) -> Path:
    src = plan.study.source
    if src and not src.startswith("<") and Path(src).exists():
        return Path(src).resolve().parent
    return Path.cwd()


def _preflight(
    plan: StudyPlan,
    opts: StudyRunOptions,
    *,
    runner: Runner,
    client: Any,
    results_dir: Path,
    con: Console,
    only: set[str] | None = None,
) -> PreflightReport:
    exps = [e for e in plan.experiments if only is None or e.config_hash in only]
    if not opts.preflight:
        return PreflightReport(images={e.image: ImageFacts(e.image) for e in exps})
    if runner.name == "slurm":
        from llenergymeasure.runners.slurm import SlurmRunner
        from llenergymeasure.runners.slurm_preflight import slurm_preflight

        assert isinstance(runner, SlurmRunner)
        report = slurm_preflight(
            runner,
            exps,
            results_dir=results_dir,
            input_paths=sorted({p for e in exps for p in _input_paths(e, _base_dir(plan))}),
            min_free_bytes=opts.min_free_bytes,
            probe=only is None,  # a resumed study's folder was proven when it started
        )
        if not opts.quiet:
            for note in report.notes:
                con.print(f"note: {escape(note)}")
        return report
    removed = runner.cleanup_leftovers()
    if removed and not opts.quiet:
        con.print(f"removed {len(removed)} leftover container(s) of an earlier run: {removed}")
    images: dict[str, set[int]] = {}
    for e in exps:
        images.setdefault(e.image, set()).update(e.config.gpus)
    base = _base_dir(plan)
    interactive = opts.interactive if opts.interactive is not None else sys.stdin.isatty()
    confirm = None
    if interactive:
        from rich.prompt import Confirm

        def confirm(question: str) -> bool:
            return bool(Confirm.ask(question, console=con, default=False))

    request = PreflightRequest(
        ulimits=_ulimits_by_image(exps, runner),
        runner="docker" if runner.name == "docker" else "local",
        results_dir=results_dir,
        images={k: frozenset(v) for k, v in images.items()} if runner.name == "docker" else {},
        backends=frozenset(e.config.backend for e in exps),
        gpus=frozenset(g for e in exps for g in e.config.gpus),
        input_paths=tuple(sorted({p for e in exps for p in _input_paths(e, base)})),
        pull_policy=plan.study.runner.pull_policy,
        request_gpus=_request_gpus(opts),
        min_free_bytes=opts.min_free_bytes,
    )
    report = run_preflight(request, client=client, confirm=confirm, assume_yes=opts.assume_yes)
    unset = [n for n in plan.study.runner.docker.env_passthrough if n not in os.environ]
    if unset and runner.name == "docker":
        report.notes.append(
            f"docker.env_passthrough: {', '.join(unset)} not set in this environment; the "
            "containers run without it"
        )
    if not opts.quiet:
        for note in report.notes:
            con.print(f"note: {escape(note)}")
    return report


def _ulimits_by_image(
    exps: list[PlannedExperiment], runner: Runner
) -> dict[str, dict[str, int | tuple[int, int]]]:
    """The ulimits each image's containers will get, from the runner's own container spec."""
    spec_for = getattr(runner, "spec_for", None)
    if runner.name != "docker" or spec_for is None:
        return {}
    out: dict[str, dict[str, int | tuple[int, int]]] = {}
    for e in exps:
        if e.image in out:
            continue
        probe = RunRequest(
            config=e.config,
            study_id="preflight",
            run_id="preflight",
            cycle=1,
            run_dir=Path("/nonexistent/preflight"),
            log_path=Path("/nonexistent/preflight.log"),
            image=e.image,
        )
        out[e.image] = dict(spec_for(probe).ulimits)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "study"


def _new_study_dir(base: Path, plan: StudyPlan) -> Path:
    stamp = utc_compact()
    name = f"{_slug(plan.study.name)}_{plan.study_design_hash[:8]}_{stamp}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            candidate = base / (name if n == 1 else f"{name}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            for sub in ("runs", "logs", "cache"):
                (candidate / sub).mkdir()
            return candidate
    except OSError as exc:
        raise PreflightError(
            [f"cannot create the study directory under {base}: {exc.strerror or exc}"],
            hint="pick a writable --results-dir",
        ) from exc
    raise PreflightError([f"too many study directories named {name}* under {base}"])


def _find_study_dir(target: Path, plan: StudyPlan | None) -> Path:
    target = target.expanduser()
    if target.is_dir() and (target / MANIFEST_FILE).is_file():
        return target
    if target.is_file() or plan is not None:
        wanted = plan or _plan_from_file(target)
        base = _absolute(wanted.study.results_dir)
        candidates = []
        for manifest_path in sorted(base.glob(f"*/{MANIFEST_FILE}")):
            try:
                m = ManifestStore.load(manifest_path.parent).manifest
            except ConfigError:  # a damaged one is reported when resumed by its folder
                continue
            if m.study_design_hash == wanted.study_design_hash and m.state != "completed":
                candidates.append((m.updated_at, manifest_path.parent))
        if candidates:
            return max(candidates)[1]
        raise ConfigError(
            f"no unfinished study with design hash {wanted.study_design_hash} under {base}",
            hint="run it without --resume to start it",
        )
    raise ConfigError(
        f"{target} is neither a study directory (with {MANIFEST_FILE}) nor a study file",
        hint="pass the folder printed when the study started, e.g. results/<name>_<hash>_<time>",
    )


def _plan_from_file(path: Path) -> StudyPlan:
    from llenergymeasure.config.loader import load_study
    from llenergymeasure.config.user import load_user_defaults, user_config_path
    from llenergymeasure.study.plan import build_plan

    study = load_study(path, user=load_user_defaults(user_config_path()))
    return build_plan(study)


def _apply_overrides(
    plan: StudyPlan, execution: dict[str, Any], runner: dict[str, Any]
) -> StudyPlan:
    """The saved plan with resume overrides applied, validated exactly as for a new study.

    Raises:
        ConfigError: an override is invalid (``--runner dockr``, a negative ``--timeout``).
    """
    if not execution and not runner:
        return plan
    from pydantic import ValidationError

    from llenergymeasure.config.loader import COMMAND_LINE, _section_problems
    from llenergymeasure.config.study import ExecutionConfig, RunnerSettings

    problems: list[str] = []
    ex = plan.study.execution
    rs = plan.study.runner
    try:
        ex = ExecutionConfig.model_validate({**ex.model_dump(), **execution})
    except ValidationError as exc:
        problems.extend(_section_problems(exc, "execution"))
    try:
        rs = RunnerSettings.model_validate({**rs.model_dump(), **runner})
    except ValidationError as exc:
        problems.extend(_section_problems(exc, ""))
    if problems:
        raise ConfigError(
            f"invalid override{'s' if len(problems) != 1 else ''} for the resumed study",
            source=COMMAND_LINE,
            problems=problems,
        )
    study = plan.study.model_copy(update={"execution": ex, "runner": rs})
    return plan.model_copy(update={"study": study})


# --------------------------------------------------------------------------- the loop


def _run_folder(study_dir: Path, run_id: str, attempt: int) -> Path:
    name = run_id if attempt == 1 else f"{run_id}_a{attempt}"
    candidate = study_dir / "runs" / name
    n = attempt
    while candidate.exists():  # never overwrite a folder, whatever left it there
        n += 1
        candidate = study_dir / "runs" / f"{run_id}_a{n}"
    return candidate


@dataclass
class _Session:
    """This session's clock: added to the manifest's totals when the session ends."""

    t0: float = field(default_factory=time.monotonic)
    experiments_s: float = 0.0
    gaps_s: float = 0.0
    closed: bool = False

    def close(self, store: ManifestStore) -> None:
        """Add this session's times to the manifest (in memory; the next write saves them)."""
        if self.closed:
            return
        self.closed = True
        m = store.manifest
        m.wall_s += time.monotonic() - self.t0
        m.experiments_s += self.experiments_s
        m.gaps_s += self.gaps_s


def _execute(
    plan: StudyPlan,
    store: ManifestStore,
    *,
    runner: Runner,
    report: PreflightReport,
    opts: StudyRunOptions,
    con: Console,
    sleep: Callable[[float], None],
    signals: StopSignals | None = None,
    notifier: Notifier | None = None,
) -> StudyResult:
    """Run the study, then send ``study_end`` with the study_result.json written (if any).

    The webhooks get a bounded moment (``notify.timeout_s``) however the study ended; a
    failing or slow webhook changes nothing here (see :mod:`llenergymeasure.notify`).
    """
    try:
        return _execute_saving(
            plan,
            store,
            runner=runner,
            report=report,
            opts=opts,
            con=con,
            sleep=sleep,
            signals=signals,
            notifier=notifier,
        )
    finally:
        if notifier is not None:
            try:
                written = StudyResult.load(store.study_dir / STUDY_RESULT_FILE)
            except (OSError, ValueError) as exc:
                logger.warning("no study result to notify: %s", exc)
            else:
                notifier.send("study_end", study_payload(written))
            for line in notifier.close():  # never fails the study: said, not raised
                con.print(f"note: {escape(line)}", highlight=False)


def _execute_saving(
    plan: StudyPlan,
    store: ManifestStore,
    *,
    runner: Runner,
    report: PreflightReport,
    opts: StudyRunOptions,
    con: Console,
    sleep: Callable[[float], None],
    signals: StopSignals | None,
    notifier: Notifier | None,
) -> StudyResult:
    study_dir = store.study_dir
    session = _Session()
    current: list[RunRecord] = []  # the run in flight, if any

    def _abort_on_storage_error(exc: OSError) -> StorageError:
        """A write failed (disk full...): save the study as aborted, name the path."""
        err = _storage_error(exc, study_dir)
        _stop_saving(
            store,
            current,
            session,
            state="aborted",
            kind="storage_error",
            message=err.message,
            plan=plan,
            opts=opts,
        )
        return err

    try:
        store.manifest.sessions.append(utc_iso())
        store.set_state("running")
        progress = _run_loop(
            plan,
            store,
            runner=runner,
            report=report,
            opts=opts,
            con=con,
            sleep=sleep,
            signals=signals,
            session=session,
            current=current,
            notifier=notifier,
        )
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated) or (
            signals is not None and signals.exit_code == 143
        )
        how = "SIGTERM" if terminated else "Ctrl-C"
        # the batch loop (Slurm) says which jobs it left running
        message = str(exc) or f"interrupted by the user ({how})"
        try:
            _close_running(store, current, "interrupted", "interrupted", f"stopped by {how}")
            session.close(store)
            store.set_state("interrupted", message)
            _write_outputs(_study_result(plan, store), study_dir, opts)
        except (KeyboardInterrupt, OSError) as late:  # a second signal, or a full disk
            logger.warning("saving the interrupted study did not finish: %r", late)
        done = store.manifest.counts()["completed"]
        left = store.manifest.counts()["running"]
        raise InterruptedStudy(
            f"study interrupted ({how}); {done} of {len(store.manifest.runs)} runs completed "
            f"and saved in {study_dir}"
            + (f"; {left} Slurm job(s) left running for --resume to adopt" if left else ""),
            hint=f"resume with: llem run --resume {study_dir}",
            exit_code=143 if terminated else 130,
        ) from None
    except RunnerError as exc:
        _stop_saving(
            store,
            current,
            session,
            state="failed",
            kind="runner_error",
            message=exc.message,
            plan=plan,
            opts=opts,
        )
        raise RunnerError(
            f"{exc.message} (study saved in {study_dir})",
            hint=f"{exc.hint + '; ' if exc.hint else ''}resume with: llem run --resume {study_dir}",
        ) from exc
    except OSError as exc:
        raise _abort_on_storage_error(exc) from exc
    try:
        if store.manifest.state == "running":
            counts = store.manifest.counts()
            done = counts["completed"] == len(store.manifest.runs)
            store.manifest.state = "completed" if done else "failed"
        session.close(store)
        store.write()
        result = _study_result(plan, store)
        _write_outputs(result, study_dir, opts)
    except OSError as exc:
        raise _abort_on_storage_error(exc) from exc
    progress.summary(result)
    return result


def _stop_saving(
    store: ManifestStore,
    current: list[RunRecord],
    session: _Session,
    *,
    state: StudyState,
    kind: FailureKind,
    message: str,
    plan: StudyPlan,
    opts: StudyRunOptions,
) -> None:
    """Close the run in flight and save the study as ``state``, as far as the disk allows.

    Each write is atomic, so whatever fails here leaves the previous manifest intact.
    """
    try:
        _close_running(store, current, "failed", kind, message)
        session.close(store)
        store.set_state(state, message)
        _write_outputs(_study_result(plan, store), store.study_dir, opts)
    except OSError as exc:
        logger.warning("saving the study after %s did not finish: %s", message, exc)


def _run_loop(
    plan: StudyPlan,
    store: ManifestStore,
    *,
    runner: Runner,
    report: PreflightReport,
    opts: StudyRunOptions,
    con: Console,
    sleep: Callable[[float], None],
    signals: StopSignals | None,
    session: _Session,
    current: list[RunRecord],
    notifier: Notifier | None = None,
) -> StudyProgress:
    """Every run not yet completed, in plan order; the progress display (for the summary)."""
    study_dir = store.study_dir
    ex = plan.study.execution
    todo = [r for r in store.manifest.runs if r.state != "completed"]
    by_hash = {e.config_hash: e for e in plan.experiments}
    host_uid, host_gid = os.getuid(), os.getgid()
    base_dir = str(_base_dir(plan))
    consecutive = 0
    progress = StudyProgress(
        con,
        study_name=plan.study.name,
        study_dir=study_dir,
        total=len(store.manifest.runs),
        done=len(store.manifest.runs) - len(todo),
        quiet=opts.quiet,
        estimates={e.config_hash: e.estimate.duration_s for e in plan.experiments},
        runner=runner_label(runner),
    )

    def make_request(rec: RunRecord, attempt: Attempt | None) -> RunRequest:
        """The request of a new attempt at ``rec`` (or of ``attempt``, adopted)."""
        exp = by_hash[rec.config_hash]
        if attempt is None:
            run_dir = _run_folder(study_dir, rec.run_id, len(rec.attempts) + 1)
            log_path = study_dir / "logs" / f"{run_dir.name}.log"
        else:
            run_dir, log_path = study_dir / attempt.run_dir, study_dir / attempt.log_path
        facts = report.images.get(exp.image)
        return RunRequest(
            config=exp.config,
            study_id=store.manifest.study_id,
            run_id=rec.run_id,
            cycle=rec.cycle,
            run_dir=run_dir,
            log_path=log_path,
            image=exp.image if runner.name in ("docker", "slurm") else None,
            image_digest=facts.digest if facts else None,
            image_labels=dict(facts.labels) if facts else None,
            study_cache_dir=study_dir / "cache",
            timeout_s=ex.experiment_timeout_s,
            host_uid=host_uid,
            host_gid=host_gid,
            version=__version__,
            input_base_dir=base_dir,
        )

    previous: RunRecord | None = None
    with progress:
        if runner.name == "slurm":
            from llenergymeasure.study.batch import BatchLoop

            def on_end(rec: RunRecord, outcome: RunOutcome) -> None:
                store.finish_attempt(rec.run_id, outcome)
                exp = by_hash[rec.config_hash]
                metrics = _metrics(outcome)
                progress.end_run(rec, exp, outcome, metrics, with_id=True)
                if notifier is not None:
                    notifier.send(
                        "experiment_end",
                        _run_payload(store, rec, exp=exp, outcome=outcome, metrics=metrics),
                    )

            if (ex.config_gap_s or ex.cycle_gap_s) and not opts.quiet:
                con.print(
                    "note: thermal gaps are not applied between Slurm jobs (consecutive "
                    "jobs may run on different nodes)"
                )
            loop = BatchLoop(
                plan=plan,
                store=store,
                runner=runner,  # type: ignore[arg-type]
                make_request=make_request,
                on_end=on_end,
                progress=progress,
                console=con,
                quiet=opts.quiet,
                sleep=sleep,
            )
            try:
                loop.run(todo)
            finally:
                session.experiments_s += loop.experiments_s
            todo = []
        for rec in todo:
            exp = by_hash[rec.config_hash]
            if previous is not None:
                between = gap_after(previous, rec, ex.cycle_order)
                gap = ex.cycle_gap_s if between == "cycle" else ex.config_gap_s
                if gap > 0:
                    kind = "cycle" if between == "cycle" else "experiment"
                    session.gaps_s += progress.countdown(gap, f"thermal gap between {kind}s", sleep)
            request = make_request(rec, None)
            current[:] = [rec]
            store.start_attempt(rec.run_id, request.run_dir, request.log_path)
            progress.start_run(rec, exp)
            outcome = runner.run(request, echo=progress.echo if opts.verbose else None)
            session.experiments_s += outcome.duration_s or 0.0
            store.finish_attempt(rec.run_id, outcome)
            current.clear()
            metrics = _metrics(outcome)
            progress.end_run(rec, exp, outcome, metrics)
            if notifier is not None:
                notifier.send(
                    "experiment_end",
                    _run_payload(store, rec, exp=exp, outcome=outcome, metrics=metrics),
                )
            previous = rec
            # A signal that arrived after the harness had finished leaves the run completed
            # (its result.json is whole); the study still stops here.
            if outcome.status == "interrupted" or (signals is not None and signals.received):
                raise KeyboardInterrupt
            consecutive = 0 if outcome.ok else consecutive + 1
            limit = ex.max_consecutive_failures
            if limit and consecutive >= limit:
                store.set_state(
                    "aborted",
                    f"stopped after {consecutive} consecutive failures "
                    f"(execution.max_consecutive_failures={limit})",
                )
                break
    return progress


def _run_payload(
    store: ManifestStore,
    rec: RunRecord,
    *,
    exp: PlannedExperiment,
    outcome: RunOutcome,
    metrics: RunMetrics | None,
) -> dict[str, Any]:
    """The ``experiment_end`` webhook body: the run's state, key figures and paths."""
    m = store.manifest
    last = store.run(rec.run_id).last
    return {
        "study_id": m.study_id,
        "study_name": m.study_name,
        "study_dir": str(store.study_dir),
        "n_runs": len(m.runs),
        "run_id": rec.run_id,
        "index": rec.index,
        "config_hash": rec.config_hash,
        "cycle": rec.cycle,
        "state": outcome.status,
        "failure_kind": outcome.failure_kind,
        "message": outcome.message,
        "duration_s": outcome.duration_s,
        "backend": exp.config.backend,
        "model": exp.config.model,
        "params": dict(exp.params),
        "run_dir": last.run_dir if last is not None else None,
        "metrics": metrics.model_dump(mode="json") if metrics is not None else None,
    }


def _close_running(
    store: ManifestStore,
    current: list[RunRecord],
    status: RunState,
    kind: FailureKind,
    message: str,
) -> None:
    """Record how the run in flight ended when the study itself stops around it.

    When its ``result.json`` was already written (the signal came after the harness
    finished, before the runner returned), the run is completed, not interrupted.
    """
    if not current or store.run(current[0].run_id).state != "running":
        return
    rec = current[0]
    last = rec.last
    run_dir = store.study_dir / last.run_dir if last is not None else None
    result = load_result(run_dir)[0] if run_dir is not None else None
    if run_dir is not None and result is not None:
        store.finish_attempt(
            rec.run_id,
            RunOutcome(
                status="completed",
                message=f"{RESULT_FILE} written before the study stopped ({message})",
                finished_at=utc_iso(),
                result_path=str(run_dir / RESULT_FILE),
                result=result,
            ),
        )
        return
    store.finish_attempt(
        rec.run_id,
        RunOutcome(status=status, failure_kind=kind, message=message, finished_at=utc_iso()),
    )


def _metrics(outcome: RunOutcome) -> RunMetrics | None:
    return RunMetrics.from_result(outcome.result) if outcome.result is not None else None


def _study_result(plan: StudyPlan, store: ManifestStore) -> StudyResult:
    """The StudyResult of the manifest as it stands; times are the totals of ended sessions."""
    m = store.manifest
    by_hash = {e.config_hash: e for e in plan.experiments}
    runs = []
    for rec in m.runs:
        exp = by_hash.get(rec.config_hash)
        last = rec.last
        metrics = None
        result_rel = None
        if rec.state == "completed" and last is not None:
            # This session's results ride in the store (from their outcomes); a run completed
            # in an earlier session is read here, once.
            run_result = store.result_of(rec.run_id)
            if run_result is not None:
                metrics = RunMetrics.from_result(run_result)
                result_rel = str(Path(last.run_dir) / RESULT_FILE)
        runs.append(
            RunSummary(
                index=rec.index,
                run_id=rec.run_id,
                config_hash=rec.config_hash,
                cycle=rec.cycle,
                state=rec.state,
                attempts=len(rec.attempts),
                failure_kind=last.failure_kind if last and rec.state != "completed" else None,
                message=last.message if last and rec.state != "completed" else None,
                exit_code=last.exit_code if last else None,
                duration_s=last.duration_s if last else None,
                run_dir=last.run_dir if last else None,
                result_path=result_rel,
                backend=exp.config.backend if exp else None,
                model=exp.config.model if exp else None,
                precision=exp.config.precision if exp else None,
                # the local runner runs no image: do not record the planned one as provenance
                image=exp.image if exp and _ran_image(plan, m.runner) else None,
                job_id=last.job_id if last else None,
                node=last.node if last else None,
                params=dict(exp.params) if exp else {},
                metrics=metrics,
            )
        )
    counts = m.counts()
    result = StudyResult(
        study_id=m.study_id,
        study_name=m.study_name,
        study_design_hash=m.study_design_hash,
        llem_version=m.llem_version,
        runner=m.runner,
        state=m.state,
        message=m.message,
        study_dir=str(store.study_dir),
        started_at=m.created_at,
        finished_at=utc_iso(),
        wall_s=m.wall_s,
        experiments_s=m.experiments_s,
        gaps_s=m.gaps_s,
        sessions=max(1, len(m.sessions)),
        n_runs=len(m.runs),
        n_completed=counts["completed"],
        n_failed=counts["failed"],
        n_interrupted=counts["interrupted"] + counts["running"],
        n_pending=counts["pending"],
        runs=runs,
    )
    return enrich(result, plan.study.impact)


def dry_run_job_scripts(
    plan: StudyPlan, options: StudyRunOptions | None = None
) -> list[tuple[str, str]]:
    """``(run_id, job script)`` for every run of a ``runner: slurm`` plan, for ``--dry-run``.

    The study folder does not exist yet: the scripts name it with a placeholder time stamp.
    """
    from llenergymeasure.runners.slurm import SlurmRunner

    opts = options or StudyRunOptions()
    base = _absolute(plan.study.results_dir)
    study_dir = base / f"{_slug(plan.study.name)}_{plan.study_design_hash[:8]}_YYYYMMDDTHHMMSSZ"
    runner = SlurmRunner(
        plan.study.runner.slurm, _container_settings(plan, opts), base_dir=str(_base_dir(plan))
    )
    by_hash = {e.config_hash: e for e in plan.experiments}
    out = []
    for key in plan.runs:
        exp = by_hash[key.config_hash]
        run_dir = study_dir / "runs" / key.run_id
        request = RunRequest(
            config=exp.config,
            study_id=study_dir.name,
            run_id=key.run_id,
            cycle=key.cycle,
            run_dir=run_dir,
            log_path=study_dir / "logs" / f"{key.run_id}.log",
            image=exp.image,
            study_cache_dir=study_dir / "cache",
            timeout_s=plan.study.execution.experiment_timeout_s,
            host_uid=os.getuid(),
            host_gid=os.getgid(),
            input_base_dir=str(_base_dir(plan)),
        )
        out.append((key.run_id, runner.job_script(request).text))
    return out


def _ran_image(plan: StudyPlan, runner: str) -> bool:
    """Whether the runs ran in the planned image (not the local runner or launcher)."""
    if runner == "slurm":
        return plan.study.runner.slurm.launcher != "local"
    return runner == "docker"


def _write_outputs(result: StudyResult, study_dir: Path, opts: StudyRunOptions) -> None:
    result.write(study_dir / STUDY_RESULT_FILE)
    export_study(result, study_dir, csv_too=opts.export_csv)
