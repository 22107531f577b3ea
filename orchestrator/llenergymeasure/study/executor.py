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
from llenergymeasure.errors import (
    ConfigError,
    InterruptedStudy,
    PreflightError,
    RunnerError,
)
from llenergymeasure.results.aggregate import export_study
from llenergymeasure.results.study import (
    STUDY_RESULT_FILE,
    RunMetrics,
    RunSummary,
    StudyResult,
)
from llenergymeasure.runners.base import FailureKind, Runner, RunOutcome, RunState
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
from llenergymeasure.study.manifest import (
    MANIFEST_FILE,
    ManifestStore,
    RunRecord,
    StudyManifest,
)
from llenergymeasure.study.plan import PlannedExperiment, StudyPlan, gap_after
from llenergymeasure.study.progress import StudyProgress
from llenergymeasure_contract.files import RESULT_FILE
from llenergymeasure_contract.results import ExperimentResult, write_json_atomic
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
        InterruptedStudy: Ctrl-C; the manifest is saved and the study can be resumed.
        RunnerError: Docker went away mid-study (the manifest is saved).
    """
    opts = _merge_options(options, flags)
    con = console or Console()
    base = Path(plan.study.results_dir).expanduser()
    runner_obj, client = _make_runner(plan, opts, runner, docker_client, con=con)
    report = _preflight(plan, opts, runner=runner_obj, client=client, results_dir=base, con=con)
    study_dir = _new_study_dir(base, plan)
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
    write_json_atomic(study_dir / PLAN_FILE, plan.model_dump_json(indent=1))
    store = ManifestStore(study_dir, manifest)
    return _execute(plan, store, runner=runner_obj, report=report, opts=opts, con=con, sleep=sleep)


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
    ``config`` (optional) is checked to have the study's design hash. Execution and runner
    overrides (gaps, timeout, runner kind) apply; the run order is the original one.
    """
    opts = _merge_options(options, flags)
    con = console or Console()
    study_dir = _find_study_dir(target, plan)
    store = ManifestStore.load(study_dir)
    saved = StudyPlan.model_validate_json((study_dir / PLAN_FILE).read_text(encoding="utf-8"))
    check = plan
    if check is None and config is not None and config.is_file():
        check = _plan_from_file(config)
    if check is not None and check.study_design_hash != store.manifest.study_design_hash:
        raise ConfigError(
            f"{study_dir} was run from a different study design "
            f"({store.manifest.study_design_hash}, this one {check.study_design_hash})",
            hint="resume with the study file it was started from, or start a new study",
        )
    plan_now = _apply_overrides(saved, execution_overrides or {}, runner_overrides or {})
    recovered = store.recover_running()
    todo = [r for r in store.manifest.runs if r.state != "completed"]
    if dry_run:
        con.print(
            f"[bold]{study_dir}[/]: {len(todo)} of {len(store.manifest.runs)} runs to do "
            f"({', '.join(r.run_id for r in todo[:10])}{' ...' if len(todo) > 10 else ''})"
        )
        return _study_result(
            plan_now,
            store,
            started_at=utc_iso(),
            t0=time.monotonic(),
            experiments_s=0.0,
            gaps_s=0.0,
        )
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
    if store.manifest.runner != runner_obj.name:
        con.print(
            f"note: resuming with the {runner_obj.name} runner (started with "
            f"{store.manifest.runner})"
        )
    return _execute(
        plan_now, store, runner=runner_obj, report=report, opts=opts, con=con, sleep=sleep
    )


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
    env = dict(d.env)
    env.update(opts.extra_env)
    return ContainerSettings(
        network_mode=d.network_mode,
        shm_size=d.shm_size,
        ipc_mode=d.ipc_mode,
        ulimits=ulimits,
        mem_limit=d.mem_limit,
        hf_cache_dir=str(Path(hf).expanduser()),
        engine_cache_dir=str(Path(engines).expanduser()),
        run_as_host_user=d.run_as_host_user,
        extra_env=env,
        command=opts.container_command,
        request_gpus=_request_gpus(opts),
    )


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
    if kind in ("docker", "auto"):
        try:
            client = client if client is not None else connect()
        except RunnerError as exc:
            if kind == "docker":
                raise PreflightError([str(exc.message)], hint=exc.hint) from exc
            client = None
        missing = _missing_images(plan, client) if client is not None and kind == "auto" else []
        if client is not None and missing and _runs_locally(plan):
            if con is not None and not opts.quiet:
                con.print(
                    f"note: runner auto: {', '.join(missing)} not present in Docker, so the "
                    "study runs on this host (local runner); `llem images build` gives Docker "
                    "the image(s)"
                )
            client = None
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
    if not opts.quiet:
        for note in report.notes:
            con.print(f"note: {escape(note)}")
    return report


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
        base = Path(wanted.study.results_dir).expanduser()
        candidates = []
        for manifest_path in sorted(base.glob(f"*/{MANIFEST_FILE}")):
            try:
                m = ManifestStore.load(manifest_path.parent).manifest
            except (OSError, ValueError):
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
    if not execution and not runner:
        return plan
    execution = {k: v for k, v in execution.items() if k not in ("n_cycles", "cycle_order")}
    study = plan.study.model_copy(
        update={
            "execution": plan.study.execution.model_copy(update=execution),
            "runner": plan.study.runner.model_copy(update=runner),
        }
    )
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


def _execute(
    plan: StudyPlan,
    store: ManifestStore,
    *,
    runner: Runner,
    report: PreflightReport,
    opts: StudyRunOptions,
    con: Console,
    sleep: Callable[[float], None],
) -> StudyResult:
    study_dir = store.study_dir
    ex = plan.study.execution
    store.manifest.sessions.append(utc_iso())
    store.set_state("running")
    todo = [r for r in store.manifest.runs if r.state != "completed"]
    by_hash = {e.config_hash: e for e in plan.experiments}
    started_at = utc_iso()
    t0 = time.monotonic()
    experiments_s = gaps_s = 0.0
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
        runner=runner.name,
    )
    previous: RunRecord | None = None
    current: RunRecord | None = None
    metrics_by_run: dict[str, RunMetrics] = {}
    try:
        with progress:
            for rec in todo:
                exp = by_hash[rec.config_hash]
                if previous is not None:
                    between = gap_after(previous, rec, ex.cycle_order)
                    gap = ex.cycle_gap_s if between == "cycle" else ex.config_gap_s
                    if gap > 0:
                        kind = "cycle" if between == "cycle" else "experiment"
                        gaps_s += progress.countdown(gap, f"thermal gap between {kind}s", sleep)
                attempt_no = len(rec.attempts) + 1
                run_dir = _run_folder(study_dir, rec.run_id, attempt_no)
                log_path = study_dir / "logs" / f"{run_dir.name}.log"
                facts = report.images.get(exp.image)
                request = RunRequest(
                    config=exp.config,
                    study_id=store.manifest.study_id,
                    run_id=rec.run_id,
                    cycle=rec.cycle,
                    run_dir=run_dir,
                    log_path=log_path,
                    image=exp.image if runner.name == "docker" else None,
                    image_digest=facts.digest if facts else None,
                    image_labels=dict(facts.labels) if facts else None,
                    study_cache_dir=study_dir / "cache",
                    timeout_s=ex.experiment_timeout_s,
                    host_uid=host_uid,
                    host_gid=host_gid,
                    version=__version__,
                    input_base_dir=base_dir,
                )
                current = rec
                store.start_attempt(rec.run_id, run_dir, log_path)
                progress.start_run(rec, exp)
                outcome = runner.run(request, echo=progress.echo if opts.verbose else None)
                experiments_s += outcome.duration_s or 0.0
                store.finish_attempt(rec.run_id, outcome)
                current = None
                metrics = _metrics(outcome)
                if metrics is not None:
                    metrics_by_run[rec.run_id] = metrics
                progress.end_run(rec, exp, outcome, metrics)
                previous = rec
                if outcome.status == "interrupted":
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
    except KeyboardInterrupt:
        _close_running(store, current, "interrupted", "interrupted", "interrupted by the user")
        store.set_state("interrupted", "interrupted by the user (Ctrl-C)")
        try:
            result = _study_result(
                plan,
                store,
                started_at=started_at,
                t0=t0,
                experiments_s=experiments_s,
                gaps_s=gaps_s,
                metrics_by_run=metrics_by_run,
            )
            _write_outputs(result, study_dir, opts)
        except KeyboardInterrupt:
            pass
        done = store.manifest.counts()["completed"]
        raise InterruptedStudy(
            f"study interrupted; {done} of {len(store.manifest.runs)} runs completed and "
            f"saved in {study_dir}",
            hint=f"resume with: llem run --resume {study_dir}",
        ) from None
    except RunnerError as exc:
        _close_running(store, current, "failed", "runner_error", exc.message)
        store.set_state("failed", exc.message)
        result = _study_result(
            plan,
            store,
            started_at=started_at,
            t0=t0,
            experiments_s=experiments_s,
            gaps_s=gaps_s,
            metrics_by_run=metrics_by_run,
        )
        _write_outputs(result, study_dir, opts)
        raise RunnerError(
            f"{exc.message} (study saved in {study_dir})",
            hint=f"{exc.hint + '; ' if exc.hint else ''}resume with: llem run --resume {study_dir}",
        ) from exc
    if store.manifest.state == "running":
        counts = store.manifest.counts()
        store.set_state(
            "completed" if counts["completed"] == len(store.manifest.runs) else "failed"
        )
    result = _study_result(
        plan,
        store,
        started_at=started_at,
        t0=t0,
        experiments_s=experiments_s,
        gaps_s=gaps_s,
        metrics_by_run=metrics_by_run,
    )
    _write_outputs(result, study_dir, opts)
    progress.summary(result)
    return result


def _close_running(
    store: ManifestStore,
    current: RunRecord | None,
    status: RunState,
    kind: FailureKind,
    message: str,
) -> None:
    """Record how the run in flight ended when the study itself stops around it."""
    if current is not None and store.run(current.run_id).state == "running":
        store.finish_attempt(
            current.run_id,
            RunOutcome(
                status=status,
                failure_kind=kind,
                message=message,
                finished_at=utc_iso(),
            ),
        )


def _metrics(outcome: RunOutcome) -> RunMetrics | None:
    return RunMetrics.from_result(outcome.result) if outcome.result is not None else None


def _study_result(
    plan: StudyPlan,
    store: ManifestStore,
    *,
    started_at: str,
    t0: float,
    experiments_s: float,
    gaps_s: float,
    metrics_by_run: dict[str, RunMetrics] | None = None,
) -> StudyResult:
    """The study's result from the manifest; ``metrics_by_run`` holds the metrics of runs this
    session completed (from their outcomes' typed results), so only runs completed in an
    earlier session have their ``result.json`` read here, once."""
    m = store.manifest
    known = metrics_by_run or {}
    by_hash = {e.config_hash: e for e in plan.experiments}
    runs = []
    for rec in m.runs:
        exp = by_hash.get(rec.config_hash)
        last = rec.last
        metrics = None
        result_rel = None
        if rec.state == "completed" and last is not None:
            result_rel = str(Path(last.run_dir) / RESULT_FILE)
            metrics = known.get(rec.run_id)
            if metrics is None:
                path = store.study_dir / result_rel
                try:
                    metrics = RunMetrics.from_result(ExperimentResult.load(path))
                except (OSError, ValueError) as exc:
                    logger.warning("cannot read %s: %s", path, exc)
                    result_rel = None
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
                image=exp.image if exp and m.runner == "docker" else None,
                params=dict(exp.params) if exp else {},
                metrics=metrics,
            )
        )
    counts = m.counts()
    return StudyResult(
        study_id=m.study_id,
        study_name=m.study_name,
        study_design_hash=m.study_design_hash,
        llem_version=m.llem_version,
        runner=m.runner,
        state=m.state,
        message=m.message,
        study_dir=str(store.study_dir),
        started_at=started_at,
        finished_at=utc_iso(),
        wall_s=time.monotonic() - t0,
        experiments_s=experiments_s,
        gaps_s=gaps_s,
        n_runs=len(m.runs),
        n_completed=counts["completed"],
        n_failed=counts["failed"],
        n_interrupted=counts["interrupted"] + counts["running"],
        n_pending=counts["pending"],
        runs=runs,
    )


def _write_outputs(result: StudyResult, study_dir: Path, opts: StudyRunOptions) -> None:
    result.write(study_dir / STUDY_RESULT_FILE)
    export_study(result, study_dir, csv_too=opts.export_csv)
