"""The library API: :func:`run_study` starts a study, :func:`resume` continues one, and
:func:`run_experiment` measures one experiment. Sequence::

    choose runner ─► remove leftover containers ─► runner.preflight (all problems at once)
      ─► study dir: plan.json + manifest.json (all runs pending)         (study.directory)
      ─► StudySession.execute: runner.execute(runs not yet completed)   (study.session)
             Docker, local: one at a time, thermal gaps, stop after N consecutive failures
             Slurm: many jobs in flight, one poller (runners.slurm_batch)
      ─► study_result.json + results.parquet (+ summary.csv)             (study.assemble)

Ctrl-C stops the running container cleanly (SIGTERM, grace, SIGKILL; a second Ctrl-C kills),
marks the run interrupted, writes the manifest and raises
:class:`~llenergymeasure.errors.InterruptedStudy` (exit 130). Resuming skips completed runs and
re-runs failed and interrupted ones in new folders.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.errors import ConfigError, ExperimentError
from llenergymeasure.notify import Notifier
from llenergymeasure.results.study import StudyResult
from llenergymeasure.runners.base import Runner
from llenergymeasure.runners.factory import adopts_jobs, make_runner, runner_kind
from llenergymeasure.runners.preflight import ImageFacts, PreflightReport, StudyNeeds
from llenergymeasure.study.assemble import study_result
from llenergymeasure.study.directory import (
    adopt_finished,
    check_design,
    find_study_dir,
    new_study_dir,
    open_study_dir,
    plan_from_file,
    start_study,
    storage_error,
)
from llenergymeasure.study.lock import StudyLock
from llenergymeasure.study.options import (
    StudyRunOptions,
    absolute,
    apply_overrides,
    base_dir,
    input_paths,
    merge_options,
    refuse_fixed,
    request_gpus,
)
from llenergymeasure.study.plan import StudyPlan, plan_json
from llenergymeasure.study.session import StudySession
from llenergymeasure.study.signals import StopSignals
from llenergymeasure_contract.results import ExperimentResult


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
    opts = merge_options(options, flags)
    notifier = Notifier.for_study(plan.study.notify)  # a missing secret: refused before anything
    plan_json(plan)  # a plan.json that would not resume: refused before anything too
    con = console or Console()
    base = absolute(plan.study.results_dir)
    with StopSignals() as signals:
        runner_obj = make_runner(plan, opts, runner, docker_client, con=con)
        report = _preflight(plan, opts, runner=runner_obj, results_dir=base, con=con)
        study_dir = new_study_dir(base, plan)
        with StudyLock(study_dir):
            store = start_study(study_dir, plan, runner_obj.name)
            session = StudySession(
                plan=plan,
                store=store,
                runner=runner_obj,
                report=report,
                opts=opts,
                console=con,
                sleep=sleep,
                signals=signals,
                notifier=notifier,
            )
            return session.execute()


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
    opts = merge_options(options, flags)
    con = console or Console()
    execution_overrides = dict(execution_overrides or {})
    refuse_fixed(execution_overrides)
    study_dir = find_study_dir(absolute(target), plan)
    store, saved = open_study_dir(study_dir)
    check = plan
    if check is None and config is not None and config.is_file():
        check = plan_from_file(config)
    check_design(store, check)
    plan_now = apply_overrides(saved, execution_overrides, runner_overrides or {})
    jobs = {
        r.run_id: r.last.job_id
        for r in store.manifest.runs
        if r.state == "running" and r.last is not None and r.last.job_id is not None
    }
    adopting = adopts_jobs(runner_kind(plan_now, opts, runner))
    if jobs and not adopting:
        raise ConfigError(
            f"{study_dir} has Slurm jobs that may still be queued or running "
            f"({', '.join(sorted(set(jobs.values())))})",
            hint="resume with --runner slurm (it adopts them), or scancel them first",
        )
    # A runner that adopts jobs takes every run left running: by job id, or by the job's
    # comment when the id never reached the manifest.
    keep = {r.run_id for r in store.manifest.runs if r.state == "running"} if adopting else set()
    todo = [r for r in store.manifest.runs if r.state != "completed"]
    if dry_run:  # reads only: no lock, no recovery written
        con.print(
            f"[bold]{study_dir}[/]: {len(todo)} of {len(store.manifest.runs)} runs to do "
            f"({', '.join(r.run_id for r in todo[:10])}{' ...' if len(todo) > 10 else ''})"
        )
        return study_result(plan_now, store)
    with StopSignals() as signals, StudyLock(study_dir):
        if not todo:
            con.print(
                f"{study_dir}: all {len(store.manifest.runs)} runs are already completed; "
                "nothing to do"
            )
            return study_result(plan_now, store)
        try:
            recovered = store.recover_running(keep=keep)
        except OSError as exc:
            raise storage_error(exc, study_dir) from exc
        notifier = Notifier.for_study(plan_now.study.notify)
        if recovered:
            con.print(f"runs left running by an earlier crash, now interrupted: {recovered}")
        runner_obj = make_runner(plan_now, opts, runner, docker_client, con=con)
        report = _preflight(
            plan_now,
            opts,
            runner=runner_obj,
            results_dir=study_dir.parent,
            con=con,
            only={r.config_hash for r in todo},
        )
        try:
            adopted = adopt_finished(store)
        except OSError as exc:
            raise storage_error(exc, study_dir) from exc
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
        session = StudySession(
            plan=plan_now,
            store=store,
            runner=runner_obj,
            report=report,
            opts=opts,
            console=con,
            sleep=sleep,
            signals=signals,
            notifier=notifier,
        )
        return session.execute()


def run_experiment(
    config: ExperimentConfig | Mapping[str, Any] | str | Path,
    options: StudyRunOptions | None = None,
    *,
    results_dir: str | Path | None = None,
    runner: Runner | None = None,
    console: Console | None = None,
    **flags: Any,
) -> ExperimentResult:
    """Measure one experiment: a study of one run, in its own study folder.

    Args:
        config: An :class:`ExperimentConfig`, a mapping of its fields, or the path of a YAML
            file holding one experiment (``llem run`` syntax, without sweeps).
        options: Execution options (``runner``, ``quiet``, ...); ``flags`` override fields.
        results_dir: Where the study folder goes (default: the config's, else ``results``).
        runner: A ready runner (tests).
        console: Where to draw progress.

    Returns:
        The run's :class:`ExperimentResult`.

    Raises:
        ConfigError: the config is invalid, or a file holds more than one experiment.
        ExperimentError: the run did not complete (its cause, and the study folder).
    """
    from llenergymeasure.config.loader import expand_study, load_study
    from llenergymeasure.study.plan import build_plan

    where = str(absolute(results_dir)) if results_dir is not None else None
    if isinstance(config, str | Path):
        study = load_study(config, results_dir=where)
    else:
        raw = (
            config.model_dump(mode="json", exclude_unset=True)
            if isinstance(config, ExperimentConfig)
            else dict(config)
        )
        study = expand_study(
            {"name": "experiment", **raw},
            source="<run_experiment>",
            base_dir=Path.cwd(),
            results_dir=where,
        )
    if len(study.experiments) != 1:
        raise ConfigError(
            f"run_experiment measures one experiment; this config expands to "
            f"{len(study.experiments)}",
            hint="use run_study for sweeps and experiment lists",
        )
    result = run_study(build_plan(study), options, runner=runner, console=console, **flags)
    run = result.runs[0]
    loaded = None
    if run.result_path is not None:
        loaded = ExperimentResult.load(Path(result.study_dir) / run.result_path)
    if loaded is None:
        raise ExperimentError(
            f"the experiment did not complete ({run.state}"
            f"{f', {run.failure_kind}' if run.failure_kind else ''}): {run.message}",
            hint=f"see {result.study_dir}",
        )
    return loaded


def _preflight(
    plan: StudyPlan,
    opts: StudyRunOptions,
    *,
    runner: Runner,
    results_dir: Path,
    con: Console,
    only: set[str] | None = None,
) -> PreflightReport:
    """Remove leftovers, then the runner's preflight for the experiments about to run."""
    exps = [e for e in plan.experiments if only is None or e.config_hash in only]
    if not opts.preflight:
        return PreflightReport(images={e.image: ImageFacts(e.image) for e in exps})
    removed = runner.cleanup_leftovers()
    if removed and not opts.quiet:
        con.print(f"removed {len(removed)} leftover container(s) of an earlier run: {removed}")
    interactive = opts.interactive if opts.interactive is not None else sys.stdin.isatty()
    confirm = None
    if interactive:
        from rich.prompt import Confirm

        def confirm(question: str) -> bool:
            return bool(Confirm.ask(question, console=con, default=False))

    needs = StudyNeeds(
        experiments=tuple(exps),
        results_dir=results_dir,
        input_paths=input_paths(exps, base_dir(plan)),
        pull_policy=plan.study.runner.pull_policy,
        request_gpus=request_gpus(opts),
        min_free_bytes=opts.min_free_bytes,
        env_passthrough=tuple(plan.study.runner.docker.env_passthrough),
        confirm=confirm,
        assume_yes=opts.assume_yes,
        resumed=only is not None,
    )
    report = runner.preflight(needs)
    if not opts.quiet:
        for note in report.notes:
            con.print(f"note: {escape(note)}")
    return report
